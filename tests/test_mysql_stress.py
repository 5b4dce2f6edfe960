"""Several worker processes on one MySQL/MariaDB queue: no deadlock or lock-wait error escapes,
no task runs twice while its lease is valid, none is lost. (SIGKILL and SIGTERM with worker
processes: tests/test_crash_recovery.py, which runs on every backend, MySQL included.)"""

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
from tests.test_crash_recovery import logs, read_marks

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
