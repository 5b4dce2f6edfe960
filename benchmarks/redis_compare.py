"""Our redis driver against arq, saq, taskiq (list and stream brokers), streaq and dramatiq, on the
same Redis, interleaved.

    flock /tmp/asynctasq-bench.lock .venv/bin/python benchmarks/redis_compare.py
    flock /tmp/asynctasq-bench.lock .venv/bin/python benchmarks/redis_compare.py --reps 1 --workloads noop

Each repetition runs every workload for every system (the order of the systems rotates from one
repetition to the next); the table shows the median of the repetitions with (min-max). Our side
is benchmarks/harness.py, the peers' sides are benchmarks/peers/<peer>_bench.py in their own
virtualenvs (benchmarks/peers/README.md). Every run uses queue names / a key prefix of its own
and deletes its keys afterwards. ``--limits`` adds what the client side allows: redis-benchmark
LPUSH/RPOP with and without pipelining, and the bare driver's dequeue + ack loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import uuid
from typing import Any
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(HERE, "peers"))

from compare_common import add_arguments, bare_drain_rate, column, interleaved, print_table, run_json  # noqa: E402

DEFAULT_URL = "redis://127.0.0.1:6379/0"
# system -> (virtualenv, script, variant)
PEERS = {
    "arq": ("arq", "arq_bench.py", ""),
    "saq": ("saq", "saq_bench.py", ""),
    "taskiq-list": ("taskiq", "taskiq_bench.py", "list"),
    "taskiq-stream": ("taskiq", "taskiq_bench.py", "stream"),
    "streaq": ("streaq", "streaq_bench.py", ""),
    "dramatiq": ("dramatiq", "dramatiq_bench.py", ""),
}
SYSTEMS = ["asynctasq", *PEERS]
NOOP_N = {"asynctasq": 20000, "arq": 3000}
"""Noop tasks per system (default 10k); arq drains ~200/s, so it gets a shorter run at the same rate."""


def _command(system: str, workload: str, url: str, prefix: str) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if system == "asynctasq":
        env.update(ASYNCTASQ_REDIS_URL=url, ASYNCTASQ_REDIS_PREFIX=prefix)
        cmd = [sys.executable, os.path.join(HERE, "harness.py"), "--driver", "redis"]
    else:
        venv, script, variant = PEERS[system]
        python = os.path.join(HERE, ".venvs", venv, "bin", "python")
        if not os.path.exists(python):
            raise SystemExit(f"{python} is missing: see benchmarks/peers/README.md")
        cmd = [python, os.path.join(HERE, "peers", script), "--redis-url", url]
        if variant:
            cmd += ["--variant", variant]
    cmd += ["--workload", workload, "--json"]
    if workload == "noop":
        cmd += ["--n", str(NOOP_N.get(system, 10000))]
    return cmd, env


def _run(system: str, workload: str, url: str) -> dict[str, Any]:
    from redis_peer_common import delete_matching

    prefix = "bench" + uuid.uuid4().hex[:8]
    cmd, env = _command(system, workload, url, prefix)
    try:
        return run_json(f"{system} {workload}", cmd, env)
    finally:
        if system == "asynctasq":
            delete_matching(url, f"{{{prefix}*")


def _redis_benchmark(url: str, pipeline: int) -> str:
    parts = urlsplit(url)
    cmd = ["redis-benchmark", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379),
           "-q", "-n", "100000", "-t", "lpush,rpop", "-P", str(pipeline)]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"redis-benchmark unavailable ({exc})"
    lines = [line.split("\r")[-1].strip() for line in out.splitlines() if "requests per second" in line]
    return "; ".join(lines)


async def _driver_limit(url: str, n: int, batch: int) -> float:
    """Tasks/s of one dequeue(batch) + ack(batch) loop on the bare driver."""
    from asynctasq.drivers.redis import RedisDriver

    prefix = "limits" + uuid.uuid4().hex[:8]
    driver = RedisDriver(url=url, prefix=prefix)
    await driver.connect()
    try:
        return await bare_drain_rate(driver, n, batch, b"x" * 100)
    finally:
        await driver.purge("q")
        await driver.disconnect()
        from redis_peer_common import delete_matching

        delete_matching(url, f"{{{prefix}*")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default=os.environ.get("ASYNCTASQ_BENCH_REDIS_URL", DEFAULT_URL))
    add_arguments(parser, SYSTEMS, "also print what the client side allows")
    args = parser.parse_args()
    workloads = args.workloads.split(",")
    systems = args.systems.split(",")
    results = interleaved(systems, workloads, args.reps, lambda s, w: _run(s, w, args.redis_url))

    def col(system: str, workload: str, key: str) -> list[float]:
        return column(results, system, workload, key)

    print_table(
        f"Redis, one worker process, median of {args.reps} (min-max), systems interleaved", systems, results
    )
    ours = col("asynctasq", "noop", "drain_per_s")
    peers = [s for s in systems if s != "asynctasq" and col(s, "noop", "drain_per_s")]
    if ours and peers:
        fastest = max(peers, key=lambda s: statistics.median(col(s, "noop", "drain_per_s")))
        ratio = statistics.median(ours) / statistics.median(col(fastest, "noop", "drain_per_s"))
        print(f"\nnoop drain, asynctasq / fastest peer ({fastest}): {ratio:.1f}x (target >= 5x)")
    if col("asynctasq", "io", "efficiency"):
        efficiency = statistics.median(col("asynctasq", "io", "efficiency"))
        print(f"io efficiency, asynctasq: {efficiency:.2f} (target >= 0.75)")
    if col("asynctasq", "latency", "p50_ms"):
        p50 = statistics.median(col("asynctasq", "latency", "p50_ms"))
        p99 = statistics.median(col("asynctasq", "latency", "p99_ms"))
        print(f"latency, asynctasq: p50 {p50:.2f} ms (target < 2), p99 {p99:.2f} ms (target < 10)")
    print()
    print("Workloads: noop 10k tasks (ours 20k; arq 3k: it drains ~200/s), concurrency 10; io 5k x")
    print("sleep(10 ms) at concurrency 100 (ideal 0.5 s); latency 2k tasks at 200/s into an idle worker.")
    print("Ours: results off (the peers run without result backends). Peers at their defaults except:")
    for system in systems:
        notes = {r.get("notes") or "" for w in workloads for r in results.get((system, w), [])} - {""}
        if system != "asynctasq" and notes:
            print(f"  {system}: {'; '.join(sorted(notes))}")
    print("  every peer: concurrency as the workload says, the run's own queue name, uvloop, hiredis")
    print("  where it uses redis-py.")
    if args.limits:
        print()
        for pipeline in (1, 50):
            print(f"redis-benchmark -P {pipeline}: {_redis_benchmark(args.redis_url, pipeline)}")
        for batch in (10, 50):
            rate = asyncio.run(_driver_limit(args.redis_url, 20000, batch))
            print(f"bare driver, one loop: dequeue({batch}) + ack({batch}): {rate:,.0f} tasks/s")


if __name__ == "__main__":
    main()
