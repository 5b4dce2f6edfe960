"""The driver contract, run against every driver on its real broker (see tests/backends)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest

from asynctasq.drivers.base import CAPABILITIES, BaseDriver, Delivery, EnqueueItem
from asynctasq.errors import InvalidQueueName, MessageTooLarge, UnsupportedOperation
from tests.conftest import wait_for

MakeDriver = Callable[..., Awaitable[BaseDriver]]
LEASE_S = 1.0


async def take(driver: BaseDriver, queues: list[str], n: int, timeout: float = 5.0) -> list[Delivery]:
    """Dequeue until ``n`` deliveries arrived (or the deadline passes)."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += await driver.dequeue(queues, n - len(got), wait=min(0.5, max(deadline - time.monotonic(), 0)))
    return got


async def test_roundtrip_keeps_bytes(driver: BaseDriver, queue: str) -> None:
    bodies = [b"\x00\xff\x80binary", "ünïcode".encode(), b"x" * 200_000]
    for body in bodies:
        await driver.enqueue(queue, body)
    got = await take(driver, [queue], 3)
    assert [d.body for d in got] == bodies
    assert all(d.queue == queue and d.delivery_count == 1 and d.token for d in got)
    assert len(await driver.ack(got)) == 3
    assert await driver.dequeue([queue], 10, wait=0) == []


async def test_fifo_and_limit(driver: BaseDriver, queue: str) -> None:
    await driver.enqueue_many([EnqueueItem(queue, str(i).encode()) for i in range(20)])
    first = await driver.dequeue([queue], 5, wait=1)
    assert [d.body for d in first] == [str(i).encode() for i in range(5)]
    rest = await take(driver, [queue], 15)
    assert [d.body for d in rest] == [str(i).encode() for i in range(5, 20)]
    assert len(await driver.ack(first + rest)) == 20


async def test_queue_order_is_priority(driver: BaseDriver) -> None:
    high, low = "high-" + uuid.uuid4().hex[:6], "low-" + uuid.uuid4().hex[:6]
    await driver.enqueue(low, b"low")
    await driver.enqueue(high, b"high")
    got = await take(driver, [high, low], 2)
    assert [d.body for d in got] == [b"high", b"low"]
    await driver.ack(got)


async def test_empty_dequeue_waits_and_wakes_on_enqueue(driver_factory: MakeDriver, queue: str) -> None:
    # fallback polls off: only the broker's signal or the in-process wake-up can end the wait
    consumer, producer = await driver_factory(no_fallback_poll=True), await driver_factory()
    started = time.monotonic()
    assert await consumer.dequeue([queue], 1, wait=0.3) == []
    assert time.monotonic() - started >= 0.25

    async def produce_later() -> None:
        await asyncio.sleep(0.2)
        await producer.enqueue(queue, b"late")

    producing = asyncio.create_task(produce_later())
    started = time.monotonic()
    got = await consumer.dequeue([queue], 1, wait=10)
    elapsed = time.monotonic() - started
    await producing
    assert [d.body for d in got] == [b"late"]
    assert elapsed < 2, "the blocked dequeue should wake up on enqueue, not sit out its wait"
    await consumer.ack(got)


async def test_given_back_and_requeued_messages_wake_a_blocked_consumer(
    driver_factory: MakeDriver, queue: str
) -> None:
    consumer, holder = await driver_factory(no_fallback_poll=True), await driver_factory()
    await holder.enqueue(queue, b"held")
    [held] = await take(holder, [queue], 1)

    async def give_back_later() -> None:
        await asyncio.sleep(0.2)
        assert await holder.release(held) is True

    giving = asyncio.create_task(give_back_later())
    started = time.monotonic()
    got = await consumer.dequeue([queue], 1, wait=10)
    await giving
    assert [d.body for d in got] == [b"held"] and time.monotonic() - started < 2
    assert len(await consumer.ack(got)) == 1


async def test_competing_consumers_split_without_duplicates(driver_factory: MakeDriver, queue: str) -> None:
    a, b = await driver_factory(), await driver_factory()
    n = 200
    await a.enqueue_many([EnqueueItem(queue, str(i).encode()) for i in range(n)])
    seen: list[bytes] = []

    async def consume(driver: BaseDriver) -> None:
        while True:
            got = await driver.dequeue([queue], 7, wait=0.2)
            if not got:
                return
            seen.extend(d.body for d in got)
            assert len(await driver.ack(got)) == len(got)

    await asyncio.gather(consume(a), consume(b))
    if a.fencing:
        assert sorted(seen) == sorted(str(i).encode() for i in range(n))
    else:  # at-least-once without broker-side fencing (an SQS standard queue may hand out a
        # copy twice): nothing lost
        assert set(seen) == {str(i).encode() for i in range(n)}


async def test_leased_message_is_invisible(driver_factory: MakeDriver, queue: str) -> None:
    a, b = await driver_factory(), await driver_factory()
    await a.enqueue(queue, b"one")
    got = await a.dequeue([queue], 1, wait=1)
    assert len(got) == 1
    assert await b.dequeue([queue], 1, wait=0.2) == []
    assert len(await a.ack(got)) == 1


async def test_expired_lease_is_redelivered_and_fenced(driver_factory: MakeDriver, queue: str) -> None:
    a, b = await driver_factory(lease_seconds=LEASE_S), await driver_factory(lease_seconds=LEASE_S)
    await a.enqueue(queue, b"job")
    [first] = await a.dequeue([queue], 1, wait=1)
    [second] = await take(b, [queue], 1, timeout=LEASE_S + 10)
    assert second.id == first.id and second.body == b"job"
    assert second.delivery_count == 2 and second.token != first.token
    if not a.fencing:
        # the driver says it has no broker-side fencing; what it guarantees instead is
        # at-least-once, which the redelivery above shows
        assert "fencing" not in a.capabilities
        assert len(await b.ack([second])) == 1
        return
    # the worker that lost its lease can change nothing
    assert len(await a.ack([first])) == 0
    assert len(await a.extend([first], 30)) == 0
    assert await a.release(first) is False
    assert await a.fail(first, "late") is False
    assert await b.dequeue([queue], 1, wait=0) == []
    assert len(await b.ack([second])) == 1
    assert len(await b.ack([second])) == 0, "a second ack of the same delivery must change nothing"


async def test_extend_keeps_the_lease(driver_factory: MakeDriver, queue: str) -> None:
    a, b = await driver_factory(lease_seconds=LEASE_S), await driver_factory(lease_seconds=LEASE_S)
    await a.enqueue(queue, b"long")
    got = await a.dequeue([queue], 1, wait=1)
    deadline = time.monotonic() + LEASE_S * 2.5
    while time.monotonic() < deadline:
        assert len(await a.extend(got, LEASE_S * 2)) == 1
        assert await b.dequeue([queue], 1, wait=0.3) == []
    assert len(await a.ack(got)) == 1


async def test_release_gives_back_uncounted(driver: BaseDriver, queue: str) -> None:
    await driver.enqueue(queue, b"give-back")
    [first] = await driver.dequeue([queue], 1, wait=1)
    assert await driver.release(first) is True
    [again] = await take(driver, [queue], 1)
    assert again.body == b"give-back" and again.delivery_count == 1
    assert len(await driver.ack([first])) == 0
    assert len(await driver.ack([again])) == 1


@pytest.mark.parametrize("how", ["loop-steps", "short-sleeps"])
async def test_a_dequeue_cancelled_at_any_point_loses_nothing_and_costs_no_attempt(
    driver_factory: MakeDriver, queue: str, how: str
) -> None:
    """Cancel dequeues at every point of their claim (before it is sent, while it is in
    flight, after its reply came): what a cancelled claim leased is given back uncounted, so
    the message comes back at once with its first delivery count, not after a lease expiry."""
    driver = await driver_factory(lease_seconds=60)
    await driver.enqueue(queue, b"cancel-me")
    for point in range(12):
        task = asyncio.ensure_future(driver.dequeue([queue], 5, wait=2))
        if how == "loop-steps":
            for _ in range(point):
                await asyncio.sleep(0)
        else:
            await asyncio.sleep(point * 0.0005)
        task.cancel()
        try:
            got = await task
        except asyncio.CancelledError:
            continue
        assert [d.body for d in got] == [b"cancel-me"]  # it finished first: hand it back
        assert await driver.release(got[0]) is True
    [again] = await take(driver, [queue], 1, timeout=20)
    assert (again.body, again.delivery_count) == (b"cancel-me", 1)
    assert len(await driver.ack([again])) == 1


async def test_release_with_body_is_a_retry(driver: BaseDriver, queue: str) -> None:
    await driver.enqueue(queue, b"attempt-1")
    [first] = await driver.dequeue([queue], 1, wait=1)
    assert await driver.release(first, delay=0.6, body=b"attempt-2") is True
    assert await driver.dequeue([queue], 1, wait=0.2) == [], "a delayed retry must stay hidden"
    [retry] = await take(driver, [queue], 1)
    assert retry.body == b"attempt-2" and retry.delivery_count == 1 and retry.id == first.id
    assert len(await driver.ack([retry])) == 1


async def test_delayed_enqueue(driver: BaseDriver, queue: str) -> None:
    await driver.enqueue(queue, b"later", delay=0.8)
    await driver.enqueue(queue, b"now")
    got = await driver.dequeue([queue], 10, wait=0.2)
    assert [d.body for d in got] == [b"now"]
    started = time.monotonic()
    later = await take(driver, [queue], 1, timeout=5)
    assert [d.body for d in later] == [b"later"]
    assert time.monotonic() - started <= 4
    await driver.ack(got + later)


async def test_blocked_dequeue_picks_up_delayed_message(driver: BaseDriver, queue: str) -> None:
    await driver.enqueue(queue, b"soon", delay=0.5)
    started = time.monotonic()
    got = await driver.dequeue([queue], 1, wait=5)
    assert [d.body for d in got] == [b"soon"]
    assert 0.3 <= time.monotonic() - started < 4
    await driver.ack(got)


async def test_enqueue_many_mixed_queues_and_delays(driver: BaseDriver) -> None:
    qa, qb = "a-" + uuid.uuid4().hex[:6], "b-" + uuid.uuid4().hex[:6]
    ids = await driver.enqueue_many(
        [EnqueueItem(qa, b"a1"), EnqueueItem(qb, b"b1"), EnqueueItem(qa, b"a2", 0.5), EnqueueItem(qa, b"a3")]
    )
    assert len(ids) == 4 and len(set(ids)) == 4
    got = await driver.dequeue([qa, qb], 10, wait=1)
    assert [d.body for d in got] == [b"a1", b"a3", b"b1"]
    later = await take(driver, [qa], 1)
    assert [d.body for d in later] == [b"a2"]
    await driver.ack(got + later)


async def test_invalid_queue_names_are_refused(driver: BaseDriver) -> None:
    for bad in ["", "x'; DROP TABLE jobs; --", "a b", "q" * 200, "é"]:
        with pytest.raises(InvalidQueueName):
            await driver.enqueue(bad, b"x")
        with pytest.raises(InvalidQueueName):
            await driver.dequeue([bad], 1, wait=0)


async def test_failed_registry(driver: BaseDriver, queue: str) -> None:
    if not driver.supports("failed"):
        with pytest.raises(UnsupportedOperation):
            await driver.failed_list()
        return
    await driver.enqueue_many([EnqueueItem(queue, b"bad-1"), EnqueueItem(queue, b"bad-2")])
    got = await take(driver, [queue], 2)
    assert await driver.fail(got[0], "ValueError: boom") is True
    assert await driver.fail(got[1], "worker lost") is True
    assert await driver.dequeue([queue], 10, wait=0.1) == []
    entries = await driver.failed_list(queue)
    assert sorted((e["body"], e["error"]) for e in entries) == [
        (b"bad-1", "ValueError: boom"),
        (b"bad-2", "worker lost"),
    ]
    assert all(e["queue"] == queue and e["failed_at"] > 0 for e in entries)
    first = next(e for e in entries if e["body"] == b"bad-1")
    assert await driver.failed_requeue([first["id"]]) == 1
    [back] = await take(driver, [queue], 1)
    assert back.body == b"bad-1" and back.delivery_count == 1
    assert len(await driver.ack([back])) == 1
    assert await driver.failed_purge(queue=queue) == 1
    assert await driver.failed_list(queue) == []


async def test_stats(driver: BaseDriver, queue: str) -> None:
    if not driver.supports("stats"):
        with pytest.raises(UnsupportedOperation, match="stats"):
            await driver.stats([queue])
        return
    await driver.enqueue_many(
        [
            EnqueueItem(queue, b"r1"),
            EnqueueItem(queue, b"r2"),
            EnqueueItem(queue, b"r3"),
            EnqueueItem(queue, b"d", 60),
        ]
    )
    got = await driver.dequeue([queue], 1, wait=1)
    await driver.fail((await driver.dequeue([queue], 1, wait=1))[0], "x")
    stats = (await driver.stats([queue]))[queue]
    assert stats == {"ready": 1, "delayed": 1, "leased": 1, "failed": 1}
    await driver.ack(got)


async def test_cancel_removes_only_waiting_messages(driver_factory: MakeDriver, queue: str) -> None:
    driver = await driver_factory(lease_seconds=LEASE_S)
    if not driver.supports("cancel"):
        with pytest.raises(UnsupportedOperation, match="cancel"):
            await driver.cancel(queue, "1")
        return
    items = [EnqueueItem(queue, b"ready"), EnqueueItem(queue, b"delayed", 30)]
    items += [EnqueueItem(queue, b"held"), EnqueueItem(queue, b"expiring")]
    ready, delayed, held, expiring = await driver.enqueue_many(items)
    assert await driver.cancel(queue, ready) is True
    assert await driver.cancel(queue, ready) is False, "a message is cancelled once"
    assert await driver.cancel(queue, delayed) is True
    assert await driver.cancel("other-" + queue, held) is False, "the id belongs to another queue"
    got = await take(driver, [queue], 2)
    assert [d.body for d in got] == [b"held", b"expiring"]
    assert await driver.cancel(queue, held) is False, "a leased message runs on"
    assert len(await driver.ack([got[0]])) == 1
    assert await driver.cancel(queue, held) is False, "a finished message is gone"
    # a message whose lease expired waits again: it can be cancelled
    await wait_for(lambda: driver.cancel(queue, expiring), timeout=LEASE_S + 10)
    assert await driver.dequeue([queue], 10, wait=LEASE_S * 1.5) == []
    assert len(await driver.ack([got[1]])) == 0
    assert await driver.cancel(queue, "999999999") is False
    with pytest.raises(InvalidQueueName):
        await driver.cancel("bad queue;", ready)


async def test_list_queues_finds_queues_with_messages(driver: BaseDriver, queue: str) -> None:
    try:
        before = await driver.list_queues()
    except UnsupportedOperation as exc:
        assert "listing" in str(exc)
        return
    await driver.enqueue(queue, b"x")
    after = await driver.list_queues()
    assert queue in after and after == sorted(after)
    assert set(before) <= set(after)


async def test_oldest_waiting_is_the_age_of_the_first_ready_message(driver: BaseDriver, queue: str) -> None:
    try:
        assert await driver.oldest_waiting([queue]) == {queue: None}
    except UnsupportedOperation as exc:
        assert "oldest waiting" in str(exc)
        return
    await driver.enqueue(queue, b"old")
    started = time.monotonic()
    await driver.enqueue(queue, b"delayed", delay=60)

    async def aged() -> bool:
        age = (await driver.oldest_waiting([queue]))[queue]
        return age is not None and age >= 0.3

    await wait_for(aged, timeout=10)
    age = (await driver.oldest_waiting([queue]))[queue]
    assert age is not None and age <= time.monotonic() - started + 1.0
    got = await take(driver, [queue], 1)
    assert await driver.oldest_waiting([queue]) == {queue: None}, "a leased or delayed one is not waiting"
    await driver.ack(got)


async def test_peek_shows_waiting_messages_without_leasing_them(driver: BaseDriver, queue: str) -> None:
    try:
        assert await driver.peek(queue) == []
    except UnsupportedOperation as exc:
        assert not driver.supports("cancel"), "a driver that cancels by id must let callers find the id"
        assert "waiting messages" in str(exc)
        return
    first, later = await driver.enqueue_many([EnqueueItem(queue, b"first"), EnqueueItem(queue, b"later", 60)])
    [leased] = await take(driver, [queue], 1)
    assert leased.id == first
    second = await driver.enqueue(queue, b"second")
    seen = await driver.peek(queue, 10)
    assert seen == [(second, b"second"), (later, b"later")], "ready first, then delayed; not the leased"
    assert await driver.peek(queue, 1) == [(second, b"second")]
    assert await driver.dequeue([queue], 10, wait=0) != [], "peeking leased nothing"
    assert await driver.cancel(queue, later) is True  # what peek gives, cancel takes
    assert len(await driver.ack([leased])) == 1


async def test_purge(driver: BaseDriver, queue: str) -> None:
    if not driver.supports("purge"):
        with pytest.raises(UnsupportedOperation, match="purg"):
            await driver.purge(queue)
        return
    await driver.enqueue_many([EnqueueItem(queue, b"1"), EnqueueItem(queue, b"2", 30)])
    assert await driver.purge(queue) == 2
    assert await driver.dequeue([queue], 10, wait=0.1) == []


async def test_results_wait_for_a_writer(driver_factory: MakeDriver) -> None:
    reader, writer = await driver_factory(no_fallback_poll=True), await driver_factory()
    if not reader.supports("results"):
        with pytest.raises(UnsupportedOperation, match="results"):
            await reader.get_result("x", wait=0)
        with pytest.raises(UnsupportedOperation, match="results"):
            await writer.store_results([("x", b"v")], ttl=60)
        return
    task_id = uuid.uuid4().hex
    assert await reader.get_result(task_id, wait=0) is None

    async def write_later() -> None:
        await asyncio.sleep(0.2)
        await writer.store_results([(task_id, b"\x01result")], ttl=60)

    writing = asyncio.create_task(write_later())
    started = time.monotonic()
    assert await reader.get_result(task_id, wait=10) == b"\x01result"
    assert time.monotonic() - started < 2, "a waiting reader should wake up on the write"
    await writing
    await writer.store_results([("short-" + task_id, b"gone")], ttl=0.3)
    assert await reader.get_result("short-" + task_id, wait=0) == b"gone"

    async def expired() -> bool:
        return await reader.get_result("short-" + task_id, wait=0) is None

    await wait_for(expired, timeout=5)


async def test_worker_registry_and_commands(driver: BaseDriver) -> None:
    if not driver.supports("control"):
        with pytest.raises(UnsupportedOperation, match="commands"):
            await driver.receive_commands("nobody")
    if not driver.supports("workers"):
        with pytest.raises(UnsupportedOperation, match="worker registry"):
            await driver.list_workers()
        return
    name = "w-" + uuid.uuid4().hex[:8]
    await driver.register_worker({"name": name, "pid": 1, "queues": ["default"], "state": "idle"}, ttl=30)
    assert name in [w["name"] for w in await driver.list_workers()]
    if driver.supports("control"):
        await driver.send_command(name, {"command": "stop-task", "task_id": "abc"})
        assert await driver.receive_commands(name) == [{"command": "stop-task", "task_id": "abc"}]
        assert await driver.receive_commands(name) == []
    await driver.deregister_worker(name)
    assert name not in [w["name"] for w in await driver.list_workers()]
    await driver.register_worker({"name": name, "pid": 1}, ttl=0.3)

    async def gone() -> bool:
        return name not in [w["name"] for w in await driver.list_workers()]

    await wait_for(gone, timeout=5)


async def test_capabilities_are_declared_and_refusals_are_clear(driver: BaseDriver) -> None:
    assert driver.capabilities <= CAPABILITIES
    if driver.supports("migrations"):
        assert await driver.migrate() == [], "a connected driver's schema is already current"
    else:
        with pytest.raises(UnsupportedOperation, match="migrations"):
            await driver.migrate()
    if not driver.supports("failed"):
        with pytest.raises(UnsupportedOperation, match="failed registry"):
            await driver.failed_requeue()


async def test_ack_and_extend_report_exactly_what_was_held(driver_factory: MakeDriver, queue: str) -> None:
    a, b = await driver_factory(lease_seconds=LEASE_S), await driver_factory(lease_seconds=LEASE_S)
    await a.enqueue_many([EnqueueItem(queue, b"lost"), EnqueueItem(queue, b"kept")])
    got = await take(a, [queue], 2)
    lost = next(d for d in got if d.body == b"lost")
    kept = next(d for d in got if d.body == b"kept")
    deadline = time.monotonic() + LEASE_S + 10
    stolen: list[Delivery] = []
    while not stolen and time.monotonic() < deadline:  # keep one lease alive, lose the other
        assert [d.body for d in await a.extend([kept], LEASE_S * 3)] == [b"kept"]
        stolen = await b.dequeue([queue], 1, wait=0.2)
    assert [d.body for d in stolen] == [b"lost"]
    if a.fencing:
        assert [d.body for d in await a.extend([lost, kept], 30)] == [b"kept"]
        assert [d.body for d in await a.ack([lost, kept])] == [b"kept"]
    else:
        assert b"kept" in [d.body for d in await a.ack([kept])]
    assert [d.body for d in await b.ack(stolen)] == [b"lost"]


async def test_complete_stores_results_and_acks(driver: BaseDriver, queue: str) -> None:
    await driver.enqueue_many([EnqueueItem(queue, b"one"), EnqueueItem(queue, b"two")])
    got = await take(driver, [queue], 2)
    task_id = uuid.uuid4().hex
    done = await driver.complete(got, [(task_id, b"\x02value")], results_ttl=60)
    assert sorted(d.body for d in done) == [b"one", b"two"]
    assert await driver.dequeue([queue], 10, wait=0.2) == []
    if driver.supports("results"):
        assert await driver.get_result(task_id, wait=0) == b"\x02value"
    else:  # results are skipped, the ack still happens
        with pytest.raises(UnsupportedOperation):
            await driver.get_result(task_id, wait=0)
    assert await driver.complete([], [], results_ttl=60) == []
    other = uuid.uuid4().hex  # results alone (a failed task's record), nothing to ack
    assert await driver.complete([], [(other, b"\x03failed")], results_ttl=60) == []
    if driver.supports("results"):
        assert await driver.get_result(other, wait=0) == b"\x03failed"


async def test_oversized_messages_are_refused_before_the_broker(
    driver_factory: MakeDriver, queue: str
) -> None:
    driver = await driver_factory(max_message_bytes=4096)
    assert driver.max_message_bytes == 4096
    with pytest.raises(MessageTooLarge, match=r"4,097 bytes .* limit of 4,096 bytes"):
        await driver.enqueue(queue, b"x" * 4097)
    with pytest.raises(MessageTooLarge):
        await driver.enqueue_many([EnqueueItem(queue, b"small"), EnqueueItem(queue, b"x" * 5000)])
    assert await driver.dequeue([queue], 10, wait=0.2) == [], "nothing of a refused batch is stored"
    await driver.enqueue(queue, b"y" * 4096)
    [got] = await take(driver, [queue], 1)
    assert len(got.body) == 4096
    with pytest.raises(MessageTooLarge):
        await driver.release(got, body=b"z" * 4097)
    assert len(await driver.ack([got])) == 1
    default = await driver_factory()
    assert 0 < default.max_message_bytes <= 16 * 1024 * 1024
