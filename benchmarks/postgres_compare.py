"""Our postgres driver against pgqueuer and procrastinate, on the same server, interleaved.

    flock /tmp/asynctasq-bench.lock .venv/bin/python benchmarks/postgres_compare.py
    flock /tmp/asynctasq-bench.lock .venv/bin/python benchmarks/postgres_compare.py --reps 1 --workloads noop

Each repetition runs every workload for every system (the order of the systems rotates from one
repetition to the next); the table shows the median of the repetitions with (min-max). Our side
is benchmarks/harness.py, the peers' sides are benchmarks/peers/<peer>_bench.py in their own
virtualenvs (benchmarks/peers/README.md). Everything runs in one database of its own
(default asynctasq_bench, created when missing). ``--limits`` adds what the driver alone does,
without the worker: one loop of dequeue(limit) + ack(batch) on one connection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from compare_common import (  # noqa: E402
    add_arguments,
    bare_drain_rate,
    column,
    fmt,
    interleaved,
    print_driver_limits,
    print_table,
    run_json,
)

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/asynctasq_bench"
SYSTEMS = ["asynctasq", "pgqueuer", "procrastinate"]
NOOP_N = {"asynctasq": 10000, "pgqueuer": 10000, "procrastinate": 2000}


def _ensure_database(dsn: str) -> None:
    import asyncpg

    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))

    async def create() -> None:
        conn = await asyncpg.connect(admin)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())


def _command(system: str, workload: str, dsn: str) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if system == "asynctasq":
        env["ASYNCTASQ_POSTGRES_DSN"] = dsn
        cmd = [sys.executable, os.path.join(HERE, "harness.py"), "--driver", "postgres"]
    else:
        python = os.path.join(HERE, ".venvs", system, "bin", "python")
        if not os.path.exists(python):
            raise SystemExit(f"{python} is missing: see benchmarks/peers/README.md")
        cmd = [python, os.path.join(HERE, "peers", f"{system}_bench.py"), "--dsn", dsn]
    cmd += ["--workload", workload, "--json"]
    if workload == "noop":
        cmd += ["--n", str(NOOP_N[system])]
    return cmd, env


def _run(system: str, workload: str, dsn: str) -> dict[str, Any]:
    cmd, env = _command(system, workload, dsn)
    return run_json(f"{system} {workload}", cmd, env)


async def _driver_limit(dsn: str, n: int, batch: int) -> float:
    """Tasks/s of one dequeue(batch) + ack(batch) loop on the bare driver."""
    from asynctasq.drivers.postgres import PostgresDriver

    schema = "limits_" + uuid.uuid4().hex[:8]
    driver = PostgresDriver(dsn=dsn, schema=schema, max_pool_size=2)
    await driver.connect()
    try:
        return await bare_drain_rate(driver, n, batch, b"x")
    finally:
        assert driver._pool is not None
        await driver._pool.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await driver.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=os.environ.get("ASYNCTASQ_BENCH_POSTGRES_DSN", DEFAULT_DSN))
    add_arguments(parser, SYSTEMS, "also measure the bare driver loop")
    args = parser.parse_args()
    workloads = args.workloads.split(",")
    systems = args.systems.split(",")
    _ensure_database(args.dsn)
    results = interleaved(systems, workloads, args.reps, lambda s, w: _run(s, w, args.dsn))

    def col(system: str, workload: str, key: str) -> list[float]:
        return column(results, system, workload, key)

    print_table(
        f"PostgreSQL, one worker process, median of {args.reps} (min-max), interleaved", systems, results
    )
    ours = col("asynctasq", "noop", "drain_per_s")
    for peer in systems:
        theirs = col(peer, "noop", "drain_per_s")
        if peer != "asynctasq" and ours and theirs:
            ratios = [a / b for a, b in zip(ours, theirs, strict=False)]
            print(f"\nnoop drain asynctasq / {peer}: {fmt(ratios, 2)} (per repetition)", end="")
    print()
    print()
    print("Workloads: noop 10k tasks (procrastinate 2k: same rate, shorter run), concurrency 10;")
    print("io 5k x sleep(10 ms) at concurrency 100 (ideal 0.5 s); latency 2k tasks at 200/s into an")
    print("idle worker. Ours: results off (as the peers run without result backends).")
    print("Deviations: pgqueuer entrypoint concurrency_limit and batch_size = the concurrency;")
    print("procrastinate keeps finished jobs (its default). Peers run on uvloop like ours.")
    if args.limits:
        print_driver_limits(lambda batch: asyncio.run(_driver_limit(args.dsn, 20000, batch)))


if __name__ == "__main__":
    main()
