"""Chaos on every driver that runs across processes (tests.backends.BACKENDS), with real worker
processes on the real broker: kill half and stop half, fencing with SIGSTOP/SIGCONT, a poison
pill, a broker restart, a long task, a delayed storm. docs/reliability.md maps each guarantee
to its test. Sizes follow issue #12 and can be lowered for a quick run with
``ASYNCTASQ_CHAOS_SCALE=0.25``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import asynctasq
from asynctasq.config import env_name
from asynctasq.drivers.base import BaseDriver
from asynctasq.errors import BrokerUnavailable
from asynctasq.message import Envelope
from tests.backends import (
    RELIABILITY_BACKENDS,
    cleanup,
    driver_config,
    make_driver,
    restart_not_applicable,
    restartable_broker,
    resume_bound_s,
)
from tests.chaos_tasks import chaos_hold, chaos_work, read_marks
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
SCALE = float(os.environ.get("ASYNCTASQ_CHAOS_SCALE", "1"))


def _cross_process(backend: str) -> bool:
    try:
        driver_config(backend, "probe")
    except NotImplementedError:
        return False
    return True


CROSS_PROCESS = [b for b in RELIABILITY_BACKENDS if _cross_process(b)]
BAD_LOG_LINES = ("Traceback", "Future exception was never retrieved", "Task exception was never retrieved")


def env_of(settings: dict[str, Any]) -> dict[str, str]:
    return {env_name(k): ",".join(v) if isinstance(v, list) else str(v) for k, v in settings.items()}


@dataclass
class Workers:
    """Worker processes of one test, their stderr in ``logs/``, their marks in ``marks``."""

    env: dict[str, str]
    tmp: Path
    lease_s: float
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def marks(self) -> Path:
        return self.tmp / "marks.txt"

    def start(self, *extra: str, concurrency: int = 10) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
        env.update(self.env)
        env["ASYNCTASQ_TEST_MARKS"] = str(self.marks)
        (self.tmp / "logs").mkdir(exist_ok=True)
        with open(self.tmp / "logs" / f"{len(self.procs)}.log", "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "asynctasq", "worker", "--import", "tests.chaos_tasks",
                 "--import", "tests.worker_tasks", "--lease-seconds", str(self.lease_s),
                 "--concurrency", str(concurrency), "--log-level", "WARNING", *extra],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def log_of(self, proc: subprocess.Popen[str]) -> str:
        return (self.tmp / "logs" / f"{self.procs.index(proc)}.log").read_text()

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted((self.tmp / "logs").glob("*.log")))

    def done(self) -> Counter[str]:
        return Counter(key for event, key, _ in read_marks(self.marks) if event == "done")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def workers_on(settings: dict[str, Any], tmp: Path, lease_s: float) -> Iterator[Workers]:
    workers = Workers(env_of(settings), tmp, lease_s)
    try:
        yield workers
    finally:
        workers.stop_all()


@pytest.fixture(params=CROSS_PROCESS)
def chaos_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def shared_broker(
    backend: str, namespace: str, lease_s: float
) -> AsyncIterator[tuple[BaseDriver, dict[str, Any]]]:
    driver = await make_driver(backend, namespace, lease_seconds=lease_s)
    try:
        yield driver, driver_config(backend, namespace)
    finally:
        await driver.disconnect()
        await cleanup(backend, namespace)


def clean_log(text: str, secret: str | None = None) -> None:
    for bad in BAD_LOG_LINES:
        assert bad not in text, f"{bad!r} in the worker logs:\n{text[-4000:]}"
    if secret:
        assert secret not in text, "a password reached the logs"


async def nothing_left(driver: BaseDriver, queue: str = "default") -> bool:
    if not driver.supports("stats"):
        return True
    stats = (await driver.stats([queue]))[queue]
    return stats["ready"] == stats["delayed"] == stats["leased"] == 0


@pytest.mark.timeout(240)
async def test_kill_half_stop_half_loses_nothing(chaos_backend: str, namespace: str, tmp_path: Path) -> None:
    """2,000 tasks of 1-50 ms on four workers; half-way, SIGKILL two and SIGTERM two, start two
    fresh: every task completes, only tasks the killed workers held run twice, and the SIGTERMed
    workers exit 0 within their shutdown timeout."""
    n, concurrency, lease_s = int(2000 * SCALE), 10, 2.0
    keys = [f"k{i}" for i in range(n)]
    async with shared_broker(chaos_backend, namespace, lease_s) as (driver, settings):
        await asynctasq.dispatch_many(
            [chaos_work(k, 0.001 + (i * 7919 % 50) / 1000) for i, k in enumerate(keys)], driver=driver
        )
        with workers_on(settings, tmp_path, lease_s) as workers:
            first = [workers.start("--shutdown-timeout", "10", concurrency=concurrency) for _ in range(4)]
            await wait_for(lambda: sum(workers.done().values()) >= n // 2, timeout=120, interval=0.05)
            killed, stopped = first[:2], first[2:]
            for proc in killed:
                proc.send_signal(signal.SIGKILL)
            sent = time.monotonic()
            for proc in stopped:
                proc.send_signal(signal.SIGTERM)
            fresh = [workers.start(concurrency=concurrency) for _ in range(2)]
            codes = [await asyncio.to_thread(proc.wait, 30) for proc in stopped]
            stop_s = time.monotonic() - sent
            await wait_for(lambda: set(workers.done()) == set(keys), timeout=120, interval=0.1)
            await wait_for(lambda: nothing_left(driver), timeout=30, interval=0.1)
            assert all(p.poll() is None for p in fresh), workers.logs()[-4000:]
        done = read_marks(workers.marks)
    killed_pids = {p.pid for p in killed}
    runs: dict[str, list[int]] = {}
    for _, key, pid in done:
        runs.setdefault(key, []).append(pid)
    twice = {k: pids for k, pids in runs.items() if len(pids) > 1}
    print(f"{chaos_backend}: {n} tasks, {len(twice)} ran twice (held by the SIGKILLed workers)")
    assert codes == [0, 0], workers.logs()[-4000:]
    assert stop_s < 10 + 5, "the SIGTERMed workers exit within their shutdown timeout"
    assert len(twice) <= 2 * concurrency, "a worker holds at most `concurrency` tasks"
    for key, pids in twice.items():
        assert set(pids[:-1]) <= killed_pids, f"{key} ran twice but not because a killed worker held it"
    clean_log(workers.logs())


@pytest.mark.timeout(120)
async def test_fencing_refuses_a_paused_workers_late_ack(
    chaos_backend: str, namespace: str, tmp_path: Path
) -> None:
    """Worker A is SIGSTOPped mid-task until its lease expires; B claims the task; A resumes
    (its late ack or extend is refused, and it says so); B is SIGKILLed mid-task: C still gets
    the task and completes it, and nothing is left behind."""
    lease_s = 1.0
    async with shared_broker(chaos_backend, namespace, lease_s) as (driver, settings):
        await chaos_hold("fenced", 4.0).dispatch(driver)
        with workers_on(settings, tmp_path, lease_s) as workers:

            def starts() -> list[int]:
                return [pid for event, _, pid in read_marks(workers.marks) if event == "start"]

            a = workers.start(concurrency=1)
            await wait_for(lambda: len(starts()) == 1, timeout=30)
            a.send_signal(signal.SIGSTOP)
            b = workers.start(concurrency=1)
            await wait_for(lambda: len(starts()) == 2, timeout=30)  # A's lease expired, B has it
            a.send_signal(signal.SIGCONT)
            # A's task finishes at once (its sleep is long overdue); the broker refuses A's token
            await wait_for(lambda: ("done", "fenced", a.pid) in read_marks(workers.marks), timeout=10)
            b.send_signal(signal.SIGKILL)  # B is still mid-task (it started well after A)
            a.send_signal(signal.SIGTERM)  # A is done with it: the third worker is a fresh one
            b.wait(10)
            assert await asyncio.to_thread(a.wait, 30) == 0
            a_log = workers.log_of(a)
            c = workers.start(concurrency=1)
            await wait_for(lambda: ("done", "fenced", c.pid) in read_marks(workers.marks), timeout=30)
            await wait_for(lambda: nothing_left(driver), timeout=10)
            if driver.supports("failed"):
                assert await driver.failed_list() == []
    assert starts() == [a.pid, b.pid, c.pid]
    assert not any(
        key == "fenced" and pid == b.pid for event, key, pid in read_marks(workers.marks) if event == "done"
    )
    if driver.fencing:
        assert "lease(s) were lost" in a_log or "acks came too late" in a_log, a_log
    else:
        # Without broker-side fencing the guarantee is at-least-once: the late ack may delete
        # the redelivered copy, which then already ran (B) or runs again (C); it is never lost.
        assert ("done", "fenced", c.pid) in read_marks(workers.marks)
    clean_log(workers.logs())


@pytest.mark.timeout(150)
async def test_a_poison_pill_ends_in_the_failed_registry(
    chaos_backend: str, namespace: str, tmp_path: Path
) -> None:
    """A task that SIGKILLs its worker is delivered max_attempts (3) times, then fails as
    "worker lost"; the innocent tasks around it all complete (a redelivered task runs alone)."""
    from tests.worker_tasks import poison

    lease_s, n = 1.0, 9
    async with shared_broker(chaos_backend, namespace, lease_s) as (driver, settings):
        calls = [chaos_work(f"i{i}", 0.5) for i in range(n)]
        calls.insert(2, poison(0.1))
        await asynctasq.dispatch_many(calls, driver=driver)
        with workers_on(settings, tmp_path, lease_s) as workers:
            live = [workers.start(concurrency=5), workers.start(concurrency=5)]

            async def settled() -> bool:
                for i, proc in enumerate(live):
                    if proc.poll() is not None:  # killed by the poison: the test is its supervisor
                        live[i] = workers.start(concurrency=5)
                failed = [Envelope.decode(e["body"]).task for e in await driver.failed_list()]
                return poison.name in failed and set(workers.done()) == {f"i{i}" for i in range(n)}

            await wait_for(settled, timeout=120, interval=0.1)
        failed = await driver.failed_list()
    assert [Envelope.decode(e["body"]).task for e in failed] == [poison.name], "innocents were blamed"
    assert "worker lost" in failed[0]["error"]
    kills = Path(str(workers.marks) + ".poison").read_text().split()
    assert len(kills) == 3, "the poison ran once per attempt, no more"


@pytest.mark.timeout(90)
async def test_a_long_task_with_heartbeats_runs_once(
    chaos_backend: str, namespace: str, tmp_path: Path
) -> None:
    """A task running 4x its lease, its lease extended by the worker's heartbeats, is never
    delivered to the second worker waiting on the same queue."""
    lease_s = 1.0
    async with shared_broker(chaos_backend, namespace, lease_s) as (driver, settings):
        await chaos_hold("long", 4 * lease_s).dispatch(driver)
        with workers_on(settings, tmp_path, lease_s) as workers:
            workers.start(concurrency=2)
            workers.start(concurrency=2)
            await wait_for(lambda: workers.done()["long"] == 1, timeout=60, interval=0.05)
            await wait_for(lambda: nothing_left(driver), timeout=10)
            # the other worker had every chance: it polled through the whole run
        starts = [m for m in read_marks(workers.marks) if m[0] == "start"]
    assert len(starts) == 1, f"delivered to a second worker: {starts}"
    clean_log(workers.logs())


@pytest.mark.timeout(180)
async def test_a_delayed_storm_runs_each_task_exactly_once(
    chaos_backend: str, namespace: str, tmp_path: Path
) -> None:
    """5,000 tasks delayed by 2 s, four workers: each runs exactly once."""
    n, lease_s = int(5000 * SCALE), 10.0
    async with shared_broker(chaos_backend, namespace, lease_s) as (driver, settings):
        with workers_on(settings, tmp_path, lease_s) as workers:
            for _ in range(4):
                workers.start(concurrency=20)
            sent = time.monotonic()
            await asynctasq.dispatch_many(
                [chaos_work(f"d{i}", 0).delay(2.0) for i in range(n)], driver=driver
            )
            dispatched = time.monotonic()
            await wait_for(lambda: sum(workers.done().values()) >= n, timeout=150, interval=0.1)
            await wait_for(lambda: nothing_left(driver), timeout=30, interval=0.1)
        done = workers.done()
    assert done == Counter(f"d{i}" for i in range(n)), "each delayed task ran exactly once"
    print(f"{chaos_backend}: {n} delayed tasks dispatched in {dispatched - sent:.2f}s, each ran once")
    clean_log(workers.logs())


@pytest.fixture(params=RELIABILITY_BACKENDS)
def any_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.timeout(180)
async def test_a_broker_restart_mid_run(
    any_backend: str, namespace: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker restarts under two workers and a producer: the workers reconnect with one
    log line per outage and no traceback, work resumes within a second of the broker's return,
    the producer's dispatch during the outage succeeds after the reconnect or fails with one
    clear BrokerUnavailable (never a silent drop), and every task that was accepted runs."""
    reason = restart_not_applicable(any_backend)
    if reason is not None:
        assert any_backend in ("memory", "sqlite"), f"{any_backend} runs on a server: give it a restart hook"
        pytest.skip(reason)
    lease_s, n = 2.0, int(400 * SCALE)
    caplog.set_level(logging.WARNING)
    async with restartable_broker(any_backend, namespace) as broker:
        driver = await broker.make_driver(lease_seconds=lease_s)
        try:
            await asynctasq.dispatch_many([chaos_work(f"r{i}", 0.02) for i in range(n)], driver=driver)
            with workers_on(broker.config, tmp_path, lease_s) as workers:
                procs = [workers.start(concurrency=5), workers.start(concurrency=5)]
                await wait_for(lambda: sum(workers.done().values()) >= n // 4, timeout=60, interval=0.02)
                await broker.stop()
                try:
                    # a producer dispatching into the outage: it waits and succeeds, or says why
                    during = asyncio.create_task(
                        asynctasq.dispatch_many([chaos_work(f"o{i}", 0.02) for i in range(20)], driver=driver)
                    )
                    await asyncio.sleep(1.5)  # the outage itself
                finally:
                    await broker.start()
                back = time.monotonic()
                done_at_return = sum(workers.done().values())
                accepted = [f"r{i}" for i in range(n)]
                try:
                    await asyncio.wait_for(during, 60)
                    accepted += [f"o{i}" for i in range(20)]
                    producer = "succeeded after the reconnect"
                except BrokerUnavailable as exc:
                    assert "\n" not in str(exc) and broker.secret not in str(exc)
                    producer = f"failed with: {exc}"
                await wait_for(
                    lambda: sum(workers.done().values()) > done_at_return,
                    timeout=resume_bound_s(any_backend),
                    interval=0.01,
                )
                resumed_s = time.monotonic() - back
                await wait_for(lambda: set(accepted) <= set(workers.done()), timeout=90, interval=0.05)
                assert all(p.poll() is None for p in procs), workers.logs()[-4000:]
                logs = workers.logs()
        finally:
            await driver.disconnect()
            gc.collect()  # an unretrieved future reports when it is collected: now, inside the test
    print(f"{any_backend}: work resumed {resumed_s:.2f}s after the broker's return; the producer {producer}")
    assert resumed_s < 1.5, f"work resumed {resumed_s:.2f}s after the broker came back"
    clean_log(logs, broker.secret)
    outage_lines = [line for line in logs.splitlines() if "reconnecting" in line]
    assert 1 <= len(outage_lines) <= 2 * 3, f"one line per outage and driver, not one per error:\n{logs}"
    producer_log = "\n".join(f"{r.name}: {r.getMessage()}" for r in caplog.records)
    clean_log(producer_log, broker.secret)
    assert not [r for r in caplog.records if r.name == "asyncio"], producer_log
