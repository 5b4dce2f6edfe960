"""SQS driver against moto's server: drain rate, pickup latency, API calls per task and per idle
minute.

    python benchmarks/sqs_bench.py                      # starts moto_server on a free port
    python benchmarks/sqs_bench.py --n 5000 --idle-seconds 60 --queues 3
    ASYNCTASQ_TEST_SQS_ENDPOINT=http://127.0.0.1:5000 python benchmarks/sqs_bench.py

One worker (concurrency 10, results off) in this process, the producer beside it; API calls are
counted with an event hook on each driver's aiobotocore client (every request AWS would bill).
Moto is far slower than SQS per call, so the rates say more about moto than about the driver;
the call counts are what carry over to AWS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import bench_tasks  # noqa: E402

from asynctasq import dispatch_many  # noqa: E402
from asynctasq.core.worker import Worker  # noqa: E402
from asynctasq.drivers.sqs import SQSDriver  # noqa: E402
from tests.backends import sqs_backend  # noqa: E402


def _total(*counters: Counter[str]) -> Counter[str]:
    out: Counter[str] = Counter()
    for c in counters:
        out.update(c)
    return out


def _worker(driver: SQSDriver, queues: list[str], **options: Any) -> Worker:
    return Worker(driver, queues=queues, results_ttl=0, install_signal_handlers=False, **options)


async def _driver(namespace: str) -> SQSDriver:
    driver = await sqs_backend.make_driver(namespace)
    assert isinstance(driver, SQSDriver)
    return driver


async def drain(namespace: str, n: int, concurrency: int) -> dict[str, Any]:
    queue = "drain"
    producer, consumer = await _driver(namespace), await _driver(namespace)
    await producer._url(queue)  # queue URLs resolved once per process: not part of steady state
    await consumer._url(queue)
    sent = sqs_backend.count_calls(producer)
    started = time.perf_counter()
    for i in range(0, n, 500):
        await dispatch_many(
            [bench_tasks.noop().on_queue(queue) for _ in range(min(500, n - i))], driver=producer
        )
    enqueue_s = time.perf_counter() - started
    taken = sqs_backend.count_calls(consumer)
    bench_tasks.stats.update(first=0.0, last=0.0, count=0)
    cpu = time.process_time()
    worker = _worker(consumer, [queue], concurrency=concurrency, max_tasks=n)
    await worker.start()
    drain_s = bench_tasks.stats["last"] - bench_tasks.stats["first"]
    cpu = time.process_time() - cpu
    await producer.disconnect()
    await consumer.disconnect()
    calls = _total(sent, taken)
    return {
        "enqueue_per_s": n / enqueue_s,
        "drain_per_s": n / drain_s if drain_s > 0 else float("nan"),
        "calls_per_task": sum(calls.values()) / n,
        "calls": dict(calls),
        "worker_calls_per_task": sum(taken.values()) / n,
        "worker_cpu_us_per_task": 1e6 * cpu / n,
    }


async def pickup(namespace: str, samples: int) -> dict[str, Any]:
    queue = "pickup"
    producer, consumer = await _driver(namespace), await _driver(namespace)
    await producer._url(queue)
    worker = _worker(consumer, [queue], concurrency=10)
    running = asyncio.create_task(worker.start())
    bench_tasks.latencies.clear()
    await asyncio.sleep(1.0)  # let the worker reach its long poll
    for i in range(samples):
        await dispatch_many([bench_tasks.latency(time.time()).on_queue(queue)], driver=producer)
        deadline = time.monotonic() + 10
        while len(bench_tasks.latencies) <= i and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)  # idle again: the next message lands in a waiting long poll
    worker.stop()
    await running
    await producer.disconnect()
    await consumer.disconnect()
    lat = sorted(bench_tasks.latencies)
    return {
        "samples": len(lat),
        "p50_ms": 1000 * statistics.median(lat),
        "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))],
    }


async def idle(namespace: str, seconds: float, queues: int) -> dict[str, Any]:
    consumer = await _driver(namespace)
    names = [f"idle{i}" for i in range(queues)]
    for q in names:
        await consumer._url(q)
    worker = _worker(consumer, names, concurrency=10)
    running = asyncio.create_task(worker.start())
    await asyncio.sleep(1.0)  # its first dequeue short-polls each queue once; then only long polls
    calls = sqs_backend.count_calls(consumer)
    await asyncio.sleep(seconds)
    worker.stop()
    await running
    await consumer.disconnect()
    per_minute = 60.0 / seconds
    return {
        "queues": queues,
        "seconds": seconds,
        "calls_per_minute": {k: v * per_minute for k, v in calls.items()},
        "receive_per_queue_per_minute": calls["ReceiveMessage"] * per_minute / queues,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="tasks to drain")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--samples", type=int, default=50, help="pickup latency samples")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--queues", type=int, default=3, help="queues of the idle worker")
    args = parser.parse_args()
    namespace = "bench" + uuid.uuid4().hex[:8]
    print(f"moto at {sqs_backend.endpoint()}", flush=True)
    try:
        d = await drain(namespace, args.n, args.concurrency)
        p = await pickup(namespace, args.samples)
        i = await idle(namespace, args.idle_seconds, args.queues)
    finally:
        await sqs_backend.cleanup(namespace)
    idle_calls = {k: round(v, 1) for k, v in i["calls_per_minute"].items()}
    print(
        f"drain: {d['drain_per_s']:.0f} tasks/s (enqueue {d['enqueue_per_s']:.0f}/s), "
        f"{d['calls_per_task']:.3f} API calls per task in all ({d['worker_calls_per_task']:.3f} by the "
        f"worker): {d['calls']}; worker CPU {d['worker_cpu_us_per_task']:.0f} us per task (moto runs apart)\n"
        f"pickup latency into an idle worker: p50 {p['p50_ms']:.1f} ms, p95 {p['p95_ms']:.1f} ms "
        f"({p['samples']} samples)\n"
        f"idle worker on {i['queues']} queues for {i['seconds']:.0f} s: "
        f"{i['receive_per_queue_per_minute']:.1f} ReceiveMessage per queue per minute; "
        f"all calls per minute: {idle_calls}"
    )


if __name__ == "__main__":
    asyncio.run(main())
