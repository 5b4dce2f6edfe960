"""RabbitMQ driver behaviour beyond the conformance suite, on the real broker (127.0.0.1:5672).

The broker-restart test (``rabbitmqctl stop_app``/``start_app``) runs in CI
(``ASYNCTASQ_REQUIRE_SERVICES=1``) or with ``ASYNCTASQ_CHAOS_TESTS=1``: elsewhere it would
interrupt other users of a shared broker. It always brings the broker back.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiormq", reason="the rabbitmq tests need aio-pika (pip install asynctasq[rabbitmq])")

import asynctasq
from asynctasq.config import Config, env_name
from asynctasq.core.driver_factory import DriverFactory
from asynctasq.drivers.base import EnqueueItem
from asynctasq.drivers.rabbitmq import (
    DELAY_LEVELS,
    DUE_HEADER,
    RabbitMQDriver,
    delay_bits,
    delay_routing_key,
)
from asynctasq.errors import BrokerError, BrokerUnavailable, MessageTooLarge, SchemaError
from tests.backends import services_required
from tests.backends.rabbitmq_backend import (
    RABBITMQ_URL,
    _heal_dead_letter_supervisor,
    check_rabbitmq,
    cleanup,
    driver_config,
    remember,
)
from tests.conftest import wait_for
from tests.drivers.test_conformance import take
from tests.test_crash_recovery import logs, read_marks, start_worker

MakeDriver = Callable[..., Awaitable[RabbitMQDriver]]


@pytest.fixture
async def make(namespace: str) -> AsyncIterator[MakeDriver]:
    from tests.backends import ServiceUnavailable, unavailable

    try:
        check_rabbitmq()
    except ServiceUnavailable as exc:
        unavailable(str(exc))
    made: list[RabbitMQDriver] = []

    async def factory(**options: Any) -> RabbitMQDriver:
        options.setdefault("prefix", namespace)
        driver = RabbitMQDriver(url=options.pop("url", RABBITMQ_URL), **options)
        made.append(driver)
        await driver.connect()
        return driver

    yield factory
    prefixes = {namespace}
    for driver in made:
        remember(driver.prefix, *driver.queues_seen)
        prefixes.add(driver.prefix)
        try:
            await driver.disconnect()
        except Exception:  # noqa: BLE001 - teardown must reach cleanup
            pass
    for prefix in sorted(prefixes):
        await cleanup(prefix)


def rabbitmqctl(*args: str) -> str:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not on PATH")
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def close_from_broker(driver: RabbitMQDriver) -> None:
    """Have the broker close ``driver``'s connection (as a network cut or a node restart would)."""
    out = rabbitmqctl("list_connections", "pid", "client_properties", "--quiet", "--no-table-headers")
    names = (f'"{driver.connection_name}"', f'"{driver.connection_name} consumer"')
    pids = [line.split()[0] for line in out.splitlines() if any(n in line for n in names)]
    assert len(pids) == 2, out  # its publishing and its consuming connection
    for pid in pids:
        rabbitmqctl("close_connection", pid, "asynctasq test: connection cut")


# -- settings and bad input ----------------------------------------------------------------


def test_bad_settings_are_refused_and_passwords_never_shown() -> None:
    with pytest.raises(ValueError, match="amqp://"):
        RabbitMQDriver(url="http://guest:s3cret@localhost/")
    with pytest.raises(ValueError, match="queue_type"):
        RabbitMQDriver(queue_type="stream")
    with pytest.raises(ValueError, match="prefetch"):
        RabbitMQDriver(prefetch=0)
    driver = RabbitMQDriver(url="amqps://app:s3cret@rabbit.example:5671/prod")
    assert "s3cret" not in driver.describe() and "s3cret" not in repr(driver)
    assert "rabbit.example" in driver.describe()


def test_config_settings_reach_the_driver() -> None:
    config = Config(
        driver="rabbitmq",
        rabbitmq_url="amqp://guest:guest@127.0.0.1:5672/",
        rabbitmq_prefix="cfgtest",
        rabbitmq_queue_type="classic",
        rabbitmq_prefetch=7,
        rabbitmq_consumer_timeout_s=7200,
        lease_seconds=12,
    )
    driver = DriverFactory.create_from_config(config)
    assert isinstance(driver, RabbitMQDriver)
    assert (driver.prefix, driver.queue_type, driver.prefetch) == ("cfgtest", "classic", 7)
    assert driver.consumer_timeout_s == 7200 and driver.lease_seconds == 12
    from_env = Config(_environ={"ASYNCTASQ_DRIVER": "rabbitmq", "ASYNCTASQ_RABBITMQ_QUEUE_TYPE": "quorum"})
    assert from_env.rabbitmq_queue_type == "quorum"
    assert isinstance(DriverFactory.from_url("amqps://u:p@h:5671/v"), RabbitMQDriver)


async def test_unreachable_broker_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed
    driver = RabbitMQDriver(url=f"amqp://guest:s3cret@127.0.0.1:{port}/", reconnect_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        await driver.connect()
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "start RabbitMQ" in message and "s3cret" not in message
    await driver.disconnect()


async def test_wrong_credentials_are_a_clear_error(make: MakeDriver) -> None:
    with pytest.raises(BrokerError) as info:
        await make(url="amqp://guest:not-the-password@127.0.0.1:5672/", reconnect_timeout_s=2)
    assert "credentials" in str(info.value) and "not-the-password" not in str(info.value)


async def test_oversized_messages_are_refused_before_the_broker(make: MakeDriver, queue: str) -> None:
    driver = await make(max_message_bytes=1000)
    with pytest.raises(MessageTooLarge, match="1,001 bytes"):
        await driver.enqueue(queue, b"x" * 1001)
    with pytest.raises(MessageTooLarge):
        await driver.enqueue_many([EnqueueItem(queue, b"ok"), EnqueueItem(queue, b"x" * 5000)])
    assert await driver.dequeue([queue], 10, wait=0.3) == [], "nothing of a refused batch is stored"
    await driver.enqueue(queue, b"x" * 1000)
    [got] = await take(driver, [queue], 1)
    with pytest.raises(MessageTooLarge):
        await driver.release(got, body=b"y" * 1001)
    assert len(await driver.ack([got])) == 1, "a refused retry leaves the lease untouched"


async def test_default_limit_fits_rabbitmq_4() -> None:
    assert RabbitMQDriver().max_message_bytes < 16 * 1024 * 1024


async def test_queue_type_mismatch_is_a_schema_error(make: MakeDriver, queue: str) -> None:
    classic = await make(queue_type="classic")
    await classic.enqueue(queue, b"x")
    with pytest.raises(SchemaError, match="queue-type"):
        await make(queue_type="quorum")


async def test_a_refused_declare_costs_no_leases(make: MakeDriver, queue: str) -> None:
    quorum = await make()
    classic = await make(queue_type="classic", prefix=quorum.prefix + "c")
    await quorum.enqueue(queue, b"held")
    [held] = await take(quorum, [queue], 1)
    other = f"{queue}-x"
    # a queue that exists with another type, in the quorum driver's namespace
    import aiormq

    conn = aiormq.Connection(RABBITMQ_URL)
    await conn.connect()
    try:
        channel = await conn.channel()
        await channel.queue_declare(
            f"{quorum.prefix}/q/{other}", durable=True, arguments={"x-queue-type": "classic"}
        )
    finally:
        await conn.close()
    remember(quorum.prefix, other)
    with pytest.raises(SchemaError, match=other):
        await quorum.enqueue(other, b"refused")
    assert len(await quorum.ack([held])) == 1, "the refused declare left the consumer channel alone"
    await classic.enqueue(queue, b"fine")


async def test_consumer_parser_reads_frames_split_anywhere() -> None:
    """The consumer connection's own parser, fed the frames of two deliveries a byte at a time
    (and then all at once): ids, headers, counts, multi-frame bodies and tags come out whole."""
    import pamqp.frame
    from pamqp import commands as spec
    from pamqp.body import ContentBody
    from pamqp.header import ContentHeader

    from asynctasq.drivers._amqp import ConsumerConnection, Msg

    def frames(tag: int, body: bytes, **props: Any) -> bytes:
        out = pamqp.frame.marshal(spec.Basic.Deliver("ctag", tag, tag == 7, "", "p/q/x"), 1)
        header = ContentHeader(0, len(body), spec.Basic.Properties(**props))
        out += pamqp.frame.marshal(header, 1)
        for i in range(0, len(body), 1000):  # bodies split over several frames, as frame_max does
            out += pamqp.frame.marshal(ContentBody(body[i : i + 1000]), 1)
        return out

    wire = frames(7, b"a" * 2500, message_id="m-1", delivery_mode=2, headers={"x-delivery-count": 2})
    wire += frames(8, b"", content_type="application/x", message_id="m-2", correlation_id="c", headers={})
    for chunks in ([wire[i : i + 1] for i in range(len(wire))], [wire]):
        got: list[Msg] = []
        conn = ConsumerConnection(on_cancel=lambda tag: None, on_closed=lambda exc: None)
        conn._consumers["ctag"] = got.append
        for chunk in chunks:
            conn.data_received(chunk)
        assert [(m.tag, m.message_id, m.body, m.redelivered) for m in got] == [
            (7, "m-1", b"a" * 2500, True),
            (8, "m-2", b"", False),
        ]
        assert got[0].headers == {"x-delivery-count": 2} and got[1].headers == {}
        assert not conn._buf, "nothing left over"


# -- delays --------------------------------------------------------------------------------


def test_delay_ladder_arithmetic() -> None:
    assert delay_bits(0) == 1 and delay_bits(0.0004) == 1
    assert delay_bits(1.0) == 1000
    assert delay_bits(1.001) == 1004, "kept to 8 significant bits, rounded up"
    for seconds in (0.3, 7.77, 3600, 86400 * 30):
        ms = delay_bits(seconds)
        assert seconds * 1000 <= ms <= seconds * 1000 * 1.004 + 1
        assert bin(ms).count("1") <= 9
    assert delay_bits(10**9) == (1 << DELAY_LEVELS) - 1
    key = delay_routing_key(5, "a.b")
    assert key.split(".")[-2:] == ["a", "b"] and key.split(".")[DELAY_LEVELS - 3 : DELAY_LEVELS] == [
        "1",
        "0",
        "1",
    ]


async def test_short_delay_overtakes_a_long_one(make: MakeDriver, queue: str) -> None:
    driver = await make()
    await driver.enqueue(queue, b"long", delay=4.0)
    await driver.enqueue(queue, b"short", delay=0.3)
    started = time.monotonic()
    [first] = await take(driver, [queue], 1)
    assert first.body == b"short" and time.monotonic() - started < 3, "no head-of-line blocking"
    [second] = await take(driver, [queue], 1)
    assert second.body == b"long" and time.monotonic() - started >= 3.0
    assert second.delivery_count == 1
    await driver.ack([first, second])


async def test_delay_past_the_ladder_goes_round_again(make: MakeDriver, queue: str) -> None:
    driver = await make()
    await driver.enqueue(queue, b"warm-up")
    [warm] = await take(driver, [queue], 1)
    await driver.ack([warm])
    due = int(time.time() * 1000) + 2500  # what a message due in 60 days carries, 2.5 s away
    await driver._publish(queue, b"far", uuid.uuid4().hex, {DUE_HEADER: due})
    assert await driver.dequeue([queue], 1, wait=1.5) == [], "not before its due time"
    [far] = await take(driver, [queue], 1, timeout=10)
    assert far.body == b"far" and time.time() * 1000 >= due - 50
    await driver.ack([far])


# -- leases, fencing, counts ---------------------------------------------------------------


async def test_connection_loss_fences_old_tokens(make: MakeDriver, queue: str) -> None:
    a, b = await make(), await make()
    await a.enqueue(queue, b"job")
    [old] = await take(a, [queue], 1)
    close_from_broker(a)
    [new] = await take(b, [queue], 1)
    assert new.id == old.id and new.token != old.token
    assert new.delivery_count == 2, "the broker's own count shows the lost delivery"
    assert await a.ack([old]) == [] and await a.extend([old]) == [] and await a.release(old) is False
    # a reconnects by itself; its old tag must not touch what it receives now
    await a.enqueue(queue, b"second")
    [fresh] = await take(a, [queue], 1)
    assert await a.ack([old]) == []
    assert len(await a.ack([fresh])) == 1
    assert len(await b.ack([new])) == 1


async def test_prefetched_messages_go_back_uncounted_on_disconnect(make: MakeDriver, queue: str) -> None:
    a, b = await make(prefetch=10), await make()
    await a.enqueue_many([EnqueueItem(queue, str(i).encode()) for i in range(5)])
    [one] = await a.dequeue([queue], 1, wait=2)  # the other four arrive in a's buffer
    assert await a.release(one) is True
    await a.disconnect()
    got = await take(b, [queue], 5)
    assert sorted(d.body for d in got) == [str(i).encode() for i in range(5)]
    assert [d.delivery_count for d in got] == [1] * 5, "neither a give-back nor a prefetch costs an attempt"
    await b.ack(got)


async def test_counts_survive_give_backs_and_crashes(make: MakeDriver, queue: str) -> None:
    for queue_type in ("quorum", "classic"):
        q = f"{queue}-{queue_type}"
        a = await make(queue_type=queue_type, prefix=f"{queue_type[:2]}{uuid.uuid4().hex[:8]}")
        await a.enqueue(q, b"job")
        [first] = await take(a, [q], 1)
        close_from_broker(a)  # lost: counted
        [second] = await take(a, [q], 1)
        assert second.delivery_count == 2, queue_type
        assert await a.release(second) is True  # give-back: not counted
        [third] = await take(a, [q], 1)
        assert third.delivery_count == 2, queue_type
        assert await a.release(third, body=b"retry") is True  # retry: a new message
        [fourth] = await take(a, [q], 1)
        assert (fourth.body, fourth.delivery_count, fourth.id) == (b"retry", 1, first.id)
        assert len(await a.ack([fourth])) == 1


async def test_dequeue_without_wait_sees_messages_on_their_way(make: MakeDriver, queue: str) -> None:
    """A burst worker asks with wait=0: "none" must mean the queue is empty, not that the next
    deliveries are still in flight after an ack."""
    driver = await make()
    await driver.enqueue_many([EnqueueItem(queue, str(i).encode()) for i in range(50)])
    seen: list[bytes] = []
    while len(seen) < 50:
        got = await driver.dequeue([queue], 10, wait=0)
        assert got, f"'none' after {len(seen)} of 50"
        seen += [d.body for d in got]
        assert len(await driver.ack(got)) == len(got)
    assert seen == [str(i).encode() for i in range(50)]
    assert await driver.dequeue([queue], 10, wait=0) == []


async def test_acks_of_one_batch_take_one_frame(make: MakeDriver, queue: str) -> None:
    driver = await make()
    await driver.enqueue_many([EnqueueItem(queue, str(i).encode()) for i in range(50)])
    got = await take(driver, [queue], 50)
    assert len(await driver.ack(got[10:20])) == 10  # not the lowest tags: one frame each
    assert len(await driver.ack(got[:10] + got[20:])) == 40  # every unacked tag: one frame
    assert await driver.dequeue([queue], 10, wait=0.3) == []
    other = await make()
    assert await other.dequeue([queue], 10, wait=0.3) == [], "every ack reached the broker"


async def test_consumer_timeout_argument_is_accepted(make: MakeDriver, queue: str) -> None:
    driver = await make(consumer_timeout_s=6 * 3600)
    await driver.enqueue(queue, b"long task")
    [got] = await take(driver, [queue], 1)
    assert len(await driver.ack([got])) == 1


async def test_failed_entries_keep_their_order_and_origin(make: MakeDriver) -> None:
    driver = await make()
    qa, qb = "fa-" + uuid.uuid4().hex[:6], "fb-" + uuid.uuid4().hex[:6]
    await driver.enqueue_many([EnqueueItem(qa, b"a"), EnqueueItem(qb, b"b")])
    got = await take(driver, [qa, qb], 2)
    for d in got:
        assert await driver.fail(d, f"boom {d.queue}") is True
    everything = await driver.failed_list()
    assert [(e["queue"], e["error"]) for e in everything] == [(qa, f"boom {qa}"), (qb, f"boom {qb}")]
    assert await driver.failed_requeue(queue=qb) == 1
    [back] = await take(driver, [qb], 1)
    assert back.body == b"b" and back.delivery_count == 1
    await driver.ack([back])
    assert await driver.failed_purge() == 1
    assert await driver.failed_list() == []


# -- the broker restarts -------------------------------------------------------------------


def _chaos_allowed() -> bool:
    return services_required() or os.environ.get("ASYNCTASQ_CHAOS_TESTS", "") not in ("", "0")


async def _port_open(host: str = "127.0.0.1", port: int = 5672) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    return True


@pytest.mark.skipif(not _chaos_allowed(), reason="restarts the broker: set ASYNCTASQ_CHAOS_TESTS=1 (CI does)")
async def test_broker_restart_mid_run_loses_nothing(namespace: str, tmp_path: Path) -> None:
    """A worker process runs through ``rabbitmqctl stop_app`` / ``start_app``: every task ends."""
    check_rabbitmq()
    settings = driver_config(namespace)
    env = {env_name(k): str(v) for k, v in settings.items()}
    asynctasq.configure(**settings)
    producer = RabbitMQDriver(url=RABBITMQ_URL, prefix=namespace)
    await producer.connect()
    marks = tmp_path / "marks.txt"
    n = 60
    worker = None
    stopped = False
    done_before_restart = n
    try:
        from tests.cli_tasks import mark

        await asynctasq.dispatch_many([mark(f"r{i}", 0.3) for i in range(n)], driver=producer)
        remember(namespace, *producer.queues_seen)
        worker = start_worker(env, marks, "--concurrency", "4")
        await wait_for(lambda: len(read_marks(marks)) >= 5, timeout=60)
        stopped = True
        rabbitmqctl("stop_app")
        done_before_restart = len(set(read_marks(marks)))
        await asyncio.sleep(1.0)  # the outage itself
        rabbitmqctl("start_app")
        stopped = False
        await wait_for(_port_open, timeout=60, interval=0.2)
        await wait_for(lambda: len(set(read_marks(marks))) == n, timeout=120, interval=0.2)
    finally:
        if stopped:
            subprocess.run(["rabbitmqctl", "start_app"], capture_output=True, timeout=120)
        deadline = time.monotonic() + 60
        while not await _port_open() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        asynctasq.configure(driver="memory")
        await producer.disconnect()
        await cleanup(namespace)
        await asyncio.to_thread(_heal_dead_letter_supervisor)
    counts = Counter(read_marks(marks))
    assert done_before_restart < n, "the broker went away mid-run"
    assert set(counts) == {f"r{i}" for i in range(n)}, logs(marks)
    assert "reconnecting" in logs(marks), "the worker saw the outage"
    assert worker.returncode == 0, logs(marks)


async def test_a_deleted_queue_cancels_the_consumer_and_work_resumes(make: MakeDriver, queue: str) -> None:
    import aiormq

    driver = await make()
    await driver.enqueue(queue, b"doomed")
    [held] = await take(driver, [queue], 1)
    conn = aiormq.Connection(RABBITMQ_URL)
    await conn.connect()
    try:
        channel = await conn.channel()
        await channel.queue_delete(f"{driver.prefix}/q/{queue}")
    finally:
        await conn.close()

    async def fenced() -> bool:
        return await driver.extend([held]) == []

    await wait_for(fenced, timeout=10)
    assert await driver.ack([held]) == [], "the deleted queue's delivery is no longer ours"
    await driver.enqueue(queue, b"after")  # declares the queue again
    [after] = await take(driver, [queue], 1)
    assert after.body == b"after"
    assert len(await driver.ack([after])) == 1


# -- regressions of the state machine (tests/test_state_machine.py) -------------------------


async def test_a_shortened_lease_expires_on_time_and_comes_back_to_the_other_consumer(
    make: MakeDriver, queue: str
) -> None:
    """The state machine's lost b'm7': B holds m6 and m7, cuts m7's lease to 50 ms and fails
    m6; m7 must go back (counted) when its shortened lease ends, not when the lease it was
    delivered with would have ended, and A must get it although B's prefetch took it back."""
    a, b = await make(prefetch_hold_s=0.2), await make(prefetch_hold_s=0.2)
    await a.enqueue_many([EnqueueItem(queue, b"m6"), EnqueueItem(queue, b"m7")])
    got = {d.body: d for d in await take(b, [queue], 2)}
    assert await b.extend([got[b"m7"]], 0.05) == [got[b"m7"]]
    await asyncio.sleep(0.25)  # the shortened lease's deadline, not a wait for a condition
    assert await b.ack([got[b"m7"]]) == [], "an expired lease is refused"
    assert await b.fail(got[b"m6"], "boom") is True
    [back] = await take(a, [queue], 1, timeout=5)
    assert (back.body, back.delivery_count) == (b"m7", 2)
    assert await a.ack([back]) == [back]
    stats = (await a.stats([queue]))[queue]
    assert stats == {"ready": 0, "delayed": 0, "leased": 0, "failed": 1}


async def test_prefetched_messages_nobody_asks_for_go_back_to_the_others(
    make: MakeDriver, queue: str
) -> None:
    """The state machine's first find (b'm2'): A takes one message, acks it, and stops asking;
    the broker has meanwhile pushed the next one into A's prefetch. B must still get it, within
    A's prefetch_hold_s, uncounted."""
    a, b = await make(prefetch_hold_s=0.2), await make(prefetch_hold_s=0.2)
    await a.enqueue_many([EnqueueItem(queue, b"m1"), EnqueueItem(queue, b"m2")])
    [first] = await take(a, [queue], 1)
    assert await a.ack([first]) == [first]
    await wait_for(lambda: sum(len(c.buffer) for c in a._consumers.values()) == 1, timeout=5)
    started = time.monotonic()
    [second] = await take(b, [queue], 1, timeout=5)
    assert (second.body, second.delivery_count) == (b"m2", 1)
    assert time.monotonic() - started < 0.2 + 2.0, "back within the hold (and a generous margin)"
    assert await b.ack([second]) == [second]


async def test_a_late_ack_on_a_dead_connection_is_refused(make: MakeDriver, queue: str) -> None:
    """The broker dropped A's connection (as it does after missed heartbeats): A's late ack is
    refused, B gets the task counted, and A's old token can never ack B's delivery."""
    a, b = await make(), await make()
    await a.enqueue(queue, b"t")
    [held] = await take(a, [queue], 1)
    close_from_broker(a)
    [again] = await take(b, [queue], 1, timeout=10)
    assert (again.body, again.delivery_count) == (b"t", 2)
    await wait_for(lambda: a._epoch != int(held.token.split(":")[0]), timeout=10)
    assert await a.ack([held]) == []
    assert await b.ack([again]) == [again]
    # A reconnects: its new channel numbers deliveries from 1 again, under a new epoch
    await a.enqueue(queue, b"u")
    [fresh] = await take(a, [queue], 1)
    assert fresh.token != held.token and fresh.token.endswith(":1")
    assert await a.ack([held]) == [], "an old token never acks the new delivery"
    assert await a.ack([fresh]) == [fresh]


def test_the_consumer_heartbeat_follows_the_lease() -> None:
    assert RabbitMQDriver(lease_seconds=1.0).heartbeat_s == 1
    assert RabbitMQDriver(lease_seconds=30.0).heartbeat_s == 15


async def test_a_batch_of_delayed_messages_declares_the_ladder_once(make: MakeDriver, queue: str) -> None:
    """Every publish of a batch used to declare the ladder itself, concurrently: 5,000 delayed
    tasks took 113 s to dispatch instead of about 2."""
    driver = await make()
    declared: list[int] = []
    real = driver._declare_levels_locked

    async def counting(q: str, top: int) -> None:
        declared.append(top)
        await real(q, top)

    driver._declare_levels_locked = counting  # type: ignore[method-assign]
    await driver.enqueue_many([EnqueueItem(queue, b"d%d" % i, 2.0) for i in range(300)])
    assert declared == [delay_bits(2.0).bit_length() - 1]
    assert (await driver.stats([queue]))[queue]["delayed"] == 300
    got = await take(driver, [queue], 300, timeout=30)
    assert len(got) == 300
    await driver.ack(got)
