"""Nothing is lost: worker processes killed with SIGKILL or stopped with SIGTERM, on every driver
that runs across processes (tests/backends: driver_config)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import asynctasq
from asynctasq.config import env_name
from asynctasq.drivers.base import BaseDriver
from tests.backends import BACKENDS, cleanup, driver_config, make_driver
from tests.cli_tasks import mark
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
CROSS_PROCESS = [b for b in BACKENDS if b != "memory"]
LEASE_S = 2


@pytest.fixture(params=CROSS_PROCESS)
async def broker(
    request: pytest.FixtureRequest, namespace: str
) -> AsyncIterator[tuple[BaseDriver, dict[str, str]]]:
    backend = str(request.param)
    driver = await make_driver(backend, namespace, lease_seconds=LEASE_S)
    settings: dict[str, Any] = driver_config(backend, namespace)
    env = {env_name(k): ",".join(v) if isinstance(v, list) else str(v) for k, v in settings.items()}
    asynctasq.configure(**settings)
    try:
        yield driver, env
    finally:
        asynctasq.configure(driver="memory")
        await driver.disconnect()
        await cleanup(backend, namespace)


def start_worker(env: dict[str, str], marks: Path, *extra: str) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    full_env.update(env)
    full_env["ASYNCTASQ_TEST_MARKS"] = str(marks)
    with open(marks.with_suffix(f".{time.monotonic_ns()}.log"), "w") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "asynctasq",
                "worker",
                "--import",
                "tests.cli_tasks",
                "--lease-seconds",
                str(LEASE_S),
                "--log-level",
                os.environ.get("TEST_WORKER_LOG_LEVEL", "WARNING"),
                *extra,
            ],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )


def logs(marks: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(marks.parent.glob("*.log")))


def read_marks(marks: Path) -> list[str]:
    return marks.read_text().split() if marks.exists() else []


async def test_sigkill_mid_run_loses_nothing(
    broker: tuple[BaseDriver, dict[str, str]], tmp_path: Path
) -> None:
    driver, env = broker
    marks = tmp_path / "marks.txt"
    n = 80
    await asynctasq.dispatch_many([mark(f"t{i}", 0.05) for i in range(n)], driver=driver)
    victim = start_worker(env, marks, "--concurrency", "8")
    survivor = start_worker(env, marks, "--concurrency", "8")
    try:
        await wait_for(lambda: len(read_marks(marks)) >= 10, timeout=60)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        await wait_for(lambda: len(set(read_marks(marks))) == n, timeout=90, interval=0.1)
    finally:
        for proc in (victim, survivor):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        survivor_code = survivor.wait(30)
    counts = Counter(read_marks(marks))
    duplicates = {k: c for k, c in counts.items() if c > 1}
    print(f"{n} tasks completed; {len(duplicates)} ran twice (the killed worker's in-flight tasks)")
    assert set(counts) == {f"t{i}" for i in range(n)}
    assert len(duplicates) <= 8, "only the tasks the killed worker held may run twice"
    assert survivor_code == 0, logs(marks)


async def test_sigterm_finishes_running_tasks_and_exits_zero(
    broker: tuple[BaseDriver, dict[str, str]], tmp_path: Path
) -> None:
    driver, env = broker
    marks = tmp_path / "marks.txt"
    n = 20
    await asynctasq.dispatch_many([mark(f"s{i}", 0.6) for i in range(n)], driver=driver)
    worker = start_worker(env, marks, "--concurrency", "4", "--shutdown-timeout", "20")

    # mid-run: at least one task finished (a SIGTERM while the first claim is still on its way
    # back would rightly give that whole batch back, and nothing would have run)
    await wait_for(lambda: len(read_marks(marks)) >= 1, timeout=30)
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(30)
    assert code == 0, logs(marks)
    assert time.monotonic() - started < 20
    done_before = read_marks(marks)
    assert 0 < len(done_before) < n, "SIGTERM came mid-run: some tasks done, the rest still queued"
    finisher = start_worker(env, marks, "--concurrency", "10", "--burst")
    assert finisher.wait(60) == 0, logs(marks)
    assert Counter(read_marks(marks)) == Counter(f"s{i}" for i in range(n)), "each task ran exactly once"
