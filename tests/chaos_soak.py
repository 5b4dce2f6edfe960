"""The memory soak (opt-in, not part of CI): one worker, 100k no-op tasks on each driver; its RSS
after 100k tasks must stay within 10% of its RSS after 10k.

    python -m tests.chaos_soak                      # every driver in tests.backends.BACKENDS
    python -m tests.chaos_soak redis postgres --tasks 100000

The worker and the producer run in this process (the RSS measured is theirs, read from
/proc/self/statm); tasks are dispatched in batches of 1,000 while the worker drains them, so
the queue never holds more than a few batches. Exit status 1 when a driver grows more than 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
import uuid

from asynctasq import Worker
from asynctasq.drivers.base import BaseDriver
from tests.backends import BACKENDS, cleanup, make_driver
from tests.chaos_tasks import chaos_noop

BATCH = 1000
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e6


async def soak(backend: str, tasks: int) -> tuple[float, float, float]:
    """(RSS after 10% of the tasks, RSS after all, seconds) for one driver."""
    import asynctasq

    namespace = "soak" + uuid.uuid4().hex[:8]
    queue = "soak"
    driver: BaseDriver = await make_driver(backend, namespace)
    worker = Worker(driver, queues=[queue], concurrency=50, results_ttl=0, install_signal_handlers=False)
    runner = asyncio.create_task(worker.start())
    started = time.monotonic()
    early = 0.0
    try:
        for sent in range(0, tasks, BATCH):
            await asynctasq.dispatch_many([chaos_noop().on_queue(queue) for _ in range(BATCH)], driver=driver)
            while worker.succeeded < sent - 2 * BATCH:  # keep the backlog at a few batches
                await asyncio.sleep(0.01)
            if not early and worker.succeeded >= tasks // 10:
                gc.collect()
                early = rss_mb()
        while worker.succeeded < tasks:
            await asyncio.sleep(0.05)
        gc.collect()
        late = rss_mb()
    finally:
        worker.stop()
        await asyncio.wait_for(runner, 60)
        await driver.disconnect()
        await cleanup(backend, namespace)
    return early, late, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backends", nargs="*", default=BACKENDS)
    parser.add_argument("--tasks", type=int, default=100_000)
    options = parser.parse_args()
    grew = False
    for backend in options.backends:
        early, late, seconds = asyncio.run(soak(backend, options.tasks))
        growth = (late - early) / early * 100
        grew |= growth > 10
        print(
            f"{backend}: RSS {early:.1f} MB after {options.tasks // 10:,} tasks, {late:.1f} MB after "
            f"{options.tasks:,} ({growth:+.1f}%), {options.tasks / seconds:,.0f} tasks/s",
            flush=True,
        )
    return 1 if grew else 0


if __name__ == "__main__":
    sys.exit(main())
