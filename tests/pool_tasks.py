"""Process tasks for the process-pool tests; the pool's children import this module."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from asynctasq import Task, task
from asynctasq.errors import Retry

IMPORT_TOKEN = uuid.uuid4().hex
"""Differs in every process that imports this module, and on every re-import."""

_hoard: list[bytes] = []


@task(process=True)
def add(a: int, b: int) -> int:
    return a + b


@task(process=True)
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


class Multiply(Task):
    process = True

    def __init__(self, a: int, b: int) -> None:
        self.a, self.b = a, b

    def handle(self) -> int:
        return self.a * self.b


@task(process=True)
def whoami() -> tuple[int, str]:
    return os.getpid(), IMPORT_TOKEN


@task(process=True)
async def loop_identity() -> tuple[int, int]:
    return os.getpid(), id(asyncio.get_running_loop())


@task(process=True)
def spin(iterations: int) -> int:
    """Pure-Python CPU work: the same amount of work whatever the machine's load."""
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


@task(process=True)
def burn(seconds: float) -> int:
    """Keep one core busy for ``seconds`` of wall time."""
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline:
        rounds += sum(i * i for i in range(1000)) % 3 + 1
    return rounds


@task(process=True)
def burn_marked(seconds: float, marker_dir: str) -> int:
    """``burn``, leaving a file per run in ``marker_dir``."""
    Path(marker_dir, uuid.uuid4().hex).write_text(str(os.getpid()))
    return int(burn.run(seconds))


@task(process=True)
def nap(seconds: float, pid_file: str | None = None) -> str:
    if pid_file:
        Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "rested"


@task(process=True)
async def async_nap(seconds: float, pid_file: str | None = None) -> str:
    if pid_file:
        Path(pid_file).write_text(str(os.getpid()))
    await asyncio.sleep(seconds)
    return "rested"


@task(process=True)
def exit_hard(code: int) -> None:
    os._exit(code)


@task(process=True)
def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@task(process=True)
def segfault() -> None:
    ctypes.string_at(0)


@task(process=True)
def fail(message: str) -> None:
    raise ValueError(message)


class OddError(Exception):
    """Pickles, but cannot be unpickled: its constructor wants two arguments."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


@task(process=True)
def fail_oddly() -> None:
    raise OddError(7, "odd")


@task(process=True)
def call_sys_exit(code: int) -> None:
    sys.exit(code)


@task(process=True)
def ask_retry(delay: float) -> None:
    raise Retry(delay=delay, reason="not yet")


@task(process=True)
def give_lock() -> Any:
    return {"ok": [1, threading.Lock()]}


@task(process=True)
def echo(value: Any) -> Any:
    return value


@task(process=True)
def hoard(megabytes: int) -> tuple[int, int]:
    """Keep ``megabytes`` of touched memory alive in this process."""
    _hoard.append(os.urandom(megabytes * 2**20))
    return os.getpid(), len(_hoard)


@task(process=True)
def pid_on_attempt(marker_dir: str) -> int:
    """Kills its process every time; leaves a file per attempt in ``marker_dir``."""
    Path(marker_dir, uuid.uuid4().hex).write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


@task
async def async_noop() -> None:
    return None


@task(process=True)
def who_runs_me() -> list[Any]:
    from asynctasq import current_task

    me = current_task()
    return [me.id, me.name, me.queue, me.attempt, me.max_attempts, me.enqueued_at, os.getpid()]


@task(process=True)
async def who_runs_me_async() -> list[Any]:
    from asynctasq import current_task

    await asyncio.sleep(0)
    me = current_task()
    return [me.id, me.name, me.attempt]
