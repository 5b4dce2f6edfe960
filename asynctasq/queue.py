"""Queues as objects, in RQ's shape, for registered tasks only::

    from asynctasq import Queue, task

    @task
    def multiply(x: int, y: int) -> int:
        return x * y

    q = Queue()                                   # "default", on the process-wide config
    job = await q.enqueue(multiply, 20, 40)       # a Job: id, queue, task
    assert await job.result(timeout=10) == 800

    low = Queue("low", url="redis://localhost:6379")
    await low.enqueue_in(timedelta(minutes=5), multiply, 2, 3)
    await low.count()                             # ready tasks

Every method that talks to the broker works in both worlds, and the calling code decides:
called from an ``async def`` it returns an awaitable; called from any other code (a Flask
view, a script, a sync helper, even one running on an event loop's thread) it blocks until
the broker answered and returns the value, using asynctasq's background loop (the one behind
``dispatch_sync()``). One name per operation, so code moves between sync and async without
renaming, and Flask-RQ's ``rq.queue.enqueue(...)`` runs as written in a sync view.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar, overload

from asynctasq.constants import DEFAULT_DISPATCH_TIMEOUT_S
from asynctasq.drivers.base import BaseDriver, validate_queue_name
from asynctasq.errors import ConfigError, TaskDefinitionError, UnsupportedOperation
from asynctasq.registry import TaskDefinition, registry
from asynctasq.task import (
    Encoded,
    Producer,
    Task,
    TaskCall,
    TaskFunction,
    block_on,
    default_producer,
    default_task_name,
    result,
)

P = ParamSpec("P")
T = TypeVar("T")

Enqueueable = TaskFunction[..., Any] | type[Task] | TaskCall | Task | Callable[..., Any]
"""What ``enqueue`` takes: a task (function or ``Task`` class) followed by its arguments, or a
call that already has them (``send_mail(msg)``, ``Report(7)``)."""


_ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE | inspect.CO_ASYNC_GENERATOR


def in_event_loop() -> bool:
    """True when the calling thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def called_from_async_code() -> bool:
    """True when the nearest caller outside asynctasq is an ``async def`` (which gets an
    awaitable); False for sync code, even when it runs on an event loop's thread."""
    if not in_event_loop():
        return False
    frame = sys._getframe(1)
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("asynctasq."):
        frame = frame.f_back  # type: ignore[assignment]
    return frame is not None and bool(frame.f_code.co_flags & _ASYNC_CODE)


def _not_a_task(func: Any) -> TaskDefinitionError:
    name = getattr(func, "__qualname__", None) or repr(func)
    message = f"{name} is not a task: decorate it with @task (asynctasq runs only registered tasks)"
    if getattr(func, "__module__", None) in ("__main__", "__mp_main__"):
        message += (
            f"; and {name} is defined in __main__ (the script being run), which a worker, another "
            "process, cannot import: define it in a module that the worker imports (--import)"
        )
    return TaskDefinitionError(message)


def _from_main(definition: TaskDefinition) -> TaskDefinitionError:
    return TaskDefinitionError(
        f"task {definition.name} is defined in __main__ (the script being run): a worker is another "
        "process, which imports your tasks by module name and would never find this one; move it "
        "to a module that both import (worker --import mymodule), or give it a stable name with "
        "@task(name=...)"
    )


def make_call(func: Enqueueable, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskCall:
    """The :class:`TaskCall` of ``func(*args, **kwargs)``; anything but a registered task is a
    :class:`TaskDefinitionError` at once."""
    if isinstance(func, TaskCall | Task):
        if args or kwargs:
            raise TaskDefinitionError(f"{func!r} already has its arguments: enqueue it without more")
        call = func.call() if isinstance(func, Task) else func
    elif isinstance(func, TaskFunction):
        call = func(*args, **kwargs)
    elif isinstance(func, type) and issubclass(func, Task):
        definition = func.__dict__.get("__asynctasq_definition__")
        if definition is None:
            raise TaskDefinitionError(f"{func.__name__} does not define handle()")
        call = TaskCall(definition, args, kwargs)
    else:
        found = registry.get(default_task_name(func)) if callable(func) else None
        if found is None or found.target is not func:  # task(f) registers f without renaming it
            raise _not_a_task(func)
        call = TaskCall(found, args, kwargs)
    if call.definition.name.startswith("__main__."):
        raise _from_main(call.definition)
    return call


class Queue:
    """A named queue: ``Queue("low")`` on the process-wide config (:func:`asynctasq.configure`,
    read at each call), ``Queue("low", url="redis://...")`` on a connection of its own, or
    ``Queue("low", driver=driver)`` on a connected driver of yours (async code only: a driver
    belongs to its event loop). ``name`` defaults to the config's default queue. Queues need no
    set-up: a queue exists once something is enqueued on it, as in RQ.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        url: str | None = None,
        driver: BaseDriver | None = None,
        producer: Producer | None = None,
    ) -> None:
        if sum(x is not None for x in (url, driver, producer)) > 1:
            raise ConfigError("give a Queue at most one of url=, driver= and producer=")
        if url is not None:
            from asynctasq.config import get_config
            from asynctasq.core.driver_factory import DriverFactory

            DriverFactory.from_url(url)  # a bad URL fails here, not at the first enqueue
            producer = Producer([get_config()], make_driver=lambda _: DriverFactory.from_url(url))
        self._producer = producer
        self._driver = driver
        self.name = validate_queue_name(name or self.producer.config.default_queue)

    @property
    def producer(self) -> Producer:
        return self._producer or default_producer()

    def __repr__(self) -> str:
        return f"<Queue {self.name}>"

    # -- both worlds -----------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> Awaitable[T]:
        """Where an awaited operation runs: the calling loop (an app's queue may run it on
        another, waiting up to ``timeout``)."""
        return coro

    def _either(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> Any:
        if called_from_async_code():
            return self._run(coro, timeout)
        if self._driver is not None:
            coro.close()
            raise TaskDefinitionError(
                "a Queue(driver=...) works in async code only (the driver belongs to its event "
                "loop); in sync code use Queue(name) or Queue(name, url=...)"
            )
        return block_on(coro, timeout)

    async def _target(self) -> BaseDriver:
        producer = self.producer
        return self._driver or await producer.driver(producer.connection_index(self.name))

    # -- enqueueing ------------------------------------------------------------------------

    @overload
    def enqueue(self, func: TaskFunction[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Job: ...
    @overload
    def enqueue(self, func: type[Task] | TaskCall | Task, /, *args: Any, **kwargs: Any) -> Job: ...

    def enqueue(self, func: Enqueueable, /, *args: Any, **kwargs: Any) -> Job:
        """Enqueue the task ``func`` with its arguments on this queue; return its :class:`Job`
        (``await`` it in async code). The call's other options (``send_mail(msg).delay(5)``)
        apply; the queue is this one."""
        return self._submit([make_call(func, args, kwargs)], None)[0]

    @overload
    def enqueue_in(
        self, delay: timedelta | float, func: TaskFunction[P, Any], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job: ...
    @overload
    def enqueue_in(
        self, delay: timedelta | float, func: type[Task] | TaskCall | Task, /, *args: Any, **kwargs: Any
    ) -> Job: ...

    def enqueue_in(self, delay: timedelta | float, func: Enqueueable, /, *args: Any, **kwargs: Any) -> Job:
        """:meth:`enqueue`, the task visible to workers after ``delay`` (a timedelta or seconds)."""
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0:
            raise TaskDefinitionError("enqueue_in: the delay must not be negative")
        return self._submit([make_call(func, args, kwargs)], seconds)[0]

    @overload
    def enqueue_at(
        self, when: datetime, func: TaskFunction[P, Any], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job: ...
    @overload
    def enqueue_at(
        self, when: datetime, func: type[Task] | TaskCall | Task, /, *args: Any, **kwargs: Any
    ) -> Job: ...

    def enqueue_at(self, when: datetime, func: Enqueueable, /, *args: Any, **kwargs: Any) -> Job:
        """:meth:`enqueue`, the task visible to workers from ``when`` (a naive datetime is local
        time, as ``datetime.now()``; a time in the past means now)."""
        seconds = max(0.0, when.timestamp() - datetime.now().timestamp())
        return self._submit([make_call(func, args, kwargs)], seconds)[0]

    def enqueue_many(self, calls: Iterable[TaskCall | Task]) -> Jobs:
        """Enqueue task calls (``[send_mail(m) for m in messages]``) on this queue in one round
        trip where the driver can; return their jobs in order (``await`` them in async code)."""
        return self._submit([make_call(call, (), {}) for call in calls], None)

    def _submit(self, calls: list[TaskCall], delay: float | None) -> Jobs:
        producer = self.producer
        encoded = [producer.encode(call, self.name, delay) for call in calls]
        jobs = Jobs(Job(self, e, call.definition.name) for e, call in zip(encoded, calls, strict=True))
        if not encoded:
            return jobs
        sending = self._either(self._send(encoded, jobs), DEFAULT_DISPATCH_TIMEOUT_S)
        if sending is not None:  # in a loop: sent when awaited
            jobs._set_pending(sending)
        return jobs

    async def _send(self, encoded: list[Encoded], jobs: Jobs) -> None:
        ids = await self.producer.send(encoded, self._driver)
        for job, message_id in zip(jobs, ids, strict=True):
            job.message_id = message_id

    # -- inspecting ------------------------------------------------------------------------

    def count(self) -> Any:
        """The number of tasks ready on this queue (not delayed ones, nor running ones): an int,
        or an awaitable of it in async code. Needs the driver's ``stats`` capability."""
        return self._either(self._count(), DEFAULT_DISPATCH_TIMEOUT_S)

    async def _count(self) -> int:
        driver = await self._target()
        return (await driver.stats([self.name]))[self.name]["ready"]

    def empty(self) -> Any:
        """Delete every message of this queue, ready, delayed and leased (a running task still
        finishes, but is not retried); return how many (an awaitable in async code). Needs the
        driver's ``purge`` capability. The failed registry is left alone."""
        return self._either(self._empty(), DEFAULT_DISPATCH_TIMEOUT_S)

    async def _empty(self) -> int:
        return await (await self._target()).purge(self.name)

    def close(self) -> Any:
        """Disconnect this queue's own connections (``url=``): in every loop that opened one.
        A queue on the process-wide config or on your driver leaves those alone."""
        if self._producer is None or self._driver is not None:
            return self._either(_nothing(), None)
        return self._either(self._producer.close_everywhere(), DEFAULT_DISPATCH_TIMEOUT_S)


async def _nothing() -> None:
    return None


class Job:
    """A task enqueued through a :class:`Queue`: its ``id``, ``queue`` (the name) and ``task``
    (the registered name). In async code ``await queue.enqueue(...)`` sends it and gives the job;
    a job that is never awaited is never sent (Python warns that a coroutine was never awaited).
    """

    __slots__ = ("_pending", "_source", "id", "message_id", "queue", "task")

    def __init__(self, source: Queue, encoded: Encoded, task: str) -> None:
        self._source = source
        self._pending: _Pending | None = None
        self.id = encoded.task_id
        self.queue = encoded.item.queue
        self.task = task
        self.message_id: str | None = None
        """The driver's id of the message, once sent (what ``cancel`` removes)."""

    @property
    def enqueued(self) -> bool:
        """False while an async ``enqueue`` has not been awaited yet."""
        return self._pending is None or self._pending.done

    def __await__(self) -> Generator[Any, None, Job]:
        if self._pending is not None:
            yield from self._pending.wait().__await__()
        return self

    def result(self, timeout: float = 30.0) -> Any:
        """Wait up to ``timeout`` seconds for the task's return value (an awaitable in async
        code). Raises :class:`~asynctasq.errors.TaskFailed` when the task ended in the failed
        registry, :class:`~asynctasq.errors.ResultTimeout` when no result came in time."""
        if not self.enqueued:
            raise TaskDefinitionError(f"job {self.id} was not sent yet: await queue.enqueue(...) first")
        return self._source._either(self._result(timeout), timeout + DEFAULT_DISPATCH_TIMEOUT_S)

    async def _result(self, timeout: float) -> Any:
        return await result(self.id, timeout, await self._source._target())

    def cancel(self) -> Any:
        """Remove the task if it is still waiting, ready or delayed: True when it was removed,
        False when a worker already took it, it finished, or it is gone (a bool, or an awaitable
        of it in async code). Needs the driver's ``cancel`` capability."""
        if not self.enqueued or self.message_id is None:
            raise TaskDefinitionError(f"job {self.id} was not sent yet: await queue.enqueue(...) first")
        return self._source._either(self._cancel(self.message_id), DEFAULT_DISPATCH_TIMEOUT_S)

    async def _cancel(self, message_id: str) -> bool:
        driver = await self._source._target()
        if not driver.supports("cancel"):
            raise UnsupportedOperation(
                f"cannot cancel job {self.id}: the {driver.name} driver cannot remove a waiting "
                "message (no cancel capability; see the capability table in docs/driver-contract.md)"
            )
        return await driver.cancel(self.queue, message_id)

    def __repr__(self) -> str:
        state = "" if self.enqueued else " (not sent: await it)"
        return f"<Job {self.id} {self.task} on {self.queue}{state}>"


class Jobs(list[Job]):
    """The jobs of :meth:`Queue.enqueue_many`, in order; ``await`` it in async code."""

    def _set_pending(self, sending: Awaitable[None]) -> None:
        pending = _Pending(sending)
        for job in self:
            job._pending = pending

    def __await__(self) -> Generator[Any, None, Jobs]:
        if self and self[0]._pending is not None:
            yield from self[0]._pending.wait().__await__()
        return self


class _Pending:
    """One send shared by the jobs of one batch, run once however many of them are awaited."""

    __slots__ = ("_future", "_sending", "done")

    def __init__(self, sending: Awaitable[None]) -> None:
        self._sending: Awaitable[None] | None = sending
        self._future: asyncio.Future[None] | None = None
        self.done = False

    async def wait(self) -> None:
        if self._future is None:
            sending, self._sending = self._sending, None
            assert sending is not None
            self._future = asyncio.ensure_future(sending)
        await asyncio.shield(self._future)
        self.done = True


__all__ = ["Job", "Jobs", "Queue", "called_from_async_code", "in_event_loop", "make_call"]
