"""SQS driver behaviour beyond the conformance suite, on moto's server (tests/backends/sqs_backend)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import asynctasq
from asynctasq.config import Config, env_name
from asynctasq.constants import SQS_MAX_DELAY_S, SQS_MAX_MESSAGE_BYTES
from asynctasq.core.driver_factory import DriverFactory
from asynctasq.drivers.base import BaseDriver, EnqueueItem
from asynctasq.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    InvalidQueueName,
    MessageTooLarge,
    UnsupportedOperation,
)
from asynctasq.message import Envelope
from tests.backends import ServiceUnavailable, cleanup, make_driver, services_required, unavailable
from tests.conftest import wait_for
from tests.test_crash_recovery import logs, start_worker

try:
    from asynctasq.drivers.sqs import SQSDriver
    from tests.backends import sqs_backend
except ImportError as exc:  # aioboto3 or moto missing
    if services_required():
        raise
    pytest.skip(f"the SQS test dependencies are not installed: {exc}", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
MakeSQS = Callable[..., Awaitable[SQSDriver]]


@pytest.fixture
async def make_sqs(namespace: str) -> AsyncIterator[MakeSQS]:
    made: list[BaseDriver] = []

    async def make(**options: Any) -> SQSDriver:
        driver = await make_driver("sqs", namespace, **options)
        assert isinstance(driver, SQSDriver)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        await driver.disconnect()
    await cleanup("sqs", namespace)


@pytest.fixture
async def sqs(make_sqs: MakeSQS) -> SQSDriver:
    return await make_sqs()


def raw_client() -> Any:
    """A plain aiobotocore client on the test server (to look at what the driver stored)."""
    import aioboto3

    session = aioboto3.Session(region_name=sqs_backend.REGION, **sqs_backend.CREDENTIALS)
    return session.client("sqs", endpoint_url=sqs_backend.endpoint())


# -- configuration ------------------------------------------------------------------------------


def test_url_and_config_map_to_constructor_keywords() -> None:
    url = "sqs://AKIDEXAMPLE:s3cr%2Fet@eu-west-1/?queue_url_prefix=https://sqs.eu-west-1.amazonaws.com/123456789012/app-&create_queues=1&wait_time_seconds=5"
    driver = DriverFactory.from_url(url)
    assert isinstance(driver, SQSDriver)
    assert driver.region == "eu-west-1" and driver.create_queues and driver.wait_time_seconds == 5
    assert driver._name_prefix == "app-" and driver._account == "123456789012"
    for shown in (driver.describe(), repr(driver)):
        assert "s3cr" not in shown and "AKIDEXAMPLE" not in shown
    defaults = DriverFactory.from_url("sqs://")
    assert isinstance(defaults, SQSDriver) and defaults.region == "us-east-1" and not defaults.create_queues
    with pytest.raises(ValueError, match="unknown sqs:// URL option"):
        SQSDriver.options_from_url("sqs://us-east-1/?queue_prefix=x")

    config = Config(
        driver="sqs",
        _environ={
            "ASYNCTASQ_SQS_REGION": "us-west-2",
            "ASYNCTASQ_SQS_QUEUE_URL_PREFIX": "https://sqs.us-west-2.amazonaws.com/123456789/",
            "ASYNCTASQ_SQS_CREATE_QUEUES": "true",
            "ASYNCTASQ_SQS_WAIT_TIME_SECONDS": "10",
            "ASYNCTASQ_AWS_SECRET_ACCESS_KEY": "hunter2",
        },
    )
    driver = DriverFactory.create_from_config(config)
    assert isinstance(driver, SQSDriver)
    assert (driver.region, driver.create_queues, driver.wait_time_seconds) == ("us-west-2", True, 10)
    assert driver._account == "123456789" and driver._name_prefix == ""
    assert "hunter2" not in driver.describe() + repr(driver)


async def test_the_aws_credential_chain_is_used_without_keys(
    namespace: str, queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No keys given: the environment, then a profile of the shared credentials file."""
    options = {k: v for k, v in sqs_backend.options(namespace).items() if not k.startswith("aws_")}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env-secret")
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[jobs]\naws_access_key_id = from-profile\naws_secret_access_key = profile-secret\n"
    )
    try:
        for source in ("environment", "profile"):
            if source == "profile":
                monkeypatch.delenv("AWS_ACCESS_KEY_ID")
                monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
                monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
                monkeypatch.setenv("AWS_PROFILE", "jobs")
            driver = SQSDriver(**options)
            await driver.connect()
            try:
                await driver.enqueue(queue, source.encode())
                [got] = await driver.dequeue([queue], 1, wait=2)
                assert got.body == source.encode()
                await driver.ack([got])
                creds = driver._client._get_credentials()
                assert creds.access_key == ("from-env" if source == "environment" else "from-profile")
            finally:
                await driver.disconnect()
    finally:
        await cleanup("sqs", namespace)


def test_limits_are_checked_up_front() -> None:
    assert SQSDriver.default_max_message_bytes * 4 // 3 < SQS_MAX_MESSAGE_BYTES
    with pytest.raises(ValueError, match="at most"):
        SQSDriver(max_message_bytes=SQS_MAX_MESSAGE_BYTES)
    with pytest.raises(ValueError, match="1-20"):
        SQSDriver(wait_time_seconds=30)
    with pytest.raises(ValueError, match="12-hour"):
        SQSDriver(lease_seconds=50_000)


# -- bad input ----------------------------------------------------------------------------------


async def test_oversized_message_is_refused_before_any_call(sqs: SQSDriver, queue: str) -> None:
    calls = sqs_backend.count_calls(sqs)
    with pytest.raises(MessageTooLarge, match="sqs driver's limit"):
        await sqs.enqueue(queue, b"x" * (sqs.max_message_bytes + 1))
    with pytest.raises(MessageTooLarge):
        await sqs.enqueue_many(
            [EnqueueItem(queue, b"ok"), EnqueueItem(queue, b"x" * (sqs.max_message_bytes + 1))]
        )
    assert calls == {}
    # the largest message that is allowed goes through SQS's 1 MiB limit, binary intact
    body = bytes(range(256)) * (sqs.max_message_bytes // 256)
    await sqs.enqueue(queue, body)
    [got] = await sqs.dequeue([queue], 1, wait=2)
    assert got.body == body
    assert await sqs.ack([got]) == [got]


async def test_names_sqs_cannot_hold_are_refused(sqs: SQSDriver) -> None:
    for bad in ("has.dot", "has:colon", "x" * 75):  # valid asynctasq names, not SQS ones
        with pytest.raises(InvalidQueueName, match="SQS"):
            await sqs.enqueue(bad, b"x")
    with pytest.raises(InvalidQueueName, match="SQS"):
        await sqs.enqueue("x" * 70 + ".fifo", b"x")  # its failed queue's name would be too long


async def test_missing_queue_is_a_clear_error(make_sqs: MakeSQS, queue: str) -> None:
    strict = await make_sqs(create_queues=False)
    with pytest.raises(BrokerError, match=r"does not exist.*--sqs-create-queues"):
        await strict.enqueue(queue, b"x")
    with pytest.raises(BrokerError, match="does not exist"):
        await strict.dequeue([queue], 1, wait=0)
    creator = await make_sqs()
    await creator.enqueue(queue, b"kept")
    [got] = await strict.dequeue([queue], 1, wait=2)  # exists now: nothing was lost
    assert got.body == b"kept"
    await strict.ack([got])


async def test_foreign_messages_are_delivered_as_they_are(sqs: SQSDriver, queue: str) -> None:
    """A message some other tool put there (not base64, no attributes) reaches the worker, which
    sends it to the failed registry as undecodable."""
    url = await sqs._url(queue)
    async with raw_client() as client:
        sent = await client.send_message(QueueUrl=url, MessageBody="not base64 at all!")
    [got] = await sqs.dequeue([queue], 1, wait=2)
    assert got.body == b"not base64 at all!" and got.id == sent["MessageId"] and got.delivery_count == 1
    assert await sqs.fail(got, "undecodable") is True
    [entry] = await sqs.failed_list(queue)
    assert entry["body"] == b"not base64 at all!" and entry["error"] == "undecodable"


# -- delivery counts, give-backs, delays --------------------------------------------------------


async def test_give_back_keeps_lost_deliveries_but_costs_nothing(make_sqs: MakeSQS, queue: str) -> None:
    driver = await make_sqs(lease_seconds=1)
    await driver.enqueue(queue, b"job")
    [first] = await driver.dequeue([queue], 1, wait=2)
    assert first.delivery_count == 1  # then this worker "dies": the lease runs out
    [second] = await driver.dequeue([queue], 1, wait=5)
    assert second.delivery_count == 2 and second.id == first.id
    assert await driver.release(second) is True  # shutdown give-back
    [third] = await driver.dequeue([queue], 1, wait=5)
    assert third.delivery_count == 2, "the give-back used no attempt, the lost delivery still counts"
    assert await driver.release(third, body=b"retry") is True
    [fourth] = await driver.dequeue([queue], 1, wait=5)
    assert (fourth.body, fourth.delivery_count, fourth.id) == (b"retry", 1, first.id)
    assert await driver.ack([fourth]) == [fourth]


async def test_give_backs_at_the_same_moment_go_in_batches(make_sqs: MakeSQS, queue: str) -> None:
    """A stopping worker gives back each running task from its own task, all at once: 12
    give-backs cost 2 SendMessageBatch and 2 DeleteMessageBatch, not 12 of each; a stale one
    among them is refused, and every message comes back uncounted."""
    driver = await make_sqs()
    await driver.enqueue_many([EnqueueItem(queue, b"%d" % i) for i in range(12)])
    held = await driver.dequeue([queue], 10, wait=2)
    held += await driver.dequeue([queue], 2, wait=2)
    assert len(held) == 12
    assert await driver.ack(held[:1]) == held[:1]  # acked: its give-back is refused
    calls = sqs_backend.count_calls(driver)
    given = await asyncio.gather(*(driver.release(d) for d in held))
    assert given == [False] + [True] * 11
    assert calls == {"SendMessageBatch": 2, "DeleteMessageBatch": 2}
    back = await driver.dequeue([queue], 10, wait=2)
    back += await driver.dequeue([queue], 10, wait=2)
    assert sorted(d.body for d in back) == sorted(d.body for d in held[1:])
    assert {d.delivery_count for d in back} == {1}
    await driver.ack(back)


async def test_delays_over_900s_are_chained(sqs: SQSDriver, queue: str) -> None:
    await sqs.enqueue(queue, b"much later", delay=3 * 3600)
    assert (await sqs.stats([queue]))[queue]["delayed"] == 1, "accepted, not refused"
    # what SQS holds: 900 s of delay and the due time, so a receive after 900 s re-sends it
    url = await sqs._url(queue)
    due = time.time() + 2000
    attrs = {
        "atq.id": {"DataType": "String", "StringValue": "chained-1"},
        "atq.due": {"DataType": "Number", "StringValue": f"{due:.3f}"},
        "atq.n": {"DataType": "Number", "StringValue": "1"},
    }
    async with raw_client() as client:
        await client.send_message(
            QueueUrl=url, MessageBody=base64.b64encode(b"early").decode(), MessageAttributes=attrs
        )
    calls = sqs_backend.count_calls(sqs)
    assert await sqs.dequeue([queue], 10, wait=0) == [], "received before it is due: re-sent, not handed out"
    assert calls["SendMessageBatch"] == 1 and calls["DeleteMessageBatch"] == 1
    assert (await sqs.stats([queue]))[queue] == {"ready": 0, "delayed": 2, "leased": 0, "failed": 0}
    # a re-sent link that is due now is handed out, with its id and delivery count kept
    attrs["atq.due"]["StringValue"] = f"{time.time() - 1:.3f}"
    async with raw_client() as client:
        await client.send_message(
            QueueUrl=url, MessageBody=base64.b64encode(b"due").decode(), MessageAttributes=attrs
        )
    [got] = await sqs.dequeue([queue], 10, wait=2)
    assert (got.body, got.id, got.delivery_count) == (b"due", "chained-1", 2)
    await sqs.ack([got])
    entry = sqs._entry(0, "x", b"b", 2000.0)
    assert entry["DelaySeconds"] == SQS_MAX_DELAY_S
    assert float(entry["MessageAttributes"]["atq.due"]["StringValue"]) > time.time() + 1900


async def test_retry_with_a_long_delay_is_accepted(sqs: SQSDriver, queue: str) -> None:
    await sqs.enqueue(queue, b"a1")
    [got] = await sqs.dequeue([queue], 1, wait=2)
    assert await sqs.release(got, delay=7200, body=b"a2") is True
    assert (await sqs.stats([queue]))[queue] == {"ready": 0, "delayed": 1, "leased": 0, "failed": 0}


async def test_fifo_queue_keeps_order_delays_and_counts(make_sqs: MakeSQS) -> None:
    driver, other = await make_sqs(lease_seconds=5), await make_sqs()
    queue = "jobs.fifo"
    await driver.enqueue_many([EnqueueItem(queue, b"same") for _ in range(2)])  # no deduplication
    await driver.enqueue_many([EnqueueItem(queue, str(i).encode()) for i in range(13)])
    assert (await driver._url(queue)).endswith("-jobs.fifo")
    first = await driver.dequeue([queue], 10, wait=2)
    assert [d.body for d in first] == [b"same", b"same"] + [str(i).encode() for i in range(8)]
    assert await other.dequeue([queue], 10, wait=0) == [], "the group waits for its messages in flight"
    assert len(await driver.ack(first)) == 10
    rest = await driver.dequeue([queue], 10, wait=2)
    assert [d.body for d in rest] == [str(i).encode() for i in range(8, 13)]
    # a give-back costs no attempt; a delayed retry is hidden, then counted from 1
    assert await driver.release(rest[0]) is True
    assert await driver.release(rest[1], delay=1.5, body=b"retry") is True
    assert len(await driver.ack(rest[2:])) == 3
    [back] = await driver.dequeue([queue], 10, wait=2)
    assert (back.body, back.delivery_count) == (b"8", 1)
    await driver.ack([back])
    [retry] = await driver.dequeue([queue], 10, wait=0) or await driver.dequeue([queue], 10, wait=5)
    assert (retry.body, retry.delivery_count, retry.id) == (b"retry", 1, rest[1].id)
    # failed queue: jobs-failed.fifo, listed under its queue's name
    assert await driver.fail(retry, "boom") is True
    assert (await driver._failed_url(queue)).endswith("-jobs-failed.fifo")
    [entry] = await other.failed_list()
    assert (entry["queue"], entry["body"], entry["error"]) == (queue, b"retry", "boom")
    assert await other.failed_requeue() == 1
    [again] = await driver.dequeue([queue], 10, wait=2)
    assert (again.body, again.delivery_count) == (b"retry", 1)
    await driver.ack([again])
    with pytest.raises(ConfigError, match="message_group_id"):
        SQSDriver(message_group_id="has space")


def _group(name: str) -> tuple[tuple[str, str], ...]:
    return (("message_group_id", name),)


async def test_fifo_message_groups_keep_order_within_and_run_apart(make_sqs: MakeSQS) -> None:
    """Per-dispatch message groups: a group runs in order, one batch at a time; another group
    is not held back by it; a retry and a give-back stay in their group (at its end)."""
    one, two = await make_sqs(lease_seconds=10), await make_sqs(lease_seconds=10)
    queue = "orders.fifo"
    items = [EnqueueItem(queue, body.encode(), 0, _group(body[0])) for body in ("a1", "b1", "a2", "a3", "b2")]
    await one.enqueue_many(items)
    [a1] = await one.dequeue([queue], 1, wait=2)
    [b1] = await two.dequeue([queue], 1, wait=2)  # group a in flight does not hold back group b
    assert (a1.body, b1.body) == (b"a1", b"b1")
    assert await two.dequeue([queue], 10, wait=0) == [], "both groups have a message in flight"
    await one.ack([a1])
    [a2] = await two.dequeue([queue], 1, wait=2)
    assert a2.body == b"a2"
    assert await two.release(a2, 0, body=b"a2-retry") is True  # a retry: to the end of group a
    await two.ack([b1])
    got = await one.dequeue([queue], 10, wait=2)
    assert [d.body for d in got] == [b"a3", b"b2", b"a2-retry"]  # in each group, in order
    assert [one._leases[d.token].group for d in got] == ["a", "b", "a"]
    assert await one.release(got[1]) is True  # a give-back keeps group b
    await one.ack([got[0], got[2]])
    [b2] = await two.dequeue([queue], 10, wait=2)
    assert (b2.body, b2.delivery_count, two._leases[b2.token].group) == (b"b2", 1, "b")
    await two.ack([b2])


async def test_fifo_deduplication_id_stores_one_copy(make_sqs: MakeSQS) -> None:
    """The same deduplication id within SQS's 5-minute window: one message, however many
    dispatches (through the public API: TaskCall.broker_options)."""
    from tests.cli_tasks import add

    driver = await make_sqs()
    queue = "billing.fifo"
    for _ in range(3):
        await (
            add(1, 2)
            .on_queue(queue)
            .broker_options(message_group_id="acct-7", deduplication_id="invoice-42")
            .dispatch(driver)
        )
    await add(2, 2).on_queue(queue).broker_options(message_group_id="acct-7").dispatch(driver)
    got = await driver.dequeue([queue], 10, wait=2)
    assert [Envelope.decode(d.body).args for d in got] == [[1, 2], [2, 2]]
    await driver.ack(got)


async def test_broker_options_are_validated_or_refused(make_sqs: MakeSQS, queue: str) -> None:
    from asynctasq.drivers.memory import MemoryDriver
    from asynctasq.errors import TaskDefinitionError
    from tests.cli_tasks import add

    driver = await make_sqs()
    with pytest.raises(UnsupportedOperation, match="need an SQS FIFO queue"):
        await driver.enqueue(queue, b"x", options=_group("g"))
    with pytest.raises(ConfigError, match="1-128 letters, digits and punctuation"):
        await driver.enqueue_many(
            [EnqueueItem("q.fifo", b"ok"), EnqueueItem("q.fifo", b"x", 0, _group("a b"))]
        )
    with pytest.raises(ConfigError, match="1-128"):
        await driver.enqueue("q.fifo", b"x", options=(("deduplication_id", "d" * 129),))
    assert (await driver.stats(["q.fifo"]))["q.fifo"]["ready"] == 0, "nothing of a refused batch was sent"
    with pytest.raises(TaskDefinitionError, match="unknown broker option"):
        add(1, 2).broker_options(priority="9")
    with pytest.raises(TaskDefinitionError, match="non-empty string"):
        add(1, 2).broker_options(message_group_id="")
    memory = MemoryDriver()
    await memory.connect()
    try:
        with pytest.raises(UnsupportedOperation, match="does not support the broker option"):
            await add(1, 2).broker_options(message_group_id="g").dispatch(memory)
        with pytest.raises(UnsupportedOperation, match="deduplication_id"):
            await memory.enqueue_many([EnqueueItem("q", b"x", 0, (("deduplication_id", "d"),))])
        assert (await memory.stats(["q"]))["q"]["ready"] == 0
    finally:
        await memory.disconnect()


# -- leases and fencing -------------------------------------------------------------------------


async def test_fencing_is_not_claimed_and_stale_tokens_are_refused_locally(
    make_sqs: MakeSQS, queue: str
) -> None:
    a = await make_sqs(lease_seconds=1)
    assert not a.fencing and not a.supports("fencing")
    await a.enqueue(queue, b"x")
    [first] = await a.dequeue([queue], 1, wait=2)
    [second] = await a.dequeue([queue], 1, wait=5)  # after the lease ran out
    # moto takes the outdated receipt handle (AWS may too): why the driver does not claim fencing
    url = await a._url(queue)
    async with raw_client() as client:
        await client.change_message_visibility(QueueUrl=url, ReceiptHandle=first.token, VisibilityTimeout=30)
    # the driver refuses it on its own side
    assert await a.ack([first]) == [] and await a.extend([first]) == []
    assert await a.release(first) is False and await a.fail(first, "late") is False
    assert await a.ack([second]) == [second]
    assert await a.ack([second]) == [], "acked already"


async def test_a_late_answer_never_leaves_a_lease_sqs_has_released(
    make_sqs: MakeSQS, namespace: str, queue: str
) -> None:
    """The answer of a long poll reaches the driver 1 s after SQS handed the message out
    (through a relay that holds back moto's answers): the driver's own lease must end before
    SQS's visibility does, so once a second consumer can receive the message, the first one's
    ack is refused (no call: it could delete the copy the other one runs). Before the fix,
    the local lease ran from the answer and outlived SQS's by about a second."""
    target = urlsplit(sqs_backend.endpoint()).port
    assert target is not None
    relay = sqs_backend.Relay(target, answer_delay_s=1.0)
    try:
        await relay.start()
        prefix = f"{relay.url}/{sqs_backend.ACCOUNT}/{namespace}-"  # the same queues, via the relay
        slow = await make_sqs(endpoint_url=relay.url, queue_url_prefix=prefix, lease_seconds=2.0)
        other = await make_sqs(lease_seconds=2.0)
        assert await slow.dequeue([queue], 1, wait=0) == []  # the queue exists, its URL is known
        waiting = asyncio.create_task(slow.dequeue([queue], 1, wait=20))
        await wait_for(lambda: queue in slow._polls, timeout=10)  # a long poll is in flight
        await asyncio.sleep(0.5)  # its request has reached moto
        await other.enqueue(queue, b"late")
        [held] = await asyncio.wait_for(waiting, 30)
        deadline = time.monotonic() + 10
        taken = []
        while not taken and time.monotonic() < deadline:
            taken = await other.dequeue([queue], 1, wait=0)
            if not taken:
                await asyncio.sleep(0.1)
        assert [d.body for d in taken] == [b"late"], "SQS never handed the message out again"
        assert await slow.ack([held]) == [], "the driver still thought it held the lease"
        await other.ack(taken)
    finally:
        await asyncio.to_thread(relay.close)


async def test_visibility_asked_for_stays_within_the_12_hour_cap(make_sqs: MakeSQS, queue: str) -> None:
    """A lease at SQS's 12-hour cap: the long poll's 2 s margin comes out of the local lease,
    not on top of the visibility SQS would refuse."""
    driver = await make_sqs(lease_seconds=43200, wait_time_seconds=1)
    asked: list[int] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        asked.append(params["VisibilityTimeout"])

    driver._client.meta.events.register("provide-client-params.sqs.ReceiveMessage", capture)
    assert await driver.dequeue([queue], 1, wait=1.5) == []  # a short poll, then a long one
    assert len(asked) >= 2 and set(asked) == {43200}


async def test_extend_stops_with_a_clear_error_at_the_12_hour_cap(
    sqs: SQSDriver, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    await sqs.enqueue(queue, b"long")
    [got] = await sqs.dequeue([queue], 1, wait=2)
    assert await sqs.extend([got], 60) == [got]
    sqs._leases[got.token].received -= 12 * 3600  # as if received 12 hours ago
    with caplog.at_level(logging.ERROR, "asynctasq.drivers.sqs"):
        assert await sqs.extend([got], 60) == []
    assert "12 hours" in caplog.text and got.id in caplog.text


async def test_competing_consumers_get_each_message_once(make_sqs: MakeSQS, queue: str) -> None:
    """Six consumers, receiving (short and long polls) and deleting at the same moments, get
    each of 600 delayed messages once, and nothing comes back after its ack. It failed on
    moto 5.2.5 as shipped, whose receive and delete are not thread-safe (the delayed storm of
    the chaos suite ran tasks twice); the test server fixes that (tests/backends/sqs_backend)."""
    n, lease_s = 600, 2.0
    producer = await make_sqs()
    consumers = [await make_sqs(lease_seconds=lease_s, wait_time_seconds=1) for _ in range(6)]
    await producer.enqueue_many([EnqueueItem(queue, f"m{i}".encode(), 1.0) for i in range(n)])
    seen: Counter[bytes] = Counter()
    quiet_until = [time.monotonic() + 60]

    async def consume(driver: SQSDriver, wait: float) -> None:
        while time.monotonic() < quiet_until[0]:
            got = await driver.dequeue([queue], 10, wait=wait)
            seen.update(d.body for d in got)
            if got:
                assert await driver.ack(got) == got
            if len(seen) == n and quiet_until[0] > time.monotonic() + lease_s + 1.5:
                quiet_until[0] = time.monotonic() + lease_s + 1.5  # a deleted message would be back

    await asyncio.wait_for(
        asyncio.gather(*(consume(c, 0.0 if i % 2 else 1.0) for i, c in enumerate(consumers))), 90
    )
    assert len(seen) == n
    assert [body for body, count in seen.items() if count > 1] == []
    assert (await producer.stats([queue]))[queue] == {"ready": 0, "delayed": 0, "leased": 0, "failed": 0}


# -- round trips --------------------------------------------------------------------------------


async def test_batches_of_ten(sqs: SQSDriver, queue: str) -> None:
    await sqs.enqueue(queue, b"warm-up")  # resolves the queue URL, once
    [warm] = await sqs.dequeue([queue], 1, wait=2)
    await sqs.ack([warm])
    calls = sqs_backend.count_calls(sqs)
    await sqs.enqueue_many([EnqueueItem(queue, str(i).encode()) for i in range(25)])
    got = await sqs.dequeue([queue], 25, wait=2)
    assert len(got) == 25
    assert len(await sqs.extend(got, 30)) == 25
    assert len(await sqs.ack(got)) == 25
    assert dict(calls) == {
        "SendMessageBatch": 3,
        "ReceiveMessage": 3,
        "ChangeMessageVisibilityBatch": 3,
        "DeleteMessageBatch": 3,
    }


async def test_idle_dequeue_long_polls_instead_of_polling(make_sqs: MakeSQS) -> None:
    """Like a worker's fetch loop (dequeue with a short wait, again and again) on 3 queues:
    one long poll per queue in flight, not a call per queue per dequeue."""
    driver = await make_sqs(wait_time_seconds=2)
    queues = [f"idle{i}" for i in range(3)]
    for q in queues:
        await driver._url(q)
    calls = sqs_backend.count_calls(driver)
    started = time.monotonic()
    while time.monotonic() - started < 5:
        assert await driver.dequeue(queues, 10, wait=0.5) == []
    # first dequeue: 1 short poll per queue; then a 2 s long poll per queue: at most 3 each in 5 s
    assert 3 + 6 <= calls["ReceiveMessage"] <= 3 + 9, calls
    # and a message that arrives is picked up by the long poll in flight, at once
    producer = await make_sqs()
    await producer.enqueue(queues[2], b"wake")
    started = time.monotonic()
    got = await driver.dequeue(queues, 10, wait=5)
    assert [d.body for d in got] == [b"wake"] and time.monotonic() - started < 1.5
    await driver.ack(got)


async def test_disconnect_gives_back_prefetched_messages_uncounted(make_sqs: MakeSQS, queue: str) -> None:
    a, b = await make_sqs(), await make_sqs()
    assert await a.dequeue([queue], 5, wait=0.2) == []  # leaves a long poll in flight
    await b.enqueue_many([EnqueueItem(queue, b"1"), EnqueueItem(queue, b"2")])
    await wait_for(lambda: bool(a._buffers.get(queue)), timeout=5)
    await a.disconnect()
    got = await b.dequeue([queue], 5, wait=2)
    assert sorted(d.body for d in got) == [b"1", b"2"]
    assert all(d.delivery_count == 1 for d in got)
    await b.ack(got)


async def test_prefetched_messages_keep_their_lease(make_sqs: MakeSQS, queue: str) -> None:
    """What a long poll brought beyond the free slots is extended with the held ones, so it is
    not handed out again (counted) while the worker is busy."""
    a, b = await make_sqs(lease_seconds=2), await make_sqs()
    assert await a.dequeue([queue], 5, wait=0.2) == []  # a long poll for 5 is in flight
    await b.enqueue_many([EnqueueItem(queue, str(i).encode()) for i in range(3)])
    await wait_for(lambda: len(a._buffers.get(queue, ())) == 3, timeout=5)
    held = await a.dequeue([queue], 1, wait=0)
    assert len(held) == 1
    until = time.monotonic() + 4
    while time.monotonic() < until:  # the worker's heartbeat, at a third of the lease
        assert await a.extend(held) == held
        await asyncio.sleep(0.6)
    assert await b.dequeue([queue], 5, wait=0) == []
    rest = await a.dequeue([queue], 5, wait=0)
    assert sorted(d.body for d in held + rest) == [b"0", b"1", b"2"]
    assert all(d.delivery_count == 1 for d in rest)
    assert len(await a.ack(held + rest)) == 3


async def test_disconnect_ends_a_blocked_dequeue(make_sqs: MakeSQS, queue: str) -> None:
    driver = await make_sqs()
    waiting = asyncio.create_task(driver.dequeue([queue], 1, wait=30))
    await asyncio.sleep(0.3)  # blocked in its wait
    started = time.monotonic()
    await driver.disconnect()
    with pytest.raises(BrokerError, match="disconnected"):
        await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - started < 2


async def test_error_text_is_made_safe_for_sqs(sqs: SQSDriver, queue: str) -> None:
    await sqs.enqueue(queue, b"x")
    [got] = await sqs.dequeue([queue], 1, wait=2)
    assert await sqs.fail(got, "\x00\x1b[31mboom\ufffe é") is True
    await sqs.enqueue(queue, b"y")
    [other] = await sqs.dequeue([queue], 1, wait=2)
    assert await sqs.fail(other, "Traceback..." + "x" * 20_000 + "ValueError: the end") is True
    by_body = {e["body"]: e["error"] for e in await sqs.failed_list(queue)}
    assert by_body[b"x"] == "??[31mboom? é"
    assert by_body[b"y"].endswith("ValueError: the end") and len(by_body[b"y"].encode()) <= 8192


# -- capabilities -------------------------------------------------------------------------------


async def test_no_results_registry_or_commands(sqs: SQSDriver) -> None:
    for call in (
        sqs.get_result("x", wait=0),
        sqs.store_results([("x", b"r")], 60),
        sqs.list_workers(),
        sqs.register_worker({"name": "w"}, 30),
        sqs.send_command("w", {"command": "shutdown"}),
        sqs.receive_commands("w"),
        sqs.migrate(),
    ):
        with pytest.raises(UnsupportedOperation, match="sqs driver does not support"):
            await call


async def test_redrive_dead_letter_queue_is_the_failed_registry(sqs: SQSDriver, namespace: str) -> None:
    queue, dlq = "withdlq", "mydlq"
    async with raw_client() as client:
        dlq_url = (await client.create_queue(QueueName=f"{namespace}-{dlq}"))["QueueUrl"]
        arn = (await client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"]))["Attributes"]
        policy = json.dumps({"deadLetterTargetArn": arn["QueueArn"], "maxReceiveCount": "10"})
        await client.create_queue(QueueName=f"{namespace}-{queue}", Attributes={"RedrivePolicy": policy})
    await sqs.enqueue(queue, b"doomed")
    [got] = await sqs.dequeue([queue], 1, wait=2)
    assert await sqs.fail(got, "boom") is True
    assert await sqs._failed_url(queue) == dlq_url
    [entry] = await sqs.failed_list(queue)
    assert (entry["body"], entry["error"], entry["queue"]) == (b"doomed", "boom", queue)
    assert await sqs.failed_requeue(queue=queue) == 1
    [back] = await sqs.dequeue([queue], 1, wait=2)
    assert back.body == b"doomed" and back.id == got.id
    await sqs.ack([back])


# -- a broker that goes away --------------------------------------------------------------------


async def test_reconnects_when_the_server_returns(namespace: str, queue: str) -> None:
    try:
        port = sqs_backend.free_port()
        server = sqs_backend.start_moto(port)
    except ServiceUnavailable as exc:
        unavailable(str(exc))
        raise
    url = f"http://127.0.0.1:{port}"
    options: dict[str, Any] = {
        "endpoint_url": url,
        "queue_url_prefix": f"{url}/{sqs_backend.ACCOUNT}/{namespace}-",
        "create_queues": True,
        "reconnect_timeout": 30,
        **sqs_backend.CREDENTIALS,
    }
    producer, consumer = SQSDriver(**options), SQSDriver(**options)
    await producer.connect()
    await consumer.connect()
    try:
        await producer.enqueue(queue, b"before")
        assert [d.body for d in await consumer.dequeue([queue], 1, wait=2)] == [b"before"]
        waiting = asyncio.create_task(consumer.dequeue([queue], 1, wait=30))
        await asyncio.sleep(0.3)  # blocked in a long poll
        server.kill()
        server.wait(10)
        sending = asyncio.create_task(producer.enqueue(queue, b"during"))
        await asyncio.sleep(0.5)  # both retry against the dead port
        assert not sending.done() and not waiting.done()
        server = sqs_backend.start_moto(port)  # a new, empty server: the queue comes back
        await asyncio.wait_for(sending, 20)
        [got] = await asyncio.wait_for(waiting, 30)
        assert got.body == b"during"
        assert await consumer.ack([got]) == [got]
    finally:
        await producer.disconnect()
        await consumer.disconnect()
        if server.poll() is None:
            server.kill()
            server.wait(10)


async def test_worker_without_results_runs_tasks(sqs: SQSDriver, caplog: pytest.LogCaptureFixture) -> None:
    """Results on, as by default: the worker skips storing them (SQS has none), runs no
    registry loop, and a caller asking for a result is told clearly."""
    from asynctasq.core.worker import Worker
    from tests.cli_tasks import add

    task_id = await add(2, 2).dispatch(driver=sqs)
    worker = Worker(sqs, queues=["default"], max_tasks=1, results_ttl=60, install_signal_handlers=False)
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(worker.start(), 30)
    assert worker.succeeded == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    with pytest.raises(UnsupportedOperation, match="results"):
        await sqs.get_result(task_id, wait=0)
    assert (await sqs.stats(["default"]))["default"] == {"ready": 0, "delayed": 0, "leased": 0, "failed": 0}


async def test_dead_broker_is_a_clear_error_without_secrets(queue: str) -> None:
    """An endpoint never reached fails connect() at once, in one line (no botocore retries,
    no reconnect budget: that is for an endpoint that goes away after it answered)."""
    port = sqs_backend.free_port()  # nothing listens there
    driver = SQSDriver(
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="do-not-show-me",
    )
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=rf"cannot reach SQS at http://127.0.0.1:{port}") as caught:
        await driver.connect()
    assert time.monotonic() - started < 2.0
    assert "do-not-show-me" not in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(BrokerError, match="not connected"):
        await driver.enqueue(queue, b"x")


async def test_bad_credentials_fail_at_connect(namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials SQS refuses fail connect() in one line. moto takes any key, so its answer to
    a bad one (InvalidClientTokenId) is put in place of the real call here."""
    import aiobotocore.client
    from botocore.exceptions import ClientError

    original = aiobotocore.client.AioBaseClient._make_api_call

    async def refusing(self: Any, operation: str, params: Any) -> Any:
        if operation == "ListQueues":
            error = {"Error": {"Code": "InvalidClientTokenId", "Message": "The security token is invalid."}}
            raise ClientError(error, operation)  # type: ignore[arg-type]
        return await original(self, operation, params)

    monkeypatch.setattr(aiobotocore.client.AioBaseClient, "_make_api_call", refusing)
    driver = SQSDriver(**sqs_backend.options(namespace))
    with pytest.raises(BrokerError, match="does not accept the AWS credentials"):
        await driver.connect()
    assert driver._client is None


# -- worker processes ---------------------------------------------------------------------------


@pytest.fixture
async def worker_env(make_sqs: MakeSQS, namespace: str) -> AsyncIterator[tuple[SQSDriver, dict[str, str]]]:
    driver = await make_sqs()
    settings = sqs_backend.driver_config(namespace)
    asynctasq.configure(**settings)
    try:
        yield driver, {env_name(k): str(v) for k, v in settings.items()}
    finally:
        asynctasq.configure(driver="memory")


async def test_sigterm_gives_back_without_using_an_attempt(
    worker_env: tuple[SQSDriver, dict[str, str]], tmp_path: Path
) -> None:
    from tests.cli_tasks import mark

    driver, env = worker_env
    await asynctasq.dispatch_many([mark(f"slow{i}", 60) for i in range(3)], driver=driver)
    worker = start_worker(env, tmp_path / "marks", "--concurrency", "3", "--shutdown-timeout", "1")
    try:

        async def running() -> bool:
            return (await driver.stats(["default"]))["default"]["leased"] == 3

        await wait_for(running, timeout=30, interval=0.1)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0, logs(tmp_path / "marks")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    got = await driver.dequeue(["default"], 10, wait=3)
    assert len(got) == 3
    assert [d.delivery_count for d in got] == [1, 1, 1], "the give-back must not raise the count"
    assert [Envelope.decode(d.body).attempt for d in got] == [1, 1, 1]
    await driver.ack(got)


async def test_worker_in_a_long_poll_stops_within_a_second(
    worker_env: tuple[SQSDriver, dict[str, str]], tmp_path: Path
) -> None:
    _, env = worker_env
    marks = tmp_path / "marks"
    worker = start_worker(env, marks, "--queues", "high,default", "--log-level", "INFO")
    try:
        await wait_for(lambda: "listening on" in logs(marks), timeout=30, interval=0.05)
        await asyncio.sleep(1.0)  # its first dequeue found nothing: 20 s long polls are in flight
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0, logs(marks)
        stopped_s = time.monotonic() - started
        print(f"stopped {stopped_s:.2f}s after SIGTERM")
        assert stopped_s < 1.5
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


async def test_the_documented_command_line_runs_a_worker(
    worker_env: tuple[SQSDriver, dict[str, str]],
) -> None:
    """The flags of docs/drivers/sqs.md (no ASYNCTASQ_* variables), against the test server."""
    from tests.cli_tasks import add

    driver, env = worker_env
    await asynctasq.dispatch_many([add(1, 2), add(2, 3).on_queue("emails")], driver=driver)
    args = [
        "--driver", "sqs",
        "--sqs-region", sqs_backend.REGION,
        "--sqs-queue-url-prefix", env["ASYNCTASQ_SQS_QUEUE_URL_PREFIX"],
        "--sqs-endpoint-url", env["ASYNCTASQ_SQS_ENDPOINT_URL"],
        "--sqs-create-queues",
        "--aws-access-key-id", "testing",
        "--aws-secret-access-key", "testing",
        "--queues", "default,emails",
    ]  # fmt: skip
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    done = subprocess.run(
        [sys.executable, "-m", "asynctasq", "worker", *args, "--import", "tests.cli_tasks", "--burst"],
        cwd=ROOT,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "add 1+2=3" in done.stdout and "add 2+3=5" in done.stdout
    assert "testing" not in done.stderr
