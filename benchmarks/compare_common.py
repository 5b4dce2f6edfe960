"""What the broker comparisons (redis_compare.py, postgres_compare.py) share: running one
system's workload in a subprocess, the interleaved repetitions, and the table."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

Results = dict[tuple[str, str], list[dict[str, Any]]]


def add_arguments(parser: argparse.ArgumentParser, systems: Sequence[str], limits_help: str) -> None:
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workloads", default="noop,io,latency")
    parser.add_argument("--systems", default=",".join(systems))
    parser.add_argument("--limits", action="store_true", help=limits_help)


def run_json(label: str, cmd: list[str], env: dict[str, str], tail_lines: int = 8) -> dict[str, Any]:
    """Run a benchmark command; return the last JSON object it printed."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.splitlines()[-tail_lines:])
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def interleaved(
    systems: Sequence[str], workloads: Sequence[str], reps: int, run: Callable[[str, str], dict[str, Any]]
) -> Results:
    """Every workload of every system, ``reps`` times, the systems' order rotating per repetition."""
    results: Results = {}
    for rep in range(reps):
        order = list(systems[rep % len(systems) :]) + list(systems[: rep % len(systems)])
        for workload in workloads:
            for system in order:
                res = run(system, workload)
                results.setdefault((system, workload), []).append(res)
                _record(system, workload, rep, res)
                shown = {k: v for k, v in res.items() if k not in ("workload", "driver", "system", "notes")}
                print(f"rep {rep + 1} {workload:8} {system:14} {shown}", flush=True)
    return results


def _record(system: str, workload: str, rep: int, res: dict[str, Any]) -> None:
    """Each sample, for ``python -m benchmarks run`` (which names the file)."""
    path = os.environ.get("ASYNCTASQ_BENCH_SAMPLES")
    if path:
        record = {**res, "driver": os.environ.get("ASYNCTASQ_BENCH_DRIVER", ""), "system": system}
        record.update(workload=workload, rep=rep)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


async def bare_drain_rate(driver: Any, n: int, batch: int, body: bytes) -> float:
    """Tasks/s of one dequeue(batch) + ack(batch) loop on a connected bare driver."""
    from asynctasq.drivers.base import EnqueueItem

    for start in range(0, n, 1000):
        await driver.enqueue_many([EnqueueItem("q", body)] * min(1000, n - start))
    done = 0
    started = time.perf_counter()
    while done < n:
        got = await driver.dequeue(["q"], batch, wait=0)
        if not got:
            break
        done += len(await driver.ack(got))
    return done / (time.perf_counter() - started)


def column(results: Results, system: str, workload: str, key: str) -> list[float]:
    return [float(r[key]) for r in results.get((system, workload), []) if r.get(key) is not None]


def fmt(values: list[float], digits: int = 0) -> str:
    """Median (min-max)."""
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def print_table(title: str, systems: Sequence[str], results: Results) -> None:
    print()
    print(title)
    print()
    print(
        "| system | noop drain/s | enqueue single/s | enqueue bulk/s | io efficiency "
        "| p50 ms | p99 ms | max ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for system in systems:
        cells = [
            fmt(column(results, system, "noop", "drain_per_s")),
            fmt(column(results, system, "noop", "enqueue_single_per_s")),
            fmt(column(results, system, "noop", "enqueue_bulk_per_s")),
            fmt(column(results, system, "io", "efficiency"), 2),
            fmt(column(results, system, "latency", "p50_ms"), 2),
            fmt(column(results, system, "latency", "p99_ms"), 2),
            fmt(column(results, system, "latency", "max_ms"), 1),
        ]
        print(f"| {system} | " + " | ".join(cells) + " |")


def print_driver_limits(rate_of: Callable[[int], float]) -> None:
    """The bare driver's own ceiling, ``rate_of(batch)``: one loop of dequeue(batch) + ack(batch)."""
    print()
    for batch in (10, 50):
        print(f"bare driver, one loop: dequeue({batch}) + ack({batch}): {rate_of(batch):,.0f} tasks/s")
