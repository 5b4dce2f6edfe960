"""The worker: fetch loop, concurrency, leases, retries, results and shutdown.

Everything a task's life needs beyond moving bytes lives here, once, for every driver.

Leases: every delivery the worker holds (running, waiting to run in isolation, or finished and
waiting for its ack) is in ``_held`` and extended by the lease loop. :meth:`Worker._let_go`
is the one place a delivery stops being ours: before a retry, a failure or a give-back is
sent, after its ack batch returned, and when the broker refused to extend its lease (then the
task's outcome is not recorded here: another worker has it, and the task counts as lost).

Suspects: a delivery with ``delivery_count > 1`` was held before by a worker that died or lost
its lease, perhaps killed by this very task. It runs alone: the worker lets what is in flight
finish, runs the suspect with nothing beside it and fetches nothing meanwhile, so a task that
kills its worker process can only use up its own attempts, never those of its neighbours. A
worker holds one suspect at a time; more suspects in one fetch are given back at once (which
costs them no attempt) for this or another worker to run alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import inspect
import logging
import os
import random
import signal
import socket
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from asynctasq.constants import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DEQUEUE_STRATEGY,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_MAINTENANCE_INTERVAL_S,
    DEFAULT_MAX_RETRY_DELAY_S,
    DEFAULT_QUEUE,
    DEFAULT_RESULTS_TTL_S,
    DEFAULT_SERIALIZER,
    DEFAULT_SHUTDOWN_TIMEOUT_S,
)
from asynctasq.context import TaskInfo, _current, info_of
from asynctasq.drivers.base import BaseDriver, Delivery, WorkerInfo, validate_queue_name
from asynctasq.errors import (
    ConfigError,
    DriverError,
    ProcessLost,
    Retry,
    SerializationError,
    TaskTimeout,
    UnknownTaskError,
    UnsupportedOperation,
)
from asynctasq.message import Envelope
from asynctasq.registry import TaskDefinition, TaskRegistry
from asynctasq.registry import registry as default_registry
from asynctasq.serializers import BUILTIN_SERIALIZERS, BaseSerializer, get_serializer
from asynctasq.signing import Signer, strip_signature
from asynctasq.utils import systemd
from asynctasq.utils.logs import TaskLine, TaskLineSink, task_line_sink
from asynctasq.utils.reporting import SentryReporter

if TYPE_CHECKING:
    from asynctasq.config import Config
    from asynctasq.metrics import WorkerMetrics
    from asynctasq.process_pool import ProcessPool

log = logging.getLogger("asynctasq.worker")
_task_log = logging.getLogger("asynctasq.tasks")  # one INFO line per task

FETCH_WAIT_S = 0.5
"""Longest blocking dequeue; bounds how long a stop waits for an outstanding fetch."""
COMMAND_POLL_INTERVAL_S = 1.0
METRICS_INTERVAL_S = 5.0
DRAIN_FLUSH_TIMEOUT_S = 10.0
DRIVER_ERROR_BACKOFF_S = (0.1, 0.2, 0.5, 1.0)
"""Pauses after failed fetches and ack batches; drivers reconnect on their own, so a broker that
comes back sees work resume within a second."""

TaskContextFactory = Callable[[Envelope], AbstractAsyncContextManager[Any]]
"""Called for every task with its envelope; the task runs inside the returned context."""
Hook = Callable[["Worker"], Awaitable[Any] | Any]
ExceptionHandler = Callable[[TaskInfo, BaseException, int], Awaitable[bool | None] | bool | None]
"""``handler(task, exc, attempt)``: called in order when a task raises; False stops the chain."""
"""``async def hook(worker)`` (a plain function works too): run once when the worker starts or
after it stopped."""

_STOPPED = "stopped by request"
_SHUTDOWN = "worker shutting down"


class _Running:
    __slots__ = ("delivery", "envelope", "reason", "task")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.task: asyncio.Task[None] | None = None
        self.envelope: Envelope | None = None
        self.reason: str | None = None  # why it was cancelled, if it was


@dataclass(frozen=True)
class WorkerRecord:
    """A registered worker, as ``Worker.all()`` returns it (RQ's worker properties)."""

    name: str
    hostname: str
    pid: int
    queues: list[str]
    state: str
    """``idle``, ``busy``, ``suspended``, ``starting``, ``stopping``."""
    current_task_ids: list[str]
    birth_date: datetime | None
    last_heartbeat: datetime | None
    successful_task_count: int
    failed_task_count: int
    total_working_time: float
    """Seconds spent running tasks."""

    @classmethod
    def from_info(cls, info: WorkerInfo) -> WorkerRecord:
        def when(key: str) -> datetime | None:
            value = info.get(key)
            return None if value is None else datetime.fromtimestamp(float(value), UTC)  # type: ignore[arg-type]

        return cls(
            name=str(info.get("name", "")),
            hostname=str(info.get("hostname", "")),
            pid=int(info.get("pid", 0)),
            queues=list(info.get("queues", [])),
            state=str(info.get("state", "unknown")),
            current_task_ids=list(info.get("current_tasks", [])),
            birth_date=when("started_at"),
            last_heartbeat=when("last_heartbeat"),
            successful_task_count=int(info.get("successful", 0)),
            failed_task_count=int(info.get("failed", 0)),
            total_working_time=float(info.get("working_time_s", 0.0)),
        )


class Worker:
    """Runs tasks from ``queues`` of ``queue_driver``.

    Arguments:
        queue_driver: a connected :class:`~asynctasq.drivers.base.BaseDriver`.
        queues: queue names in priority order.
        concurrency: most tasks in flight at once; fetches ask only for free slots.
        max_tasks: take exactly this many tasks, finish them, then return.
        serializer: the format this worker writes (results and retried messages), a serializer
            or its name; messages are read in whatever format they came (pickle only with
            ``accept_pickle``).
        name: the name in the worker registry and logs (default ``host.pid.random``);
            ``worker_id`` is accepted as another spelling of it.
        heartbeat_interval: seconds between worker-registry heartbeats.
        process_pool_size / process_pool_max_tasks_per_child / process_pool_max_memory_per_child_mb:
            the pool for ``process=True`` tasks (started with the worker when such tasks are
            registered; children import their modules once).
        burst: return once the queues are empty and running tasks are done.
        max_idle_time: return after this many seconds with no task.
        dequeue_strategy: ``round_robin`` (default), ``priority`` or ``random``.
        shutdown_timeout: seconds running tasks get after SIGTERM/SIGINT before they are
            cancelled and given back.
        results_ttl: seconds results are kept (0: none; skipped if the driver has no results).
        max_retry_delay: cap of the exponential backoff, seconds.
        accept_pickle: accept pickled messages (only with brokers nobody untrusted can write to).
        signing_key / signing_old_keys: run only messages HMAC-signed with one of these keys
            (asynctasq.signing); retried messages are signed with ``signing_key``.
        task_context: ``f(envelope) -> async context manager`` every task runs inside
            (app contexts, DB sessions, tracing).
        task_registry: where task names resolve (default: the global one).
        on_startup / on_shutdown: async callables ``hook(worker)``, or ``"module:function"``
            import paths, awaited in order before the first fetch / after the last task ended.
        install_signal_handlers: handle SIGTERM/SIGINT (main thread only).
        imports / sys_path: modules the process pool's children import.
    """

    def __init__(
        self,
        queue_driver: BaseDriver,
        queues: Sequence[str] = (DEFAULT_QUEUE,),
        concurrency: int = DEFAULT_CONCURRENCY,
        max_tasks: int | None = None,
        serializer: BaseSerializer | str = DEFAULT_SERIALIZER,
        name: str | None = None,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL_S,
        process_pool_size: int | None = None,
        process_pool_max_tasks_per_child: int | None = None,
        burst: bool = False,
        max_idle_time: float | None = None,
        dequeue_strategy: str = DEFAULT_DEQUEUE_STRATEGY,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
        *,
        worker_id: str | None = None,
        results_ttl: float = DEFAULT_RESULTS_TTL_S,
        max_retry_delay: float = DEFAULT_MAX_RETRY_DELAY_S,
        accept_pickle: bool = False,
        task_context: TaskContextFactory | None = None,
        task_registry: TaskRegistry | None = None,
        on_startup: Sequence[Hook | str] | Hook | str | None = None,
        on_shutdown: Sequence[Hook | str] | Hook | str | None = None,
        install_signal_handlers: bool = True,
        imports: Sequence[str] = (),
        sys_path: Sequence[str] = (),
        process_pool_max_memory_per_child_mb: float | None = None,
        signing_key: str | None = None,
        signing_old_keys: Sequence[str] = (),
        task_description_logging: bool = True,
        exception_handlers: Sequence[ExceptionHandler | str] = (),
        default_exception_handler: bool = True,
        sentry_dsn: str | None = None,
        metrics_port: int | None = None,
        otel: bool = False,
        maintenance_interval: float = DEFAULT_MAINTENANCE_INTERVAL_S,
    ) -> None:
        if isinstance(queues, str):
            queues = [q for q in queues.split(",") if q]
        if not queues:
            raise ConfigError("a worker needs at least one queue")
        if concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if max_tasks is not None and max_tasks < 1:
            raise ConfigError("max_tasks must be at least 1")
        if dequeue_strategy not in ("round_robin", "priority", "random"):
            raise ConfigError(
                f"unknown dequeue strategy {dequeue_strategy!r}: use round_robin, priority or random"
            )
        if name is not None and worker_id is not None and name != worker_id:
            raise ConfigError(f"name={name!r} and worker_id={worker_id!r} disagree: give only name")
        self.driver = queue_driver
        self.queues = [validate_queue_name(q) for q in queues]
        self.concurrency = concurrency
        self.max_tasks = max_tasks
        self.serializer = get_serializer(serializer) if isinstance(serializer, str) else serializer
        self._custom_serializer = (
            None if self.serializer.name in BUILTIN_SERIALIZERS else self.serializer
        )  # its messages are read with it, the built-in formats by their first byte
        self.name = name or worker_id or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self.heartbeat_interval = heartbeat_interval
        self.burst = burst
        self.max_idle_time = max_idle_time
        self.dequeue_strategy = dequeue_strategy
        self.shutdown_timeout = shutdown_timeout
        self.results_ttl = results_ttl
        self.max_retry_delay = max_retry_delay
        self.accept_pickle = accept_pickle
        self._signer = Signer.from_settings(signing_key, signing_old_keys)
        self.task_context = task_context
        self.task_registry = task_registry or default_registry
        self.task_description_logging = task_description_logging
        self._log_tasks = False  # set at start(): the INFO line only costs when someone listens
        self._task_sink: TaskLineSink | None = None
        self._task_lines: list[TaskLine] | None = None
        self.exception_handlers: list[ExceptionHandler] = [
            import_object(h, "exception_handler") if isinstance(h, str) else h for h in exception_handlers
        ]
        for handler in self.exception_handlers:
            if not callable(handler):
                raise ConfigError(
                    f"exception handler {handler!r} is not callable: give handler(task, exc, attempt)"
                )
        self.default_exception_handler = default_exception_handler
        self.sentry_dsn = sentry_dsn
        self.metrics_port = metrics_port
        self.otel = otel
        self.maintenance_interval = maintenance_interval
        self._tracer: Any = None
        self._metrics: WorkerMetrics | None = None
        self._lost_reported = 0
        self._sentry: SentryReporter | None = None
        self.on_startup = _hooks(on_startup, "on_startup")
        self.on_shutdown = _hooks(on_shutdown, "on_shutdown")
        self.install_signal_handlers = install_signal_handlers
        self.process_pool_size = process_pool_size
        self.process_pool_max_tasks_per_child = process_pool_max_tasks_per_child
        self.process_pool_max_memory_per_child_mb = process_pool_max_memory_per_child_mb
        self.imports = list(imports)
        self.sys_path = list(sys_path)

        self.processed = 0
        self.succeeded = 0
        self.failed = 0
        self.retried = 0
        self.lost = 0
        """Tasks whose lease the broker took back before their outcome was recorded here."""
        self.working_time_s = 0.0
        self.started_at = 0.0
        self._state = "created"
        self._set_title = _proctitle_setter()

        self._running: dict[Delivery, _Running] = {}
        self._held: set[Delivery] = set()  # every lease we hold: see the module docstring
        self._suspect: Delivery | None = None  # redelivered: waits to run alone
        self._isolated = False  # a suspect runs: nothing else is fetched
        self._acks: list[Delivery] = []
        self._results: list[tuple[str, bytes]] = []
        self._acking: Sequence[Delivery] = ()  # the ack batch on its way to the broker
        self._flush_wanted = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._stop = asyncio.Event()
        self._resumed = asyncio.Event()  # clear while suspended
        self._resumed.set()
        self._force = asyncio.Event()
        self._stop_deadline = 0.0
        self._closing = False
        self._fetched = 0
        self._rr_offset = 0
        self._pool: ProcessPool | None = None
        self._background: list[asyncio.Task[None]] = []
        self._store_results = results_ttl > 0 and queue_driver.supports("results")
        self._debug = log.isEnabledFor(logging.DEBUG)

    @classmethod
    def from_config(cls, driver: BaseDriver, config: Config, **overrides: Any) -> Worker:
        """A worker with the worker settings of ``config`` (``overrides`` win)."""
        settings: dict[str, Any] = dict(
            queues=config.queues,
            concurrency=config.concurrency,
            max_tasks=config.max_tasks,
            serializer=config.serializer,
            name=config.worker_name,
            heartbeat_interval=config.heartbeat_interval,
            process_pool_size=config.process_pool_size,
            process_pool_max_tasks_per_child=config.process_pool_max_tasks_per_child,
            process_pool_max_memory_per_child_mb=config.process_pool_max_memory_per_child_mb,
            burst=config.burst,
            max_idle_time=config.max_idle_time,
            dequeue_strategy=config.dequeue_strategy,
            shutdown_timeout=config.shutdown_timeout,
            results_ttl=config.results_ttl,
            max_retry_delay=config.max_retry_delay,
            accept_pickle=config.serializer == "pickle",
            signing_key=config.signing_key,
            signing_old_keys=config.signing_old_keys,
            on_startup=config.on_startup,
            on_shutdown=config.on_shutdown,
            imports=config.imports,
            sys_path=config.path,
            task_description_logging=not config.disable_task_description_logging,
            exception_handlers=config.exception_handlers,
            default_exception_handler=not config.disable_default_exception_handler,
            sentry_dsn=config.sentry_dsn,
            metrics_port=config.metrics_port,
            otel=config.otel,
            maintenance_interval=config.maintenance_interval,
        )
        if "worker_id" in overrides:  # the other spelling of name
            settings["name"] = overrides.pop("worker_id")
        settings.update(overrides)
        return cls(driver, **settings)

    @property
    def state(self) -> str:
        """``created``, ``starting``, ``idle``, ``busy``, ``suspended``, ``stopping``, ``stopped``."""
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        if value != self._state:
            self._state = value
            if self._set_title is not None:  # setproctitle installed: ps and top show it
                self._set_title(f"asynctasq worker {self.name} [{value}] {','.join(self.queues)}")

    # -- the registry, from Python (RQ's Worker.all / Worker.count) ---------------------------

    @staticmethod
    async def all(driver: BaseDriver, queue: str | None = None) -> list[WorkerRecord]:
        """The live workers registered on ``driver`` (those listening on ``queue``), by name.
        Needs the driver's ``workers`` capability."""
        infos = await driver.list_workers()
        records = [WorkerRecord.from_info(i) for i in infos]
        if queue is not None:
            records = [r for r in records if queue in r.queues]
        return sorted(records, key=lambda r: r.name)

    @staticmethod
    async def count(driver: BaseDriver, queue: str | None = None) -> int:
        return len(await Worker.all(driver, queue))

    # -- public control ------------------------------------------------------------------

    def stop(self, *, force: bool = False) -> None:
        """Ask the worker to stop: finish running tasks for up to ``shutdown_timeout`` (or, with
        ``force``, give them back now). Call it on the worker's event loop (from another thread:
        ``loop.call_soon_threadsafe(worker.stop)``)."""
        if force:
            if not self._force.is_set():
                log.warning("stopping now: giving back %d running task(s)", len(self._running))
            self._force.set()
            for running in list(self._running.values()):
                self._cancel(running, _SHUTDOWN)
        if not self._stop.is_set():
            self._stop_deadline = time.monotonic() + self.shutdown_timeout
            self._stop.set()
        self._slot_freed.set()

    def suspend(self) -> None:
        """Stop taking tasks but stay up (running ones finish); ``resume()`` goes on. RQ's
        ``rq suspend``; from the CLI, ``asynctasq suspend``."""
        if self._resumed.is_set():
            log.info("suspended: taking no tasks until resumed")
        self._resumed.clear()
        if not self._running:
            self.state = "suspended"

    def resume(self) -> None:
        if not self._resumed.is_set():
            log.info("resumed")
        self._resumed.set()

    @property
    def suspended(self) -> bool:
        return not self._resumed.is_set()

    def stop_task(self, task_id: str) -> bool:
        """Cancel the running task ``task_id``; it goes to the failed registry as stopped."""
        for running in list(self._running.values()):
            if running.envelope is not None and running.envelope.id == task_id:
                self._cancel(running, _STOPPED)
                return True
        return False

    @property
    def current_task_ids(self) -> list[str]:
        return [r.envelope.id for r in self._running.values() if r.envelope is not None]

    # -- main loop -------------------------------------------------------------------------

    async def start(self) -> None:
        """Run until SIGTERM/SIGINT, :meth:`stop`, the end of a burst, ``max_tasks`` or idleness."""
        loop = asyncio.get_running_loop()
        self.started_at = time.time()
        self._log_tasks = self.task_description_logging and _task_log.isEnabledFor(logging.INFO)
        self._task_sink = task_line_sink() if self._log_tasks else None
        batched = self._task_sink is not None or self._metrics is not None
        self._task_lines = [] if batched else None
        self.state = "starting"
        installed = self._install_signals(loop)
        started = False
        try:
            if self.sentry_dsn:
                self._sentry = SentryReporter(self.sentry_dsn)
            if self.otel:
                from asynctasq.tracing import tracer

                self._tracer = tracer()
            if self.metrics_port is not None:
                from asynctasq.metrics import serve, worker_metrics

                self._metrics = worker_metrics()
                serve(self.metrics_port)
            await self._start_pool()
            for hook in self.on_startup:
                await _call_hook(hook, self)
            started = True
            self._background = [
                loop.create_task(self._flush_loop(), name="asynctasq-ack-flush"),
                loop.create_task(self._lease_loop(), name="asynctasq-leases"),
                loop.create_task(self._registry_loop(), name="asynctasq-registry"),
                loop.create_task(self._maintenance_loop(), name="asynctasq-maintenance"),
            ]
            if self._metrics is not None:
                self._background.append(loop.create_task(self._metrics_loop(), name="asynctasq-metrics"))
            log.info(
                "worker %s listening on %s (%s, concurrency %d, %s)",
                self.name,
                ", ".join(self.queues),
                self.driver.describe(),
                self.concurrency,
                self.dequeue_strategy,
            )
            systemd.notify("READY=1", f"STATUS=listening on {', '.join(self.queues)}")
            self.state = "idle"
            await self._fetch_loop()
            systemd.notify("STOPPING=1")
            self.state = "stopping"
            await self._drain()
        finally:
            try:
                self._write_task_lines()
                if self._sentry is not None:
                    self._sentry.flush()
                await self._shutdown_background()
                if started:
                    for hook in self.on_shutdown:
                        await _call_hook(hook, self)
            finally:
                for sig in installed:
                    loop.remove_signal_handler(sig)
                self.state = "stopped"
                log.info(
                    "worker %s stopped: %d processed, %d succeeded, %d failed, %d retried, %d lost",
                    self.name,
                    self.processed,
                    self.succeeded,
                    self.failed,
                    self.retried,
                    self.lost,
                )

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        if not self.install_signal_handlers:
            return []
        installed: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (RuntimeError, ValueError, NotImplementedError):
                continue  # not the main thread, or no signal support: the embedder stops us
            installed.append(sig)
        return installed

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._stop.is_set():
            log.warning("%s again: giving running tasks back now", name)
            self.stop(force=True)
        else:
            log.info(
                "%s: finishing %d running task(s) (up to %ss); send it again to stop at once",
                name,
                len(self._running),
                self.shutdown_timeout,
            )
            self.stop()

    def _queue_order(self) -> list[str]:
        queues = self.queues
        if len(queues) == 1 or self.dequeue_strategy == "priority":
            return queues
        if self.dequeue_strategy == "random":
            return random.sample(queues, len(queues))
        offset = self._rr_offset
        self._rr_offset = (offset + 1) % len(queues)
        return queues[offset:] + queues[:offset]

    async def _slot_freed_wait(self) -> None:
        self._slot_freed.clear()
        await self._slot_freed.wait()

    async def _wait_for_slot(self) -> None:
        self._slot_freed.clear()
        await self._slot_freed.wait()

    async def _fetch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        failures = 0
        while not self._stop.is_set():
            if not self._resumed.is_set():
                if not self._running:
                    self.state = "suspended"
                    idle_since = loop.time()  # a suspended spell is not idleness
                await _first_of(self._resumed.wait(), self._stop.wait(), self._slot_freed_wait())
                continue
            if self._suspect is not None or self._isolated:
                # a suspect runs alone: let the others finish, then run it, fetching nothing
                if self._running:
                    await self._wait_for_slot()
                    continue
                suspect, self._suspect = self._suspect, None
                self._isolated = suspect is not None
                if suspect is not None:
                    self._start(suspect)
                    continue
            free = self.concurrency - len(self._running)
            if self.max_tasks is not None:
                free = min(free, self.max_tasks - self._fetched)
                if free <= 0 and self._fetched >= self.max_tasks:
                    log.info("max tasks (%d) reached", self.max_tasks)
                    return
            if free <= 0:  # as _wait_for_slot(), inlined: the busy path
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            wait = 0.0 if self.burst else FETCH_WAIT_S
            if self.max_idle_time is not None and not self._running:
                wait = max(0.0, min(wait, idle_since + self.max_idle_time - loop.time()))
            try:
                deliveries = await self.driver.dequeue(self._queue_order(), free, wait)
                failures = 0
            except (DriverError, OSError, ConnectionError) as exc:
                delay = _backoff_after(failures)
                failures += 1
                log.error("fetching from %s failed (%s); retrying in %ss", self.driver.describe(), exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                continue
            if deliveries:
                idle_since = loop.time()
                self._held.update(deliveries)
                if self._stop.is_set():
                    await self._give_back(deliveries)
                    return
                self._fetched += len(deliveries)
                others: list[Delivery] = []
                running, run, create_task = self._running, self._run, loop.create_task
                for delivery in deliveries:
                    if delivery.delivery_count <= 1:  # as _start(delivery), inlined: the hot path
                        record = running[delivery] = _Running(delivery)
                        record.task = create_task(run(record))
                    elif self._suspect is None:
                        self._suspect = delivery
                    else:
                        others.append(delivery)
                if others:  # one suspect at a time: a poison pill must find nothing else here
                    self._fetched -= len(others)
                    await self._give_back(others)
                self.state = "busy"
                continue
            if not self._running:
                self.state = "idle"
                if self.burst:
                    log.info("no more work, burst finished")
                    return
                if self.max_idle_time is not None and loop.time() - idle_since >= self.max_idle_time:
                    log.info("idle for %ss, stopping", self.max_idle_time)
                    return
            elif self.burst:
                # the queues are empty but tasks run: wait for one to end (it may retry)
                await self._wait_for_slot()

    def _start(self, delivery: Delivery) -> None:
        # registered before the coroutine can run: under an eager task factory it starts (and
        # may finish) inside create_task
        running = self._running[delivery] = _Running(delivery)
        running.task = asyncio.get_running_loop().create_task(self._run(running))

    def _let_go(self, deliveries: Iterable[Delivery]) -> int:
        """These deliveries are no longer ours: never extend them again. Returns how many were
        still ours (0: the broker had taken it back, or it was let go already)."""
        held = self._held
        before = len(held)
        held.difference_update(deliveries)
        return before - len(held)

    async def _give_back(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            if not self._let_go((d,)):
                continue
            try:
                await self.driver.release(d)
            except Exception as exc:  # noqa: BLE001 - the lease expires and it comes back anyway
                log.warning("could not give back %s (%s); it returns when its lease expires", d.id, exc)

    async def _drain(self) -> None:
        """Let running tasks finish: without limit after a natural end (burst, max_tasks, idle),
        up to ``shutdown_timeout`` after a stop request; then cancel and give back the rest."""
        if self._suspect is not None:  # fetched, not started: back at once
            suspect, self._suspect = self._suspect, None
            await self._give_back([suspect])
        while self._running and not self._force.is_set():
            timeout = None
            if self._stop.is_set():
                timeout = self._stop_deadline - time.monotonic()
                if timeout <= 0:
                    break
            waiters = [
                asyncio.ensure_future(asyncio.wait([r.task for r in self._running.values() if r.task])),
                asyncio.ensure_future(self._force.wait()),
            ]
            if not self._stop.is_set():
                waiters.append(asyncio.ensure_future(self._stop.wait()))
            try:
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
        leftover = list(self._running.values())
        if leftover:
            log.warning("giving back %d task(s) that did not finish in time", len(leftover))
            for r in leftover:
                self._cancel(r, _SHUTDOWN)
            await asyncio.gather(*(r.task for r in leftover if r.task), return_exceptions=True)
        self._closing = True
        self._flush_wanted.set()
        flusher = self._background[0] if self._background else None
        if flusher is not None:
            done, _ = await asyncio.wait([flusher], timeout=DRAIN_FLUSH_TIMEOUT_S)
            if not done:
                log.error("could not acknowledge %d finished task(s); they will run again", len(self._acks))

    def _cancel(self, running: _Running, reason: str) -> None:
        if running.reason is None:
            running.reason = reason
        if running.task is not None:
            running.task.cancel()

    # -- running one task ------------------------------------------------------------------

    async def _run(self, running: _Running) -> None:
        delivery = running.delivery
        started = time.monotonic()
        outcome = "failed"
        try:
            try:
                body = delivery.body if self._signer is None else self._signer.verify(delivery.body)
                env = Envelope.decode(
                    body, accept_pickle=self.accept_pickle, serializer=self._custom_serializer
                )
            except SerializationError as exc:
                log.error("message %s on %s cannot be decoded: %s", delivery.id, delivery.queue, exc)
                await self._fail(delivery, None, f"SerializationError: {exc}")
                return
            running.envelope = env
            if delivery.delivery_count > 1:  # earlier deliveries were lost: each was an attempt
                env.attempt += delivery.delivery_count - 1
            attempt = env.attempt
            if attempt > env.max_attempts:
                await self._fail(
                    delivery,
                    env,
                    f"worker lost: the worker running attempt {attempt - 1} of {env.max_attempts} "
                    f"died or lost its lease (lease {self.driver.lease_seconds}s)",
                )
                return
            definition = self.task_registry.get(env.task)
            if definition is None:
                try:
                    self.task_registry.resolve(env.task)
                except UnknownTaskError as exc:
                    log.error("%s", exc)
                    await self._fail(delivery, env, f"UnknownTaskError: {exc}")
                return
            if definition.process and self._pool is None:
                error = (
                    f"ConfigError: task {env.task!r} has process=True but this worker has no process "
                    "pool: import its module before the worker starts (--import), so the pool starts "
                    "with the worker"
                )
                log.error("%s", error)
                await self._fail(delivery, env, error)
                return
            _current.set(env)
            try:
                if self._tracer is None:
                    value = await self._execute(definition, env)
                else:
                    with self._tracer.processing(env):
                        value = await self._execute(definition, env)
            except asyncio.CancelledError:
                if running.reason is None:
                    raise
                if running.reason == _STOPPED:
                    await self._fail(delivery, env, "stopped: " + _STOPPED)
                else:
                    outcome = "given back"
                    await self._give_back([delivery])
                return
            except Retry as exc:
                outcome = await self._retry(delivery, env, attempt, exc, exc.delay)
                return
            except Exception as exc:  # noqa: BLE001 - the task's own failure, recorded
                outcome = await self._retry(delivery, env, attempt, exc, None)
                return
            if self._debug:
                log.debug("task %s %s succeeded in %.4fs", env.task, env.id, time.monotonic() - started)
            if delivery not in self._held:
                self.lost += 1  # its lease went to another worker, which runs it again
                outcome = "lost"
                return
            outcome = "ok"
            if self._store_results:
                self._results.append((env.id, self._encode_result({"status": "ok", "value": value})))
            self._acks.append(delivery)
            self._flush_wanted.set()
        except asyncio.CancelledError:
            if running.reason is None:
                raise
        except Exception:
            log.exception(
                "recording the outcome of %s failed; it will run again after its lease", delivery.id
            )
            self._let_go((delivery,))
        finally:
            self.processed += 1
            took = time.monotonic() - started
            self.working_time_s += took
            if running.envelope is not None and (self._task_lines is not None or self._log_tasks):
                env = running.envelope
                if self._task_lines is not None:  # batched: logged and counted at the next ack flush
                    self._task_lines.append((time.time(), env.queue, env.task, env.id, outcome, took))
                    self._flush_wanted.set()
                if self._log_tasks and self._task_sink is None:
                    _task_log.info(
                        "%s: %s (%s) %s in %.3fs",
                        env.queue,
                        env.task,
                        env.id,
                        outcome,
                        took,
                        extra={
                            "task": env.task,
                            "task_id": env.id,
                            "queue": env.queue,
                            "outcome": outcome,
                            "duration_s": round(took, 6),
                        },
                    )
            del self._running[delivery]
            self._slot_freed.set()

    async def _execute(self, definition: TaskDefinition, env: Envelope) -> Any:
        timeout = env.timeout
        if definition.process:
            assert self._pool is not None  # checked by _run
            return await self._pool.run(env.task, env.args, env.kwargs, timeout, context=info_of(env))
        if self.task_context is None:
            return await self._call(definition, env, timeout)
        async with self.task_context(env):
            return await self._call(definition, env, timeout)

    async def _call(self, definition: TaskDefinition, env: Envelope, timeout: float | None) -> Any:
        if definition.is_async:
            if timeout is None:
                return await definition.invoke(env.args, env.kwargs)
            try:
                async with asyncio.timeout(timeout) as cm:
                    return await definition.invoke(env.args, env.kwargs)
            except TimeoutError:
                if cm.expired():
                    raise TaskTimeout(f"timed out after {timeout}s") from None
                raise
        loop = asyncio.get_running_loop()
        # the thread sees the task's context variables (current_task(), an app context...)
        context = contextvars.copy_context()
        future = loop.run_in_executor(None, context.run, definition.invoke, env.args, env.kwargs)
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            # a thread cannot be killed: it runs on, its outcome is ignored
            raise TaskTimeout(f"timed out after {timeout}s (its thread keeps running)") from None

    def _backoff(self, env: Envelope, attempt: int) -> float:
        base = min(self.max_retry_delay, env.retry_after * 2.0 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)

    async def _retry(
        self, delivery: Delivery, env: Envelope, attempt: int, exc: BaseException, delay: float | None
    ) -> str:
        """Retry or fail the task that raised ``exc``; return the outcome for its log line."""
        log_it = await self._handle_exception(env, exc, attempt)
        error = _describe(exc)
        if attempt >= env.max_attempts:
            if log_it:
                log.error(
                    "task %s %s failed on attempt %d/%d: %s",
                    env.task,
                    env.id,
                    attempt,
                    env.max_attempts,
                    error.splitlines()[0] if error else exc,
                )
            if self._sentry is not None:
                self._sentry.failed(env, exc, attempt)
            await self._fail(delivery, env, error)
            return "failed"
        if not self._let_go((delivery,)):
            self.lost += 1
            return "lost"
        delay = self._backoff(env, attempt) if delay is None else max(0.0, delay)
        env.attempt = attempt + 1
        if self._sentry is not None:
            self._sentry.retried(env, exc, attempt, delay)
        if log_it:
            log.warning(
                "task %s %s failed on attempt %d/%d (%s); retrying in %.2fs",
                env.task,
                env.id,
                attempt,
                env.max_attempts,
                type(exc).__name__,
                delay,
            )
        if await self.driver.release(delivery, delay, body=self._encode_retry(env, delivery)):
            self.retried += 1
            return "retried"
        self.lost += 1
        log.warning(
            "task %s %s: lease lost before the retry was recorded; another worker has it",
            env.task,
            env.id,
        )
        return "lost"

    async def _handle_exception(self, env: Envelope, exc: BaseException, attempt: int) -> bool:
        """Run the exception handlers in order (``handler(task, exc, attempt)``, sync or async);
        one returning False stops the chain. True when the default handler (the worker's own
        log line) should run: it is the chain's last link."""
        if self.exception_handlers:
            task = info_of(env)
            for handler in self.exception_handlers:
                try:
                    verdict = handler(task, exc, attempt)
                    if inspect.isawaitable(verdict):
                        verdict = await verdict
                except Exception:  # a broken handler must not lose the task
                    log.exception("exception handler %r failed on task %s %s", handler, env.task, env.id)
                    continue
                if verdict is False:
                    return False
        return self.default_exception_handler

    def _encode_retry(self, env: Envelope, delivery: Delivery) -> bytes:
        """The retried message, in this worker's format; in the one it came in when that cannot
        carry its arguments (a pickled message's objects)."""
        try:
            return env.encode(self.serializer, self._signer)
        except SerializationError:
            first = strip_signature(delivery.body)[:1]
            fallback = "json" if first == b"{" else "pickle" if first == b"\x80" else "msgpack"
            return env.encode(get_serializer(fallback), self._signer)

    async def _fail(self, delivery: Delivery, env: Envelope | None, error: str) -> None:
        if not self._let_go((delivery,)):
            self.lost += 1
            return
        if not await self.driver.fail(delivery, error):
            self.lost += 1
            log.warning("message %s: lease lost before the failure was recorded", delivery.id)
            return
        self.failed += 1
        if env is not None and self._store_results:
            self._results.append((env.id, self._encode_result({"status": "failed", "error": error})))
            self._flush_wanted.set()

    def _encode_result(self, record: dict[str, Any]) -> bytes:
        try:
            return self.serializer.dumps(record)
        except SerializationError as exc:
            value = record.get("value")
            return self.serializer.dumps(
                {
                    "status": "ok",
                    "value": None,
                    "error": f"the result ({type(value).__name__}) could not be stored: {exc}",
                }
            )

    # -- background loops ----------------------------------------------------------------

    async def _flush(self) -> None:
        """Store results and ack finished tasks, in one call; on an error the batch goes back
        and the caller retries it (its leases are still extended meanwhile)."""
        acks, results = self._acks, self._results
        if not (acks or results):
            return
        self._acks, self._results = [], []
        held = self._held
        if not held.issuperset(acks):  # the broker took some back: not ours to ack
            ours = [d for d in acks if d in held]
            self.lost += len(acks) - len(ours)
            acks = ours
        self._acking = acks
        try:
            if results:
                kept = await self.driver.complete(acks, results, self.results_ttl)
            else:
                kept = await self.driver.ack(acks)
        except BaseException:
            self._acks[:0] = acks
            self._results[:0] = results
            raise
        finally:
            self._acking = ()
        self._let_go(acks)  # the lease loop leaves an ack batch in flight alone
        self.succeeded += len(kept)
        if len(kept) != len(acks):
            self.lost += len(acks) - len(kept)
            log.warning(
                "%d of %d acks came too late (lease lost); those tasks may run again",
                len(acks) - len(kept),
                len(acks),
            )

    def _write_task_lines(self) -> None:
        lines = self._task_lines
        if not lines:
            return
        self._task_lines = []
        if self._task_sink is not None:
            self._task_sink.write(lines)
        if self._metrics is not None:
            self._metrics.record(lines)
            if self.lost > self._lost_reported:
                self._metrics.lost.inc(self.lost - self._lost_reported)
                self._lost_reported = self.lost
            self._report_running()

    def _report_running(self) -> None:
        if self._metrics is not None:
            by_queue: dict[str, int] = {}
            for delivery in self._running:
                by_queue[delivery.queue] = by_queue.get(delivery.queue, 0) + 1
            self._metrics.running(self.queues, by_queue)

    async def _maintenance_loop(self) -> None:
        """The driver's clean-up every ``maintenance_interval`` seconds (RQ's option)."""
        if self.maintenance_interval <= 0:
            return
        while True:
            await asyncio.sleep(self.maintenance_interval)
            try:
                await self.driver.maintain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("driver maintenance failed: %s", exc)

    async def _metrics_loop(self) -> None:
        """Queue depths (the driver's stats) and in-flight tasks, every few seconds."""
        assert self._metrics is not None
        stats = self.driver.supports("stats")
        ages = True
        while True:
            self._report_running()
            try:
                if stats:
                    self._metrics.queue_stats(await self.driver.stats(self.queues))
                if ages:
                    self._metrics.oldest_waiting(await self.driver.oldest_waiting(self.queues))
            except UnsupportedOperation:
                ages = False  # this driver cannot say; the stats go on
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.debug("queue stats for metrics failed: %s", exc)
            await asyncio.sleep(METRICS_INTERVAL_S)

    async def _flush_loop(self) -> None:
        """Ack finished tasks in batches; ends, with nothing left to flush, once closing."""
        failures = 0
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted.clear()
            try:
                await self._flush()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - keep the batch; the leases cover us meanwhile
                delay = _backoff_after(failures)
                failures += 1
                log.error(
                    "acknowledging %d finished task(s) failed (%s); retrying in %ss",
                    len(self._acks),
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                self._flush_wanted.set()
                continue
            self._write_task_lines()
            if self._closing and not (self._acks or self._results):
                return

    async def _lease_loop(self) -> None:
        interval = max(self.driver.lease_seconds / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            systemd.notify("WATCHDOG=1")
            if not self._held:
                continue
            held = list(self._held)
            try:
                kept = await self.driver.extend(held, self.driver.lease_seconds)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - next beat tries again
                log.error("extending %d lease(s) failed: %s", len(held), exc)
                continue
            if self._metrics is not None:
                self._metrics.extensions.inc(len(kept))
            if len(kept) < len(held):
                self._refused(held, kept)

    def _refused(self, held: Sequence[Delivery], kept: Sequence[Delivery]) -> None:
        """The broker would not extend some leases: those acked meanwhile (or being acked) are
        fine; the others are lost, and never extended again."""
        still = {(d.id, d.token) for d in kept}
        acking = set(self._acking)
        lost = [d for d in held if (d.id, d.token) not in still and d not in acking and d in self._held]
        if lost:
            self._let_go(lost)
            log.warning(
                "%d lease(s) were lost (the broker took them back); another worker runs those tasks "
                "again, their outcome here will not be recorded",
                len(lost),
            )

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            name=self.name,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=list(self.queues),
            state=self.state,
            current_tasks=self.current_task_ids,
            successful=self.succeeded,
            failed=self.failed,
            working_time_s=round(self.working_time_s, 3),
            started_at=self.started_at,
            last_heartbeat=time.time(),
        )

    async def _registry_loop(self) -> None:
        registers = self.driver.supports("workers")
        commands = self.driver.supports("control")
        if not (registers or commands):
            return
        last_beat = 0.0
        while True:
            try:
                now = time.monotonic()
                if registers and now - last_beat >= self.heartbeat_interval:
                    await self.driver.register_worker(self.info(), ttl=self.heartbeat_interval * 3)
                    last_beat = now
                if commands:
                    for command in await self.driver.receive_commands(self.name):
                        self._on_command(command)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("worker registry heartbeat failed: %s", exc)
            await asyncio.sleep(min(COMMAND_POLL_INTERVAL_S, self.heartbeat_interval))

    def _on_command(self, command: dict[str, Any]) -> None:
        kind = command.get("command")
        if kind == "shutdown":
            log.info("shutdown requested remotely")
            self.stop()
        elif kind == "suspend":
            self.suspend()
        elif kind == "resume":
            self.resume()
        elif kind == "stop-task":
            task_id = str(command.get("task_id"))
            if self.stop_task(task_id):
                log.info("stopping task %s as requested", task_id)
        else:
            log.warning("ignoring unknown command %r", command)

    async def _start_pool(self) -> None:
        process_tasks = [
            d for d in (self.task_registry.get(n) for n in self.task_registry.names()) if d and d.process
        ]
        if not process_tasks:
            return
        try:
            from asynctasq.process_pool import ProcessPool
        except ImportError:
            return
        # children import the modules of the process tasks, plus what the worker was told to
        modules = [d.module for d in process_tasks if d.module not in ("", "__main__", "__mp_main__")]
        self._pool = ProcessPool(
            self.process_pool_size,
            max_tasks_per_child=self.process_pool_max_tasks_per_child,
            max_memory_per_child_mb=self.process_pool_max_memory_per_child_mb,
            imports=list(dict.fromkeys([*self.imports, *modules])),
            sys_path=self.sys_path,
        )
        await self._pool.start()

    async def _shutdown_background(self) -> None:
        if self.driver.supports("workers"):
            with contextlib.suppress(Exception):
                await self.driver.deregister_worker(self.name)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        if self._pool is not None:
            await self._pool.close(timeout=0)
            self._pool = None


def _proctitle_setter() -> Callable[[str], None] | None:
    """``setproctitle.setproctitle`` when the ``proctitle`` extra is installed, else None."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        return None
    return setproctitle


async def _first_of(*waits: Awaitable[Any]) -> None:
    """Until the first of ``waits`` ends; the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def _backoff_after(failures: int) -> float:
    return DRIVER_ERROR_BACKOFF_S[min(failures, len(DRIVER_ERROR_BACKOFF_S) - 1)]


def _hooks(given: Sequence[Hook | str] | Hook | str | None, setting: str) -> list[Hook]:
    """Hooks from callables or ``module:function`` import paths."""
    if given is None:
        return []
    items = [given] if isinstance(given, str) or callable(given) else list(given)
    hooks: list[Hook] = []
    for item in items:
        if isinstance(item, str):
            item = _import_hook(item, setting)
        if not callable(item):
            raise ConfigError(f"{setting}: {item!r} is not callable; give async functions hook(worker)")
        hooks.append(item)
    return hooks


async def _call_hook(hook: Hook, worker: Worker) -> None:
    outcome = hook(worker)
    if inspect.isawaitable(outcome):  # a plain function works too
        await outcome


def _import_hook(path: str, setting: str) -> Hook:
    return import_object(path, setting)  # type: ignore[no-any-return]


def import_object(path: str, setting: str) -> Any:
    """The object at ``module:attribute`` or ``module.attribute`` (RQ's spelling)."""
    if ":" in path:
        module_name, _, attribute = path.partition(":")
    else:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ConfigError(f"{setting}={path!r}: use module:name or module.name, e.g. myapp.hooks:open_pool")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{setting}={path!r}: cannot import {module_name!r} ({exc}); check --path"
        ) from None
    found = getattr(module, attribute, None)
    if found is None:
        raise ConfigError(f"{setting}={path!r}: module {module_name!r} has no {attribute!r}")
    return found


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TaskTimeout | ProcessLost):
        return f"{type(exc).__name__}: {exc}"
    text = "".join(traceback.format_exception(exc))
    remote = getattr(exc, "remote_traceback", None)
    return f"{text}\n{remote}" if remote else text
