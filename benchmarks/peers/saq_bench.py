"""saq's side of the Redis workloads (benchmarks/redis_compare.py runs it in its own venv).

saq at its defaults except: the Worker's ``concurrency`` is the workload's and the queue name is
the run's. saq keeps each job's record in Redis (that is how it works; no switch). It has no
bulk enqueue.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis_peer_common as common
from saq import Queue, Worker


async def noop(ctx: dict) -> None:
    common.mark()


async def io(ctx: dict) -> None:
    common.io_started()
    await asyncio.sleep(0.01)
    common.io_finished()


async def latency(ctx: dict, *, sent_at: float) -> None:
    common.latency(sent_at)


class Saq(common.Peer):
    name = "saq 0.26"
    notes = "no bulk enqueue"

    def enqueue(self, url: str, queue: str, kind: str, n: int, bulk: bool) -> float | None:
        if bulk:
            return None

        async def go() -> float:
            q = Queue.from_url(url, name=queue)
            await q.connect()
            started = time.perf_counter()
            for _ in range(n):
                await q.enqueue(kind)
            elapsed = time.perf_counter() - started
            await q.disconnect()
            return elapsed

        return common.run_loop(go())

    def enqueue_paced(self, url: str, queue: str, n: int, rate: float) -> None:
        async def go() -> None:
            q = Queue.from_url(url, name=queue)
            await q.connect()
            for target in common.pace(n, rate):
                await common.sleep_until(target)
                await q.enqueue("latency", sent_at=time.time())
            await q.disconnect()

        common.run_loop(go())

    def run_worker(self, url: str, queue: str, kind: str, n: int, concurrency: int) -> None:
        async def go() -> None:
            done = common.done_future()
            q = Queue.from_url(url, name=queue)
            await q.connect()
            worker = Worker(q, functions=[noop, io, latency], concurrency=concurrency)
            running = asyncio.create_task(worker.start())
            common.ready()
            await done
            common.finish()
            running.cancel()

        common.run_loop(go())


if __name__ == "__main__":
    common.main(Saq(), os.path.abspath(__file__))
