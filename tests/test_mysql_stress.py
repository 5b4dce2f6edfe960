"""Several worker processes on one MySQL/MariaDB queue: no deadlock or lock-wait error escapes,
no task runs twice while its lease is valid, none is lost, and a SIGKILLed worker's tasks are
finished by the other."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import asynctasq
from asynctasq.config import env_name
from asynctasq.drivers.mysql import MySQLDriver
from tests.backends import mysql_backend
from tests.cli_tasks import mark
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
LOCK_ERRORS = ("1213", "1205", "Deadlock", "deadlock", "Lock wait", "lock wait")


@pytest.fixture
async def broker(namespace: str) -> AsyncIterator[tuple[MySQLDriver, dict[str, str]]]:
    from tests.backends import make_driver

    driver = await make_driver("mysql", namespace)
    assert isinstance(driver, MySQLDriver)
    settings = mysql_backend.driver_config(namespace)
    env = {env_name(k): str(v) for k, v in settings.items()}
    try:
        yield driver, env
    finally:
        await driver.disconnect()
        await mysql_backend.cleanup(namespace)


def start_worker(env: dict[str, str], marks: Path, lease_s: float, *extra: str) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    full_env.update(env, ASYNCTASQ_TEST_MARKS=str(marks))
    command = [sys.executable, "-m", "asynctasq", "worker", "--import", "tests.cli_tasks"]
    command += ["--lease-seconds", str(lease_s), "--log-level", "WARNING", *extra]
    with open(marks.with_suffix(f".{time.monotonic_ns()}.log"), "w") as log:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )


def read_marks(marks: Path) -> list[str]:
    return marks.read_text().split() if marks.exists() else []


def logs(marks: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(marks.parent.glob("*.log")))


def stop(workers: list[subprocess.Popen[str]]) -> list[int]:
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    return [proc.wait(60) for proc in workers]


async def test_four_workers_5k_tasks_each_once_no_lock_errors(
    broker: tuple[MySQLDriver, dict[str, str]], tmp_path: Path
) -> None:
    driver, env = broker
    marks = tmp_path / "marks.txt"
    n = 5000
    calls = [mark(f"k{i}", 0) for i in range(n)]
    for start in range(0, n, 1000):
        await asynctasq.dispatch_many(calls[start : start + 1000], driver=driver)
    workers = [start_worker(env, marks, 60, "--concurrency", "10") for _ in range(4)]
    try:
        await wait_for(lambda: len(read_marks(marks)) >= n, timeout=240, interval=0.2)
    finally:
        codes = stop(workers)
    counts = Counter(read_marks(marks))
    text = logs(marks)
    assert set(counts) == {f"k{i}" for i in range(n)}, "every task ran"
    assert [k for k, c in counts.items() if c > 1] == [], "no task ran twice (no lease expired)"
    assert codes == [0, 0, 0, 0], text
    assert not [line for line in text.splitlines() if any(e in line for e in LOCK_ERRORS)], text
    stats = (await driver.stats(["default"]))["default"]
    assert stats == {"ready": 0, "delayed": 0, "leased": 0, "failed": 0}


async def test_sigkill_one_of_two_workers_every_task_completes(
    broker: tuple[MySQLDriver, dict[str, str]], tmp_path: Path
) -> None:
    driver, env = broker
    marks = tmp_path / "marks.txt"
    n, lease_s = 400, 2
    await asynctasq.dispatch_many([mark(f"s{i}", 0.02) for i in range(n)], driver=driver)
    victim = start_worker(env, marks, lease_s, "--concurrency", "10")
    survivor = start_worker(env, marks, lease_s, "--concurrency", "10")
    try:
        await wait_for(lambda: len(read_marks(marks)) >= 50, timeout=60)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        await wait_for(lambda: len(set(read_marks(marks))) == n, timeout=120, interval=0.1)
    finally:
        codes = stop([victim, survivor])
    counts = Counter(read_marks(marks))
    assert set(counts) == {f"s{i}" for i in range(n)}
    assert sum(c - 1 for c in counts.values()) <= 10, "only the killed worker's in-flight tasks run twice"
    assert codes[1] == 0, logs(marks)
    assert (await driver.stats(["default"]))["default"]["failed"] == 0
