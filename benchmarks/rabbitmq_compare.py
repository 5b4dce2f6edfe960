"""Our rabbitmq driver against dramatiq's RabbitmqBroker, Celery's amqp transport and
taskiq-aio-pika on the same RabbitMQ, next to our other drivers, interleaved.

    flock /tmp/asynctasq-bench.lock .venv/bin/python benchmarks/rabbitmq_compare.py
    flock /tmp/asynctasq-bench.lock .venv/bin/python benchmarks/rabbitmq_compare.py --reps 1 --workloads noop

Each repetition runs every workload for every system (the order rotating per repetition); the
table shows the median with (min-max). Our side is benchmarks/harness.py (``asynctasq`` is the
rabbitmq driver at its defaults, quorum queues; ``asynctasq-classic`` the same on classic
queues, the peers' queue type; ``asynctasq-sqlite`` / ``-redis`` / ``-postgres`` our other
drivers, shown when they run on this tree). The peers' sides are
benchmarks/peers/<peer>_rabbit_bench.py, each in its own virtualenv.
Their virtualenvs (the redis extras because the dramatiq and taskiq scripts reuse the Redis
peers' scripts with the broker swapped):

    for p in dramatiq-rabbit celery-rabbit taskiq-rabbit; do python3 -m venv benchmarks/.venvs/$p; done
    benchmarks/.venvs/dramatiq-rabbit/bin/pip install "dramatiq[rabbitmq,redis]==2.2.1" uvloop
    benchmarks/.venvs/celery-rabbit/bin/pip install celery==5.7.0 kombu==5.7.0
    benchmarks/.venvs/taskiq-rabbit/bin/pip install taskiq==0.13.0 taskiq-aio-pika==0.6.1 \
        taskiq-redis==1.2.4 uvloop

Every run uses names of its own and deletes its queues and exchanges afterwards (listed with
``rabbitmqctl``, deleted over AMQP). ``--limits`` adds the bare driver's dequeue + ack loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(HERE, "peers"))

from compare_common import add_arguments, column, interleaved, print_driver_limits, print_table, run_json  # noqa: E402

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = os.environ.get("ASYNCTASQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get("ASYNCTASQ_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PEERS = {  # system -> (virtualenv, script)
    "dramatiq": ("dramatiq-rabbit", "dramatiq_rabbit_bench.py"),
    "celery": ("celery-rabbit", "celery_rabbit_bench.py"),
    "taskiq-aio-pika": ("taskiq-rabbit", "taskiq_rabbit_bench.py"),
}
OURS = {"asynctasq": "rabbitmq", "asynctasq-classic": "rabbitmq", "asynctasq-sqlite": "sqlite",
        "asynctasq-redis": "redis", "asynctasq-postgres": "postgres"}  # fmt: skip
OPTIONAL = {"asynctasq-sqlite", "asynctasq-redis", "asynctasq-postgres"}
"""Shown when they run; a driver not yet on this tree's driver kit leaves its row empty."""
SYSTEMS = [*OURS, *PEERS]
PEER_EXCHANGES = ("celeryev", "celery.pidbox", "reply.celery.pidbox")


def _names(kind: str) -> set[str]:
    done = subprocess.run(
        ["rabbitmqctl", kind, "name", "--quiet", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return set(done.stdout.split())


async def _delete(url: str, queues: set[str], exchanges: set[str]) -> None:
    import aiormq

    conn = aiormq.Connection(url)
    await conn.connect()
    try:
        channel = await conn.channel()
        for name in sorted(queues):
            await channel.queue_delete(name)
        for name in sorted(exchanges):
            await channel.exchange_delete(name)
    finally:
        await conn.close()


def _command(system: str, workload: str, url: str, run_id: str) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if system in OURS:
        env.update(
            ASYNCTASQ_RABBITMQ_URL=url,
            ASYNCTASQ_RABBITMQ_PREFIX=run_id,
            ASYNCTASQ_RABBITMQ_QUEUE_TYPE="classic" if system == "asynctasq-classic" else "auto",
            ASYNCTASQ_REDIS_URL=REDIS_URL,
            ASYNCTASQ_REDIS_PREFIX=run_id,
            ASYNCTASQ_POSTGRES_DSN=POSTGRES_DSN,
            ASYNCTASQ_POSTGRES_SCHEMA=run_id,
            ASYNCTASQ_SQLITE_PATH=os.path.join(tempfile.gettempdir(), f"{run_id}.db"),
        )
        cmd = [sys.executable, os.path.join(HERE, "harness.py"), "--driver", OURS[system]]
    else:
        venv, script = PEERS[system]
        python = os.path.join(HERE, ".venvs", venv, "bin", "python")
        if not os.path.exists(python):
            raise SystemExit(f"{python} is missing: see benchmarks/peers/README.md")
        cmd = [python, os.path.join(HERE, "peers", script), "--redis-url", url]
    cmd += ["--workload", workload, "--json", *(["--n", "10000"] if workload == "noop" else [])]
    return cmd, env


def _cleanup(system: str, url: str, run_id: str, before: tuple[set[str], set[str]]) -> None:
    queues, exchanges = _names("list_queues") - before[0], _names("list_exchanges") - before[1]
    mine = run_id if system in OURS else "peer"
    doomed_q = {q for q in queues if q.startswith(mine)}
    doomed_x = {x for x in exchanges if x.startswith(mine) or x in PEER_EXCHANGES}
    if doomed_q or doomed_x:
        asyncio.run(_delete(url, doomed_q, doomed_x))
    if system == "asynctasq-redis":
        from redis_peer_common import delete_matching

        delete_matching(REDIS_URL, f"{{{run_id}*")
    elif system == "asynctasq-postgres":
        subprocess.run(["psql", POSTGRES_DSN, "-qc", f'DROP SCHEMA IF EXISTS "{run_id}" CASCADE'],
                       capture_output=True, timeout=60)  # fmt: skip
    elif system == "asynctasq-sqlite":
        for suffix in ("", "-wal", "-shm"):
            path = os.path.join(tempfile.gettempdir(), f"{run_id}.db{suffix}")
            if os.path.exists(path):
                os.remove(path)


def _run(system: str, workload: str, url: str) -> dict[str, Any]:
    run_id = "bench" + uuid.uuid4().hex[:8]
    before = (_names("list_queues"), _names("list_exchanges"))
    cmd, env = _command(system, workload, url, run_id)
    try:
        return run_json(f"{system} {workload}", cmd, env)
    except SystemExit as exc:
        if system not in OPTIONAL:
            raise
        print(f"({system} {workload} did not run: {str(exc).splitlines()[0]})", flush=True)
        return {}
    finally:
        _cleanup(system, url, run_id, before)


async def _driver_limit(url: str, n: int, batch: int) -> float:
    """Tasks/s of one dequeue(batch) + ack(batch) loop on the bare driver."""
    from asynctasq.drivers.base import EnqueueItem
    from asynctasq.drivers.rabbitmq import RabbitMQDriver

    driver = RabbitMQDriver(url=url, prefix="limits" + uuid.uuid4().hex[:8])
    await driver.connect()
    try:
        for start in range(0, n, 1000):
            await driver.enqueue_many([EnqueueItem("q", b"x" * 100)] * min(1000, n - start))
        done, started = 0, time.perf_counter()
        while done < n:
            got = await driver.dequeue(["q"], batch, wait=1.0)
            if not got:
                break
            done += len(await driver.ack(got))
        return done / (time.perf_counter() - started)
    finally:
        await driver.disconnect()
        await driver.delete_everything(["q"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--amqp-url", default=os.environ.get("ASYNCTASQ_BENCH_AMQP_URL", DEFAULT_URL))
    add_arguments(parser, SYSTEMS, "also print the bare driver's dequeue + ack loop")
    args = parser.parse_args()
    workloads, systems = args.workloads.split(","), args.systems.split(",")
    results = interleaved(systems, workloads, args.reps, lambda s, w: _run(s, w, args.amqp_url))
    results = {key: [r for r in runs if r] for key, runs in results.items()}

    def median(system: str, workload: str, key: str) -> float | None:
        values = column(results, system, workload, key)
        return statistics.median(values) if values else None

    print_table(
        f"RabbitMQ 3.10, one worker process, median of {args.reps} (min-max), interleaved", systems, results
    )
    ours = median("asynctasq", "noop", "drain_per_s")
    peers = {s: median(s, "noop", "drain_per_s") for s in systems if s in PEERS}
    rated = {s: v for s, v in peers.items() if v}
    if ours and rated:
        fastest = max(rated, key=lambda s: rated[s])
        for system, label in (("asynctasq", "quorum"), ("asynctasq-classic", "classic")):
            rate = median(system, "noop", "drain_per_s")
            if rate:
                ratio = rate / rated[fastest]
                print(
                    f"noop drain, asynctasq ({label}) / fastest peer ({fastest}): {ratio:.1f}x (target >= 3x)"
                )
    for system in ("asynctasq", "asynctasq-classic"):
        eff, p50 = median(system, "io", "efficiency"), median(system, "latency", "p50_ms")
        if eff is not None or p50 is not None:
            print(f"{system}: io efficiency {eff} (target >= 0.75), pickup p50 {p50} ms")
    print()
    print("Workloads: noop 10k tasks at concurrency 10; io 5k x 10 ms at concurrency 100 (ideal 0.5 s);")
    print("latency 2k tasks at 200/s into an idle worker. Ours: results off, publisher confirms on every")
    print("publish, acks after the task. Peers at their defaults except:")
    for system in systems:
        notes = {r.get("notes") or "" for w in workloads for r in results.get((system, w), [])} - {""}
        if notes:
            print(f"  {system}: {'; '.join(sorted(notes))}")
    if args.limits:
        print_driver_limits(lambda batch: asyncio.run(_driver_limit(args.amqp_url, 20000, batch)))


if __name__ == "__main__":
    main()
