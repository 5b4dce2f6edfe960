"""Our MySQL/MariaDB driver next to our PostgreSQL driver, on this machine, interleaved.

    flock /tmp/asynctasq-bench.lock .venv/bin/python benchmarks/mysql_compare.py
    flock /tmp/asynctasq-bench.lock .venv/bin/python benchmarks/mysql_compare.py --reps 1 --claims

Both sides are benchmarks/harness.py (one worker process, results off): noop drain of 10k tasks
at concurrency 10, 5k x sleep(10 ms) at concurrency 100 (ideal 0.5 s), pickup latency of 2k
tasks at 200/s into an idle worker. Then the idle query rate: one worker on an empty queue, the
server's ``Questions`` counter over 10 s once it has been idle for 2 s (less the server's rate
without it). ``--claims`` adds the claim designs on bare SQL (the evidence for the driver's).

PostgreSQL runs from ``--postgres-root`` (a checkout whose harness has a working postgres
driver; default: this tree, else /work/before), in a schema of its own; MySQL in tables of
their own. Both are dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import time
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from compare_common import column, fmt, interleaved, run_json  # noqa: E402

DEFAULT_MYSQL_DSN = "mysql://root@127.0.0.1:3306/test"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
SYSTEMS = ["mysql", "postgres"]
TARGETS = "drain >= 0.3x postgres; latency p50 < 10 ms, p99 < 50 ms; io >= 0.5 of ideal; idle <= 10 q/s"


def _postgres_usable(root: str) -> bool:
    probe = "from asynctasq.drivers.postgres import PostgresDriver; PostgresDriver()"
    proc = subprocess.run(
        [_python(root), "-c", probe], cwd=root, capture_output=True, text=True, env=_env(root)
    )
    return proc.returncode == 0


def _python(root: str) -> str:
    venv = os.path.join(root, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def _env(root: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=root, **extra)
    return env


def _run(system: str, workload: str, args: argparse.Namespace) -> dict[str, Any]:
    root = ROOT if system == "mysql" else args.postgres_root
    if system == "mysql":
        env = _env(root, ASYNCTASQ_MYSQL_DSN=args.mysql_dsn, ASYNCTASQ_MYSQL_TABLE=args.mysql_table)
    else:
        env = _env(
            root, ASYNCTASQ_POSTGRES_DSN=args.postgres_dsn, ASYNCTASQ_POSTGRES_SCHEMA=args.postgres_schema
        )
    cmd = [_python(root), os.path.join(root, "benchmarks", "harness.py"), "--driver", system]
    cmd += ["--workload", workload, "--json"]
    if workload == "noop":
        cmd += ["--n", "10000"]
    return run_json(f"{system} {workload}", cmd, env)


async def _questions(dsn: str) -> int:
    import aiomysql

    from asynctasq.drivers.mysql import parse_dsn

    conn = await aiomysql.connect(**parse_dsn(dsn))
    try:
        async with conn.cursor() as cur:
            await cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
            return int((await cur.fetchall())[0][1])
    finally:
        conn.close()


def idle_rate(args: argparse.Namespace, seconds: float = 10.0) -> dict[str, float]:
    """Queries per second the server answers for one idle worker (the server's own rate without
    the worker, measured first, is taken off; the two SHOW STATUS calls count 1 each)."""

    def rate(window: float) -> float:
        before = asyncio.run(_questions(args.mysql_dsn))
        time.sleep(window)
        after = asyncio.run(_questions(args.mysql_dsn))
        return (after - before - 1) / window

    base = rate(5.0)
    env = _env(ROOT, ASYNCTASQ_MYSQL_DSN=args.mysql_dsn, ASYNCTASQ_MYSQL_TABLE=args.mysql_table)
    queue = "idle-" + uuid.uuid4().hex[:6]
    cmd = [sys.executable, "-m", "asynctasq", "worker", "--driver", "mysql", "--queues", queue]
    cmd += ["--concurrency", "10", "--log-level", "WARNING"]
    worker = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        time.sleep(4.0)  # started, connected, then idle for at least 2 s
        busy = rate(seconds)
    finally:
        worker.terminate()
        worker.wait(30)
    return {"server_alone_q_per_s": round(base, 2), "idle_worker_q_per_s": round(busy - base, 2)}


async def claim_designs(dsn: str, rounds: int = 300, batch: int = 10) -> dict[str, float]:
    """Milliseconds per claim of ``batch`` rows for the two claim designs MariaDB allows (no
    UPDATE ... RETURNING), on bare SQL over one connection, rows acked in between."""
    import aiomysql

    from asynctasq.drivers.mysql import parse_dsn

    table = "claims_" + uuid.uuid4().hex[:8]
    conn = await aiomysql.connect(autocommit=True, client_flag=2, **parse_dsn(dsn))
    cur = await conn.cursor()

    async def results() -> list[Any]:
        out = [await cur.fetchall()]
        while await cur.nextset():
            out.append(await cur.fetchall())
        return out

    pick = (
        f"SELECT id, queue, body, deliveries FROM {table} WHERE queue = 'q' AND due <= UTC_TIMESTAMP(6) "
        f"ORDER BY due, id LIMIT {batch} FOR UPDATE SKIP LOCKED"
    )

    async def two_round_trips() -> list[Any]:
        await cur.execute("START TRANSACTION; " + pick)
        rows = (await results())[-1]
        ids = ",".join(str(r[0]) for r in rows) or "0"
        await cur.execute(
            f"UPDATE {table} SET token = {secrets.randbits(62)} ^ id, deliveries = deliveries + 1, "
            f"due = UTC_TIMESTAMP(6) + INTERVAL 30 SECOND WHERE id IN ({ids}); COMMIT"
        )
        await results()
        return list(rows)

    async def one_statement() -> list[Any]:
        nonce = secrets.randbits(62)
        ids_only = pick.replace("id, queue, body, deliveries", "id", 1)
        await cur.execute(
            "SET @until := UTC_TIMESTAMP(6) + INTERVAL 30 SECOND; "
            f"UPDATE ({ids_only}) AS c STRAIGHT_JOIN {table} AS t ON t.id = c.id "
            f"SET t.token = {nonce} ^ t.id, t.due = @until, t.deliveries = t.deliveries + 1; "
            f"SELECT id, queue, body, deliveries FROM {table} WHERE queue = 'q' AND due = @until "
            f"AND token = {nonce} ^ id"
        )
        return list((await results())[-1])

    try:
        await cur.execute("SET SESSION time_zone = '+00:00'")
        await cur.execute(
            f"CREATE TABLE {table} (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, "
            "queue VARCHAR(80) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, due DATETIME(6) NOT NULL, "
            "token BIGINT UNSIGNED NULL, deliveries INT NOT NULL DEFAULT 0, body LONGBLOB NOT NULL, "
            "KEY claim (queue, due, id)) ENGINE=InnoDB"
        )
        out: dict[str, list[float]] = {}
        designs = {"select_then_update_2rt": two_round_trips, "update_join_derived_1rt": one_statement}
        for _ in range(3):  # interleaved
            for name, claim in designs.items():
                values = ",".join(["('q', UTC_TIMESTAMP(6), 'x')"] * (rounds * batch))
                await cur.execute(f"INSERT INTO {table} (queue, due, body) VALUES {values}")
                started = time.perf_counter()
                claimed = []
                for _ in range(rounds):
                    claimed += await claim()
                out.setdefault(name, []).append((time.perf_counter() - started) / rounds * 1000)
                assert len(claimed) == rounds * batch, name
                for start in range(0, len(claimed), batch):
                    ids = ",".join(str(r[0]) for r in claimed[start : start + batch])
                    await cur.execute(f"DELETE FROM {table} WHERE id IN ({ids})")
        return {name: round(sorted(v)[1], 3) for name, v in out.items()}
    finally:
        await cur.execute(f"DROP TABLE IF EXISTS {table}")
        conn.close()


async def _drop(args: argparse.Namespace) -> None:
    from asynctasq.drivers.mysql import MySQLDriver

    await MySQLDriver(args.mysql_dsn, table=args.mysql_table).drop_tables()
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - postgres ran from another checkout
        return
    conn = await asyncpg.connect(args.postgres_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{args.postgres_schema}" CASCADE')
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mysql-dsn", default=os.environ.get("ASYNCTASQ_BENCH_MYSQL_DSN", DEFAULT_MYSQL_DSN))
    parser.add_argument(
        "--postgres-dsn", default=os.environ.get("ASYNCTASQ_BENCH_POSTGRES_DSN", DEFAULT_POSTGRES_DSN)
    )
    parser.add_argument("--postgres-root", default=None, help="checkout whose harness runs PostgreSQL")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workloads", default="noop,io,latency")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--no-idle", action="store_true", help="skip the idle query rate")
    parser.add_argument("--claims", action="store_true", help="also time the claim designs on bare SQL")
    args = parser.parse_args()
    suffix = uuid.uuid4().hex[:8]
    args.mysql_table = f"bench_{suffix}"
    args.postgres_schema = f"bench_{suffix}"
    if args.postgres_root is None:
        args.postgres_root = ROOT if _postgres_usable(ROOT) else "/work/before"
    systems = args.systems.split(",")
    try:
        results = interleaved(systems, args.workloads.split(","), args.reps, lambda s, w: _run(s, w, args))
        idle = None if args.no_idle else idle_rate(args)
        claims = asyncio.run(claim_designs(args.mysql_dsn)) if args.claims else None
    finally:
        asyncio.run(_drop(args))

    def col(system: str, workload: str, key: str) -> list[float]:
        return column(results, system, workload, key)

    print()
    print(
        f"one worker process, median of {args.reps} (min-max), interleaved; "
        f"PostgreSQL from {args.postgres_root}"
    )
    print()
    print(
        "| driver | noop drain/s | enqueue single/s | enqueue bulk/s | io efficiency "
        "| p50 ms | p99 ms | max ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for system in systems:
        cells = [
            fmt(col(system, "noop", "drain_per_s")),
            fmt(col(system, "noop", "enqueue_single_per_s")),
            fmt(col(system, "noop", "enqueue_bulk_per_s")),
            fmt(col(system, "io", "efficiency"), 2),
            fmt(col(system, "latency", "p50_ms"), 2),
            fmt(col(system, "latency", "p99_ms"), 2),
            fmt(col(system, "latency", "max_ms"), 1),
        ]
        print(f"| {system} | " + " | ".join(cells) + " |")
    mine, theirs = col("mysql", "noop", "drain_per_s"), col("postgres", "noop", "drain_per_s")
    if mine and theirs:
        ratios = [a / b for a, b in zip(mine, theirs, strict=False)]
        print(f"\nnoop drain mysql / postgres: {fmt(ratios, 2)} (per repetition)")
    if idle is not None:
        print(
            f"idle worker: {idle['idle_worker_q_per_s']} queries/s "
            f"(server alone: {idle['server_alone_q_per_s']}/s)"
        )
    if claims is not None:
        print("claim of 10 rows on bare SQL, ms (median of 3):", claims)
    print(f"targets: {TARGETS}")


if __name__ == "__main__":
    main()
