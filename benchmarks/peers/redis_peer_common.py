"""What the Redis peers' bench scripts share: the workloads of shared/BENCHMARKS.md, timed the way
benchmarks/harness.py times ours (worker in a process of its own on uvloop, rates measured inside
it from the first task's start to the last task's end). Standard library only: it is imported
from each peer's own virtualenv.

A peer script supplies a :class:`Peer` and calls :func:`main`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

DEFAULT_URL = "redis://127.0.0.1:6379/0"

# -- what the tasks record (in the worker process) --------------------------------------------

stats: dict[str, float] = {"first": 0.0, "last": 0.0, "count": 0}
latencies: list[float] = []
_lock = threading.Lock()
_target = 0
_on_done: Callable[[], None] = lambda: None  # noqa: E731


def _count_one() -> None:
    stats["count"] += 1
    if stats["count"] == _target:
        _on_done()


def mark() -> None:
    """A no-op task ran."""
    with _lock:
        now = time.perf_counter()
        if not stats["count"]:
            stats["first"] = now
        stats["last"] = now
        _count_one()


def io_started() -> None:
    with _lock:
        if not stats["first"]:
            stats["first"] = time.perf_counter()


def io_finished() -> None:
    with _lock:
        stats["last"] = time.perf_counter()
        _count_one()


def latency(sent_at: float) -> None:
    with _lock:
        latencies.append(time.time() - sent_at)
    mark()


def done_future() -> asyncio.Future[None]:
    """A future of the running loop that resolves when the target count is reached."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))

    global _on_done
    _on_done = resolve
    return fut


def done_event() -> threading.Event:
    event = threading.Event()
    global _on_done
    _on_done = event.set
    return event


# -- the peer ---------------------------------------------------------------------------------


class Peer:
    """Override these; ``kind`` is ``noop``, ``io`` or ``latency``."""

    name = "peer"
    notes = ""
    cleanup_patterns: tuple[str, ...] = ()

    def configure(self, variant: str) -> None:
        """Pick a variant of the peer (``--variant``), e.g. taskiq's list or stream broker."""

    def enqueue(self, url: str, queue: str, kind: str, n: int, bulk: bool) -> float | None:
        """Enqueue ``n`` tasks of ``kind``; return the seconds taken (None: no bulk API)."""
        raise NotImplementedError

    def enqueue_paced(self, url: str, queue: str, n: int, rate: float) -> None:
        """Send ``n`` latency tasks at ``rate`` per second, each carrying time.time()."""
        raise NotImplementedError

    def run_worker(self, url: str, queue: str, kind: str, n: int, concurrency: int) -> None:
        """Run a worker until ``n`` tasks ran (print "ready" to stdout once it listens)."""
        raise NotImplementedError


def finish() -> None:
    """Print what the tasks recorded and leave at once (peers' shutdowns are not measured)."""
    with open(f"/proc/{os.getpid()}/status") as f:
        hwm_kb = next((int(line.split()[1]) for line in f if line.startswith("VmHWM")), 0)
    print(json.dumps({**stats, "latencies": latencies, "vmhwm_kb": hwm_kb}), flush=True)
    os._exit(0)


def ready() -> None:
    print("ready", flush=True)


def pace(n: int, rate: float) -> list[float]:
    start = time.perf_counter()
    return [start + i / rate for i in range(n)]


async def sleep_until(target: float) -> None:
    delay = target - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


def run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# -- a tiny RESP client for cleaning up (each peer brings a different redis library) ----------


def delete_matching(url: str, pattern: str) -> int:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379)) as sock:
        f = sock.makefile("rwb")

        def call(*args: str) -> Any:
            f.write(
                b"*%d\r\n" % len(args)
                + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
            )
            f.flush()
            return _read(f)

        db = (parts.path or "/0").lstrip("/") or "0"
        call("SELECT", db)
        cursor, deleted = "0", 0
        while True:
            cursor_b, keys = call("SCAN", cursor, "MATCH", pattern, "COUNT", "1000")
            cursor = cursor_b.decode()
            if keys:
                deleted += call("DEL", *(k.decode() for k in keys))
            if cursor == "0":
                return deleted


def _read(f: Any) -> Any:
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b"-"):
        return rest
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = f.read(size + 2)
        return data[:-2]
    if kind == b"*":
        return [_read(f) for _ in range(int(rest))]
    raise RuntimeError(f"bad reply {line!r}")


# -- the workloads (in the parent process) ----------------------------------------------------


def _start_worker(
    script: str, args: argparse.Namespace, queue: str, kind: str, n: int, concurrency: int
) -> Any:
    cmd = [
        sys.executable,
        script,
        "_worker",
        "--redis-url",
        args.redis_url,
        "--queue",
        queue,
        "--kind",
        kind,
        "--n",
        str(n),
        "--concurrency",
        str(concurrency),
        "--variant",
        args.variant,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise SystemExit(f"the worker did not start (said {line!r})")
    return proc


def _finish_worker(proc: Any, timeout: float = 900) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"the worker failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main(peer: Peer, script: str) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "_worker"])
    parser.add_argument("--workload", default="noop", choices=["noop", "io", "latency", "all"])
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_URL))
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--queue", default="")
    parser.add_argument("--kind", default="noop")
    parser.add_argument("--variant", default="")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    peer.configure(args.variant)
    if args.command == "_worker":
        global _target
        _target = args.n
        peer.run_worker(args.redis_url, args.queue, args.kind, args.n, args.concurrency)
        finish()
    workloads = ["noop", "io", "latency"] if args.workload == "all" else [args.workload]
    for workload in workloads:
        queue = "peer" + uuid.uuid4().hex[:8]
        try:
            res = _workload(peer, script, args, workload, queue)
        finally:
            delete_matching(args.redis_url, f"*{queue}*")
            for pattern in getattr(peer, "cleanup_patterns", ()):
                delete_matching(args.redis_url, pattern)
        res.update(system=peer.name, notes=peer.notes)
        if args.json:
            print(json.dumps(res), flush=True)
        else:
            print("  ".join(f"{k}={v}" for k, v in res.items()), flush=True)


def _workload(peer: Peer, script: str, args: argparse.Namespace, workload: str, queue: str) -> dict[str, Any]:
    url = args.redis_url
    if workload == "noop":
        n, conc = args.n or 10000, args.concurrency or 10
        single = peer.enqueue(url, queue, "noop", n, bulk=False)
        proc = _start_worker(script, args, queue, "noop", n, conc)
        res = _finish_worker(proc)
        drain = res["count"] / max(res["last"] - res["first"], 1e-9)
        bulk = peer.enqueue(url, queue + "bulk", "noop", n, bulk=True)
        delete_matching(url, f"*{queue}bulk*")
        return {
            "workload": "noop",
            "n": n,
            "concurrency": conc,
            "drain_per_s": round(drain),
            "enqueue_single_per_s": round(n / single) if single else None,
            "enqueue_bulk_per_s": round(n / bulk) if bulk else None,
            "worker_vmhwm_mb": round(res["vmhwm_kb"] / 1024, 1),
        }
    if workload == "io":
        n, conc = args.n or 5000, args.concurrency or 100
        if peer.enqueue(url, queue, "io", n, bulk=True) is None:
            peer.enqueue(url, queue, "io", n, bulk=False)
        proc = _start_worker(script, args, queue, "io", n, conc)
        res = _finish_worker(proc)
        actual = res["last"] - res["first"]
        ideal = n * 0.01 / conc
        return {
            "workload": "io",
            "n": n,
            "concurrency": conc,
            "seconds": round(actual, 3),
            "ideal_s": ideal,
            "efficiency": round(ideal / actual, 3),
        }
    n, conc = args.n or 2000, args.concurrency or 10
    proc = _start_worker(script, args, queue, "latency", n, conc)
    time.sleep(0.5)  # let the worker settle into its idle wait
    peer.enqueue_paced(url, queue, n, 200.0)
    res = _finish_worker(proc)
    lat = sorted(x * 1000 for x in res["latencies"])
    return {
        "workload": "latency",
        "n": n,
        "rate_per_s": 200.0,
        "p50_ms": round(statistics.median(lat), 2),
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2),
        "max_ms": round(lat[-1], 2),
    }
