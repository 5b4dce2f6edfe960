"""arq's side of the Redis workloads (benchmarks/redis_compare.py runs it in its own venv).

arq at its defaults (poll_delay 0.5 s, its own redis-py pool) except: ``max_jobs`` is the
workload's concurrency, the queue name is the run's, and ``keep_result=0`` (no result kept, as
the other systems run without a result backend). arq has no bulk enqueue.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis_peer_common as common
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker, func


async def noop(ctx: dict) -> None:
    common.mark()


async def io(ctx: dict) -> None:
    common.io_started()
    await asyncio.sleep(0.01)
    common.io_finished()


async def latency(ctx: dict, sent_at: float) -> None:
    common.latency(sent_at)


class Arq(common.Peer):
    name = "arq 0.28"
    notes = "keep_result=0; no bulk enqueue"
    cleanup_patterns = ("arq:job:*", "arq:in-progress:*", "arq:retry:*", "arq:result:*")

    def enqueue(self, url: str, queue: str, kind: str, n: int, bulk: bool) -> float | None:
        if bulk:
            return None

        async def go() -> float:
            pool = await create_pool(RedisSettings.from_dsn(url))
            started = time.perf_counter()
            for _ in range(n):
                await pool.enqueue_job(kind, _queue_name=queue)
            elapsed = time.perf_counter() - started
            await pool.aclose()
            return elapsed

        return common.run_loop(go())

    def enqueue_paced(self, url: str, queue: str, n: int, rate: float) -> None:
        async def go() -> None:
            pool = await create_pool(RedisSettings.from_dsn(url))
            for target in common.pace(n, rate):
                await common.sleep_until(target)
                await pool.enqueue_job("latency", time.time(), _queue_name=queue)
            await pool.aclose()

        common.run_loop(go())

    def run_worker(self, url: str, queue: str, kind: str, n: int, concurrency: int) -> None:
        async def go() -> None:
            done = common.done_future()
            worker = Worker(
                functions=[func(noop, name="noop"), func(io, name="io"), func(latency, name="latency")],
                redis_settings=RedisSettings.from_dsn(url),
                queue_name=queue,
                max_jobs=concurrency,
                keep_result=0,
                handle_signals=False,
            )
            running = asyncio.create_task(worker.async_run())
            common.ready()
            await done
            common.finish()
            running.cancel()

        common.run_loop(go())


if __name__ == "__main__":
    common.main(Arq(), os.path.abspath(__file__))
