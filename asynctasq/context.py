"""What a running task knows about itself: :func:`current_task`.

A context variable, so task signatures stay the user's own::

    from asynctasq import current_task, task

    @task
    async def charge(order_id: int) -> None:
        me = current_task()
        log.info("charging %s (task %s, attempt %d of %d)", order_id, me.id, me.attempt, me.max_attempts)

It works in async tasks, in thread tasks (the thread runs in a copy of the task's context) and
in ``process=True`` tasks (the pool sends it along with the arguments).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from asynctasq.errors import AsyncTasQError

if TYPE_CHECKING:
    from asynctasq.message import Envelope


@dataclass(frozen=True, slots=True)
class TaskInfo:
    id: str
    """The id ``dispatch()`` returned."""
    name: str
    """The registered task name."""
    queue: str
    attempt: int
    """1 on the first run; each retry and each lost delivery adds one."""
    max_attempts: int
    enqueued_at: float
    """Unix time of the dispatch."""


_current: ContextVar[Envelope | TaskInfo] = ContextVar("asynctasq_current_task")
"""Holds the envelope in the worker (nothing is built per task unless asked) or a TaskInfo
in a pool process."""


def current_task() -> TaskInfo:
    """The task running in this context; raises :class:`AsyncTasQError` outside a task."""
    try:
        held = _current.get()
    except LookupError:
        raise AsyncTasQError(
            "current_task() was called outside a running task: call it from the task's own code"
        ) from None
    if isinstance(held, TaskInfo):
        return held
    return info_of(held)


def info_of(env: Envelope) -> TaskInfo:
    return TaskInfo(env.id, env.task, env.queue, env.attempt, env.max_attempts, env.enqueued_at)
