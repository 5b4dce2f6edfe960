"""Celery's side of the RabbitMQ workloads, over its default amqp transport (py-amqp;
benchmarks/rabbitmq_compare.py runs it in its own venv).

Celery at its defaults (acks on receipt, prefetch multiplier 4, gossip, mingle and heartbeats
on, no result backend) except: the ``threads`` pool with the workload's concurrency (the
default prefork pool would run the tasks in child processes, where this script cannot time them;
threads are also the faster pool for tasks that do nothing), and the run's queue. Celery tasks
are synchronous: the io task sleeps its 10 ms in its thread. No bulk enqueue.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rabbit_peer_common
import redis_peer_common as common
from celery import Celery
from celery.signals import worker_ready


def _app(url: str, queue: str) -> tuple[Any, dict[str, Any]]:
    app = Celery("bench", broker=url)
    app.conf.update(task_default_queue=queue, worker_hijack_root_logger=False, worker_redirect_stdouts=False)

    @app.task(name="noop")
    def noop() -> None:
        common.mark()

    @app.task(name="io")
    def io() -> None:
        common.io_started()
        time.sleep(0.01)
        common.io_finished()

    @app.task(name="latency")
    def latency(sent_at: float) -> None:
        common.latency(sent_at)

    return app, {"noop": noop, "io": io, "latency": latency}


class CeleryRabbit(common.Peer):
    name = "celery 5.7 amqp"
    notes = "threads pool; acks on receipt (its default); sync tasks; no bulk enqueue"

    def enqueue(self, url: str, queue: str, kind: str, n: int, bulk: bool) -> float | None:
        if bulk:
            return None
        app, tasks = _app(url, queue)
        with app.producer_or_acquire() as producer:
            started = time.perf_counter()
            for _ in range(n):
                tasks[kind].apply_async(producer=producer)
            elapsed = time.perf_counter() - started
        app.close()
        return elapsed

    def enqueue_paced(self, url: str, queue: str, n: int, rate: float) -> None:
        app, tasks = _app(url, queue)
        with app.producer_or_acquire() as producer:
            for target in common.pace(n, rate):
                delay = target - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                tasks["latency"].apply_async((time.time(),), producer=producer)
        app.close()

    def run_worker(self, url: str, queue: str, kind: str, n: int, concurrency: int) -> None:
        app, _ = _app(url, queue)
        done = common.done_event()
        worker_ready.connect(lambda **_: common.ready(), weak=False)
        threading.Thread(target=lambda: (done.wait(), common.finish()), daemon=True).start()
        app.worker_main(
            ["--quiet", "worker", "-P", "threads", "-c", str(concurrency), "-Q", queue, "-l", "WARNING"]
        )


if __name__ == "__main__":
    rabbit_peer_common.main(CeleryRabbit(), os.path.abspath(__file__))
