"""dramatiq's side of the RabbitMQ workloads (benchmarks/rabbitmq_compare.py runs it in its own
venv): dramatiq_bench.py's actors and worker, on RabbitmqBroker (pika) instead of RedisBroker.

dramatiq at its defaults (default middleware, its prefetch of twice the worker threads) except:
``worker_threads`` is the workload's concurrency and the queue name is the run's.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dramatiq_bench
import rabbit_peer_common
from dramatiq.brokers.rabbitmq import RabbitmqBroker

dramatiq_bench.RedisBroker = RabbitmqBroker  # both take url=


class DramatiqRabbit(dramatiq_bench.Dramatiq):
    name = "dramatiq 2.2 rabbitmq"
    notes = "threads, pika; io actor async (AsyncIO middleware); no bulk enqueue"
    cleanup_patterns = ()


if __name__ == "__main__":
    rabbit_peer_common.main(DramatiqRabbit(), os.path.abspath(__file__))
