"""The postgres claim on a big backlog: its plan (EXPLAIN ANALYZE) and how long one claim takes.

    flock /tmp/asynctasq-bench.lock .venv/bin/python benchmarks/postgres_explain.py --backlog 200000

Loads ``--backlog`` ready tasks into one queue (plus 10% delayed ones and a few hundred leased
ones, and another busy queue), in a schema of its own that is dropped at the end, then prints
the plans of the single-queue and the multi-queue claim, both as a custom and as the generic
plan that a prepared statement may switch to, and times ``--claims`` claims of ``--limit`` rows
through the driver (each one round trip; the claimed rows are acked so the backlog stays put).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asynctasq.drivers.base import EnqueueItem
from asynctasq.drivers.postgres import PostgresDriver

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/asynctasq_bench"


async def main(args: argparse.Namespace) -> None:
    schema = "explain_" + uuid.uuid4().hex[:8]
    driver = PostgresDriver(dsn=args.dsn, schema=schema, max_pool_size=2)
    await driver.connect()
    pool = driver._pool
    assert pool is not None
    t = f'"{schema}".asynctasq_tasks'
    try:
        started = time.perf_counter()
        body = b"\x92\xa4task" + b"x" * 100
        for start in range(0, args.backlog, 10_000):
            size = min(10_000, args.backlog - start)
            await driver.enqueue_many([EnqueueItem("big", body)] * size)
            await driver.enqueue_many([EnqueueItem("big", body, 3600)] * (size // 10))
            await driver.enqueue_many([EnqueueItem("other", body)] * (size // 4))
        leased = await driver.dequeue(["big"], 300, wait=0)  # in flight: future lease expiry
        await pool.execute(f"VACUUM ANALYZE {t}")
        count = await pool.fetchval(f"SELECT count(*) FROM {t}")
        print(
            f"loaded {count:,} rows in {time.perf_counter() - started:.1f}s "
            f"({args.backlog:,} ready in 'big', 10% of that delayed, 300 leased, 'other' busy too)"
        )
        size = await pool.fetchval(
            f"SELECT pg_size_pretty(pg_relation_size('{schema}.asynctasq_tasks_claim'::regclass))"
        )
        print(f"claim index: {size}\n")

        async with pool.acquire() as conn:
            for name, sql, params in (
                ("single-queue claim", driver._sql.claim_one, "('big', 10, 30.0, 1)"),
                (
                    "multi-queue claim",
                    driver._sql.claim_many,
                    "(ARRAY['empty', 'big', 'other'], 10, 30.0, 1)",
                ),
            ):
                for mode in ("force_custom_plan", "force_generic_plan"):
                    tx = conn.transaction()
                    await tx.start()
                    try:
                        await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
                        await conn.execute(f"PREPARE claim AS {sql}")
                        plan = await conn.fetch(
                            f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE claim{params}"
                        )
                        await conn.execute("DEALLOCATE claim")
                    finally:
                        await tx.rollback()  # the claim of EXPLAIN ANALYZE really ran: undo it
                    print(f"-- {name}, {mode}")
                    print("\n".join("   " + r[0] for r in plan))
                    print()

        for queues in (["big"], ["empty", "big", "other"]):
            times = []
            for _ in range(args.claims):
                t0 = time.perf_counter()
                got = await driver.dequeue(queues, args.limit, wait=0)
                times.append((time.perf_counter() - t0) * 1000)
                await driver.ack(got)
            times.sort()
            print(
                f"claim of {args.limit} from {queues}, {args.claims} claims, client-side round trip: "
                f"median {statistics.median(times):.2f} ms, p99 {times[int(len(times) * 0.99) - 1]:.2f} ms, "
                f"max {times[-1]:.2f} ms"
            )
        await driver.ack(leased)
    finally:
        await pool.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await driver.disconnect()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=os.environ.get("ASYNCTASQ_BENCH_POSTGRES_DSN", DEFAULT_DSN))
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--claims", type=int, default=500)
    parser.add_argument("--limit", type=int, default=10)
    asyncio.run(main(parser.parse_args()))
