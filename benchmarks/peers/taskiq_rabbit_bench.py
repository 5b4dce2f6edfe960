"""taskiq's side of the RabbitMQ workloads (benchmarks/rabbitmq_compare.py runs it in its own
venv): taskiq_bench.py's tasks and worker, on taskiq-aio-pika's AioPikaBroker.

taskiq-aio-pika at its defaults (quorum queue, topic exchange, its ``qos`` of 10) except: the
queue, its dead-letter queue and the exchange are named after the run; ``max_async_tasks`` is
the workload's concurrency; no result backend.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rabbit_peer_common
import taskiq_bench
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue


def _aio_pika_broker(url: str, queue_name: str) -> Any:
    return AioPikaBroker(
        url,
        exchange=Exchange(name=f"{queue_name}.x"),
        task_queues=[Queue(name=queue_name)],
        dead_letter_queue=Queue(name=f"{queue_name}.dead_letter"),
    )


taskiq_bench.ListQueueBroker = _aio_pika_broker  # the "list" variant


class TaskiqRabbit(taskiq_bench.Taskiq):
    def configure(self, variant: str) -> None:
        super().configure("list")
        self.name = "taskiq 0.13 aio-pika 0.6"
        self.notes = "qos 10 (its default); no bulk enqueue"


if __name__ == "__main__":
    rabbit_peer_common.main(TaskiqRabbit(), os.path.abspath(__file__))
