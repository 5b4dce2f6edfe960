"""streaq's side of the Redis workloads (benchmarks/redis_compare.py runs it in its own venv).

streaq at its defaults except: the Worker's ``concurrency`` is the workload's, the queue name is
the run's, signal handling is off (the bench stops it) and tasks use ``ttl=0`` (no result kept,
as the other systems run without a result backend). Bulk enqueue is ``Worker.enqueue_many``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis_peer_common as common
from streaq import Worker


def _worker(url: str, queue: str, concurrency: int = 16) -> tuple[Any, dict[str, Any]]:
    worker = Worker(redis_url=url, queue_name=queue, concurrency=concurrency, handle_signals=False)

    @worker.task(name="noop", ttl=0)
    async def noop() -> None:
        common.mark()

    @worker.task(name="io", ttl=0)
    async def io() -> None:
        common.io_started()
        await asyncio.sleep(0.01)
        common.io_finished()

    @worker.task(name="latency", ttl=0)
    async def latency(sent_at: float) -> None:
        common.latency(sent_at)

    return worker, {"noop": noop, "io": io, "latency": latency}


class Streaq(common.Peer):
    name = "streaq 7.2"
    notes = "ttl=0"

    def enqueue(self, url: str, queue: str, kind: str, n: int, bulk: bool) -> float | None:
        async def go() -> float:
            worker, tasks = _worker(url, queue)
            async with worker:
                started = time.perf_counter()
                if bulk:
                    for i in range(0, n, 500):
                        await worker.enqueue_many([tasks[kind].enqueue() for _ in range(min(500, n - i))])
                else:
                    for _ in range(n):
                        await tasks[kind].enqueue()
                return time.perf_counter() - started

        return common.run_loop(go())

    def enqueue_paced(self, url: str, queue: str, n: int, rate: float) -> None:
        async def go() -> None:
            worker, tasks = _worker(url, queue)
            async with worker:
                for target in common.pace(n, rate):
                    await common.sleep_until(target)
                    await tasks["latency"].enqueue(time.time())

        common.run_loop(go())

    def run_worker(self, url: str, queue: str, kind: str, n: int, concurrency: int) -> None:
        async def go() -> None:
            done = common.done_future()
            worker, _ = _worker(url, queue, concurrency)
            running = asyncio.create_task(worker.run_async())
            common.ready()
            await done
            common.finish()
            running.cancel()

        common.run_loop(go())


if __name__ == "__main__":
    common.main(Streaq(), os.path.abspath(__file__))
