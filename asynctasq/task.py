"""Defining and dispatching tasks.

::

    @task
    async def send_email(to: str, subject: str) -> None: ...

    @task(name="billing.charge", queue="billing", max_attempts=5, timeout=30)
    def charge(account_id: int, cents: int) -> str: ...

    task_id = await send_email(to="a@b.c", subject="hi").dispatch()
    await charge(7, 100).on_queue("urgent").delay(30).dispatch()

    class Report(Task):
        queue = "reports"
        def __init__(self, account_id: int) -> None:
            self.account_id = account_id
        async def handle(self) -> dict: ...

    await Report(account_id=7).dispatch()

Calling a task returns a :class:`TaskCall`; nothing runs until a worker takes it. Options live
on the call, so a task may have parameters named ``timeout``, ``delay`` or ``queue``.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, ClassVar, Generic, NamedTuple, ParamSpec, TypedDict, TypeVar, overload

from asynctasq.config import Config, get_config
from asynctasq.constants import DEFAULT_DISPATCH_TIMEOUT_S
from asynctasq.drivers.base import BROKER_OPTIONS, BaseDriver, BrokerOptions, EnqueueItem, validate_queue_name
from asynctasq.errors import ResultTimeout, TaskDefinitionError, TaskFailed
from asynctasq.message import Envelope
from asynctasq.registry import TaskDefinition, is_async_callable, registry
from asynctasq.serializers import get_serializer, loads_any
from asynctasq.signing import Signer

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def default_task_name(target: Any) -> str:
    module = getattr(target, "__module__", None) or "__main__"
    if module == "__mp_main__":  # the main script, as a spawned child process imports it
        module = "__main__"
    return f"{module}.{target.__qualname__}"


def _check_options(
    name: str, max_attempts: int | None, timeout: float | None, retry_after: float | None, queue: str | None
) -> None:
    if max_attempts is not None and max_attempts < 1:
        raise TaskDefinitionError(f"task {name!r}: max_attempts must be at least 1")
    if timeout is not None and timeout <= 0:
        raise TaskDefinitionError(f"task {name!r}: timeout must be positive")
    if retry_after is not None and retry_after < 0:
        raise TaskDefinitionError(f"task {name!r}: retry_after must not be negative")
    if queue is not None:
        validate_queue_name(queue)


class TaskCall:
    """One dispatchable invocation: arguments plus chainable options."""

    __slots__ = (
        "_delay",
        "_max_attempts",
        "_options",
        "_queue",
        "_retry_after",
        "_timeout",
        "args",
        "definition",
        "kwargs",
    )

    def __init__(self, definition: TaskDefinition, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.definition = definition
        self.args = args
        self.kwargs = kwargs
        self._queue: str | None = None
        self._delay = 0.0
        self._max_attempts: int | None = None
        self._timeout: float | None = None
        self._retry_after: float | None = None
        self._options: BrokerOptions = ()

    def on_queue(self, queue: str) -> TaskCall:
        self._queue = validate_queue_name(queue)
        return self

    def delay(self, seconds: float) -> TaskCall:
        if seconds < 0:
            raise TaskDefinitionError("delay must not be negative")
        self._delay = float(seconds)
        return self

    def max_attempts(self, attempts: int) -> TaskCall:
        _check_options(self.definition.name, attempts, None, None, None)
        self._max_attempts = attempts
        return self

    def timeout(self, seconds: float | None) -> TaskCall:
        _check_options(self.definition.name, None, seconds, None, None)
        self._timeout = seconds
        return self

    def retry_after(self, seconds: float) -> TaskCall:
        _check_options(self.definition.name, None, None, seconds, None)
        self._retry_after = seconds
        return self

    def broker_options(self, **options: str) -> TaskCall:
        """Options for the broker, not the task: ``message_group_id`` and ``deduplication_id``
        for SQS FIFO queues (docs/drivers/sqs.md). A driver that cannot honour one refuses the
        dispatch with :class:`UnsupportedOperation`; none is ever dropped silently."""
        unknown = sorted(set(options) - BROKER_OPTIONS)
        if unknown:
            raise TaskDefinitionError(
                f"unknown broker option(s) {', '.join(unknown)}: use {', '.join(sorted(BROKER_OPTIONS))}"
            )
        for name, value in options.items():
            if not isinstance(value, str) or not value:
                raise TaskDefinitionError(f"broker option {name} must be a non-empty string")
        self._options = tuple(sorted({**dict(self._options), **options}.items()))
        return self

    def envelope(self, config: Config, queue: str | None = None) -> Envelope:
        """The message of this call, its defaults from ``config``; ``queue`` overrides the
        call's queue (``Queue("low").enqueue(...)``)."""
        d = self.definition
        return Envelope(
            task=d.name,
            args=list(self.args),
            kwargs=self.kwargs,
            queue=queue or self._queue or d.queue or config.default_queue,
            max_attempts=self._max_attempts or d.max_attempts or config.default_max_attempts,
            timeout=self._timeout if self._timeout is not None else (d.timeout or config.default_timeout),
            retry_after=(
                self._retry_after
                if self._retry_after is not None
                else (d.retry_after if d.retry_after is not None else config.default_retry_after)
            ),
        )

    def encode(self, config: Config) -> EnqueueItem:
        env = self.envelope(config)
        signer = Signer.from_settings(config.signing_key, config.signing_old_keys)
        body = env.encode(get_serializer(config.serializer), signer)
        return EnqueueItem(env.queue, body, self._delay, self._options)

    async def dispatch(self, driver: BaseDriver | None = None) -> str:
        """Enqueue the task; return its id. ``driver`` defaults to the configured one."""
        return await default_producer().dispatch(self, driver)

    def dispatch_sync(self, timeout: float | None = DEFAULT_DISPATCH_TIMEOUT_S) -> str:
        """Enqueue from synchronous code (a Flask view, a script) without an event loop of your
        own: the call runs on asynctasq's background loop. Returns the task id."""
        return run_sync(self.dispatch(), timeout)

    def __repr__(self) -> str:
        return f"<TaskCall {self.definition.name}{self.args!r} {self.kwargs!r}>"


class TaskFunction(Generic[P, R]):
    """A function decorated with :func:`task`; calling it makes a :class:`TaskCall`."""

    def __init__(self, func: Callable[P, R], definition: TaskDefinition) -> None:
        self.func = func
        self.definition = definition
        self.name = definition.name
        functools.update_wrapper(self, func)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> TaskCall:
        return TaskCall(self.definition, args, kwargs)

    def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function directly, here and now (tests, scripts)."""
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<task {self.name}>"


def _define(
    func: Callable[..., Any],
    name: str | None,
    queue: str | None,
    max_attempts: int | None,
    timeout: float | None,
    retry_after: float | None,
    process: bool,
) -> TaskFunction[Any, Any]:
    if not callable(func):
        raise TaskDefinitionError(f"@task decorates functions, not {type(func).__name__}")
    task_name = name or default_task_name(func)
    _check_options(task_name, max_attempts, timeout, retry_after, queue)
    definition = TaskDefinition(
        name=task_name,
        target=func,
        is_class=False,
        is_async=is_async_callable(func),
        process=process,
        queue=queue,
        max_attempts=max_attempts,
        timeout=timeout,
        retry_after=retry_after,
    )
    registry.add(definition)
    return TaskFunction(func, definition)


class TaskOptions(TypedDict, total=False):
    """The options of :func:`task`, for decorators built on it (``**options: Unpack[TaskOptions]``)."""

    name: str | None
    queue: str | None
    max_attempts: int | None
    timeout: float | None
    retry_after: float | None
    process: bool


@overload
def task(func: Callable[P, R], /) -> TaskFunction[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    queue: str | None = None,
    max_attempts: int | None = None,
    timeout: float | None = None,
    retry_after: float | None = None,
    process: bool = False,
) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...


def task(
    func: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    queue: str | None = None,
    max_attempts: int | None = None,
    timeout: float | None = None,
    retry_after: float | None = None,
    process: bool = False,
) -> TaskFunction[P, R] | Callable[[Callable[P, R]], TaskFunction[P, R]]:
    """Register a function as a task. Options are defaults for every call of it:
    ``name`` (default ``module.qualname``), ``queue``, ``max_attempts``, ``timeout`` (seconds),
    ``retry_after`` (backoff base, seconds), ``process`` (run in the process pool)."""
    if func is not None:
        return _define(func, name, queue, max_attempts, timeout, retry_after, process)

    def decorate(f: Callable[P, R]) -> TaskFunction[P, R]:
        return _define(f, name, queue, max_attempts, timeout, retry_after, process)

    return decorate


class Task:
    """Base of class-based tasks: constructor arguments are the task's arguments, ``handle``
    (sync or async) does the work, class attributes set the options::

        class Report(Task):
            queue = "reports"
            max_attempts = 2
            def __init__(self, account_id: int) -> None:
                self.account_id = account_id
            async def handle(self) -> dict: ...
    """

    name: ClassVar[str | None] = None
    queue: ClassVar[str | None] = None
    max_attempts: ClassVar[int | None] = None
    timeout: ClassVar[float | None] = None
    retry_after: ClassVar[float | None] = None
    process: ClassVar[bool] = False
    __asynctasq_definition__: ClassVar[TaskDefinition]
    _asynctasq_args: tuple[tuple[Any, ...], dict[str, Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.handle is Task.handle:
            return  # an abstract intermediate base
        task_name = cls.__dict__.get("name") or default_task_name(cls)
        _check_options(task_name, cls.max_attempts, cls.timeout, cls.retry_after, cls.queue)
        definition = TaskDefinition(
            name=task_name,
            target=cls,
            is_class=True,
            is_async=is_async_callable(cls.handle),
            process=cls.process,
            queue=cls.queue,
            max_attempts=cls.max_attempts,
            timeout=cls.timeout,
            retry_after=cls.retry_after,
        )
        registry.add(definition)
        cls.__asynctasq_definition__ = definition

    def __new__(cls, *args: Any, **kwargs: Any) -> Task:
        obj = super().__new__(cls)
        obj._asynctasq_args = (args, kwargs)
        return obj

    def handle(self) -> Any:
        raise NotImplementedError

    def call(self) -> TaskCall:
        """This instance as a :class:`TaskCall`, for options: ``Report(7).call().delay(60)``."""
        definition = getattr(type(self), "__asynctasq_definition__", None)
        if definition is None:
            raise TaskDefinitionError(f"{type(self).__name__} does not define handle()")
        args, kwargs = self._asynctasq_args
        return TaskCall(definition, args, kwargs)

    async def dispatch(self, driver: BaseDriver | None = None) -> str:
        return await self.call().dispatch(driver)

    def dispatch_sync(self, timeout: float | None = DEFAULT_DISPATCH_TIMEOUT_S) -> str:
        return self.call().dispatch_sync(timeout)


async def dispatch_many(calls: Iterable[TaskCall | Task], driver: BaseDriver | None = None) -> list[str]:
    """Enqueue many calls in one round trip where the driver can; return their ids in order."""
    return await default_producer().dispatch_many(calls, driver)


async def result(task_id: str, timeout: float = 30.0, driver: BaseDriver | None = None) -> Any:
    """Wait up to ``timeout`` seconds for the result of ``task_id``.

    Raises :class:`TaskFailed` when the task ended in the failed registry and
    :class:`ResultTimeout` when no result arrived (results are kept ``results_ttl`` seconds)."""
    d = driver or await producer_driver()
    raw = await d.get_result(task_id, wait=timeout)
    if raw is None:
        raise ResultTimeout(f"no result for task {task_id} within {timeout}s")
    from asynctasq.config import get_config
    from asynctasq.serializers import is_custom

    name = get_config().serializer
    record = get_serializer(name).loads(raw) if is_custom(name) else loads_any(raw)
    if record.get("status") == "ok":
        return record.get("value")
    raise TaskFailed(task_id, str(record.get("error", "failed")))


# -- the producer: connected drivers per event loop ----------------------------------------


_Drivers = dict[int, "BaseDriver | asyncio.Task[BaseDriver]"]
"""A loop's drivers by connection index: connected, or the task connecting it (a connected
driver replaces its task, which would keep the loop alive)."""


def _tracer_for(config: Config) -> Any:
    if not config.otel:
        return None
    from asynctasq.tracing import tracer

    return tracer()


class Encoded(NamedTuple):
    """A call ready to send: the index of its connection, its task id and the enqueue item."""

    connection: int
    task_id: str
    item: EnqueueItem


class Producer:
    """Enqueues task calls through connected drivers, one per connection and event loop (a
    driver belongs to the loop it connected on), each connected on first use.

    ``connections[0]`` gives calls their defaults (queue, attempts, timeout...) and carries
    every queue that ``route`` does not send elsewhere: ``route(queue)`` is the index in
    ``connections`` of the queue's connection, and may raise to refuse a queue. ``dispatch()``
    and :func:`dispatch_many` use :func:`default_producer`, one connection on the process-wide
    config; the Flask and Quart extensions make one over an app's per-queue connections;
    ``make_driver(config)`` makes a connection's driver (default: from the config)::

        producer = Producer([main, mail], route=lambda queue: 1 if queue == "email" else 0)
        await producer.dispatch(send_welcome(7).on_queue("email"))  # enqueued on mail
        await producer.close()
    """

    def __init__(
        self,
        connections: Sequence[Config],
        route: Callable[[str], int] | None = None,
        *,
        make_driver: Callable[[Config], BaseDriver] | None = None,
    ) -> None:
        if not connections:
            raise ValueError("a producer needs at least one connection")
        self.connections = list(connections)
        self.config = self.connections[0]
        self._route = route
        self._make_driver = make_driver
        self._serializers = [get_serializer(c.serializer) for c in self.connections]
        self._signers = [Signer.from_settings(c.signing_key, c.signing_old_keys) for c in self.connections]
        self._tracer = _tracer_for(self.config)
        self._drivers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Drivers] = (
            weakref.WeakKeyDictionary()
        )
        # the last loop's connected drivers, for the hot path (a weak key lookup costs more);
        # kept apart from _drivers so that a closed driver is never handed out (close() resets)
        # (one tuple, read and replaced whole: the background loop of dispatch_sync runs in
        # another thread)
        self._ready_pair: tuple[asyncio.AbstractEventLoop | None, dict[int, BaseDriver]] = (None, {})

    def connection_index(self, queue: str) -> int:
        """The index in :attr:`connections` of ``queue``'s connection (may raise for a queue
        the route refuses)."""
        return 0 if self._route is None else self._route(queue)

    def encode(self, call: TaskCall | Task, queue: str | None = None, delay: float | None = None) -> Encoded:
        """``call`` as a message for its queue's connection; ``queue`` and ``delay`` override
        the call's own. Raises at once for a queue the route refuses or an unencodable argument."""
        tc = call.call() if isinstance(call, Task) else call
        env = tc.envelope(self.config, queue)
        index = self.connection_index(env.queue)
        if self._tracer is not None:
            with self._tracer.sending([env]):  # the span of a Queue's send: its encoding
                pass
        body = env.encode(self._serializers[index], self._signers[index])
        return Encoded(
            index, env.id, EnqueueItem(env.queue, body, tc._delay if delay is None else delay, tc._options)
        )

    async def send(self, encoded: Sequence[Encoded], driver: BaseDriver | None = None) -> list[str]:
        """Enqueue encoded calls, one batch per connection (one in all on ``driver``); return
        the drivers' message ids, in order (what ``BaseDriver.cancel`` takes)."""
        batches: dict[int, list[EnqueueItem]]
        positions: dict[int, Sequence[int]]
        if driver is not None or len(self.connections) == 1:
            batches, positions = {0: [e.item for e in encoded]}, {0: range(len(encoded))}
        else:
            batches = {}
            where: dict[int, list[int]] = {}
            for position, (index, _, item) in enumerate(encoded):
                batches.setdefault(index, []).append(item)
                where.setdefault(index, []).append(position)
            positions = dict(where)
        ids = [""] * len(encoded)
        for index, items in batches.items():
            target = driver or self._ready.get(index) or await self.driver(index)
            if len(encoded) == 1:  # one call: the single enqueue
                item = items[0]
                got = [await target.enqueue(item.queue, item.body, item.delay, options=item.options)]
            else:
                got = await target.enqueue_many(items)
            for position, message_id in zip(positions[index], got, strict=True):
                ids[position] = message_id
        return ids

    async def dispatch(self, call: TaskCall | Task, driver: BaseDriver | None = None) -> str:
        """Enqueue ``call`` on its queue's connection (or on ``driver``); return the task id."""
        tc = call.call() if isinstance(call, Task) else call
        env = tc.envelope(self.config)
        index = 0 if self._route is None else self._route(env.queue)
        if self._tracer is not None:
            with self._tracer.sending([env]):
                body = env.encode(self._serializers[index], self._signers[index])
                target = driver or self._ready.get(index) or await self.driver(index)
                await target.enqueue(env.queue, body, tc._delay, options=tc._options)
            return env.id
        body = env.encode(self._serializers[index], self._signers[index])
        target = driver or self._ready.get(index) or await self.driver(index)
        await target.enqueue(env.queue, body, tc._delay, options=tc._options)
        return env.id

    async def dispatch_many(
        self, calls: Iterable[TaskCall | Task], driver: BaseDriver | None = None
    ) -> list[str]:
        """Enqueue ``calls``, one batch per connection (one in all on ``driver``); return their
        ids in order."""
        if self._route is not None:
            encoded = [self.encode(call) for call in calls]
            await self.send(encoded, driver)
            return [e.task_id for e in encoded]
        # one connection for all: no routing, no per-call bookkeeping (the bulk hot path)
        config = self.config
        plain = [c.call() if isinstance(c, Task) else c for c in calls]
        envelopes = [tc.envelope(config) for tc in plain]
        if self._tracer is not None:
            with self._tracer.sending(envelopes):
                return await self._send_envelopes(plain, envelopes, driver)
        return await self._send_envelopes(plain, envelopes, driver)

    async def _send_envelopes(
        self, calls: list[TaskCall], envelopes: list[Envelope], driver: BaseDriver | None
    ) -> list[str]:
        serializer, signer = self._serializers[0], self._signers[0]
        ids: list[str] = []
        items: list[EnqueueItem] = []
        for tc, env in zip(calls, envelopes, strict=True):
            items.append(EnqueueItem(env.queue, env.encode(serializer, signer), tc._delay, tc._options))
            ids.append(env.id)
        if items:
            target = driver or self._ready.get(0) or await self.driver(0)
            if len(items) == 1:
                item = items[0]
                await target.enqueue(item.queue, item.body, item.delay, options=item.options)
            else:
                await target.enqueue_many(items)
        return ids

    @property
    def _ready(self) -> dict[int, BaseDriver]:
        """The running loop's connected drivers (empty until they are): the hot path's lookup."""
        loop, drivers = self._ready_pair
        return drivers if loop is asyncio.get_running_loop() else {}

    async def driver(self, index: int = 0) -> BaseDriver:
        """The connected driver of ``connections[index]`` in the running loop."""
        loop = asyncio.get_running_loop()
        drivers = self._drivers.get(loop)
        if drivers is None:
            drivers = self._drivers[loop] = {}
        pending = drivers.get(index)
        if pending is None:
            pending = drivers[index] = loop.create_task(self._connect(index))
        elif not isinstance(pending, asyncio.Task):
            return pending
        try:
            driver = await asyncio.shield(pending)
        except BaseException:
            if pending.done() and drivers.get(index) is pending:
                del drivers[index]  # it failed: the next dispatch connects again
            raise
        if drivers.get(index) is pending:
            drivers[index] = driver
        ready = self._ready_pair
        if ready[0] is not loop:
            ready = self._ready_pair = (loop, {})
        ready[1][index] = driver
        return driver

    async def _connect(self, index: int) -> BaseDriver:
        config = self.connections[index]
        if self._make_driver is None:
            from asynctasq.core.driver_factory import DriverFactory

            driver = DriverFactory.create_from_config(config)
        else:
            driver = self._make_driver(config)
        await driver.connect()
        return driver

    async def close(self) -> None:
        """Disconnect the running loop's drivers; a later dispatch connects again."""
        self._ready_pair = (None, {})
        await _disconnect(self._drivers.pop(asyncio.get_running_loop(), {}))

    async def close_everywhere(self) -> None:
        """Disconnect the drivers of every loop: this one's directly, those of other running
        loops (the background loop of ``dispatch_sync``) on their own loop, waiting for them."""
        here = asyncio.get_running_loop()
        self._ready_pair = (None, {})
        for loop in list(self._drivers):
            drivers = self._drivers.pop(loop, {})
            if loop is here:
                await _disconnect(drivers)
            elif loop.is_running():
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_disconnect(drivers), loop))

    def reset(self) -> None:
        """Forget every driver; those of running loops disconnect there, without waiting."""
        self._ready_pair = (None, {})
        for loop, drivers in list(self._drivers.items()):
            if loop.is_running():
                loop.call_soon_threadsafe(_disconnect_soon, drivers)
        self._drivers.clear()


_closing: set[asyncio.Task[None]] = set()


async def _disconnect(drivers: _Drivers) -> None:
    for driver in drivers.values():
        if not isinstance(driver, asyncio.Task):
            await driver.disconnect()
        elif not driver.done():
            driver.cancel()
        elif not driver.cancelled() and driver.exception() is None:
            await driver.result().disconnect()


def _disconnect_soon(drivers: _Drivers) -> None:
    task = asyncio.ensure_future(_disconnect(drivers))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


_default: Producer | None = None
_default_lock = threading.Lock()


def default_producer() -> Producer:
    """The producer of ``call.dispatch()`` and :func:`dispatch_many`: one connection, the
    process-wide config of :func:`asynctasq.configure`."""
    global _default
    producer = _default
    if producer is None:
        with _default_lock:
            if _default is None:
                _default = Producer([get_config()])
            producer = _default
    return producer


async def producer_driver() -> BaseDriver:
    """The connected driver ``dispatch()`` uses in this event loop (made on first use)."""
    return await default_producer().driver()


async def close_producer() -> None:
    """Disconnect this loop's producer driver, if any."""
    if _default is not None:
        await _default.close()


def reset_producer() -> None:
    """Forget the producer connections (after :func:`asynctasq.configure`); open ones close."""
    global _default
    with _default_lock:
        producer, _default = _default, None
    if producer is not None:
        producer.reset()


_portal_loop: asyncio.AbstractEventLoop | None = None
_portal_lock = threading.Lock()


def _portal() -> asyncio.AbstractEventLoop:
    global _portal_loop
    with _portal_lock:
        if _portal_loop is None or _portal_loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="asynctasq-sync-dispatch", daemon=True).start()
            _portal_loop = loop
        return _portal_loop


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = DEFAULT_DISPATCH_TIMEOUT_S) -> T:
    """Run ``coro`` on asynctasq's background event loop and wait for it, from sync code."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise TaskDefinitionError("dispatch_sync() called inside a running event loop: use await .dispatch()")
    return asyncio.run_coroutine_threadsafe(coro, _portal()).result(timeout)


def block_on(coro: Coroutine[Any, Any, T], timeout: float | None = DEFAULT_DISPATCH_TIMEOUT_S) -> T:
    """:func:`run_sync` for sync code that may run on another event loop's thread (a sync
    helper called from a coroutine): it blocks that thread, loop included, until done. Only
    the background loop's own thread is refused, where waiting would never end."""
    portal = _portal()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is portal:
        coro.close()
        raise TaskDefinitionError(
            "a blocking call on the background loop itself would wait forever: await it"
        )
    return asyncio.run_coroutine_threadsafe(coro, portal).result(timeout)
