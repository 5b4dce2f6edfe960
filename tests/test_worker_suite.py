"""The worker on every driver, on its real broker (tests.backends.BACKENDS): a result, a retry
with backoff, a failure into the failed registry, a delayed task, stop-task, and a give-back on
SIGTERM that costs no attempt. A capability a driver lacks is asserted as refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import asynctasq
from asynctasq import Retry, Worker, task
from asynctasq.config import env_name
from asynctasq.drivers.base import BaseDriver
from asynctasq.errors import UnsupportedOperation
from asynctasq.message import Envelope
from tests.backends import driver_config
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
MakeDriver = Callable[..., Awaitable[BaseDriver]]

runs: dict[str, list[float]] = {}
gates: dict[str, asyncio.Event] = {}


@task(max_attempts=3, retry_after=0.2)
async def suite_flaky(key: str, fail_times: int) -> str:
    runs.setdefault(key, []).append(time.monotonic())
    if len(runs[key]) <= fail_times:
        raise ValueError(f"{key}: attempt {len(runs[key])} fails")
    return f"{key} ok"


@task(max_attempts=2)
async def suite_asks_retry(key: str) -> int:
    runs.setdefault(key, []).append(time.monotonic())
    if len(runs[key]) == 1:
        raise Retry(delay=0.3)
    return len(runs[key])


@task
async def suite_echo(key: str) -> str:
    runs.setdefault(key, []).append(time.monotonic())
    return key


@task
async def suite_gate(key: str) -> str:
    runs.setdefault(key, []).append(time.monotonic())
    await gates[key].wait()
    return key


def make_worker(driver: BaseDriver, queue: str, **options: Any) -> Worker:
    options.setdefault("install_signal_handlers", False)
    options.setdefault("heartbeat_interval", 0.2)
    return Worker(driver, queues=[queue], **options)


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[None]:
    runner = asyncio.create_task(worker.start())
    try:
        yield
    finally:
        worker.stop()
        await asyncio.wait_for(runner, 30)


async def outcome(driver: BaseDriver, task_id: str, timeout: float = 20) -> Any:
    """The task's result, or, on a driver without results, that it is refused."""
    if driver.supports("results"):
        return await asynctasq.result(task_id, timeout=timeout, driver=driver)
    with pytest.raises(UnsupportedOperation):
        await driver.get_result(task_id, wait=0)
    return None


async def nothing_left(driver: BaseDriver, queue: str) -> bool:
    if not driver.supports("stats"):
        return True
    stats = (await driver.stats([queue]))[queue]
    return stats["ready"] == stats["delayed"] == stats["leased"] == 0


async def test_a_result(driver_factory: MakeDriver, queue: str) -> None:
    driver = await driver_factory()
    task_id = await suite_echo(f"{queue}-r").on_queue(queue).dispatch(driver)
    worker = make_worker(driver, queue)
    async with running(worker):
        await wait_for(lambda: worker.succeeded == 1, timeout=20)
        value = await outcome(driver, task_id)
    assert value in (f"{queue}-r", None) and (value is None) == (not driver.supports("results"))
    assert len(runs[f"{queue}-r"]) == 1
    assert await nothing_left(driver, queue)


async def test_a_retry_with_backoff(driver_factory: MakeDriver, queue: str) -> None:
    driver = await driver_factory()
    key = f"{queue}-flaky"
    task_id = await suite_flaky(key, 2).on_queue(queue).dispatch(driver)
    asked = await suite_asks_retry(f"{queue}-asked").on_queue(queue).dispatch(driver)
    worker = make_worker(driver, queue)
    async with running(worker):
        await wait_for(lambda: worker.succeeded == 2, timeout=30)
        assert await outcome(driver, task_id) in (f"{key} ok", None)
        assert await outcome(driver, asked) in (2, None)
    first, second, third = runs[key]
    # backoff: retry_after * 2 ** (attempt - 1), jittered down to half
    assert second - first >= 0.09 and third - second >= 0.19
    one, two = runs[f"{queue}-asked"]
    assert two - one >= 0.29, "Retry(delay=...) is honoured"
    assert worker.retried == 3


async def test_a_failure_goes_to_the_failed_registry(driver_factory: MakeDriver, queue: str) -> None:
    driver = await driver_factory()
    key = f"{queue}-doomed"
    task_id = await suite_flaky(key, 99).max_attempts(2).retry_after(0.01).on_queue(queue).dispatch(driver)
    worker = make_worker(driver, queue)
    async with running(worker):
        await wait_for(lambda: worker.failed == 1, timeout=30)
    assert len(runs[key]) == 2
    if driver.supports("failed"):
        [entry] = await driver.failed_list(queue)
        assert Envelope.decode(entry["body"]).id == task_id
        assert f"ValueError: {key}: attempt 2 fails" in entry["error"]
    else:
        with pytest.raises(UnsupportedOperation):
            await driver.failed_list(queue)
    if driver.supports("results"):
        with pytest.raises(asynctasq.TaskFailed, match="attempt 2 fails"):
            await asynctasq.result(task_id, timeout=5, driver=driver)


async def test_a_delayed_task(driver_factory: MakeDriver, queue: str) -> None:
    driver = await driver_factory()
    key = f"{queue}-later"
    sent = time.monotonic()
    task_id = await suite_echo(key).on_queue(queue).delay(0.6).dispatch(driver)
    worker = make_worker(driver, queue)
    async with running(worker):
        await wait_for(lambda: worker.succeeded == 1, timeout=20)
        await outcome(driver, task_id)
    assert runs[key][0] - sent >= 0.55, "a delayed task does not run early"


async def test_stop_task(driver_factory: MakeDriver, queue: str) -> None:
    driver = await driver_factory()
    key = f"{queue}-stop"
    gates[key] = asyncio.Event()
    task_id = await suite_gate(key).on_queue(queue).dispatch(driver)
    worker = make_worker(driver, queue)
    async with running(worker):
        await wait_for(lambda: key in runs, timeout=20)
        if driver.supports("control"):
            await driver.send_command(worker.name, {"command": "stop-task", "task_id": task_id})
        else:  # no control channel: the command is refused, the worker still stops it locally
            with pytest.raises(UnsupportedOperation):
                await driver.send_command(worker.name, {"command": "stop-task", "task_id": task_id})
            assert worker.stop_task(task_id)
        await wait_for(lambda: worker.failed == 1, timeout=20)
    if driver.supports("failed"):
        [entry] = await driver.failed_list(queue)
        assert entry["error"].startswith("stopped")
    assert worker.succeeded == 0 and await nothing_left(driver, queue)


async def test_a_give_back_on_sigterm_costs_no_attempt(
    driver_factory: MakeDriver, backend: str, namespace: str, queue: str, tmp_path: Path
) -> None:
    from tests.worker_tasks import nap

    driver = await driver_factory()
    await nap(60).on_queue(queue).dispatch(driver)
    marks = tmp_path / "marks.txt"
    try:
        settings = driver_config(backend, namespace)
    except NotImplementedError:
        # one process only: the in-process twin of SIGTERM is stop(), past the shutdown timeout
        worker = make_worker(driver, queue, shutdown_timeout=0.2)
        os.environ["ASYNCTASQ_TEST_MARKS"] = str(marks)
        try:
            async with running(worker):
                await wait_for(lambda: marks.exists(), timeout=20)
        finally:
            del os.environ["ASYNCTASQ_TEST_MARKS"]
    else:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
        env.update({env_name(k): str(v) for k, v in settings.items()})
        env["ASYNCTASQ_TEST_MARKS"] = str(marks)
        proc = subprocess.Popen(
            [sys.executable, "-m", "asynctasq", "worker", "--import", "tests.worker_tasks", "--queues", queue,
             "--shutdown-timeout", "0.2"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            await wait_for(lambda: marks.exists(), timeout=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, errors = proc.communicate(timeout=30)
        assert proc.returncode == 0, errors
    [back] = await driver.dequeue([queue], 1, wait=10)
    assert back.delivery_count == 1, "a give-back must not count as a delivery"
    assert Envelope.decode(back.body).attempt == 1
    await driver.ack([back])
