"""Dispatch a few tasks to the embedded SQLite queue (./asynctasq.db), run a worker until
their results are in, and print them. No server needed::

    python examples/quickstart.py

The same worker can run on its own: ``python -m asynctasq worker --import tasks --path examples``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tasks

import asynctasq
from asynctasq import Worker
from asynctasq.core.driver_factory import DriverFactory
from asynctasq.utils.loop import run


async def main() -> None:
    config = asynctasq.configure()  # ASYNCTASQ_* variables, else SQLite at ./asynctasq.db
    print(f"dispatching tasks to {config.driver} ({config.sqlite_path})")
    ids = [
        await tasks.send_welcome_email(to="ada@example.com", name="Ada").dispatch(),
        await tasks.charge_card(order_id=1001, cents=4999).dispatch(),
        await tasks.make_thumbnail("photos/cat.jpg").dispatch(),
        await tasks.MonthlyReport(account_id=7, month="2026-10").dispatch(),
    ]
    ids += await asynctasq.dispatch_many(
        [tasks.send_welcome_email(to=f"user{i}@example.com", name=f"User {i}") for i in range(3)]
    )
    print(f"dispatched {len(ids)} tasks; starting a worker\n")

    driver = DriverFactory.create_from_config(config)
    await driver.connect()
    try:
        worker = Worker(driver, queues=["high", "default", "reports"], concurrency=5)
        # charge_card may ask for a delayed retry, so wait for every result, then stop
        runner = asyncio.create_task(worker.start())
        results = [await asynctasq.result(task_id, timeout=30) for task_id in ids]
        worker.stop()
        await runner
    finally:
        await driver.disconnect()
    print("\nresults:")
    for task_id, value in zip(ids, results, strict=True):
        print(f"  {task_id[:8]}  {value}")
    print(f"\nworker: {worker.succeeded} succeeded, {worker.retried} retried, {worker.failed} failed")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    run(main())
