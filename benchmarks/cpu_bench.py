"""The cpu workload of shared/BENCHMARKS.md: pure-Python tasks of ~50 ms on the process pool,
pool size 1 vs 2, while a stream of async no-op tasks (200/s) on the same worker measures how
long a task waits to be picked up.

    flock /tmp/asynctasq-bench.lock .venv/bin/python benchmarks/cpu_bench.py [--tasks 200] [--reps 3]

One Worker in this process (memory driver, uvloop when installed) takes the queues "default"
(the no-op stream) and "cpu". Its concurrency is tasks + 20: a process task waiting for a free
pool process holds a worker slot, so the backlog of CPU tasks must not take the slots the
no-op stream needs. The sizes are interleaved (1 2 1 2 ...) and the median is quoted with
min-max. CPU wall time runs from the first task's start to the last task's end, as the pool
processes saw them; "cores busy" is the CPU time the tasks got divided by that wall time (on a
shared machine: what the pool managed to get). The pool's own overhead per task (a no-op
process task, round trip from the parent) is printed first.

The pool processes import this script (as ``__mp_main__``) to find the tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from asynctasq import Worker, configure, dispatch_many, result, task  # noqa: E402
from asynctasq.drivers.memory import MemoryDriver  # noqa: E402
from asynctasq.process_pool import ProcessPool  # noqa: E402

STREAM_RATE_PER_S = 200
TASK_TARGET_S = 0.05

pickups: list[float] = []


@task(name="bench.cpu.spin", process=True)
def spin(iterations: int) -> tuple[float, float, float]:
    """Fixed pure-Python work: the same for 1 or 2 processes, whatever the clock says.
    Returns its wall-clock start and end, and the CPU seconds it got."""
    started, cpu = time.time(), time.process_time()
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return started, time.time(), time.process_time() - cpu


@task(name="bench.cpu.nothing", process=True)
def nothing() -> None:
    return None


@task(name="bench.cpu.picked_up")
async def picked_up(sent_at: float) -> None:
    pickups.append(time.time() - sent_at)


def calibrate() -> int:
    """Iterations of ``spin`` that take about TASK_TARGET_S in this process."""
    probe = 200_000
    samples = []
    for _ in range(7):
        started, ended, _ = spin.run(probe)
        samples.append(ended - started)
    return int(probe * TASK_TARGET_S / min(samples))  # the least disturbed run of a shared machine


async def pool_overhead() -> tuple[float, float]:
    """Microseconds per no-op process task one at a time (pool of 1); tasks/s with 2 processes."""
    pool = ProcessPool(1)
    await pool.start()
    try:
        for _ in range(200):
            await pool.run(nothing.name, [], {}, None)
        n = 3000
        started = time.perf_counter()
        for _ in range(n):
            await pool.run(nothing.name, [], {}, 10)
        sequential_us = (time.perf_counter() - started) / n * 1e6
    finally:
        await pool.close()
    pool = ProcessPool(2)
    await pool.start()
    try:
        n = 10_000
        started = time.perf_counter()
        await asyncio.gather(*(pool.run(nothing.name, [], {}, 10) for _ in range(n)))
        rate = n / (time.perf_counter() - started)
    finally:
        await pool.close()
    return sequential_us, rate


async def stream(driver: MemoryDriver, stop: asyncio.Event) -> int:
    """Dispatch a picked_up task every 1/STREAM_RATE_PER_S seconds until ``stop``; return how many."""
    loop = asyncio.get_running_loop()
    interval = 1 / STREAM_RATE_PER_S
    next_at = loop.time()
    sent = 0
    while not stop.is_set():
        await picked_up(time.time()).dispatch(driver)
        sent += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - loop.time()))
    return sent


async def one_run(size: int, n: int, iterations: int) -> dict[str, Any]:
    driver = MemoryDriver(namespace="cpu" + uuid.uuid4().hex[:8])
    await driver.connect()
    worker = Worker(
        driver,
        queues=["default", "cpu"],
        concurrency=n + 20,
        process_pool_size=size,
        install_signal_handlers=False,
    )
    runner = asyncio.create_task(worker.start())
    while worker.state != "idle":  # the pool is up
        await asyncio.sleep(0.01)
    pickups.clear()
    stop = asyncio.Event()
    streaming = asyncio.create_task(stream(driver, stop))
    ids = await dispatch_many([spin(iterations).on_queue("cpu") for _ in range(n)], driver=driver)
    spans = [await result(task_id, timeout=600, driver=driver) for task_id in ids]
    stop.set()
    sent = await streaming
    deadline = time.monotonic() + 10
    while len(pickups) < sent and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    worker.stop()
    await runner
    await driver.disconnect()
    MemoryDriver.reset(driver.namespace)
    wall = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    task_ms = statistics.mean(end - start for start, end, _ in spans) * 1000
    cores = sum(cpu for _, _, cpu in spans) / wall
    lat = sorted(pickups)
    return {
        "wall": wall,
        "task_ms": task_ms,
        "cores": cores,
        "p50": lat[len(lat) // 2] * 1000,
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "max": lat[-1] * 1000,
        "noops": len(lat),
    }


def fmt(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


async def main(args: argparse.Namespace) -> None:
    configure(driver="memory")
    iterations = calibrate()
    print(
        f"spin({iterations}) takes ~{TASK_TARGET_S * 1000:.0f} ms here; {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    sequential_us, rate = await pool_overhead()
    print(
        f"pool overhead: {sequential_us:.0f} us per no-op process task one at a time (pool of 1); "
        f"{rate:,.0f} no-op tasks/s through a pool of 2"
    )
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for rep in range(args.reps):
        for size in (1, 2):
            run = await one_run(size, args.tasks, iterations)
            runs[size].append(run)
            print(
                f"  rep {rep + 1} pool {size}: {run['wall']:.2f} s ({run['task_ms']:.0f} ms/task, "
                f"{run['cores']:.2f} cores busy), no-op pickup p50 {run['p50']:.2f} ms "
                f"p99 {run['p99']:.2f} ms max {run['max']:.2f} ms ({run['noops']} no-ops)",
                flush=True,
            )
    ratios = [one["wall"] / two["wall"] for one, two in zip(runs[1], runs[2], strict=True)]
    print()
    task_ms = statistics.median(r["task_ms"] for r in runs[1])
    print(
        f"{args.tasks} CPU tasks ({task_ms:.0f} ms each in a pool of 1), "
        f"no-op stream {STREAM_RATE_PER_S}/s, {args.reps} reps: median (min-max)"
    )
    print("| pool | CPU wall s | CPU tasks/s | cores busy | no-op pickup p50 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size, rs in runs.items():
        walls = [r["wall"] for r in rs]
        print(
            f"| {size} | {fmt(walls)} | {fmt([args.tasks / w for w in walls], 1)} | "
            f"{fmt([r['cores'] for r in rs])} | "
            f"{fmt([r['p50'] for r in rs])} | {fmt([r['p99'] for r in rs])} | {fmt([r['max'] for r in rs])} |"
        )
    print(f"speedup of 2 processes over 1, within each rep: {fmt(ratios)}x")
    print(
        f"worker: memory driver, concurrency {args.tasks + 20} (see the module docstring), "
        f"loop {type(asyncio.get_running_loop()).__module__}; load average now {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    from asynctasq.utils.loop import run

    run(main(parser.parse_args()))
