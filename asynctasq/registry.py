"""Task name -> definition. The worker resolves names only here: it never imports or runs
anything a message names that was not registered by ``@task`` or a ``Task`` subclass."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asynctasq.errors import TaskDefinitionError, UnknownTaskError


@dataclass(slots=True)
class TaskDefinition:
    """How to run one registered task, and its defaults."""

    name: str
    target: Callable[..., Any]
    """The decorated function, or the ``Task`` subclass."""
    is_class: bool
    is_async: bool
    """True when the function (or the class's ``handle``) is ``async def``."""
    process: bool = False
    queue: str | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    retry_after: float | None = None

    @property
    def module(self) -> str:
        return str(getattr(self.target, "__module__", "") or "")

    def invoke(self, args: list[Any] | tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call the task: the function's return value, or ``Task(*args, **kwargs).handle()``'s
        (a coroutine when the task is async)."""
        if self.is_class:
            return self.target(*args, **kwargs).handle()
        return self.target(*args, **kwargs)


class TaskRegistry:
    """Registered tasks by name (the worker and the worker registry are other things)."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskDefinition] = {}

    def add(self, definition: TaskDefinition) -> None:
        existing = self._tasks.get(definition.name)
        if existing is not None and _identity(existing.target) != _identity(definition.target):
            raise TaskDefinitionError(
                f"task name {definition.name!r} is already registered by {_identity(existing.target)}; "
                "give one of them another name with @task(name=...)"
            )
        self._tasks[definition.name] = definition

    def resolve(self, name: str) -> TaskDefinition:
        try:
            return self._tasks[name]
        except KeyError:
            module = name.rpartition(".")[0] or name
            raise UnknownTaskError(
                f"unknown task {name!r}: it is not registered in this worker; start the worker with "
                f"--import and the module that defines it (e.g. --import {module})"
            ) from None

    def get(self, name: str) -> TaskDefinition | None:
        return self._tasks.get(name)

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def remove(self, name: str) -> None:
        self._tasks.pop(name, None)


def _identity(target: Any) -> str:
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"


def is_async_callable(func: Any) -> bool:
    return inspect.iscoroutinefunction(func)


registry = TaskRegistry()
"""The process-wide registry that ``@task`` and ``Task`` subclasses add themselves to."""
