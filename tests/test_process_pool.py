"""The process pool with real child processes: the pool on its own, then inside a Worker on the
memory and SQLite drivers. Task functions live in tests/pool_tasks.py, which the children import."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import asynctasq
from asynctasq import Worker
from asynctasq.drivers.base import BaseDriver
from asynctasq.errors import ProcessLost, Retry, SerializationError, TaskTimeout, UnknownTaskError
from asynctasq.process_pool import ProcessPool, ProcessPoolError, RemoteTaskError
from tests import pool_tasks
from tests.backends import cleanup, driver_config, make_driver
from tests.conftest import wait_for

ROOT = str(Path(__file__).resolve().parent.parent)
T = "tests.pool_tasks."

MakePool = Callable[..., Awaitable[ProcessPool]]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


async def read_pid(path: Path) -> int:
    """Wait for a task to write its process id into ``path``."""
    await wait_for(lambda: path.exists() and path.read_text() != "")
    return int(path.read_text())


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    pools: list[ProcessPool] = []

    async def make(size: int = 1, **options: Any) -> ProcessPool:
        pool = ProcessPool(size, imports=["tests.pool_tasks"], sys_path=[ROOT], **options)
        pools.append(pool)
        await pool.start()
        return pool

    yield make
    for pool in pools:
        await pool.close(timeout=0)


# -- the pool on its own -----------------------------------------------------------------


async def test_start_spawns_every_child_before_any_task(make_pool: MakePool) -> None:
    pool = await make_pool(2)
    assert pool.size == 2
    assert len(pool.pids) == 2 and os.getpid() not in pool.pids
    assert all(alive(pid) for pid in pool.pids)


async def test_runs_sync_async_and_class_tasks(make_pool: MakePool) -> None:
    pool = await make_pool(2)
    assert await pool.run(T + "add", [2, 3], {}, None) == 5
    assert await pool.run(T + "async_add", [2], {"b": 4}, 10) == 6
    assert await pool.run(T + "Multiply", [6, 7], {}, None) == 42
    results = await asyncio.gather(*(pool.run(T + "add", [i, i], {}, 10) for i in range(50)))
    assert results == [2 * i for i in range(50)]


async def test_large_arguments_and_results_cross_whole(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    blob = os.urandom(8 * 2**20)
    assert await pool.run(T + "echo", [blob], {}, 30) == blob
    many = await asyncio.gather(*(pool.run(T + "echo", [blob[i : i + 100_000]], {}, 30) for i in range(20)))
    assert many == [blob[i : i + 100_000] for i in range(20)]


async def test_modules_are_imported_once_per_child_and_async_tasks_share_one_loop(
    make_pool: MakePool,
) -> None:
    pool = await make_pool(1)
    seen = {tuple(await pool.run(T + "whoami", [], {}, None)) for _ in range(5)}
    [(pid, token)] = seen
    assert pid == pool.pids[0] and token != pool_tasks.IMPORT_TOKEN
    loops = {tuple(await pool.run(T + "loop_identity", [], {}, None)) for _ in range(3)}
    assert len(loops) == 1


async def test_cpu_bound_tasks_do_not_block_the_event_loop(make_pool: MakePool) -> None:
    pool = await make_pool(2)
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.gather(*(pool.run(T + "burn", [1.0], {}, None) for _ in range(2)))
    done.set()
    await ticking
    # blocked by the CPU work, the loop would miss ticks for a whole second
    assert len(gaps) > 20 and max(gaps) < 0.4, max(gaps)


async def test_timeout_kills_the_child_and_a_replacement_takes_the_slot(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool(1)
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(TaskTimeout, match=r"'tests.pool_tasks.nap' timed out after 0.5s"):
        await pool.run(T + "nap", [60, str(pid_file)], {}, 0.5)
    assert time.monotonic() - started < 10
    pid = int(pid_file.read_text())
    await wait_for(lambda: not alive(pid))
    await wait_for(lambda: len(pool.pids) == 1 and pid not in pool.pids)
    assert await pool.run(T + "add", [1, 1], {}, 5) == 2


@pytest.mark.parametrize(
    ("name", "args", "how"),
    [
        ("kill_self", [], "was killed by SIGKILL"),
        ("exit_hard", [3], "exited with code 3"),
        ("segfault", [], "was killed by SIGSEGV"),
    ],
)
async def test_a_dying_child_is_reported_as_lost_and_replaced(
    make_pool: MakePool, name: str, args: list[Any], how: str
) -> None:
    pool = await make_pool(1)
    [pid] = pool.pids
    with pytest.raises(ProcessLost, match=f"^worker process lost: pool process {pid} {how}.*{name}"):
        await pool.run(T + name, args, {}, 30)
    await wait_for(lambda: len(pool.pids) == 1 and pid not in pool.pids)
    assert await pool.run(T + "add", [1, 2], {}, 5) == 3


async def test_a_child_killed_from_outside_fails_only_its_own_task(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool(2)
    victim = asyncio.create_task(pool.run(T + "nap", [60, str(tmp_path / "victim")], {}, None))
    bystander = asyncio.create_task(pool.run(T + "nap", [1.0, str(tmp_path / "bystander")], {}, None))
    pid = await read_pid(tmp_path / "victim")
    await read_pid(tmp_path / "bystander")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ProcessLost, match="out of memory, or killed from outside"):
        await victim
    assert await bystander == "rested"
    await wait_for(lambda: len(pool.pids) == 2 and pid not in pool.pids)


async def test_recycles_a_child_after_max_tasks(make_pool: MakePool) -> None:
    pool = await make_pool(1, max_tasks_per_child=3)
    answers = [tuple(await pool.run(T + "whoami", [], {}, 10)) for _ in range(7)]
    pids = [pid for pid, _ in answers]
    assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4] == pids[5] != pids[6]
    assert len({token for _, token in answers}) == 3  # each new child imported the module once
    await wait_for(lambda: not alive(pids[0]) and not alive(pids[3]))


async def test_recycles_a_child_over_its_memory_limit_after_delivering_the_result(
    make_pool: MakePool,
) -> None:
    pool = await make_pool(1, max_memory_per_child_mb=150)
    pid, kept = await pool.run(T + "hoard", [5], {}, 30)
    assert (await pool.run(T + "whoami", [], {}, 10))[0] == pid  # under the limit: same child
    big_pid, kept = await pool.run(T + "hoard", [200], {}, 30)  # over it: still answered
    assert big_pid == pid and kept == 2
    await wait_for(lambda: not alive(pid))
    new_pid, _ = await pool.run(T + "whoami", [], {}, 10)
    assert new_pid != pid


async def test_unpicklable_arguments_and_results_name_the_task_and_type(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    [pid] = pool.pids
    with pytest.raises(
        SerializationError,
        match=r"'tests.pool_tasks.echo': argument 'value'\['k'\]\[1\] of type _thread.lock",
    ):
        await pool.run(T + "echo", [], {"value": {"k": [1, threading.Lock()]}}, 10)
    with pytest.raises(SerializationError, match=r"'tests.pool_tasks.add': argument 0 of type function"):
        await pool.run(T + "add", [lambda: 1, 2], {}, 10)
    with pytest.raises(
        SerializationError,
        match=r"'tests.pool_tasks.give_lock': return value\['ok'\]\[1\] of type _thread.lock",
    ):
        await pool.run(T + "give_lock", [], {}, 10)
    assert pool.pids == [pid]  # the child serves on
    assert await pool.run(T + "echo", [{"k": [1, 2.5, "x", None]}], {}, 10) == {"k": [1, 2.5, "x", None]}


async def test_task_exceptions_cross_with_the_remote_traceback(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    [pid] = pool.pids
    with pytest.raises(ValueError, match=r"^boom$") as raised:
        await pool.run(T + "fail", ["boom"], {}, 10)
    remote = raised.value.remote_traceback  # type: ignore[attr-defined]
    assert "pool_tasks.py" in remote and "raise ValueError(message)" in remote
    with pytest.raises(RemoteTaskError, match=r"^tests.pool_tasks.OddError: 7: odd$") as odd:
        await pool.run(T + "fail_oddly", [], {}, 10)
    assert odd.value.type_name == "tests.pool_tasks.OddError" and "OddError(7" in odd.value.remote_traceback
    with pytest.raises(RemoteTaskError, match=r"^SystemExit: 4$"):
        await pool.run(T + "call_sys_exit", [4], {}, 10)
    with pytest.raises(Retry, match=r"^not yet$") as retry:
        await pool.run(T + "ask_retry", [2.5], {}, 10)
    assert retry.value.delay == 2.5
    with pytest.raises(UnknownTaskError, match=r"tests\.pool_tasks\.missing"):
        await pool.run(T + "missing", [], {}, 10)
    assert pool.pids == [pid]


@pytest.mark.parametrize("name", ["nap", "async_nap"])
async def test_cancelling_run_kills_the_child(make_pool: MakePool, tmp_path: Path, name: str) -> None:
    pool = await make_pool(1)
    running = asyncio.create_task(pool.run(T + name, [60, str(tmp_path / "pid")], {}, None))
    pid = await read_pid(tmp_path / "pid")
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await wait_for(lambda: not alive(pid))
    await wait_for(lambda: len(pool.pids) == 1 and pid not in pool.pids)
    assert await pool.run(T + "add", [2, 2], {}, 5) == 4


async def test_run_waits_for_a_free_child(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    results = await asyncio.gather(*(pool.run(T + "nap", [0.1], {}, 10) for _ in range(4)))
    assert results == ["rested"] * 4


async def test_close_waits_for_running_tasks(make_pool: MakePool, tmp_path: Path) -> None:
    pool = await make_pool(2)
    pids = pool.pids
    running = asyncio.create_task(pool.run(T + "nap", [0.5, str(tmp_path / "pid")], {}, None))
    await read_pid(tmp_path / "pid")
    await asyncio.gather(pool.close(timeout=30), pool.close(timeout=30))
    assert running.done() and running.result() == "rested"
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(ProcessPoolError, match="closed"):
        await pool.run(T + "add", [1, 2], {}, None)
    await pool.close()


async def test_close_kills_tasks_still_running_after_its_timeout(make_pool: MakePool, tmp_path: Path) -> None:
    pool = await make_pool(1)
    running = asyncio.create_task(pool.run(T + "nap", [60, str(tmp_path / "pid")], {}, None))
    waiting = asyncio.create_task(pool.run(T + "add", [1, 2], {}, None))
    pid = await read_pid(tmp_path / "pid")
    started = time.monotonic()
    await pool.close(timeout=0.2)
    assert time.monotonic() - started < 10
    with pytest.raises(ProcessLost, match="pool was closed"):
        await running
    with pytest.raises(ProcessPoolError, match="closed"):
        await waiting
    assert not alive(pid)


async def test_a_failing_import_fails_start_and_leaves_no_child() -> None:
    pool = ProcessPool(2, imports=["tests.no_such_module"], sys_path=[ROOT])
    with pytest.raises(ProcessPoolError, match=r"No module named 'tests\.no_such_module'"):
        await pool.start()
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("asynctasq-pool")]


@pytest.mark.parametrize("after", [0, 0.05, 0.2])  # spawning, importing, maybe ready
async def test_a_cancelled_start_leaves_no_child(after: float) -> None:
    pool = ProcessPool(2, imports=["tests.pool_tasks"], sys_path=[ROOT])
    starting = asyncio.create_task(pool.start())
    await asyncio.sleep(after)
    starting.cancel()
    try:
        await starting
    except asyncio.CancelledError:
        pass  # cancelled while starting: no child may be left behind
    else:
        await pool.close()  # on a busy machine it was ready before the cancel arrived

    def pool_children() -> list[multiprocessing.process.BaseProcess]:
        return [p for p in multiprocessing.active_children() if p.name.startswith("asynctasq-pool")]

    await wait_for(lambda: not pool_children())
    with pytest.raises(ProcessPoolError):
        await pool.run(T + "add", [1, 2], {}, None)


def test_works_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        pool = ProcessPool(1, imports=["tests.pool_tasks"], sys_path=[ROOT])
        await pool.start()
        try:
            async with asyncio.timeout(60):  # pytest-timeout's signal does not stop uvloop
                await exercise(pool)
        finally:
            await pool.close()

    async def exercise(pool: ProcessPool) -> None:
        assert await pool.run(T + "add", [1, 2], {}, 5) == 3
        assert await pool.run(T + "async_add", [1, 2], {}, 5) == 3
        with pytest.raises(TaskTimeout):
            await pool.run(T + "nap", [30], {}, 0.2)
        assert await pool.run(T + "add", [2, 2], {}, 5) == 4

    uvloop.run(main())


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_children_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        f"""
        import asyncio, sys
        sys.path.insert(0, {ROOT!r})
        from asynctasq.process_pool import ProcessPool

        async def main():
            pool = ProcessPool(2, imports=["tests.pool_tasks"])
            await pool.start()
            print(*pool.pids, flush=True)
            await pool.run("tests.pool_tasks.nap", [60], {{}}, None)

        if __name__ == "__main__":
            asyncio.run(main())
        """,
    )
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as parent:
        try:
            assert parent.stdout is not None
            pids = [int(p) for p in parent.stdout.readline().split()]
            assert len(pids) == 2 and all(alive(p) for p in pids)
        finally:
            parent.kill()
    asyncio.run(wait_for(lambda: not any(alive(p) for p in pids)))


def test_tasks_defined_in_the_main_script(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        f"""
        import asyncio, sys
        sys.path.insert(0, {ROOT!r})
        from asynctasq import task
        from asynctasq.process_pool import ProcessPool

        class Point:
            def __init__(self, x):
                self.x = x

        @task(process=True)
        def double(point):
            return Point(point.x * 2)

        async def main():
            pool = ProcessPool(1)
            await pool.start()
            try:
                result = await pool.run(double.name, [Point(21)], {{}}, 10)
                print(double.name, type(result).__name__, result.x)
            finally:
                await pool.close()

        if __name__ == "__main__":
            asyncio.run(main())
        """,
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["__main__.double", "Point", "42"]


# -- inside a Worker, on the memory and SQLite drivers -------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
async def pool_driver(request: pytest.FixtureRequest) -> AsyncIterator[BaseDriver]:
    backend = str(request.param)
    namespace = "pp" + uuid.uuid4().hex[:10]
    driver = await make_driver(backend, namespace, lease_seconds=1.0)
    asynctasq.configure(driver=backend)
    try:
        yield driver
    finally:
        await driver.disconnect()
        await cleanup(backend, namespace)


def pool_worker(driver: BaseDriver, **options: Any) -> Worker:
    options.setdefault("install_signal_handlers", False)
    options.setdefault("process_pool_size", 1)
    return Worker(driver, imports=["tests.pool_tasks"], sys_path=[ROOT], **options)


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    runner = asyncio.create_task(worker.start())
    try:
        yield runner
    finally:
        worker.stop()
        await asyncio.wait_for(runner, 30)


async def test_worker_sends_a_task_that_always_kills_its_child_to_the_failed_registry(
    pool_driver: BaseDriver, tmp_path: Path
) -> None:
    await pool_tasks.pid_on_attempt(str(tmp_path)).max_attempts(3).retry_after(0.01).dispatch(pool_driver)

    async def failed() -> bool:
        return bool(await pool_driver.failed_list())

    worker = pool_worker(pool_driver)
    async with running(worker):
        await wait_for(failed, timeout=30)
        after = await pool_tasks.add(2, 3).dispatch(pool_driver)  # the worker goes on
        assert await asynctasq.result(after, timeout=10, driver=pool_driver) == 5
    [entry] = await pool_driver.failed_list()
    assert "worker process lost" in entry["error"] and "SIGKILL" in entry["error"]
    assert len(os.listdir(tmp_path)) == 3  # one run per attempt, then no more
    assert worker.failed == 1


async def test_worker_runs_process_tasks_with_hard_timeouts_and_clear_errors(
    pool_driver: BaseDriver, tmp_path: Path
) -> None:
    ok = await asynctasq.dispatch_many(
        [pool_tasks.add(1, 2), pool_tasks.async_add(3, 4), pool_tasks.Multiply(5, 6)], driver=pool_driver
    )
    slow = await pool_tasks.nap(60, str(tmp_path / "pid")).timeout(0.5).max_attempts(1).dispatch(pool_driver)
    bad = await pool_tasks.give_lock().max_attempts(1).dispatch(pool_driver)
    async with running(pool_worker(pool_driver, process_pool_size=2)):
        assert [await asynctasq.result(i, timeout=30, driver=pool_driver) for i in ok] == [3, 7, 30]
        with pytest.raises(asynctasq.TaskFailed, match=r"timed out after 0\.5s"):
            await asynctasq.result(slow, timeout=30, driver=pool_driver)
        with pytest.raises(asynctasq.TaskFailed, match=r"give_lock.*of type _thread\.lock cannot cross"):
            await asynctasq.result(bad, timeout=30, driver=pool_driver)
        after = await pool_tasks.add(2, 2).dispatch(pool_driver)
        assert await asynctasq.result(after, timeout=30, driver=pool_driver) == 4
    assert not alive(int((tmp_path / "pid").read_text()))


async def test_worker_recycles_pool_processes(pool_driver: BaseDriver) -> None:
    ids = await asynctasq.dispatch_many([pool_tasks.whoami() for _ in range(6)], driver=pool_driver)
    async with running(pool_worker(pool_driver, process_pool_max_tasks_per_child=2, concurrency=1)):
        answers = [await asynctasq.result(i, timeout=30, driver=pool_driver) for i in ids]
    pids = [pid for pid, _ in answers]
    assert len(set(pids)) == 3 and pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]


async def test_worker_extends_the_lease_of_a_long_cpu_task(pool_driver: BaseDriver, tmp_path: Path) -> None:
    # the lease is 1 s; the task burns the CPU for 3 s while a second worker watches the queue
    call = pool_tasks.burn_marked(3.0, str(tmp_path)).max_attempts(1)
    task_id = await call.dispatch(pool_driver)
    first = pool_worker(pool_driver)
    async with running(first):
        await wait_for(lambda: any(tmp_path.iterdir()), timeout=30)
        async with running(pool_worker(pool_driver)):
            assert await asynctasq.result(task_id, timeout=30, driver=pool_driver) > 0
    assert len(os.listdir(tmp_path)) == 1
    assert await pool_driver.failed_list() == []


async def test_sigterm_lets_process_tasks_finish_within_the_shutdown_timeout(
    pool_driver: BaseDriver, tmp_path: Path
) -> None:
    task_id = await pool_tasks.nap(1.0, str(tmp_path / "pid")).dispatch(pool_driver)
    worker = pool_worker(pool_driver, install_signal_handlers=True, shutdown_timeout=30)
    runner = asyncio.create_task(worker.start())
    pid = await read_pid(tmp_path / "pid")
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)  # the worker's handler
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(runner, 30)
    assert worker.succeeded == 1
    assert await asynctasq.result(task_id, timeout=1, driver=pool_driver) == "rested"
    assert not alive(pid)


async def test_sigterm_kills_process_tasks_past_the_shutdown_timeout_and_gives_them_back(
    pool_driver: BaseDriver, tmp_path: Path
) -> None:
    await pool_tasks.nap(60, str(tmp_path / "pid")).dispatch(pool_driver)
    worker = pool_worker(pool_driver, install_signal_handlers=True, shutdown_timeout=0.5)
    runner = asyncio.create_task(worker.start())
    pid = await read_pid(tmp_path / "pid")
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
    started = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(runner, 30)
    assert time.monotonic() - started < 10
    assert not alive(pid)
    assert worker.failed == 0
    stats = await pool_driver.stats(["default"])
    assert stats["default"]["ready"] == 1 and stats["default"]["failed"] == 0


async def test_sigterm_to_a_worker_process_covers_its_pool(tmp_path: Path) -> None:
    namespace = "pp" + uuid.uuid4().hex[:10]
    driver = await make_driver("sqlite", namespace)
    asynctasq.configure(driver="sqlite")
    try:
        sqlite_path = driver_config("sqlite", namespace)["sqlite_path"]
        await pool_tasks.nap(60, str(tmp_path / "pid")).dispatch(driver)
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "asynctasq",
                "worker",
                "--driver",
                "sqlite",
                "--sqlite-path",
                sqlite_path,
                "--import",
                "tests.pool_tasks",
                "--process-pool-size",
                "2",
                "--shutdown-timeout",
                "0.5",
            ],
            cwd=ROOT,
        )
        try:
            pid = await read_pid(tmp_path / "pid")
            worker.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(worker.wait, 30)
        finally:
            if worker.poll() is None:
                worker.kill()
        assert code == 0
        assert not alive(pid)
        stats = await driver.stats(["default"])
        assert stats["default"]["ready"] == 1 and stats["default"]["failed"] == 0
    finally:
        await driver.disconnect()
        await cleanup("sqlite", namespace)


def test_the_docs_example_runs_as_written(tmp_path: Path) -> None:
    text = (Path(ROOT) / "docs" / "process-pool.md").read_text()
    example = text[text.index("```python\n") + len("```python\n") :]
    script = tmp_path / "example.py"
    script.write_text(example[: example.index("```")])
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    env["PYTHONPATH"] = ROOT
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "4 digests"


async def test_current_task_in_process_tasks(pool_driver: BaseDriver) -> None:
    first = await pool_tasks.who_runs_me().on_queue("cpu").max_attempts(5).dispatch(pool_driver)
    second = await pool_tasks.who_runs_me_async().dispatch(pool_driver)
    async with running(pool_worker(pool_driver, queues=["default", "cpu"])):
        seen = await asynctasq.result(first, timeout=30, driver=pool_driver)
        other = await asynctasq.result(second, timeout=30, driver=pool_driver)
    assert seen[:5] == [first, pool_tasks.who_runs_me.name, "cpu", 1, 5]
    assert seen[5] <= time.time() and seen[6] != os.getpid()
    assert other == [second, pool_tasks.who_runs_me_async.name, 1]
