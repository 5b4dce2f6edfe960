"""Tasks that worker subprocesses of the tests import (--import tests.cli_tasks)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from asynctasq import task


@task
async def add(a: int, b: int) -> int:
    print(f"add {a}+{b}={a + b}", flush=True)
    return a + b


@task(max_attempts=1)
async def explode(message: str) -> None:
    raise RuntimeError(message)


@task(max_attempts=10)
async def mark(key: str, seconds: float) -> str:
    """Append ``key`` to the file named by $ASYNCTASQ_TEST_MARKS after ``seconds`` of work."""
    await asyncio.sleep(seconds)
    with open(os.environ["ASYNCTASQ_TEST_MARKS"], "a") as f:
        f.write(key + "\n")
    return key


async def announce_start(worker: Any) -> None:
    print(f"hook: {worker.name} starting", flush=True)


async def announce_stop(worker: Any) -> None:
    print(f"hook: {worker.name} stopped after {worker.processed}", flush=True)
