"""dramatiq's side of the Redis workloads (benchmarks/redis_compare.py runs it in its own venv).

dramatiq at its defaults (RedisBroker, default middleware) except: ``worker_threads`` is the
workload's concurrency and the queue name is the run's. The noop and latency actors are plain
functions run by the worker threads (dramatiq's usual shape); the io actor is ``async def``
with dramatiq's AsyncIO middleware (its documented way to run coroutines). dramatiq has no bulk
enqueue; its producer is synchronous.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dramatiq
import redis_peer_common as common
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware.asyncio import AsyncIO


def _actors(url: str, queue: str) -> tuple[Any, dict[str, Any]]:
    broker = RedisBroker(url=url)
    broker.add_middleware(AsyncIO())
    dramatiq.set_broker(broker)

    @dramatiq.actor(actor_name="noop", queue_name=queue)
    def noop() -> None:
        common.mark()

    @dramatiq.actor(actor_name="io", queue_name=queue)
    async def io() -> None:
        common.io_started()
        await asyncio.sleep(0.01)
        common.io_finished()

    @dramatiq.actor(actor_name="latency", queue_name=queue)
    def latency(sent_at: float) -> None:
        common.latency(sent_at)

    return broker, {"noop": noop, "io": io, "latency": latency}


class Dramatiq(common.Peer):
    name = "dramatiq 2.2"
    notes = "threads; io actor async (AsyncIO middleware); no bulk enqueue"
    cleanup_patterns = ("dramatiq:__acks__*", "dramatiq:__heartbeats__*")

    def enqueue(self, url: str, queue: str, kind: str, n: int, bulk: bool) -> float | None:
        if bulk:
            return None
        broker, actors = _actors(url, queue)
        started = time.perf_counter()
        for _ in range(n):
            actors[kind].send()
        elapsed = time.perf_counter() - started
        broker.close()
        return elapsed

    def enqueue_paced(self, url: str, queue: str, n: int, rate: float) -> None:
        broker, actors = _actors(url, queue)
        for target in common.pace(n, rate):
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            actors["latency"].send(time.time())
        broker.close()

    def run_worker(self, url: str, queue: str, kind: str, n: int, concurrency: int) -> None:
        broker, _ = _actors(url, queue)
        done = common.done_event()
        broker.emit_after("process_boot")  # starts the AsyncIO middleware's event loop thread
        worker = dramatiq.Worker(broker, worker_threads=concurrency, queues={queue})
        worker.start()
        common.ready()
        done.wait()
        common.finish()


if __name__ == "__main__":
    common.main(Dramatiq(), os.path.abspath(__file__))
