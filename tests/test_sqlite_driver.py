"""SQLite-specific behaviour: several OS processes on one file, wake-ups, bad paths, locking."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asynctasq.config import Config
from asynctasq.core.driver_factory import DriverFactory
from asynctasq.drivers.base import EnqueueItem
from asynctasq.drivers.sqlite import BATCH_ROWS, SCHEMA_VERSION, SQLiteDriver
from asynctasq.errors import DriverError
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "queue.db")


@pytest.fixture
async def driver(db_path: str) -> AsyncIterator[SQLiteDriver]:
    driver = SQLiteDriver(db_path)
    await driver.connect()
    yield driver
    await driver.disconnect()


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    """Run ``script`` in a fresh Python process (stdout piped, text mode)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


async def read_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
    if not line:
        _, err = proc.communicate(timeout=5)
        raise AssertionError(f"child exited early ({proc.returncode}): {err}")
    return line.strip()


def finish(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


CONSUMER = """
    import asyncio, random, sys
    from asynctasq.drivers.sqlite import SQLiteDriver

    async def main() -> None:
        driver = SQLiteDriver(sys.argv[1])
        await driver.connect()
        print("ready", flush=True)
        seen = []
        stop = False
        while not stop:  # work first; its own stop queue only once the work is all taken
            got = await driver.dequeue(["work", sys.argv[2]], random.randint(1, 10), wait=30)
            assert got, "no message within 30 s"
            for d in got:
                if d.queue == "work":
                    seen.append(d.body.decode())
                else:
                    stop = True
            assert len(await driver.ack(got)) == len(got), "lost a lease it just took"
        await driver.disconnect()
        print("\\n".join(seen), flush=True)

    asyncio.run(main())
"""


async def test_two_processes_share_one_file_without_duplicates_or_loss(
    driver: SQLiteDriver, db_path: str
) -> None:
    consumers = [spawn(CONSUMER, db_path, "stop-a"), spawn(CONSUMER, db_path, "stop-b")]
    try:
        for proc in consumers:
            assert await read_line(proc) == "ready"
        n = 3000
        for start in range(0, n, 100):  # in batches, while both consumers are draining
            await driver.enqueue_many(
                [EnqueueItem("work", str(i).encode()) for i in range(start, start + 100)]
            )
        await driver.enqueue_many([EnqueueItem("stop-a", b""), EnqueueItem("stop-b", b"")])
        outputs = [await asyncio.to_thread(finish, proc) for proc in consumers]
    finally:
        for proc in consumers:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    per_process = [[line for line in out.splitlines() if line and line != "ready"] for out in outputs]
    everything = per_process[0] + per_process[1]
    assert len(everything) == len(set(everything)), "a message was delivered to both processes"
    assert sorted(everything, key=int) == [str(i) for i in range(n)], "a message was lost"
    assert all(per_process), f"both processes should have worked: {[len(p) for p in per_process]}"
    assert (await driver.stats(["work"]))["work"] == {"ready": 0, "delayed": 0, "leased": 0, "failed": 0}


PRODUCER = """
    import asyncio, sys, time
    from asynctasq.drivers.sqlite import SQLiteDriver

    async def main() -> None:
        driver = SQLiteDriver(sys.argv[1])
        await driver.connect()
        for _ in range(int(sys.argv[2])):
            await asyncio.sleep(0.15)
            await driver.enqueue("wake", repr(time.time()).encode())
        await driver.disconnect()

    asyncio.run(main())
"""


async def test_producer_in_another_process_wakes_a_blocked_consumer(
    driver: SQLiteDriver, db_path: str
) -> None:
    n = 6
    producer = spawn(PRODUCER, db_path, str(n))
    latencies = []
    try:
        for _ in range(n):
            got = await driver.dequeue(["wake"], 1, wait=20)
            picked_up = time.time()
            assert len(got) == 1, "the blocked dequeue never saw the other process's enqueue"
            latencies.append(picked_up - float(got[0].body))
            assert len(await driver.ack(got)) == 1
        await asyncio.to_thread(finish, producer)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.communicate()
    assert max(latencies) < 2.0, latencies
    # adaptive polling of PRAGMA data_version tops out at 50 ms; a fixed 1 s poll would be ~500 ms
    assert statistics.median(latencies) < 0.3, latencies


async def test_in_process_wakeup_across_drivers_and_loops(db_path: str) -> None:
    # polls so slow that only the in-process wake-up can explain a quick pickup
    consumer = SQLiteDriver(db_path, poll_interval_s=20, max_poll_interval_s=20)
    await consumer.connect()
    other_spelling = os.path.join(os.path.dirname(db_path), ".", os.path.basename(db_path))
    producer = SQLiteDriver(other_spelling)
    await producer.connect()
    try:
        waiting = asyncio.create_task(consumer.dequeue(["inproc"], 1, wait=30))
        await asyncio.sleep(0)  # let the consumer block
        await wait_for(lambda: bool(consumer.hub), timeout=5)
        started = time.monotonic()
        await producer.enqueue("inproc", b"same loop")
        got = await waiting
        assert [d.body for d in got] == [b"same loop"]
        assert time.monotonic() - started < 1.0
        await consumer.ack(got)

        # a producer on another event loop, in another thread
        def produce_elsewhere() -> None:
            async def main() -> None:
                async with SQLiteDriver(db_path) as elsewhere:
                    await elsewhere.enqueue("inproc", b"other loop")

            asyncio.run(main())

        waiting = asyncio.create_task(consumer.dequeue(["inproc"], 1, wait=30))
        await wait_for(lambda: bool(consumer.hub), timeout=5)
        started = time.monotonic()
        thread = threading.Thread(target=produce_elsewhere)
        thread.start()
        got = await waiting
        await asyncio.to_thread(thread.join)
        assert [d.body for d in got] == [b"other loop"]
        assert time.monotonic() - started < 2.0
        await consumer.ack(got)
    finally:
        await consumer.disconnect()
        await producer.disconnect()
    assert not consumer.hub, "waiters must unregister"


async def test_results_wake_a_waiting_reader_in_process(db_path: str) -> None:
    reader = SQLiteDriver(db_path, poll_interval_s=20, max_poll_interval_s=20)
    async with reader, SQLiteDriver(db_path) as writer:
        waiting = asyncio.create_task(reader.get_result("task-1", wait=30))
        await wait_for(lambda: bool(reader.hub), timeout=5)
        started = time.monotonic()
        await writer.store_results([("task-1", b"done")], ttl=60)
        assert await waiting == b"done"
        assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "make_path",
    [
        lambda tmp: str(tmp / "no-such-dir" / "q.db"),  # missing directory
        lambda tmp: str(tmp),  # a directory, not a file
        lambda tmp: str(tmp / "plain-file" / "q.db"),  # below a regular file
        lambda tmp: str(tmp / "nul\x00byte.db"),  # garbage in the path
    ],
    ids=["missing-dir", "directory", "below-a-file", "nul-byte"],
)
async def test_bad_paths_give_a_clear_driver_error(tmp_path: Path, make_path: object) -> None:
    (tmp_path / "plain-file").write_text("not a directory")
    path = make_path(tmp_path)  # type: ignore[operator]
    with pytest.raises(DriverError, match=r"SQLite|sqlite"):
        driver = SQLiteDriver(path)
        await driver.connect()


async def test_a_file_that_is_not_a_database_gives_a_clear_driver_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(DriverError, match="not a database"):
        await SQLiteDriver(str(garbage)).connect()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only directories")
async def test_unwritable_directory_gives_a_clear_driver_error(tmp_path: Path) -> None:
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(DriverError, match="writ"):
            await SQLiteDriver(str(locked / "q.db")).connect()
    finally:
        locked.chmod(0o700)


async def test_newer_schema_is_refused(db_path: str) -> None:
    with sqlite3.connect(db_path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(DriverError, match="upgrade asynctasq"):
        await SQLiteDriver(db_path).connect()


async def test_old_sqlite_is_refused_with_advice(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(DriverError, match=r"3\.35.*3\.31\.1"):
        await SQLiteDriver(db_path).connect()


async def test_schema_wal_and_version_are_set(driver: SQLiteDriver, db_path: str) -> None:
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"tasks", "failed", "results", "workers", "commands"} <= tables
    # connecting again (another process would) finds the schema and changes nothing
    async with SQLiteDriver(db_path) as again:
        assert await again.dequeue(["default"], 1, wait=0) == []


async def test_claim_uses_the_index(driver: SQLiteDriver, db_path: str) -> None:
    sql = driver._claim_statement(2)
    with sqlite3.connect(db_path) as raw:
        params = ["token", 0, "a", 0, 5, "b", 0, 5, 5]
        plan = " ".join(r[3] for r in raw.execute("EXPLAIN QUERY PLAN " + sql, params))
    assert "SEARCH tasks USING COVERING INDEX tasks_claim (queue=? AND due<?)" in plan
    assert "SCAN tasks" not in plan


async def test_batches_larger_than_one_statement(driver: SQLiteDriver) -> None:
    n = BATCH_ROWS * 2 + 7
    ids = await driver.enqueue_many([EnqueueItem("big", str(i).encode()) for i in range(n)])
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)
    got = await driver.dequeue(["big"], n, wait=1)
    assert [d.body for d in got] == [str(i).encode() for i in range(n)]
    assert [d.id for d in got] == ids
    assert len(await driver.extend(got, 60)) == n
    assert len(await driver.ack(got)) == n
    assert (await driver.stats(["big"]))["big"] == {"ready": 0, "delayed": 0, "leased": 0, "failed": 0}


async def test_concurrent_transactions_in_one_process_do_not_interleave(driver: SQLiteDriver) -> None:
    await driver.enqueue_many([EnqueueItem("mix", b"x")] * 60)
    got = await driver.dequeue(["mix"], 60, wait=1)
    big = [EnqueueItem("mix-2", b"y")] * (BATCH_ROWS + 1)  # a multi-statement transaction
    outcomes = await asyncio.gather(
        *(driver.fail(d, "boom") for d in got[:30]),
        *(driver.enqueue_many(big) for _ in range(5)),
        driver.ack(got[30:]),
        driver.failed_requeue(queue="nowhere"),
        *(driver.store_results([(f"r{i}", b"v")], ttl=60) for i in range(10)),
    )
    assert outcomes[:30] == [True] * 30
    assert len(outcomes[35]) == 30
    stats = await driver.stats(["mix", "mix-2"])
    assert stats["mix"] == {"ready": 0, "delayed": 0, "leased": 0, "failed": 30}
    assert stats["mix-2"]["ready"] == 5 * (BATCH_ROWS + 1)


LOCK_HOLDER = """
    import sqlite3, sys, time
    raw = sqlite3.connect(sys.argv[1], isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("INSERT INTO tasks (queue, body, due, created_at) VALUES ('held', x'00', 0, 0)")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    raw.execute("COMMIT")
"""


async def test_a_write_waits_for_another_process_holding_the_lock(db_path: str) -> None:
    # SQLite's own busy wait is tiny here, so the driver's backoff retries have to carry it
    async with SQLiteDriver(db_path, busy_timeout_s=0.02) as driver:
        holder = spawn(LOCK_HOLDER, db_path, "0.6")
        try:
            assert await read_line(holder) == "locked"
            started = time.monotonic()
            await driver.enqueue("after-lock", b"x")
            assert time.monotonic() - started >= 0.3, "the write should have waited for the lock"
            await asyncio.to_thread(finish, holder)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.communicate()
        got = await driver.dequeue(["held", "after-lock"], 10, wait=1)
        assert [d.queue for d in got] == ["held", "after-lock"]


async def test_cancelled_blocked_dequeue_leaves_nothing_leased(driver: SQLiteDriver) -> None:
    waiting = asyncio.create_task(driver.dequeue(["cancel"], 5, wait=30))
    await wait_for(lambda: bool(driver.hub), timeout=5)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await driver.enqueue("cancel", b"still here")
    assert [d.body for d in await driver.dequeue(["cancel"], 5, wait=1)] == [b"still here"]


async def test_expired_results_are_deleted(db_path: str) -> None:
    async with SQLiteDriver(db_path) as writer:
        await writer.store_results([("old", b"1")], ttl=0.2)

        async def expired() -> bool:
            return await writer.get_result("old", wait=0) is None

        await wait_for(expired, timeout=5)
    async with SQLiteDriver(db_path) as second:  # a new driver cleans up on its first store
        await second.store_results([("new", b"2")], ttl=60)
    with sqlite3.connect(db_path) as raw:
        assert [r[0] for r in raw.execute("SELECT task_id FROM results")] == ["new"]


async def test_disconnected_driver_says_so(db_path: str) -> None:
    driver = SQLiteDriver(db_path)
    await driver.connect()
    await driver.disconnect()
    with pytest.raises(DriverError, match="disconnected"):
        await driver.enqueue("default", b"x")
    await driver.connect()
    assert await driver.enqueue("default", b"x")
    await driver.disconnect()


async def test_from_config_and_factory(tmp_path: Path) -> None:
    path = str(tmp_path / f"{uuid.uuid4().hex}.db")
    driver = DriverFactory.create_from_config(Config(driver="sqlite", sqlite_path=path, lease_seconds=7))
    assert isinstance(driver, SQLiteDriver)
    assert driver.lease_seconds == 7.0
    assert driver.describe() == f"sqlite:{path}"
    assert driver.capabilities >= {"stats", "failed", "results", "workers", "control", "purge"}


def test_one_driver_on_successive_event_loops(db_path: str) -> None:
    """Sync code (a Flask view, a script) may call asyncio.run once per dispatch."""
    driver = SQLiteDriver(db_path)

    async def burst() -> list[str]:
        return list(await asyncio.gather(*(driver.enqueue("loops", b"x") for _ in range(20))))

    first = asyncio.run(burst())  # the statement lock is contended, so bound to this loop
    second = asyncio.run(burst())

    async def drain() -> int:
        got = await driver.dequeue(["loops"], 100, wait=1)
        acked = len(await driver.ack(got))
        await driver.disconnect()
        return acked

    assert len(set(first + second)) == 40
    assert asyncio.run(drain()) == 40


def test_docs_example_runs(tmp_path: Path) -> None:
    page = (REPO / "docs" / "drivers" / "sqlite.md").read_text()
    example = page.split("```python\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "example-queue.db").exists()


async def test_cancelled_transactions_leave_the_connection_usable(driver: SQLiteDriver) -> None:
    await driver.enqueue_many([EnqueueItem("cx", str(i).encode()) for i in range(8)])
    got = await driver.dequeue(["cx"], 8, wait=1)
    for steps, delivery in enumerate(got):  # cancel at a different point of the transaction each time
        failing = asyncio.create_task(driver.fail(delivery, "cancelled"))
        for _ in range(steps):
            await asyncio.sleep(0)
        failing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await failing
        big = await driver.enqueue_many([EnqueueItem("cx-2", b"y")] * (BATCH_ROWS + 1))
        assert len(big) == BATCH_ROWS + 1
    # every fail either happened completely or not at all
    failed = {e["id"] for e in await driver.failed_list("cx")}
    still_held = await driver.ack([d for d in got if d.id not in failed])
    assert len(failed) + len(still_held) == 8
    stats = await driver.stats(["cx", "cx-2"])
    assert stats["cx"] == {"ready": 0, "delayed": 0, "leased": 0, "failed": len(failed)}
    assert stats["cx-2"]["ready"] == 8 * (BATCH_ROWS + 1)


FORGETFUL = """
    import asyncio, sys
    from asynctasq.drivers.sqlite import SQLiteDriver

    async def main() -> None:
        driver = SQLiteDriver(sys.argv[1])  # never disconnected, kept alive to the end
        await driver.connect()
        await driver.enqueue("kept", b"committed")
        sys.modules["__main__"].keep = driver

    asyncio.run(main())
"""


async def test_a_program_that_never_disconnects_still_exits(driver: SQLiteDriver, db_path: str) -> None:
    child = spawn(FORGETFUL, db_path)
    try:
        await asyncio.to_thread(finish, child, 20.0)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert [d.body for d in await driver.dequeue(["kept"], 1, wait=1)] == [b"committed"]
