"""The Redis driver's own RESP client against redis-py and coredis on the driver's workload.

    flock /tmp/asynctasq-bench.lock .venv/bin/python benchmarks/redis_clients.py
    flock /tmp/asynctasq-bench.lock .venv/bin/python benchmarks/redis_clients.py --n 5000 --no-harness

Each run enqueues N no-op messages with the driver's enqueue script, then ONE process drains
them the way the driver does: the claim script for a batch of 10, then the ack script for those
10, one after the other (2 round trips per 10 messages), until all N are acked. Only the drain
is timed. The same Lua scripts and keys go through (a) ``asynctasq.drivers._resp``, (b)
``redis.asyncio`` (redis-py, hiredis parser) and (c) coredis, each in a fresh process on uvloop
when installed; the clients take turns (the order rotates per repetition), 3 repetitions,
median (min-max). Unless ``--no-harness``, each repetition also runs the worker-level drain of
``benchmarks/harness.py --driver redis --workload noop`` with our driver.
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
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from asynctasq.drivers import _redis_scripts as lua  # noqa: E402

CLIENTS = ["asynctasq-resp", "redis-py", "coredis"]
BATCH = 10
Call = Callable[[lua.Script, tuple[str, ...], list[Any]], Awaitable[Any]]


def _keys(prefix: str) -> dict[str, tuple[str, ...]]:
    tag = f"{{{prefix}:q}}"
    ready, delayed, leased = f"{tag}:ready", f"{tag}:delayed", f"{tag}:leased"
    body, count, token, wake = f"{tag}:body", f"{tag}:count", f"{tag}:token", f"{tag}:wake"
    return {
        "claim": (ready, delayed, leased, body, count, token, wake),
        "enqueue": (ready, delayed, body, wake),
        "ack": (leased, body, count, token),
    }


async def _drain(call: Call, prefix: str, n: int) -> tuple[float, float]:
    """Enqueue ``n`` messages, then claim + ack them in batches; the drain's messages/s and the
    client process's CPU µs per message (steadier than wall time on a shared machine)."""
    keys = _keys(prefix)
    for start in range(0, n, 500):
        args: list[Any] = []
        for i in range(start, min(start + 500, n)):
            args += (f"m{i}", b"\x93\xa4noop\x90\x80", 0)
        await call(lua.ENQUEUE, keys["enqueue"], args)
    done = 0
    base = uuid.uuid4().hex[:8]
    started, cpu = time.perf_counter(), time.process_time()
    while done < n:
        res = await call(lua.CLAIM, keys["claim"], [BATCH, 30_000, f"{base}{done}"])
        pairs: list[Any] = []
        for i in range(2, len(res), 4):
            pairs += (res[i], res[i + 3])
        stale = await call(lua.ACK, keys["ack"], pairs)
        if stale:
            raise SystemExit(f"the ack script refused {len(stale)} fresh leases")
        done += len(pairs) // 2
    return n / (time.perf_counter() - started), (time.process_time() - cpu) / n * 1e6


async def _ours(url: str, prefix: str, n: int) -> tuple[float, float]:
    from asynctasq.drivers._resp import RespClient, parse_url

    client = RespClient(parse_url(url))
    try:
        for reply in await client.execute_many(lua.load_commands()):
            if isinstance(reply, Exception):
                raise reply

        async def call(script: lua.Script, keys: tuple[str, ...], args: list[Any]) -> Any:
            return await client.execute(lua.command(script, keys, args))

        return await _drain(call, prefix, n)
    finally:
        client.close()


async def _redis_py(url: str, prefix: str, n: int) -> tuple[float, float]:
    import redis.asyncio as aioredis
    from redis.utils import HIREDIS_AVAILABLE

    if not HIREDIS_AVAILABLE:
        raise SystemExit("redis-py runs without hiredis here: pip install hiredis")
    client = aioredis.Redis.from_url(url)
    try:
        for script in lua.SCRIPTS:
            await client.script_load(script.source)

        async def call(script: lua.Script, keys: tuple[str, ...], args: list[Any]) -> Any:
            return await client.evalsha(script.sha, len(keys), *keys, *args)

        return await _drain(call, prefix, n)
    finally:
        await client.aclose()


async def _coredis(url: str, prefix: str, n: int) -> tuple[float, float]:
    import coredis

    async with coredis.Redis.from_url(url) as client:
        for script in lua.SCRIPTS:
            await client.script_load(script.source)

        async def call(script: lua.Script, keys: tuple[str, ...], args: list[Any]) -> Any:
            return await client.evalsha(script.sha, keys=keys, args=args)

        return await _drain(call, prefix, n)


async def _cleanup(url: str, prefix: str) -> None:
    from asynctasq.drivers._resp import RespClient, pack, parse_url

    client = RespClient(parse_url(url))
    try:
        keys = [k for group in _keys(prefix).values() for k in group]
        await client.execute(pack(("DEL", *sorted(set(keys)))))
    finally:
        client.close()


async def _delete_prefix(url: str, prefix: str) -> None:
    """Delete every key of ``prefix`` (what the harness run leaves: wake lists, the queue set)."""
    from asynctasq.drivers._resp import RespClient, pack, parse_url

    client = RespClient(parse_url(url))
    try:
        cursor = b"0"
        while True:
            cursor, keys = await client.execute(
                pack(("SCAN", cursor, "MATCH", f"{{{prefix}[:}}]*", "COUNT", 1000))
            )
            if keys:
                await client.execute(pack(("DEL", *keys)))
            if cursor == b"0":
                return
    finally:
        client.close()


def _one(client: str, url: str, n: int) -> None:
    """Child: one drain with ``client``; prints its rate as JSON."""
    prefix = "bench-clients-" + uuid.uuid4().hex[:8]
    run = {"asynctasq-resp": _ours, "redis-py": _redis_py, "coredis": _coredis}[client]

    async def main() -> tuple[float, float]:
        try:
            return await run(url, prefix, n)
        finally:
            await _cleanup(url, prefix)

    try:
        import uvloop

        rate, cpu_us = uvloop.run(main())
    except ImportError:
        rate, cpu_us = asyncio.run(main())
    print(json.dumps({"client": client, "drain_per_s": rate, "cpu_us_per_msg": cpu_us}), flush=True)


def _child(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1]}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _summary(values: list[float], fmt: str = ",.0f") -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "_one"])
    parser.add_argument("--client", choices=CLIENTS)
    parser.add_argument("--url", default=os.environ.get("ASYNCTASQ_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-harness", action="store_true", help="skip the worker-level drain")
    args = parser.parse_args()
    if args.command == "_one":
        _one(args.client, args.url, args.n)
        return
    rates: dict[str, list[float]] = {c: [] for c in [*CLIENTS, "harness"]}
    cpu: dict[str, list[float]] = {c: [] for c in CLIENTS}
    errors: dict[str, str] = {}
    for rep in range(args.reps):
        order = CLIENTS[rep % len(CLIENTS) :] + CLIENTS[: rep % len(CLIENTS)]
        for client in order:
            res = _child([__file__, "_one", "--client", client, "--url", args.url, "--n", str(args.n)])
            if "error" in res:
                errors[client] = res["error"]
            else:
                rates[client].append(res["drain_per_s"])
                cpu[client].append(res["cpu_us_per_msg"])
            print(f"rep {rep + 1} {client}: {res}", file=sys.stderr, flush=True)
        if not args.no_harness:
            env = dict(os.environ, ASYNCTASQ_REDIS_URL=args.url)
            env["ASYNCTASQ_REDIS_PREFIX"] = "bench-clients-" + uuid.uuid4().hex[:8]
            harness = [os.path.join(HERE, "harness.py"), "--driver", "redis", "--workload", "noop"]
            res = _child([*harness, "--n", str(args.n), "--json"], env)
            asyncio.run(_delete_prefix(args.url, env["ASYNCTASQ_REDIS_PREFIX"]))
            if "error" in res:
                errors["harness"] = res["error"]
            else:
                rates["harness"].append(res["drain_per_s"])
            print(f"rep {rep + 1} harness: {res}", file=sys.stderr, flush=True)
    print(f"drain of {args.n:,} messages, claim + ack {BATCH} a step; median (min-max) of {args.reps}")
    print("| client | drain/s | client CPU µs per message |\n| --- | --- | --- |")
    for client in CLIENTS:
        print(f"| {client} | {_summary(rates[client])} | {_summary(cpu[client], '.1f')} |")
    if not args.no_harness:
        print(f"| worker (harness.py noop, our driver) | {_summary(rates['harness'])} | |")
    for client, error in errors.items():
        print(f"{client} failed: {error}")


if __name__ == "__main__":
    main()
