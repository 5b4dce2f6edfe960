"""Tasks that kill their own worker process, for the poison-pill tests (--import tests.worker_tasks)."""

from __future__ import annotations

import asyncio
import os
import signal

from asynctasq import task


@task(max_attempts=3)
async def innocent(key: str, seconds: float) -> str:
    """Append ``key`` to the file named by $ASYNCTASQ_TEST_MARKS after ``seconds`` of work."""
    await asyncio.sleep(seconds)
    with open(os.environ["ASYNCTASQ_TEST_MARKS"], "a") as f:
        f.write(key + "\n")
    return key


@task(max_attempts=3)
async def poison(after: float) -> None:
    """Kill the worker process running it, ``after`` seconds in (its neighbours are mid-run)."""
    await asyncio.sleep(after)
    with open(os.environ["ASYNCTASQ_TEST_MARKS"] + ".poison", "a") as f:
        f.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


@task(max_attempts=3)
async def nap(seconds: float) -> str:
    """Mark the start in $ASYNCTASQ_TEST_MARKS, then sleep ``seconds``."""
    with open(os.environ["ASYNCTASQ_TEST_MARKS"], "a") as f:
        f.write("started\n")
    await asyncio.sleep(seconds)
    return "rested"
