"""pgqueuer's side of the workloads of shared/BENCHMARKS.md (noop, io, latency).

Runs in its own virtualenv (see benchmarks/peers/README.md)::

    benchmarks/.venvs/pgqueuer/bin/python benchmarks/peers/pgqueuer_bench.py --workload noop \
        --dsn postgresql://postgres@127.0.0.1:5432/asynctasq_bench --json

pgqueuer at its defaults except: the entrypoint's ``concurrency_limit`` is the workload's
concurrency and ``batch_size`` is the same number (its default is 10), so one worker holds at
most that many jobs. The worker runs in its own process on uvloop, as ours does; rates are
timed inside it, from the first task's start to the last task's end. Prints the same keys as
benchmarks/harness.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import asyncpg
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from pgqueuer.models import Job

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/asynctasq_bench"


def _loop_run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _prepare(dsn: str) -> None:
    """Install pgqueuer's schema once; empty its tables before each run."""
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        if not await queries.schema_is_installed():
            await queries.install()
        await conn.execute("TRUNCATE pgqueuer, pgqueuer_log")
    finally:
        await conn.close()


def _worker_main(args: argparse.Namespace) -> None:
    stats: dict[str, float] = {"first": 0.0, "last": 0.0, "count": 0}
    latencies: list[float] = []

    async def main() -> None:
        conn = await asyncpg.connect(args.dsn)
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        def mark() -> None:
            now = time.perf_counter()
            if not stats["count"]:
                stats["first"] = now
            stats["last"] = now
            stats["count"] += 1
            if stats["count"] >= args.n:
                qm.shutdown.set()

        @qm.entrypoint("noop", concurrency_limit=args.concurrency)
        async def noop(job: Job) -> None:
            mark()

        @qm.entrypoint("io", concurrency_limit=args.concurrency)
        async def io(job: Job) -> None:
            if not stats["count"]:
                stats["first"] = time.perf_counter()
            await asyncio.sleep(0.01)
            mark()

        @qm.entrypoint("latency", concurrency_limit=args.concurrency)
        async def latency(job: Job) -> None:
            assert job.payload is not None
            latencies.append(time.time() - float(job.payload))
            mark()

        print("ready", flush=True)
        await qm.run(batch_size=args.concurrency)
        await conn.close()

    _loop_run(main())
    print(json.dumps({**stats, "latencies": latencies}), flush=True)


def _start_worker(args: argparse.Namespace, n: int, concurrency: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "_worker",
            "--dsn",
            args.dsn,
            "--n",
            str(n),
            "--concurrency",
            str(concurrency),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise SystemExit("the pgqueuer worker did not start")
    return proc


def _finish_worker(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"the pgqueuer worker failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


async def _produce(dsn: str, entrypoint: str, n: int, bulk: bool) -> float:
    conn = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(conn))
    started = time.perf_counter()
    if bulk:
        for start in range(0, n, 500):
            size = min(500, n - start)
            await queries.enqueue([entrypoint] * size, [None] * size, [0] * size)
    else:
        for _ in range(n):
            await queries.enqueue(entrypoint, None)
    elapsed = time.perf_counter() - started
    await conn.close()
    return elapsed


def noop(args: argparse.Namespace, n: int, concurrency: int) -> dict[str, Any]:
    _loop_run(_prepare(args.dsn))
    single = _loop_run(_produce(args.dsn, "noop", n, bulk=False))
    res = _finish_worker(_start_worker(args, n, concurrency))
    drain = res["count"] / max(res["last"] - res["first"], 1e-9)
    _loop_run(_prepare(args.dsn))
    bulk = _loop_run(_produce(args.dsn, "noop", n, bulk=True))
    _loop_run(_prepare(args.dsn))
    return {
        "workload": "noop",
        "driver": "pgqueuer",
        "n": n,
        "concurrency": concurrency,
        "drain_per_s": round(drain),
        "enqueue_single_per_s": round(n / single),
        "enqueue_bulk_per_s": round(n / bulk),
    }


def io(args: argparse.Namespace, n: int, concurrency: int) -> dict[str, Any]:
    _loop_run(_prepare(args.dsn))
    _loop_run(_produce(args.dsn, "io", n, bulk=True))
    res = _finish_worker(_start_worker(args, n, concurrency))
    actual = res["last"] - res["first"]
    ideal = n * 0.01 / concurrency
    return {
        "workload": "io",
        "driver": "pgqueuer",
        "n": n,
        "concurrency": concurrency,
        "seconds": round(actual, 3),
        "ideal_s": ideal,
        "efficiency": round(ideal / actual, 3),
    }


def latency(args: argparse.Namespace, n: int, concurrency: int, rate: float = 200.0) -> dict[str, Any]:
    _loop_run(_prepare(args.dsn))
    proc = _start_worker(args, n, concurrency)
    time.sleep(0.5)  # let the worker settle into its idle wait

    async def paced() -> None:
        conn = await asyncpg.connect(args.dsn)
        queries = Queries(AsyncpgDriver(conn))
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await queries.enqueue("latency", repr(time.time()).encode())
        await conn.close()

    _loop_run(paced())
    res = _finish_worker(proc)
    lat = sorted(x * 1000 for x in res["latencies"])
    return {
        "workload": "latency",
        "driver": "pgqueuer",
        "n": n,
        "rate_per_s": rate,
        "p50_ms": round(statistics.median(lat), 2),
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2),
        "max_ms": round(lat[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", default="run", choices=["run", "_worker"])
    parser.add_argument("--dsn", default=os.environ.get("PGQUEUER_BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--workload", default="noop", choices=["noop", "io", "latency", "all"])
    parser.add_argument(
        "--n", type=int, default=None, help="tasks (default: 10000 noop, 5000 io, 2000 latency)"
    )
    parser.add_argument("--concurrency", type=int, default=None, help="default: 10 (io: 100)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.command == "_worker":
        _worker_main(args)
        return
    workloads = ["noop", "io", "latency"] if args.workload == "all" else [args.workload]
    for workload in workloads:
        if workload == "noop":
            res = noop(args, args.n or 10000, args.concurrency or 10)
        elif workload == "io":
            res = io(args, args.n or 5000, args.concurrency or 100)
        else:
            res = latency(args, args.n or 2000, args.concurrency or 10)
        print(json.dumps(res) if args.json else "  ".join(f"{k}={v}" for k, v in res.items()), flush=True)


if __name__ == "__main__":
    main()
