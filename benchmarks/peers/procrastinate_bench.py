"""procrastinate's side of the workloads of shared/BENCHMARKS.md (noop, io, latency).

Runs in its own virtualenv (see benchmarks/peers/README.md)::

    benchmarks/.venvs/procrastinate/bin/python benchmarks/peers/procrastinate_bench.py --workload noop \
        --dsn postgresql://postgres@127.0.0.1:5432/asynctasq_bench --json

procrastinate at its defaults (psycopg connector, LISTEN/NOTIFY on, jobs kept after they
finish) except the workload's ``concurrency``. The worker runs in its own process on uvloop,
as ours does; rates are timed inside it, from the first task's start to the last task's end.
Prints the same keys as benchmarks/harness.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import procrastinate

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/asynctasq_bench"
logging.getLogger("procrastinate").setLevel(logging.ERROR)  # its "App in __main__" hint, per process


def _loop_run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _app(dsn: str) -> procrastinate.App:
    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))


async def _prepare(dsn: str) -> None:
    """Install procrastinate's schema once; empty its tables before each run."""
    app = _app(dsn)
    async with app.open_async():
        connector = app.connector
        installed = await connector.execute_query_one_async(  # type: ignore[attr-defined]
            "SELECT to_regclass('procrastinate_jobs') IS NOT NULL AS ok"
        )
        if not installed["ok"]:
            await app.schema_manager.apply_schema_async()
        await connector.execute_query_async("TRUNCATE procrastinate_jobs CASCADE")  # type: ignore[attr-defined]


def _worker_main(args: argparse.Namespace) -> None:
    stats: dict[str, float] = {"first": 0.0, "last": 0.0, "count": 0}
    latencies: list[float] = []
    app = _app(args.dsn)

    async def main() -> None:
        done = asyncio.Event()

        def mark() -> None:
            now = time.perf_counter()
            if not stats["count"]:
                stats["first"] = now
            stats["last"] = now
            stats["count"] += 1
            if stats["count"] >= args.n:
                done.set()

        @app.task(name="noop")
        async def noop() -> None:
            mark()

        @app.task(name="io")
        async def io() -> None:
            if not stats["count"]:
                stats["first"] = time.perf_counter()
            await asyncio.sleep(0.01)
            mark()

        @app.task(name="latency")
        async def latency(sent_at: float) -> None:
            latencies.append(time.time() - sent_at)
            mark()

        async with app.open_async():
            worker = asyncio.create_task(
                app.run_worker_async(
                    queues=[args.queue], concurrency=args.concurrency, install_signal_handlers=False
                )
            )
            print("ready", flush=True)
            await done.wait()
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    _loop_run(main())
    print(json.dumps({**stats, "latencies": latencies}), flush=True)


def _start_worker(args: argparse.Namespace, queue: str, n: int, concurrency: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "_worker",
            "--dsn",
            args.dsn,
            "--queue",
            queue,
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
        raise SystemExit("the procrastinate worker did not start")
    return proc


def _finish_worker(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"the procrastinate worker failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


async def _produce(dsn: str, task_name: str, queue: str, n: int, bulk: bool) -> float:
    app = _app(dsn)
    async with app.open_async():
        configured = app.configure_task(task_name, queue=queue)
        started = time.perf_counter()
        if bulk:
            for start in range(0, n, 500):
                await configured.batch_defer_async(*({} for _ in range(min(500, n - start))))
        else:
            for _ in range(n):
                await configured.defer_async()
        return time.perf_counter() - started


def noop(args: argparse.Namespace, n: int, concurrency: int) -> dict[str, Any]:
    _loop_run(_prepare(args.dsn))
    single = _loop_run(_produce(args.dsn, "noop", "noop", n, bulk=False))
    res = _finish_worker(_start_worker(args, "noop", n, concurrency))
    drain = res["count"] / max(res["last"] - res["first"], 1e-9)
    _loop_run(_prepare(args.dsn))
    bulk = _loop_run(_produce(args.dsn, "noop", "noop", n, bulk=True))
    _loop_run(_prepare(args.dsn))
    return {
        "workload": "noop",
        "driver": "procrastinate",
        "n": n,
        "concurrency": concurrency,
        "drain_per_s": round(drain),
        "enqueue_single_per_s": round(n / single),
        "enqueue_bulk_per_s": round(n / bulk),
    }


def io(args: argparse.Namespace, n: int, concurrency: int) -> dict[str, Any]:
    _loop_run(_prepare(args.dsn))
    _loop_run(_produce(args.dsn, "io", "io", n, bulk=True))
    res = _finish_worker(_start_worker(args, "io", n, concurrency))
    actual = res["last"] - res["first"]
    ideal = n * 0.01 / concurrency
    return {
        "workload": "io",
        "driver": "procrastinate",
        "n": n,
        "concurrency": concurrency,
        "seconds": round(actual, 3),
        "ideal_s": ideal,
        "efficiency": round(ideal / actual, 3),
    }


def latency(args: argparse.Namespace, n: int, concurrency: int, rate: float = 200.0) -> dict[str, Any]:
    _loop_run(_prepare(args.dsn))
    proc = _start_worker(args, "latency", n, concurrency)
    time.sleep(0.5)  # let the worker settle into its idle wait

    async def paced() -> None:
        app = _app(args.dsn)
        async with app.open_async():
            configured = app.configure_task("latency", queue="latency")
            start = time.perf_counter()
            for i in range(n):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await configured.defer_async(sent_at=time.time())

    _loop_run(paced())
    res = _finish_worker(proc)
    lat = sorted(x * 1000 for x in res["latencies"])
    return {
        "workload": "latency",
        "driver": "procrastinate",
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
    parser.add_argument("--dsn", default=os.environ.get("PROCRASTINATE_BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--workload", default="noop", choices=["noop", "io", "latency", "all"])
    parser.add_argument(
        "--n", type=int, default=None, help="tasks (default: 3000 noop, 5000 io, 2000 latency)"
    )
    parser.add_argument("--concurrency", type=int, default=None, help="default: 10 (io: 100)")
    parser.add_argument("--queue", default="noop")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.command == "_worker":
        _worker_main(args)
        return
    workloads = ["noop", "io", "latency"] if args.workload == "all" else [args.workload]
    for workload in workloads:
        if workload == "noop":
            res = noop(args, args.n or 3000, args.concurrency or 10)
        elif workload == "io":
            res = io(args, args.n or 5000, args.concurrency or 100)
        else:
            res = latency(args, args.n or 2000, args.concurrency or 10)
        print(json.dumps(res) if args.json else "  ".join(f"{k}={v}" for k, v in res.items()), flush=True)


if __name__ == "__main__":
    main()
