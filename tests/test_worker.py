"""Worker behaviour on the in-process driver (and SQLite where persistence matters)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

import asynctasq
from asynctasq import Retry, Task, Worker, task
from asynctasq.drivers.base import BaseDriver
from asynctasq.drivers.memory import MemoryDriver
from asynctasq.message import Envelope
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
