"""Tasks of the chaos suite, run by real worker processes (``--import tests.chaos_tasks``).

Each appends one line ``<event> <key> <pid>`` to the file named by $ASYNCTASQ_TEST_MARKS (one
``write`` on an O_APPEND file, so lines of concurrent workers never interleave).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from asynctasq import task


def mark(event: str, key: str) -> None:
    fd = os.open(os.environ["ASYNCTASQ_TEST_MARKS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def read_marks(path: Path) -> list[tuple[str, str, int]]:
    """Every mark as (event, key, pid)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        event, key, pid = line.split()
        out.append((event, key, int(pid)))
    return out


@task(max_attempts=5)
async def chaos_work(key: str, seconds: float) -> str:
    """``seconds`` of work, then a ``done`` mark."""
    await asyncio.sleep(seconds)
    mark("done", key)
    return key


@task(max_attempts=5)
async def chaos_hold(key: str, seconds: float) -> str:
    """A ``start`` mark, ``seconds`` of work, a ``done`` mark (fencing, long tasks)."""
    mark("start", key)
    await asyncio.sleep(seconds)
    mark("done", key)
    return key


@task
async def chaos_noop() -> None:
    """Nothing at all (the delayed storm and the memory soak)."""
