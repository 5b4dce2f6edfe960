"""Worker behaviour on the in-process driver (and SQLite where persistence matters)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

import asynctasq
from asynctasq import Retry, Task, Worker, task
from asynctasq.drivers.base import BaseDriver, Delivery
from asynctasq.drivers.memory import MemoryDriver
from asynctasq.errors import BrokerUnavailable
from asynctasq.message import Envelope
from asynctasq.registry import TaskDefinition, TaskRegistry
from asynctasq.serializers import get_serializer
from tests.conftest import wait_for

events: list[Any] = []
gate = asyncio.Event()


@task
async def record(value: Any) -> Any:
    events.append(value)
    return value


@task
def record_sync(value: Any) -> str:
    events.append(("sync", value))
    return f"sync:{value}"


@task(name="tests.clashing_names")
async def clashing(timeout: int, delay: int, queue: str) -> list[int | str]:
    return [timeout, delay, queue]


@task(max_attempts=3, retry_after=0.01)
async def flaky(key: str, fail_times: int) -> str:
    events.append(key)
    if events.count(key) <= fail_times:
        raise ValueError(f"{key} failing")
    return "ok"


@task(max_attempts=2)
async def asks_retry(key: str) -> str:
    events.append(key)
    if events.count(key) == 1:
        raise Retry(delay=0.05)
    return "retried"


@task(timeout=0.2, max_attempts=1)
async def too_slow() -> None:
    await asyncio.sleep(30)


@task
async def wait_for_gate(key: str) -> str:
    events.append(("start", key))
    await gate.wait()
    events.append(("end", key))
    return key


@task
async def sleeper(seconds: float) -> None:
    events.append("sleeping")
    await asyncio.sleep(seconds)


@task(max_attempts=1)
async def hogs_the_loop(seconds: float, then_sleep: float = 0.0) -> str:
    time.sleep(seconds)  # blocks the event loop: no lease heartbeat meanwhile
    await asyncio.sleep(then_sleep)
    return "done"


running_now = 0
running_max = 0


@task
async def measured() -> None:
    global running_now, running_max
    running_now += 1
    running_max = max(running_max, running_now)
    await asyncio.sleep(0.005)
    running_now -= 1


class Adder(Task):
    queue = "math"
    max_attempts = 2

    def __init__(self, a: int, b: int) -> None:
        self.a = a
        self.b = b

    async def handle(self) -> int:
        return self.a + self.b


class SyncAdder(Task):
    def __init__(self, a: int) -> None:
        self.a = a

    def handle(self) -> int:
        return self.a * 10


@pytest.fixture(autouse=True)
def _reset() -> None:
    global running_now, running_max, gate
    events.clear()
    gate = asyncio.Event()
    running_now = running_max = 0


@pytest.fixture
async def driver() -> AsyncIterator[MemoryDriver]:
    ns = "w" + uuid.uuid4().hex[:8]
    d = MemoryDriver(namespace=ns, lease_seconds=5)
    await d.connect()
    asynctasq.configure(driver="memory")
    yield d
    MemoryDriver.reset(ns)


def make_worker(driver: BaseDriver, **options: Any) -> Worker:
    options.setdefault("install_signal_handlers", False)
    return Worker(driver, **options)


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``worker`` in the background; stop it (and re-raise its errors) on exit."""
    runner = asyncio.create_task(worker.start())
    try:
        yield runner
    finally:
        worker.stop()
        await asyncio.wait_for(runner, 15)


async def test_runs_async_sync_and_class_tasks_with_results(driver: MemoryDriver) -> None:
    ids = [
        await record({"x": [1, 2]}).dispatch(driver),
        await record_sync("s").dispatch(driver),
        await Adder(2, 3).dispatch(driver),
        await SyncAdder(4).dispatch(driver),
        await clashing(timeout=1, delay=2, queue="three").dispatch(driver),
    ]
    worker = make_worker(driver, queues=["default", "math"], burst=True)
    await worker.start()
    assert worker.succeeded == 5 and worker.failed == 0
    values = [await asynctasq.result(i, timeout=1, driver=driver) for i in ids]
    assert values == [{"x": [1, 2]}, "sync:s", 5, 40, [1, 2, "three"]]


async def test_retries_then_succeeds(driver: MemoryDriver) -> None:
    task_id = await flaky("k1", 2).dispatch(driver)
    worker = make_worker(driver)
    async with running(worker):
        assert await asynctasq.result(task_id, timeout=10, driver=driver) == "ok"
    assert events.count("k1") == 3 and worker.retried == 2


async def test_exhausted_retries_go_to_failed_registry_with_traceback(driver: MemoryDriver) -> None:
    task_id = await flaky("k2", 99).dispatch(driver)
    worker = make_worker(driver)
    async with running(worker):
        with pytest.raises(asynctasq.TaskFailed, match="k2 failing"):
            await asynctasq.result(task_id, timeout=10, driver=driver)
    [entry] = await driver.failed_list()
    assert "ValueError: k2 failing" in entry["error"] and "Traceback" in entry["error"]
    assert Envelope.decode(entry["body"]).attempt == 3
    assert events.count("k2") == 3


async def test_retry_exception_uses_its_delay(driver: MemoryDriver) -> None:
    task_id = await asks_retry("r1").dispatch(driver)
    async with running(make_worker(driver)):
        assert await asynctasq.result(task_id, timeout=10, driver=driver) == "retried"


async def test_timeout_fails_the_task(driver: MemoryDriver) -> None:
    task_id = await too_slow().dispatch(driver)
    started = time.monotonic()
    async with running(make_worker(driver)):
        with pytest.raises(asynctasq.TaskFailed, match=r"timed out after 0\.2s"):
            await asynctasq.result(task_id, timeout=10, driver=driver)
    assert time.monotonic() - started < 10


async def test_unknown_task_and_garbage_fail_clearly_and_the_worker_goes_on(driver: MemoryDriver) -> None:
    ghost = Envelope(task="billing.tasks.charge", args=[], kwargs={}, queue="default")
    await driver.enqueue("default", ghost.encode(get_serializer("msgpack")))
    await driver.enqueue("default", b"\xc1\x00garbage")
    await driver.enqueue("default", b"{not json")
    await driver.enqueue("default", get_serializer("msgpack").dumps({"hello": "world"}))
    good = await record("after").dispatch(driver)
    worker = make_worker(driver, burst=True)
    await worker.start()
    assert await asynctasq.result(good, timeout=1, driver=driver) == "after"
    errors = sorted(e["error"] for e in await driver.failed_list())
    assert len(errors) == 4
    assert any("unknown task 'billing.tasks.charge'" in e and "--import billing.tasks" in e for e in errors)
    assert sum("SerializationError" in e for e in errors) == 3


async def test_pickle_is_refused_unless_accepted(driver: MemoryDriver) -> None:
    env = Envelope(task=record.name, args=["pickled"], kwargs={}, queue="default")
    await driver.enqueue("default", env.encode(get_serializer("pickle")))
    await make_worker(driver, burst=True).start()
    [entry] = await driver.failed_list()
    assert "pickled message refused" in entry["error"]
    await driver.failed_requeue()
    await make_worker(driver, burst=True, accept_pickle=True).start()
    assert events == ["pickled"]


async def test_json_serializer_round_trip(driver: MemoryDriver) -> None:
    asynctasq.configure(driver="memory", serializer="json")
    try:
        task_id = await record({"j": 1}).dispatch(driver)
    finally:
        asynctasq.configure(driver="memory")
    [delivery] = await driver.dequeue(["default"], 1, wait=0)
    assert delivery.body.startswith(b"{")
    await driver.release(delivery)
    await make_worker(driver, burst=True).start()
    assert await asynctasq.result(task_id, timeout=1, driver=driver) == {"j": 1}


async def test_max_tasks_is_exact(driver: MemoryDriver) -> None:
    await asynctasq.dispatch_many([record(i) for i in range(25)], driver=driver)
    worker = make_worker(driver, concurrency=4, max_tasks=10)
    await asyncio.wait_for(worker.start(), 10)
    assert worker.processed == 10 and sorted(events) == list(range(10))
    assert (await driver.stats(["default"]))["default"]["ready"] == 15


async def test_concurrency_is_never_exceeded(driver: MemoryDriver) -> None:
    await asynctasq.dispatch_many([measured() for _ in range(60)], driver=driver)
    worker = make_worker(driver, concurrency=7, burst=True)
    await asyncio.wait_for(worker.start(), 10)
    assert worker.succeeded == 60
    assert running_max == 7


async def test_max_idle_time_stops_the_worker(driver: MemoryDriver) -> None:
    worker = make_worker(driver, max_idle_time=0.3)
    started = time.monotonic()
    await asyncio.wait_for(worker.start(), 10)
    assert 0.25 <= time.monotonic() - started < 5


async def test_priority_strategy_drains_the_first_queue_first(driver: MemoryDriver) -> None:
    await asynctasq.dispatch_many([record(f"low{i}").on_queue("low") for i in range(3)], driver=driver)
    await asynctasq.dispatch_many([record(f"high{i}").on_queue("high") for i in range(3)], driver=driver)
    worker = make_worker(
        driver, queues=["high", "low"], concurrency=1, dequeue_strategy="priority", burst=True
    )
    await worker.start()
    assert events == ["high0", "high1", "high2", "low0", "low1", "low2"]


async def test_round_robin_alternates(driver: MemoryDriver) -> None:
    await asynctasq.dispatch_many([record(f"a{i}").on_queue("qa") for i in range(3)], driver=driver)
    await asynctasq.dispatch_many([record(f"b{i}").on_queue("qb") for i in range(3)], driver=driver)
    worker = make_worker(driver, queues=["qa", "qb"], concurrency=1, burst=True)
    await worker.start()
    assert events == ["a0", "b0", "a1", "b1", "a2", "b2"]


async def test_graceful_stop_lets_running_tasks_finish(driver: MemoryDriver) -> None:
    task_id = await wait_for_gate("g1").dispatch(driver)
    worker = make_worker(driver, shutdown_timeout=10)
    runner = asyncio.create_task(worker.start())
    await wait_for(lambda: ("start", "g1") in events)
    worker.stop()
    await asyncio.sleep(0.1)
    assert not runner.done(), "the worker must wait for its running task"
    gate.set()
    await asyncio.wait_for(runner, 5)
    assert ("end", "g1") in events
    assert await asynctasq.result(task_id, timeout=1, driver=driver) == "g1"


async def test_stop_gives_back_tasks_past_the_shutdown_timeout(driver: MemoryDriver) -> None:
    await wait_for_gate("g2").dispatch(driver)
    worker = make_worker(driver, shutdown_timeout=0.2)
    runner = asyncio.create_task(worker.start())
    await wait_for(lambda: ("start", "g2") in events)
    worker.stop()
    await asyncio.wait_for(runner, 5)
    [back] = await driver.dequeue(["default"], 1, wait=0)
    assert back.delivery_count == 1, "a task given back on shutdown must not count as an attempt"
    assert Envelope.decode(back.body).attempt == 1


async def test_second_stop_gives_back_at_once(driver: MemoryDriver) -> None:
    await wait_for_gate("g3").dispatch(driver)
    worker = make_worker(driver, shutdown_timeout=60)
    runner = asyncio.create_task(worker.start())
    await wait_for(lambda: ("start", "g3") in events)
    worker.stop()
    worker.stop(force=True)
    await asyncio.wait_for(runner, 5)
    assert (await driver.stats(["default"]))["default"]["ready"] == 1


async def test_stop_task_command_fails_it_as_stopped(driver: MemoryDriver) -> None:
    task_id = await wait_for_gate("g4").dispatch(driver)
    worker = make_worker(driver, heartbeat_interval=0.1)
    async with running(worker):
        await wait_for(lambda: ("start", "g4") in events)

        async def listed() -> bool:
            return any(task_id in w.get("current_tasks", []) for w in await driver.list_workers())

        await wait_for(listed)
        await driver.send_command(worker.name, {"command": "stop-task", "task_id": task_id})
        with pytest.raises(asynctasq.TaskFailed, match="stopped"):
            await asynctasq.result(task_id, timeout=10, driver=driver)
    [entry] = await driver.failed_list()
    assert entry["error"].startswith("stopped")


async def test_remote_shutdown_command(driver: MemoryDriver) -> None:
    worker = make_worker(driver, heartbeat_interval=0.1)
    runner = asyncio.create_task(worker.start())

    async def registered() -> bool:
        return worker.name in [w["name"] for w in await driver.list_workers()]

    await wait_for(registered)
    await driver.send_command(worker.name, {"command": "shutdown"})
    await asyncio.wait_for(runner, 10)
    assert worker.name not in [w["name"] for w in await driver.list_workers()]


async def test_leases_are_extended_while_a_task_runs() -> None:
    ns = "l" + uuid.uuid4().hex[:8]
    driver = MemoryDriver(namespace=ns, lease_seconds=0.3)
    thief = MemoryDriver(namespace=ns, lease_seconds=0.3)
    try:
        task_id = await sleeper(1.2).dispatch(driver)
        async with running(make_worker(driver)):
            await wait_for(lambda: "sleeping" in events)
            stolen = await thief.dequeue(["default"], 1, wait=1.0)
            assert stolen == [], "a running task's lease must be extended, not redelivered"
            assert await asynctasq.result(task_id, timeout=10, driver=driver) is None
    finally:
        MemoryDriver.reset(ns)


async def test_a_task_whose_worker_died_too_often_fails_as_worker_lost() -> None:
    ns = "x" + uuid.uuid4().hex[:8]
    driver = MemoryDriver(namespace=ns, lease_seconds=0.2)
    try:
        task_id = await record("doomed").max_attempts(2).dispatch(driver)
        for _ in range(2):  # two workers "die" holding it
            assert len(await driver.dequeue(["default"], 1, wait=1)) == 1
            await asyncio.sleep(0.25)
        await make_worker(driver, burst=True).start()
        with pytest.raises(asynctasq.TaskFailed, match="worker lost"):
            await asynctasq.result(task_id, timeout=1, driver=driver)
        assert events == []
    finally:
        MemoryDriver.reset(ns)


async def test_task_context_wraps_every_task(driver: MemoryDriver) -> None:
    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def context(env: Envelope) -> AsyncIterator[None]:
        seen.append(f"enter {env.task}")
        yield
        seen.append("exit")

    await record("ctx").dispatch(driver)
    await make_worker(driver, burst=True, task_context=context).start()
    assert seen == [f"enter {record.name}", "exit"]


async def test_delayed_dispatch_and_options(driver: MemoryDriver) -> None:
    await (
        record("later")
        .on_queue("other")
        .delay(0.3)
        .max_attempts(5)
        .timeout(9)
        .retry_after(2)
        .dispatch(driver)
    )
    [d] = await driver.dequeue(["other"], 1, wait=5)
    env = Envelope.decode(d.body)
    assert (env.queue, env.max_attempts, env.timeout, env.retry_after) == ("other", 5, 9, 2)


def test_dispatch_sync_from_plain_code(tmp_path: Any) -> None:
    asynctasq.configure(driver="sqlite", sqlite_path=str(tmp_path / "sync.db"))
    try:
        task_id = record("from-sync").dispatch_sync()
        assert len(task_id) == 32
        report_id = Adder(1, 2).dispatch_sync()

        async def drain() -> None:
            from asynctasq.drivers.sqlite import SQLiteDriver

            async with SQLiteDriver(str(tmp_path / "sync.db")) as d:
                await make_worker(d, queues=["default", "math"], burst=True).start()
                assert await asynctasq.result(report_id, timeout=1, driver=d) == 3

        asyncio.run(drain())
        assert events == ["from-sync"]
    finally:
        asynctasq.configure(driver="memory")


async def test_dispatch_sync_inside_a_loop_is_refused() -> None:
    with pytest.raises(asynctasq.AsyncTasQError, match="use await"):
        record("x").dispatch_sync()


# -- correctness fixes (each test failed on the worker before them) --------------------------


class FlakyAckDriver(MemoryDriver):
    """A broker whose first ``failures`` ack batches fail (a dropped connection)."""

    failures = 2

    async def _ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        if self.failures > 0:
            self.failures -= 1
            raise BrokerUnavailable("connection reset (test)")
        return await super()._ack(deliveries)


async def test_a_failed_ack_batch_is_retried_not_dropped() -> None:
    ns = "a" + uuid.uuid4().hex[:8]
    driver = FlakyAckDriver(namespace=ns, lease_seconds=5)
    try:
        task_id = await record("acked").dispatch(driver)
        worker = make_worker(driver, burst=True)
        await asyncio.wait_for(worker.start(), 10)
        assert (await driver.stats(["default"]))["default"] == {
            "ready": 0,
            "delayed": 0,
            "leased": 0,
            "failed": 0,
        }, "the ack must be retried until it reaches the broker"
        assert worker.succeeded == 1 and worker.lost == 0
        assert await asynctasq.result(task_id, timeout=1, driver=driver) == "acked"
    finally:
        MemoryDriver.reset(ns)


class ResultCheckingDriver(MemoryDriver):
    """Notes, at each ack, whether the acked task's result is already stored."""

    stored_at_ack: list[bool]

    async def _ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        for d in deliveries:
            task_id = Envelope.decode(d.body).id
            self.stored_at_ack.append(await self._read_result(task_id) is not None)
        return await super()._ack(deliveries)


async def test_results_are_stored_no_later_than_the_ack() -> None:
    ns = "r" + uuid.uuid4().hex[:8]
    driver = ResultCheckingDriver(namespace=ns)
    driver.stored_at_ack = []
    try:
        await asynctasq.dispatch_many([record(i) for i in range(5)], driver=driver)
        await make_worker(driver, burst=True).start()
        assert driver.stored_at_ack == [True] * 5, "a crash between ack and result loses the result"
    finally:
        MemoryDriver.reset(ns)


def _eager_factory_311(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[Any]:
    """asyncio.eager_task_factory for Python 3.11: the coroutine's first step runs inside
    create_task, before it returns."""
    try:
        first = coro.send(None)
    except StopIteration as stop:
        value = stop.value

        async def done() -> Any:
            return value

        return asyncio.Task(done(), loop=loop)
    except BaseException as exc:  # noqa: BLE001 - the task ends with it, as an eager task does
        error = exc

        async def failed() -> Any:
            raise error

        return asyncio.Task(failed(), loop=loop)

    class Resume:
        def __await__(self) -> Any:
            yielded = first
            while True:
                try:
                    sent = yield yielded
                except BaseException as exc:  # noqa: BLE001 - thrown in by the task: pass it on
                    try:
                        yielded = coro.throw(exc)
                    except StopIteration as stop:
                        return stop.value
                else:
                    try:
                        yielded = coro.send(sent)
                    except StopIteration as stop:
                        return stop.value

    async def rest() -> Any:
        return await Resume()

    return asyncio.Task(rest(), loop=loop)


async def test_the_worker_runs_under_an_eager_task_factory(driver: MemoryDriver) -> None:
    loop = asyncio.get_running_loop()
    factory = getattr(asyncio, "eager_task_factory", _eager_factory_311)
    loop.set_task_factory(factory)
    try:
        ids = [await record(i).dispatch(driver) for i in range(20)]
        await record_sync("s").dispatch(driver)
        worker = make_worker(driver, concurrency=3, burst=True)
        await asyncio.wait_for(worker.start(), 10)
    finally:
        loop.set_task_factory(None)
    assert worker.succeeded == 21
    assert [await asynctasq.result(i, timeout=1, driver=driver) for i in ids] == list(range(20))


async def test_a_process_task_on_a_worker_without_a_pool_fails_at_once(driver: MemoryDriver) -> None:
    tasks = TaskRegistry()
    worker = make_worker(driver, task_registry=tasks)
    async with running(worker):  # started with no process task registered: no pool
        await wait_for(lambda: worker.state == "idle")
        tasks.add(TaskDefinition("tests.crunch", record.func, is_class=False, is_async=True, process=True))
        env = Envelope(task="tests.crunch", args=[1], kwargs={}, queue="default")
        await driver.enqueue("default", env.encode(get_serializer("msgpack")))
        await wait_for(lambda: worker.failed == 1)
    [entry] = await driver.failed_list()
    assert "process=True but this worker has no process pool" in entry["error"]
    assert worker.retried == 0 and events == []


async def test_a_refused_ack_counts_the_task_as_lost_not_succeeded() -> None:
    ns = "f" + uuid.uuid4().hex[:8]
    driver = MemoryDriver(namespace=ns, lease_seconds=0.2)
    try:
        await hogs_the_loop(0.5).dispatch(driver)  # no heartbeat while it runs: the lease expires
        worker = make_worker(driver, burst=True)
        await asyncio.wait_for(worker.start(), 10)
        assert worker.succeeded == 0, "the broker refused the ack: the task did not succeed here"
        assert worker.lost == 1
    finally:
        MemoryDriver.reset(ns)


async def test_a_lost_lease_is_reported_once_and_never_extended_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ns = "e" + uuid.uuid4().hex[:8]
    driver = MemoryDriver(namespace=ns, lease_seconds=0.15)
    thief = MemoryDriver(namespace=ns, lease_seconds=5)
    try:
        task_id = await hogs_the_loop(0.4, then_sleep=0.8).dispatch(driver)
        # concurrency 1: the worker cannot take the expired task back itself, only the thief can
        worker = make_worker(driver, burst=True, concurrency=1)
        with caplog.at_level(logging.WARNING, logger="asynctasq.worker"):
            runner = asyncio.create_task(worker.start())
            await wait_for(lambda: worker.current_task_ids == [task_id])
            [stolen] = await thief.dequeue(["default"], 1, wait=5)
            assert Envelope.decode(stolen.body).id == task_id
            await asyncio.wait_for(runner, 10)
        warnings = [r for r in caplog.records if "lease(s) were lost" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        assert (worker.succeeded, worker.lost) == (0, 1)
        assert await thief.ack([stolen]) == [stolen], "the thief's lease is untouched"
    finally:
        MemoryDriver.reset(ns)


class SlowExtendDriver(MemoryDriver):
    """Holds every extend until ``go`` is set: an ack overtakes a heartbeat in flight."""

    go: asyncio.Event
    extending: asyncio.Event

    async def _extend(self, deliveries: Sequence[Delivery], seconds: float) -> list[Delivery]:
        self.extending.set()
        await self.go.wait()
        return await super()._extend(deliveries, seconds)


async def test_an_ack_racing_a_heartbeat_is_not_a_lost_lease(caplog: pytest.LogCaptureFixture) -> None:
    ns = "h" + uuid.uuid4().hex[:8]
    driver = SlowExtendDriver(namespace=ns, lease_seconds=0.3)
    driver.go, driver.extending = asyncio.Event(), asyncio.Event()
    try:
        task_id = await wait_for_gate("race").dispatch(driver)
        worker = make_worker(driver)
        with caplog.at_level(logging.WARNING, logger="asynctasq.worker"):
            async with running(worker):
                await asyncio.wait_for(driver.extending.wait(), 5)  # a heartbeat is in flight
                gate.set()  # the task ends; its ack overtakes the heartbeat
                assert await asynctasq.result(task_id, timeout=5, driver=driver) == "race"
                await wait_for(lambda: worker.succeeded == 1)
                driver.go.set()
                await asyncio.sleep(0)  # let the heartbeat return
                await wait_for(lambda: not driver.go.is_set() or driver.extending.is_set())
        assert not [r for r in caplog.records if "lost" in r.getMessage()]
        assert worker.lost == 0
    finally:
        MemoryDriver.reset(ns)


class FlakyFetchDriver(MemoryDriver):
    """A broker that is down for the first ``failures`` fetches; notes when each came."""

    failures = 6
    calls: list[float]

    async def _claim(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        self.calls.append(time.monotonic())
        if self.failures > 0:
            self.failures -= 1
            raise BrokerUnavailable("broker down (test)")
        return await super()._claim(queues, limit)


async def test_a_broker_that_comes_back_sees_work_resume_within_a_second() -> None:
    ns = "b" + uuid.uuid4().hex[:8]
    driver = FlakyFetchDriver(namespace=ns)
    driver.calls = []
    try:
        await record("back").dispatch(driver)
        worker = make_worker(driver, burst=True)
        await asyncio.wait_for(worker.start(), 15)
        assert events == ["back"]
        gaps = [b - a for a, b in zip(driver.calls, driver.calls[1:], strict=False)]
        assert max(gaps) < 1.3, gaps
    finally:
        MemoryDriver.reset(ns)


async def test_a_malformed_envelope_goes_to_the_failed_registry_undecoded(driver: MemoryDriver) -> None:
    msgpack = get_serializer("msgpack")
    base = {"v": 1, "id": "x" * 32, "task": record.name, "queue": "default", "kwargs": {}}
    await driver.enqueue("default", msgpack.dumps({**base, "args": "12345"}))
    await driver.enqueue("default", msgpack.dumps({**base, "id": "y" * 32, "args": [], "kwargs": [1]}))
    await driver.enqueue("default", msgpack.dumps({**base, "id": "z" * 32, "args": [], "kwargs": {1: 2}}))
    worker = make_worker(driver, burst=True)
    await worker.start()
    errors = [e["error"] for e in await driver.failed_list()]
    assert len(errors) == 3 and all(e.startswith("SerializationError: malformed") for e in errors), errors
    assert events == [] and worker.retried == 0


# -- current_task, hooks, names --------------------------------------------------------------


@task(max_attempts=4)
async def whoami(fail_first: bool = False) -> dict[str, Any]:
    me = asynctasq.current_task()
    if fail_first and me.attempt == 1:
        raise Retry(delay=0)
    return {
        "id": me.id,
        "name": me.name,
        "queue": me.queue,
        "attempt": me.attempt,
        "max": me.max_attempts,
        "enqueued_at": me.enqueued_at,
    }


@task
def whoami_sync() -> list[Any]:
    me = asynctasq.current_task()
    return [me.id, me.name, me.attempt]


async def test_current_task_in_async_and_thread_tasks(driver: MemoryDriver) -> None:
    before = time.time()
    first = await whoami().on_queue("other").dispatch(driver)
    second = await whoami(fail_first=True).dispatch(driver)
    third = await whoami_sync().dispatch(driver)
    await make_worker(driver, queues=["default", "other"], burst=True).start()
    seen = await asynctasq.result(first, timeout=1, driver=driver)
    assert seen["id"] == first and seen["name"] == whoami.name and seen["queue"] == "other"
    assert (seen["attempt"], seen["max"]) == (1, 4) and before <= seen["enqueued_at"] <= time.time()
    assert (await asynctasq.result(second, timeout=1, driver=driver))["attempt"] == 2
    assert await asynctasq.result(third, timeout=1, driver=driver) == [third, whoami_sync.name, 1]
    with pytest.raises(asynctasq.AsyncTasQError, match="outside a running task"):
        asynctasq.current_task()


async def test_current_task_counts_lost_deliveries_as_attempts() -> None:
    ns = "c" + uuid.uuid4().hex[:8]
    driver = MemoryDriver(namespace=ns, lease_seconds=0.1)
    try:
        task_id = await whoami().dispatch(driver)
        assert len(await driver.dequeue(["default"], 1, wait=1)) == 1  # a worker "dies" holding it
        await asyncio.sleep(0.15)
        await make_worker(driver, burst=True).start()
        assert (await asynctasq.result(task_id, timeout=1, driver=driver))["attempt"] == 2
    finally:
        MemoryDriver.reset(ns)


hook_calls: list[str] = []


async def startup_hook(worker: Worker) -> None:
    hook_calls.append(f"startup {worker.name} {worker.state}")


async def shutdown_hook(worker: Worker) -> None:
    hook_calls.append(f"shutdown {worker.processed}")


async def test_startup_and_shutdown_hooks_from_callables_and_config(driver: MemoryDriver) -> None:
    hook_calls.clear()
    await record("hooked").dispatch(driver)
    worker = make_worker(
        driver, name="hooks", burst=True, on_startup=startup_hook, on_shutdown=[shutdown_hook]
    )
    await worker.start()
    assert hook_calls == ["startup hooks starting", "shutdown 1"]
    hook_calls.clear()
    config = asynctasq.Config(
        burst=True,
        on_startup=["tests.test_worker:startup_hook"],
        on_shutdown="tests.test_worker:shutdown_hook",
        worker_name="cfg",
    )
    worker = Worker.from_config(driver, config, install_signal_handlers=False)
    await worker.start()
    assert hook_calls == ["startup cfg starting", "shutdown 0"]
    dotted = make_worker(driver, on_startup="tests.test_worker.startup_hook")  # RQ's spelling
    assert dotted.on_startup == [startup_hook]
    with pytest.raises(asynctasq.ConfigError, match=r"module:name or module\.name"):
        make_worker(driver, on_startup="startup_hook")
    with pytest.raises(asynctasq.ConfigError, match="has no 'nope'"):
        make_worker(driver, on_shutdown=["tests.test_worker:nope"])


async def test_name_is_canonical_and_worker_id_its_alias(driver: MemoryDriver) -> None:
    assert make_worker(driver, name="alpha").name == "alpha"
    assert make_worker(driver, worker_id="beta").name == "beta"
    assert Worker.from_config(driver, asynctasq.Config(worker_name="gamma")).name == "gamma"
    assert Worker.from_config(driver, asynctasq.Config(), worker_id="delta").name == "delta"
    with pytest.raises(asynctasq.ConfigError, match="give only name"):
        make_worker(driver, name="a", worker_id="b")


@task(max_attempts=2)
async def retries_once(key: str) -> str:
    events.append(key)
    if events.count(key) == 1:
        raise Retry(delay=0.2)
    return key


async def test_the_worker_writes_results_and_retries_in_its_own_format(driver: MemoryDriver) -> None:
    asynctasq.configure(driver="memory", serializer="json")
    try:
        task_id = await retries_once("fmt").dispatch(driver)
    finally:
        asynctasq.configure(driver="memory")
    worker = make_worker(driver, serializer="msgpack", max_tasks=1)
    await worker.start()
    [again] = await driver.dequeue(["default"], 1, wait=5)
    assert not again.body.startswith(b"{"), "the retry is written in the worker's format (msgpack)"
    assert Envelope.decode(again.body).attempt == 2
    await driver.release(again)
    await make_worker(driver, serializer="json", burst=True).start()
    raw = await driver.get_result(task_id, wait=1)
    assert raw is not None and raw.startswith(b"{")


@task
async def probe_alone(key: str) -> None:
    global running_now
    running_now += 1
    events.append((key, running_now))
    await asyncio.sleep(0.05)
    events.append((key, running_now))
    running_now -= 1


async def test_a_redelivered_task_runs_alone() -> None:
    ns = "s" + uuid.uuid4().hex[:8]
    driver = MemoryDriver(namespace=ns, lease_seconds=0.1)
    try:
        await probe_alone("suspect").dispatch(driver)
        assert len(await driver.dequeue(["default"], 1, wait=1)) == 1  # its worker "dies"
        await asyncio.sleep(0.15)
        await asynctasq.dispatch_many([measured() for _ in range(12)], driver=driver)
        worker = make_worker(driver, concurrency=5, burst=True)
        await asyncio.wait_for(worker.start(), 10)
        assert worker.succeeded == 13
        assert [seen for key, seen in events if key == "suspect"] == [1, 1], "nothing runs beside it"
        assert running_max == 5, "the others still run side by side"
    finally:
        MemoryDriver.reset(ns)


class WatchfulDriver(MemoryDriver):
    """Notes extends of deliveries already given back; its acks take ``ack_s`` seconds."""

    ack_s = 0.4
    released: set[str]
    extended_after_release: list[str]

    async def _release(self, delivery: Delivery, delay: float, body: bytes | None) -> bool:
        self.released.add(delivery.token)
        return await super()._release(delivery, delay, body)

    async def _extend(self, deliveries: Sequence[Delivery], seconds: float) -> list[Delivery]:
        self.extended_after_release += [d.token for d in deliveries if d.token in self.released]
        return await super()._extend(deliveries, seconds)

    async def _ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        await asyncio.sleep(self.ack_s)
        return await super()._ack(deliveries)


async def test_the_lease_loop_never_extends_a_delivery_given_back() -> None:
    ns = "g" + uuid.uuid4().hex[:8]
    driver = WatchfulDriver(namespace=ns, lease_seconds=0.15)
    driver.released, driver.extended_after_release = set(), []
    try:
        await wait_for_gate("held").dispatch(driver)
        await record("quick").dispatch(driver)
        worker = make_worker(driver, shutdown_timeout=30)
        runner = asyncio.create_task(worker.start())
        await wait_for(lambda: "quick" in events and ("start", "held") in events)
        worker.stop(force=True)  # "held" is given back while the ack of "quick" is on its way
        await asyncio.wait_for(runner, 10)
        assert driver.released, "the running task was given back"
        assert driver.extended_after_release == []
    finally:
        MemoryDriver.reset(ns)


async def test_a_failing_startup_hook_stops_the_start_and_skips_shutdown_hooks(driver: MemoryDriver) -> None:
    hook_calls.clear()

    async def broken(worker: Worker) -> None:
        raise RuntimeError("no database")

    def plain(worker: Worker) -> None:
        hook_calls.append("plain")

    await record("never").dispatch(driver)
    worker = make_worker(driver, burst=True, on_startup=[plain, broken], on_shutdown=[shutdown_hook])
    with pytest.raises(RuntimeError, match="no database"):
        await worker.start()
    assert hook_calls == ["plain"] and events == [] and worker.state == "stopped"
    assert (await driver.stats(["default"]))["default"]["ready"] == 1
