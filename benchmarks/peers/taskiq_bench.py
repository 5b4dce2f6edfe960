"""taskiq's side of the Redis workloads, with taskiq-redis's list or stream broker
(``--variant list|stream``; benchmarks/redis_compare.py runs it in its own venv).

taskiq at its defaults except: ``max_async_tasks`` is the workload's concurrency and the queue
name is the run's; no result backend (its default). The worker runs through
``taskiq.api.run_receiver_task`` in one process. taskiq has no bulk enqueue.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis_peer_common as common
from taskiq.api import run_receiver_task
from taskiq_redis import ListQueueBroker, RedisStreamBroker


class Taskiq(common.Peer):
    broker_kind = "list"

    def configure(self, variant: str) -> None:
        self.broker_kind = variant or "list"
        self.name = f"taskiq 0.13 {self.broker_kind}"
        self.notes = "no bulk enqueue"

    def _broker(self, url: str, queue: str) -> tuple[Any, dict[str, Any]]:
        cls = RedisStreamBroker if self.broker_kind == "stream" else ListQueueBroker
        broker = cls(url, queue_name=queue)

        @broker.task(task_name="noop")
        async def noop() -> None:
            common.mark()

        @broker.task(task_name="io")
        async def io() -> None:
            common.io_started()
            await asyncio.sleep(0.01)
            common.io_finished()

        @broker.task(task_name="latency")
        async def latency(sent_at: float) -> None:
            common.latency(sent_at)

        return broker, {"noop": noop, "io": io, "latency": latency}

    def enqueue(self, url: str, queue: str, kind: str, n: int, bulk: bool) -> float | None:
        if bulk:
            return None

        async def go() -> float:
            broker, tasks = self._broker(url, queue)
            await broker.startup()  # the stream broker creates its consumer group here
            started = time.perf_counter()
            for _ in range(n):
                await tasks[kind].kiq()
            elapsed = time.perf_counter() - started
            await broker.shutdown()
            return elapsed

        return common.run_loop(go())

    def enqueue_paced(self, url: str, queue: str, n: int, rate: float) -> None:
        async def go() -> None:
            broker, tasks = self._broker(url, queue)
            await broker.startup()
            for target in common.pace(n, rate):
                await common.sleep_until(target)
                await tasks["latency"].kiq(time.time())
            await broker.shutdown()

        common.run_loop(go())

    def run_worker(self, url: str, queue: str, kind: str, n: int, concurrency: int) -> None:
        async def go() -> None:
            done = common.done_future()
            broker, _ = self._broker(url, queue)
            broker.is_worker_process = True
            await broker.startup()
            running = asyncio.create_task(run_receiver_task(broker, max_async_tasks=concurrency))
            common.ready()
            await done
            common.finish()
            running.cancel()

        common.run_loop(go())


if __name__ == "__main__":
    common.main(Taskiq(), os.path.abspath(__file__))
