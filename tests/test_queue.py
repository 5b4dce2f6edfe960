"""Queue and Job, RQ's shape for registered tasks, against real brokers (SQLite and Redis)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import asynctasq
from asynctasq import Config, Job, Queue, Task, task
from asynctasq.core.driver_factory import DriverFactory
from asynctasq.core.worker import Worker
from asynctasq.errors import InvalidQueueName, TaskDefinitionError, TaskFailed, UnsupportedOperation
from asynctasq.registry import registry
from asynctasq.task import default_producer
from tests.backends import cleanup, driver_config, make_driver, unavailable

QUEUE_BACKENDS = ["sqlite", "redis"]


@task(name="queue_tests.multiply")
def multiply(x: int, y: int) -> int:
    return x * y


@task(name="queue_tests.fails", max_attempts=1)
async def fails() -> None:
    raise ValueError("boom")


class Report(Task):
    name = "queue_tests.report"

    def __init__(self, account_id: int) -> None:
        self.account_id = account_id

    async def handle(self) -> str:
        return f"report {self.account_id}"


def send_mail(message: str) -> None:
    """A plain function, as RQ would enqueue it."""


@pytest.fixture(params=QUEUE_BACKENDS)
async def broker(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[dict[str, Any]]:
    """The process-wide config on a fresh namespace of the backend (what ``Queue()`` uses)."""
    settings = driver_config(str(request.param), namespace)
    if request.param == "redis":
        try:
            await (await make_driver("redis", namespace)).disconnect()  # skips/fails without Redis
        except TypeError as exc:  # the driver is being ported to the new base
            unavailable(f"the redis driver cannot be made in this tree: {exc}")
    previous = asynctasq.get_config()
    asynctasq.configure(**settings)
    try:
        yield settings
    finally:
        await default_producer().close_everywhere()
        asynctasq.configure(previous)
        await cleanup(str(request.param), namespace)


async def work(settings: dict[str, Any], queues: list[str], **options: Any) -> Worker:
    options.setdefault("burst", True)
    driver = DriverFactory.create_from_config(Config(**settings))
    async with driver:
        worker = Worker(driver, queues=queues, install_signal_handlers=False, **options)
        await worker.start()
    return worker


async def stats(settings: dict[str, Any], queue: str) -> dict[str, int]:
    driver = DriverFactory.create_from_config(Config(**settings))
    async with driver:
        return dict((await driver.stats([queue]))[queue])


# -- RQ's jobs page ---------------------------------------------------------------------------


async def test_rq_jobs_page_example(broker: dict[str, Any]) -> None:
    q = Queue()
    job = await q.enqueue(multiply, 20, 40)
    assert isinstance(job, Job)
    assert (job.queue, job.task, job.enqueued) == ("default", "queue_tests.multiply", True)
    assert await q.count() == 1
    worker = await work(broker, ["default"])
    assert worker.succeeded == 1
    assert await job.result(timeout=10) == 800


async def test_rq_jobs_page_example_in_sync_code(broker: dict[str, Any]) -> None:
    """No event loop in the caller: the same methods block and return values."""

    def enqueue() -> tuple[Job, int]:
        q = Queue("low")
        job = q.enqueue(multiply, 20, 40)
        return job, q.count()

    job, ready = await asyncio.to_thread(enqueue)
    driver = DriverFactory.create_from_config(Config(**broker))
    async with driver:
        worker = Worker(driver, queues=["low"], install_signal_handlers=False)
        running = asyncio.create_task(worker.start())
        try:
            value = await asyncio.to_thread(job.result, 20)  # blocks its thread, not this loop
        finally:
            worker.stop()
            await running
    assert (job.queue, ready, value) == ("low", 1, 800)


async def test_a_plain_function_is_refused_with_the_reason(broker: dict[str, Any]) -> None:
    q = Queue("low")
    with pytest.raises(TaskDefinitionError) as caught:
        q.enqueue(send_mail, "hello")
    assert str(caught.value) == (
        "send_mail is not a task: decorate it with @task (asynctasq runs only registered tasks)"
    )
    with pytest.raises(TaskDefinitionError, match="send_mail is not a task"):
        await asyncio.to_thread(q.enqueue, send_mail, "hello")  # sync code: the same refusal
    assert await q.count() == 0


def test_functions_of_main_say_why_a_worker_cannot_find_them() -> None:
    def in_main() -> None: ...

    in_main.__module__ = "__main__"
    with pytest.raises(TaskDefinitionError, match=r"not a task.*defined in __main__.*cannot import"):
        Queue("low").enqueue(in_main)
    registered = task(in_main)
    try:
        assert registered.name.startswith("__main__.")
        with pytest.raises(TaskDefinitionError, match=r"defined in __main__.*@task\(name=\.\.\.\)"):
            Queue("low").enqueue(registered)
        named = task(name="queue_tests.from_main")(in_main)  # a stable name: accepted
        assert Queue("low").enqueue(named).task == "queue_tests.from_main"  # no loop: sent now
    finally:
        registry.remove(registered.name)
        registry.remove("queue_tests.from_main")


# -- enqueueing -------------------------------------------------------------------------------


async def test_enqueue_forms_and_options(broker: dict[str, Any]) -> None:
    q = Queue("forms")
    jobs = [
        await q.enqueue(Report, 7),  # a Task class and its arguments
        await q.enqueue(Report(8)),  # a Task instance
        await q.enqueue(multiply(2, 3).on_queue("elsewhere")),  # a call: this queue wins
        await q.enqueue(task(multiply.func), 3, 3),  # task(f) registers f itself; f is accepted
    ]
    assert [j.queue for j in jobs] == ["forms"] * 4
    assert await q.count() == 4
    worker = await work(broker, ["forms"])
    assert worker.succeeded == 4
    assert [await j.result(timeout=5) for j in jobs] == ["report 7", "report 8", 6, 9]
    with pytest.raises(TaskDefinitionError, match="already has its arguments"):
        q.enqueue(multiply(1, 2), 3)


async def test_enqueue_in_and_at_delay_the_task(broker: dict[str, Any]) -> None:
    q = Queue("later")
    await q.enqueue_in(timedelta(minutes=5), multiply, 1, 2)
    await q.enqueue_in(300, multiply, 1, 2)
    await q.enqueue_at(datetime.now() + timedelta(hours=1), multiply, 1, 2)
    soon = await q.enqueue_at(datetime.now() - timedelta(seconds=1), multiply, 2, 2)  # past: now
    counts = await stats(broker, "later")
    assert (counts["ready"], counts["delayed"]) == (1, 3)
    assert await q.count() == 1
    await work(broker, ["later"])
    assert await soon.result(timeout=5) == 4
    with pytest.raises(TaskDefinitionError, match="must not be negative"):
        q.enqueue_in(-1, multiply, 1, 2)


async def test_enqueue_many_is_one_batch(broker: dict[str, Any]) -> None:
    q = Queue("batch")
    jobs = await q.enqueue_many([multiply(n, 10) for n in range(5)])
    assert len({j.id for j in jobs}) == 5
    assert all(j.enqueued and j.queue == "batch" for j in jobs)
    assert await q.count() == 5
    await work(broker, ["batch"])
    assert [await j.result(timeout=5) for j in jobs] == [0, 10, 20, 30, 40]
    assert await q.enqueue_many([]) == []


async def test_a_job_is_sent_when_awaited(broker: dict[str, Any]) -> None:
    q = Queue("awaited")
    job = q.enqueue(multiply, 1, 1)
    assert not job.enqueued
    assert "not sent" in repr(job)
    with pytest.raises(TaskDefinitionError, match="was not sent yet"):
        job.result()
    assert await q.count() == 0
    assert await job is job
    assert await job is job  # awaiting again sends nothing more
    assert await q.count() == 1


async def test_count_and_empty(broker: dict[str, Any]) -> None:
    q = Queue("emptied")
    await q.enqueue_many([multiply(1, 1), multiply(2, 2)])
    await q.enqueue_in(600, multiply, 3, 3)
    assert await q.count() == 2
    assert await q.empty() == 3
    assert await q.count() == 0
    assert (await stats(broker, "emptied"))["delayed"] == 0
    assert await asyncio.to_thread(q.empty) == 0  # sync code too


async def test_results_of_failed_tasks(broker: dict[str, Any]) -> None:
    job = await Queue().enqueue(fails)
    await work(broker, ["default"])
    with pytest.raises(TaskFailed, match="boom"):
        await job.result(timeout=5)


async def test_cancel_removes_a_waiting_job_only(broker: dict[str, Any]) -> None:
    low = Queue("low")
    kept, delayed = await low.enqueue_in(600, multiply, 1, 1), await low.enqueue_in(600, multiply, 2, 2)
    ready = await low.enqueue(multiply, 3, 3)
    assert kept.message_id and kept.message_id != delayed.message_id
    assert await delayed.cancel() is True
    assert await delayed.cancel() is False  # gone already
    assert await ready.cancel() is True
    assert await stats(broker, "low") == {"ready": 0, "delayed": 1, "leased": 0, "failed": 0}
    done = await low.enqueue(multiply, 4, 4)
    await work(broker, ["low"])
    assert await done.result(timeout=5) == 16
    assert await done.cancel() is False  # it ran


async def test_cancel_in_sync_code(broker: dict[str, Any]) -> None:
    def enqueue_and_cancel() -> tuple[bool, bool]:
        job = Queue("low").enqueue_in(600, multiply, 1, 1)
        return job.cancel(), job.cancel()

    assert await asyncio.to_thread(enqueue_and_cancel) == (True, False)
    assert (await stats(broker, "low"))["delayed"] == 0


async def test_cancel_says_what_is_missing() -> None:
    from asynctasq.drivers.memory import MemoryDriver

    class NoCancel(MemoryDriver):
        capabilities = MemoryDriver.capabilities - {"cancel"}

    async with NoCancel(namespace="no-cancel") as driver:
        job = await Queue("low", driver=driver).enqueue_in(600, multiply, 1, 1)
        with pytest.raises(UnsupportedOperation, match="cannot remove a waiting message"):
            await job.cancel()
        assert (await driver.stats(["low"]))["low"]["delayed"] == 1  # still there
        unsent = Queue("low", driver=driver).enqueue(multiply, 1, 1)
        with pytest.raises(TaskDefinitionError, match="not sent yet"):
            unsent.cancel()
        await unsent


# -- where a queue connects -------------------------------------------------------------------


def test_queue_names_and_sources(tmp_path: Path) -> None:
    assert Queue().name == asynctasq.get_config().default_queue
    with pytest.raises(InvalidQueueName):
        Queue("no spaces")
    with pytest.raises(asynctasq.ConfigError, match="at most one of"):
        Queue("x", url="memory://", driver=DriverFactory.from_url("memory://"))
    with pytest.raises(asynctasq.ConfigError, match="no driver for URL"):
        Queue("x", url="nope://where")


async def test_a_queue_on_its_own_url(tmp_path: Path) -> None:
    path = tmp_path / "own.db"
    q = Queue("own", url=f"sqlite:///{path}")
    try:
        job = await q.enqueue(multiply, 6, 7)
        sync_job = await asyncio.to_thread(q.enqueue, multiply, 7, 7)  # the background loop
        assert await q.count() == 2
        worker = await work({"driver": "sqlite", "sqlite_path": str(path)}, ["own"])
        assert worker.succeeded == 2
        assert (await job.result(timeout=5), await sync_job.result(timeout=5)) == (42, 49)
    finally:
        await q.close()
    assert not q.producer._drivers


async def test_a_queue_on_your_driver(tmp_path: Path) -> None:
    driver = DriverFactory.from_url(f"sqlite:///{tmp_path / 'mine.db'}")
    async with driver:
        q = Queue("mine", driver=driver)
        job = await q.enqueue(multiply, 5, 5)
        assert await q.count() == 1
        with pytest.raises(TaskDefinitionError, match="works in async code only"):
            await asyncio.to_thread(q.count)
        worker = Worker(driver, queues=["mine"], burst=True, install_signal_handlers=False)
        await worker.start()
        assert await job.result(timeout=5) == 25
        await q.close()  # leaves your driver alone
        assert await q.count() == 0


def test_type_checkers_see_the_task_signature(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    source = textwrap.dedent(
        """
        from asynctasq import Job, Queue, task
        from asynctasq.integrations.flask import AsyncTasQ

        tq = AsyncTasQ()

        @task
        def multiply(x: int, y: int) -> int:
            return x * y

        @tq.job(queue="email")
        def send_password_reset(user_id: int) -> None: ...

        async def main() -> None:
            q = Queue("low")
            job: Job = await q.enqueue(multiply, 20, 40)
            q.enqueue(multiply, "20", 40)
            send_password_reset.enqueue(user_id=7)
            send_password_reset.enqueue(user="7")
        """
    )
    path = os.path.join(str(tmp_path), "snippet.py")
    with open(path, "w") as f:
        f.write(source)
    out, _, status = api.run(["--strict", "--no-incremental", "--cache-dir", os.devnull, path])
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert status == 1 and len(errors) == 2, out
    assert 'No overload variant of "enqueue" of "Queue" matches argument types' in errors[0]
    assert 'Unexpected keyword argument "user" for "enqueue" of "AppTask"' in errors[1]


async def test_sync_code_on_a_loop_thread_blocks_and_sends(broker: dict[str, Any]) -> None:
    """A sync helper called from a coroutine gets the value, not an awaitable to forget."""
    q = Queue("helper")

    def helper() -> Job:
        return q.enqueue(multiply, 2, 21)

    job = helper()
    assert job.enqueued
    assert await q.count() == 1
    await work(broker, ["helper"])
    assert await job.result(timeout=5) == 42


async def test_the_docs_example_runs(
    broker: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "tasks.md").read_text()
    section = text[text.index("## Queues\n") :]
    (tmp_path / "queues_example.py").write_text(
        section[section.index("```python\n") + 10 : section.index("```\n")]
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import queues_example  # type: ignore[import-not-found]

    try:
        driver = DriverFactory.create_from_config(Config(**broker))
        async with driver:
            worker = Worker(driver, queues=["default", "low"], install_signal_handlers=False)
            running = asyncio.create_task(worker.start())
            try:
                assert await queues_example.produce() == 800
                assert await asyncio.to_thread(queues_example.produce_sync) == 800
            finally:
                worker.stop()
                await running
        assert (await stats(broker, "low"))["delayed"] == 1
    finally:
        registry.remove("queues_example.multiply")
        sys.modules.pop("queues_example", None)


def test_a_script_that_enqueues_its_own_functions_is_told_why(tmp_path: Path) -> None:
    script = tmp_path / "send.py"
    script.write_text(
        textwrap.dedent(
            """
            from asynctasq import Queue, task
            from asynctasq.errors import TaskDefinitionError

            @task
            def multiply(x: int, y: int) -> int:
                return x * y

            def send_mail(message: str) -> None: ...

            for func in (multiply, send_mail):
                try:
                    Queue("low").enqueue(func, 1, 2)
                except TaskDefinitionError as exc:
                    print(exc)
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    env["ASYNCTASQ_SQLITE_PATH"] = str(tmp_path / "never.db")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    task_line, function_line = out.stdout.splitlines()
    assert task_line.startswith("task __main__.multiply is defined in __main__ (the script being run)")
    assert "would never find this one" in task_line
    assert function_line.startswith("send_mail is not a task: decorate it with @task")
    assert "defined in __main__" in function_line
    assert not (tmp_path / "never.db").exists()  # refused before any connection
