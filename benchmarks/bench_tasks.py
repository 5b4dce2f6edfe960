"""Tasks of the benchmark workloads; the worker process imports this module."""

from __future__ import annotations

import asyncio
import time

from asynctasq import task

stats: dict[str, float] = {"first": 0.0, "last": 0.0, "count": 0}
latencies: list[float] = []


def _mark() -> None:
    now = time.perf_counter()
    if not stats["count"]:
        stats["first"] = now
    stats["last"] = now
    stats["count"] += 1


@task(name="bench.noop")
async def noop() -> None:
    _mark()


@task(name="bench.io")
async def io(seconds: float = 0.01) -> None:
    if not stats["count"]:
        stats["first"] = time.perf_counter()
    await asyncio.sleep(seconds)
    stats["last"] = time.perf_counter()
    stats["count"] += 1


@task(name="bench.latency")
async def latency(sent_at: float) -> None:
    latencies.append(time.time() - sent_at)
    _mark()


rss_kb: dict[int, int] = {}


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


@task(name="bench.memory")
async def memory(checkpoints: list[int]) -> None:
    _mark()
    count = int(stats["count"])
    if count in checkpoints:
        rss_kb[count] = _rss_kb()
