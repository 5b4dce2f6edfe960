"""Exception handlers, a worker subclass and a serializer that the operations tests' worker
subprocesses import by path (tests/test_operations.py)."""

from __future__ import annotations

import json
import os
from typing import Any

from asynctasq import Worker, task
from asynctasq.context import TaskInfo


def _note(line: str) -> None:
    with open(os.environ["ASYNCTASQ_TEST_MARKS"], "a") as f:
        f.write(line + "\n")


def first_handler(task: TaskInfo, exc: BaseException, attempt: int) -> None:
    _note(f"first {task.name} {type(exc).__name__}: {exc} attempt {attempt}")


async def stopping_handler(task: TaskInfo, exc: BaseException, attempt: int) -> bool:
    _note(f"stopping {task.id == task.id and task.queue} attempt {attempt}")
    return False


def never_handler(task: TaskInfo, exc: BaseException, attempt: int) -> None:
    _note("never")


class NamedWorker(Worker):
    """A subclass, as --worker-class runs one."""

    async def start(self) -> None:
        _note(f"subclass {type(self).__name__} starts")
        await super().start()


class ReversedJson:
    """A custom serializer: JSON with its bytes reversed (no built-in reader recognises it)."""

    name = "reversed-json"

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj).encode()[::-1]

    def loads(self, data: bytes) -> Any:
        return json.loads(data[::-1])


@task(max_attempts=2, retry_after=0.05)
async def always_fails(what: str) -> None:
    raise ValueError(f"{what} went wrong")
