"""What the Flask and Quart extensions share: an app's settings, the extension itself with its
``worker`` command, and loading an app for ``python -m asynctasq worker --app``.

A framework module subclasses :class:`BaseAsyncTasQ` with three hooks: the current app, the
app context a task runs in, and how an async view's dispatch reaches the producer's loop::

    class AsyncTasQ(BaseAsyncTasQ[flask.Flask]):
        def _current_app(self) -> flask.Flask | None: ...
        def _app_context(self, app: flask.Flask) -> AbstractAsyncContextManager[Any]: ...
        async def _produce(self, dispatching: Coroutine[Any, Any, T], timeout: float | None) -> T: ...

Nothing here imports a web framework; click is imported when an app's CLI group is made.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, Unpack, overload

from asynctasq.config import Config, SettingInfo, url_settings
from asynctasq.constants import DEFAULT_DISPATCH_TIMEOUT_S
from asynctasq.core.driver_factory import DriverFactory
from asynctasq.core.worker import TaskContextFactory, Worker
from asynctasq.drivers import DRIVERS
from asynctasq.drivers.base import validate_queue_name
from asynctasq.errors import AsyncTasQError, ConfigError, TaskDefinitionError
from asynctasq.message import Envelope
from asynctasq.queue import Job, Queue, in_event_loop
from asynctasq.task import Producer, Task, TaskCall, TaskFunction, TaskOptions, run_sync
from asynctasq.task import task as define_task

if TYPE_CHECKING:
    import click

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger("asynctasq.integrations")

EXTENSION_KEY = "asynctasq"
"""Where an extension keeps its per-app state: ``app.extensions["asynctasq"]``."""
KEY_PREFIX = "ASYNCTASQ_"
QUEUE_CONNECTIONS_KEY = "ASYNCTASQ_QUEUE_CONNECTIONS"
CONNECTION_KEY = "ASYNCTASQ_CONNECTION"
"""Flask-RQ's ``RQ_CONNECTION``: the app's connection as a URL (its scheme picks the driver) or
the connection setting of ``ASYNCTASQ_DRIVER`` (a SQLite path...)."""
_OWN_KEYS = (QUEUE_CONNECTIONS_KEY, CONNECTION_KEY)
APP_NAMES = ("app", "application", "create_app", "make_app")
"""Tried in this order when an ``--app`` spec names only a module."""

_BY_NAME = {s.name: s.name for s in Config.settings()}
_BY_KEY = {s.env: s.name for s in Config.settings()}
_ENV_OF = {s.name: s.env for s in Config.settings()}


def missing_framework(framework: str, extra: str) -> ImportError:
    return ImportError(f'the {framework} integration needs {framework}: pip install "asynctasq[{extra}]"')


def _closest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def settings_from_app_config(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Config keyword arguments from the ``ASYNCTASQ_*`` keys of ``mapping``; an unknown
    ``ASYNCTASQ_`` key is a :class:`ConfigError` naming the closest valid one."""
    settings: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not key.startswith(KEY_PREFIX) or key in _OWN_KEYS:
            continue
        name = _BY_KEY.get(key)
        if name is None:
            valid = [*_BY_KEY, *_OWN_KEYS]
            raise ConfigError(f"unknown app.config key {key!r}{_closest(key, valid)}")
        settings[name] = value
    return settings


def _connection_settings(queue: str, given: Mapping[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for key, value in given.items():
        name = _BY_NAME.get(key) or _BY_KEY.get(key)
        if name is None:
            raise ConfigError(
                f"{QUEUE_CONNECTIONS_KEY}[{queue!r}]: unknown setting {key!r}{_closest(key, list(_BY_NAME))}"
            )
        settings[name] = value
    return settings


def connection_string_settings(value: str, driver: str, where: str) -> dict[str, Any]:
    """The settings of a connection string: a driver URL (``redis://``, ``sqlite:///``,
    ``postgresql://``...), else the connection setting of ``driver`` (a path, an SQS prefix)."""
    from_url = url_settings(value, where)
    if from_url:
        return from_url
    setting = DRIVERS[driver].connection_setting
    if setting is None:
        raise ConfigError(f"{where}: the {driver} driver has no connection URL; give a dict of settings")
    return {setting: value}


class AppSettings:
    """The asynctasq settings of one web app, read from its config mapping.

    ``ASYNCTASQ_*`` keys are the settings' environment names (``ASYNCTASQ_DRIVER``,
    ``ASYNCTASQ_REDIS_URL``...); anything not given comes from the environment, then the
    defaults. ``ASYNCTASQ_CONNECTION`` is the app's connection as a string (see
    :func:`connection_string_settings`). ``ASYNCTASQ_QUEUES`` lists the queues; the default
    queue is always one of them (first, unless listed elsewhere). ``ASYNCTASQ_QUEUE_CONNECTIONS``
    gives a queue its own connection: a connection string, a dict of settings, or the name of
    another configured queue whose connection it shares; as in Flask-RQ, the default queue's
    key, ``None`` values and queues not in ``ASYNCTASQ_QUEUES`` are ignored. Queues with equal
    settings share one connection.
    """

    def __init__(self, mapping: Mapping[str, Any]) -> None:
        settings = settings_from_app_config(mapping)
        connection = mapping.get(CONNECTION_KEY)
        if connection is not None:
            if not isinstance(connection, str):
                raise ConfigError(
                    f"{CONNECTION_KEY} must be a URL or a path, not {type(connection).__name__}"
                )
            driver = settings.get("driver") or Config(**settings).driver
            given = connection_string_settings(connection, driver, CONNECTION_KEY)
            if "driver" in settings and given.get("driver", driver) != settings["driver"]:
                raise ConfigError(
                    f"{CONNECTION_KEY} is a {given['driver']} URL but ASYNCTASQ_DRIVER is "
                    f"{settings['driver']!r}: drop one of them"
                )
            twice = [_ENV_OF[name] for name in given if name != "driver" and name in settings]
            if twice:
                raise ConfigError(f"give {CONNECTION_KEY} or {', '.join(twice)}, not both")
            settings.update(given)
        base = Config(**settings)
        queues = list(dict.fromkeys(base.queues))
        if base.default_queue not in queues:
            queues.insert(0, base.default_queue)
        self.queues = [validate_queue_name(q) for q in queues]
        settings["queues"] = self.queues
        self.config = Config(**settings)
        self.connections: list[Config] = [self.config]
        self._connection_of = dict.fromkeys(self.queues, 0)
        self._resolve_connections(mapping.get(QUEUE_CONNECTIONS_KEY), settings)

    def _resolve_connections(self, raw: Any, settings: dict[str, Any]) -> None:
        if raw is None:
            return
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{QUEUE_CONNECTIONS_KEY} must be a dict: queue name -> connection")
        default = self.config.default_queue
        own: dict[str, Config] = {}
        raw = {queue: value for queue, value in raw.items() if self._kept(queue, value, default)}
        for queue, value in raw.items():
            if isinstance(value, str) and value in self.queues:
                continue  # a reference, resolved below
            if isinstance(value, Mapping):
                overrides = _connection_settings(queue, value)
            elif isinstance(value, str):
                where = f"{QUEUE_CONNECTIONS_KEY}[{queue!r}]"
                overrides = connection_string_settings(value, self.config.driver, where)
            else:
                raise ConfigError(
                    f"{QUEUE_CONNECTIONS_KEY}[{queue!r}] must be a dict of settings, a URL or the "
                    f"name of a configured queue, not {type(value).__name__}"
                )
            own[queue] = Config(**{**settings, **overrides})

        def resolve(queue: str, chain: list[str]) -> Config:
            value = raw.get(queue)
            if isinstance(value, str) and value in self.queues:
                if value in chain:
                    loop = " -> ".join([*chain, value])
                    raise ConfigError(f"{QUEUE_CONNECTIONS_KEY}: the queues refer to each other ({loop})")
                return resolve(value, [*chain, value])
            return own.get(queue, self.config)

        for queue in self.queues:
            config = resolve(queue, [queue])
            if config not in self.connections:  # Config compares by value
                self.connections.append(config)
            self._connection_of[queue] = self.connections.index(config)

    def _kept(self, queue: Any, value: Any, default: str) -> bool:
        if value is None:
            return False
        if queue == default:
            log.warning(
                "%s: the %r key is ignored: that queue uses the app's connection (%s)",
                QUEUE_CONNECTIONS_KEY,
                default,
                CONNECTION_KEY,
            )
            return False
        if queue not in self.queues:
            log.warning(
                "%s: queue %r is ignored: it is not in ASYNCTASQ_QUEUES (configured: %s)",
                QUEUE_CONNECTIONS_KEY,
                queue,
                ", ".join(self.queues),
            )
            return False
        return True

    def connection_index(self, queue: str) -> int:
        """Which of :attr:`connections` ``queue`` uses; an unconfigured queue is an error."""
        try:
            return self._connection_of[queue]
        except KeyError:
            raise ConfigError(
                f"queue {queue!r} is not configured for this app: add it to ASYNCTASQ_QUEUES "
                f"(configured: {', '.join(self.queues)})"
            ) from None

    def config_for(self, queue: str) -> Config:
        return self.connections[self.connection_index(queue)]

    def worker_config(self, queues: Sequence[str] | None = None) -> Config:
        """The config of a worker for ``queues`` (default: every configured queue, in order), on
        the connection of the first of them, as Flask-RQ does."""
        chosen = list(self.queues) if not queues else [q for name in queues for q in name.split(",") if q]
        first = self.connection_index(chosen[0])
        for queue in chosen:
            self.connection_index(queue)  # every one must be configured
        return self.connections[first].replace(queues=chosen)


# -- the worker command's options, from Config.settings() ------------------------------------


def worker_options() -> list[click.Option]:
    """A click option for every worker setting of :class:`Config` (``--concurrency``,
    ``--burst/--no-burst``, ``--import``...), help and choices taken from the setting. None
    has a default of its own: an option left out is ``None`` (``()`` if repeatable), so the
    app's config, the environment and the defaults apply."""
    return [_click_option(s) for s in Config.settings() if s.group == "worker"]


def _click_option(setting: SettingInfo) -> click.Option:
    import click

    base = setting.base_type
    help_text = setting.help_text
    name = f"--{setting.flag}"
    if base == "bool":
        return click.Option([f"{name}/--no-{setting.flag}", setting.name], default=None, help=help_text)
    kind: Any = (
        click.Choice(setting.choices) if setting.choices else {"int": int, "float": float}.get(base, str)
    )
    repeatable = setting.repeatable
    return click.Option([name, setting.name], type=kind, multiple=repeatable, help=help_text)


def worker_command(run: Callable[[list[str] | None, dict[str, Any]], None]) -> click.Command:
    """The ``worker`` command of an app's CLI group: ``run(queues, settings)`` runs a worker on
    ``queues`` (None: the app's) with the Config ``settings`` given on the command line."""
    import click

    def worker(queue_names: tuple[str, ...], **given: Any) -> None:
        settings = {k: v for k, v in given.items() if v is not None and v != ()}
        listed = settings.pop("queues", None)  # --queues a,b: the same as QUEUES
        try:
            run(list(queue_names) or ([listed] if listed else None), settings)
        except AsyncTasQError as exc:
            raise click.ClickException(str(exc)) from None

    return click.Command(
        "worker",
        callback=worker,
        params=[click.Argument(["queue_names"], nargs=-1, metavar="[QUEUES]..."), *worker_options()],
        help="Run a worker for this app on QUEUES (default: every configured queue), on the "
        "connection of the first one; options override the app's config. Every task runs "
        "inside the app context.",
    )


def prepare_worker_process(config: Config) -> None:
    """Logging at the config's level, its ``path`` on ``sys.path`` and its ``imports``, before a
    worker runs in this process."""
    from asynctasq.utils.logs import setup_logging

    setup_logging(config)
    sys.path[:0] = [entry for entry in map(os.path.abspath, config.path) if entry not in sys.path]
    for module in config.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"cannot import {module!r} ({exc}): check --import / ASYNCTASQ_IMPORT"
            ) from None


# -- the extension ----------------------------------------------------------------------------


class WebApp(Protocol):
    """What the extension uses of a Flask or Quart app."""

    import_name: str

    @property
    def config(self) -> Any: ...
    @property
    def extensions(self) -> dict[str, Any]: ...
    @property
    def cli(self) -> Any: ...


AppT = TypeVar("AppT", bound=WebApp)


class AppState(Generic[AppT]):
    """An extension's state on one app, kept in ``app.extensions["asynctasq"]``: the settings,
    the producer over their connections, and the per-task context of the app's workers."""

    def __init__(
        self,
        app: AppT,
        settings: AppSettings,
        app_context: Callable[[AppT], AbstractAsyncContextManager[Any]],
    ) -> None:
        self.app = app
        self.settings = settings
        self.producer = Producer(settings.connections, settings.connection_index)
        self._app_context = app_context

    def task_context(self, envelope: Envelope) -> AbstractAsyncContextManager[Any]:
        return self._app_context(self.app)

    def make_worker(self, config: Config, options: dict[str, Any]) -> AppWorker:
        options.setdefault("task_context", self.task_context)
        driver = DriverFactory.create_from_config(config)
        worker = AppWorker.from_config(driver, config, after_stop=self.producer.close_everywhere, **options)
        assert isinstance(worker, AppWorker)
        return worker


class AppWorker(Worker):
    """The worker of an app's extension (``make_worker``): :meth:`start` connects its driver and,
    when the worker stops, closes it and the producer connections its tasks opened by
    dispatching; :meth:`work` runs it from sync code, as Flask-RQ's ``worker.work()``."""

    def __init__(
        self, *args: Any, after_stop: Callable[[], Awaitable[None]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._after_stop = after_stop

    async def start(self) -> None:
        """Run until SIGTERM/SIGINT, :meth:`stop`, the end of a burst, ``max_tasks`` or idleness."""
        try:
            async with self.driver:  # connecting is idempotent: a driver you connected is fine
                await super().start()
        finally:
            if self._after_stop is not None:
                await self._after_stop()

    def work(self, burst: bool | None = None, max_jobs: int | None = None) -> bool:
        """Run the worker on a new event loop until it stops, blocking (RQ's ``work``):
        ``burst=True`` drains the queues and returns, ``max_jobs`` takes that many tasks;
        None keeps the worker's setting. SIGTERM/SIGINT stop it gracefully when this is the
        main thread. Returns whether it ran any task."""
        if in_event_loop():
            raise RuntimeError("worker.work() blocks its thread: in async code, await worker.start()")
        if burst is not None:
            self.burst = burst
        if max_jobs is not None:
            if max_jobs < 1:
                raise ConfigError("max_jobs must be at least 1")
            self.max_tasks = max_jobs
        from asynctasq.utils.loop import run

        run(self.start())
        return self.processed > 0


class UnknownQueue(ConfigError, KeyError):
    """``ext.queues[name]`` for a queue the app does not configure."""

    def __str__(self) -> str:
        return str(self.args[0])


class AppQueue(Queue):
    """A configured queue of an app (``ext.queue``, ``ext.queues["email"]``), on its connection.
    As every :class:`~asynctasq.queue.Queue`, its methods block in sync code and return
    awaitables in async code; the framework decides where an awaited call runs."""

    def __init__(
        self,
        name: str,
        producer: Producer,
        produce: Callable[[Coroutine[Any, Any, Any], float | None], Awaitable[Any]],
    ) -> None:
        super().__init__(name, producer=producer)
        self._produce = produce

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> Awaitable[T]:
        return self._produce(coro, timeout)


class AppQueues(Mapping[str, AppQueue]):
    """The app's configured queues by name; an unknown name is an :class:`UnknownQueue`
    (a ``KeyError``) naming the configured ones."""

    def __init__(self, settings: AppSettings, make: Callable[[str], AppQueue]) -> None:
        self._settings = settings
        self._make = make

    def __getitem__(self, name: str) -> AppQueue:
        if name not in self._settings.queues:
            raise UnknownQueue(
                f"queue {name!r} is not configured for this app: add it to ASYNCTASQ_QUEUES "
                f"(configured: {', '.join(self._settings.queues)})"
            )
        return self._make(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._settings.queues)

    def __len__(self) -> int:
        return len(self._settings.queues)


class AppTask(TaskFunction[P, R]):
    """A task registered by ``@ext.task`` / ``@ext.job`` (Flask-RQ's spelling): a task as any
    other (``func(...)`` makes a call), plus :meth:`enqueue` on its queue through the extension,
    so on the current app's connection for that queue."""

    def __init__(self, defined: TaskFunction[P, R], extension: BaseAsyncTasQ[Any]) -> None:
        super().__init__(defined.func, defined.definition)
        self._extension = extension

    def _queue(self) -> AppQueue:
        name = self.definition.queue or self._extension.settings.config.default_queue
        return self._extension.queues[name]

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """``ext.queues[<the task's queue>].enqueue(this task, *args, **kwargs)``."""
        return self._queue().enqueue(self, *args, **kwargs)

    def enqueue_in(self, delay: timedelta | float, *args: P.args, **kwargs: P.kwargs) -> Job:
        return self._queue().enqueue_in(delay, self, *args, **kwargs)

    def enqueue_at(self, when: datetime, *args: P.args, **kwargs: P.kwargs) -> Job:
        return self._queue().enqueue_at(when, self, *args, **kwargs)


class BaseAsyncTasQ(ABC, Generic[AppT]):
    """The extension, less the framework: ``AsyncTasQ(app)``, or ``ext = AsyncTasQ()`` then
    ``ext.init_app(app)`` in an app factory. Methods act on the current app inside an app
    context, else on the app given to the constructor.

    Producing, Flask-RQ's way: :attr:`queue` and :attr:`queues` (``ext.queues["email"]
    .enqueue(send_mail, msg)``, blocking in sync views, awaited in async ones), and
    ``@ext.task(queue=...)`` / ``@ext.job(...)`` giving ``func.enqueue(...)``. Or with task
    calls: :meth:`dispatch`, :meth:`dispatch_many` (async views), :meth:`dispatch_sync`,
    :meth:`dispatch_many_sync` (sync views). Each task goes to the connection of its queue;
    ``call.dispatch()`` itself uses the process-wide config, not the app's. Working:
    :meth:`make_worker` (``.work()`` or ``await .start()``), :meth:`run_worker`,
    :attr:`task_context` and the app's ``asynctasq`` commands (``worker``, ``info``,
    ``failed``, ``dispatch``).
    """

    def __init__(self, app: AppT | None = None) -> None:
        self.app = app
        if app is not None:
            self.init_app(app)

    # -- framework hooks ------------------------------------------------------------------

    @abstractmethod
    def _current_app(self) -> AppT | None:
        """The app of the current app context, if there is one."""

    @abstractmethod
    def _app_context(self, app: AppT) -> AbstractAsyncContextManager[Any]:
        """A new app context of ``app``, entered around one task."""

    @abstractmethod
    async def _produce(
        self, dispatching: Coroutine[Any, Any, T], timeout: float | None = DEFAULT_DISPATCH_TIMEOUT_S
    ) -> T:
        """Run a producer coroutine for an async view (on the loop whose connections it uses),
        waiting up to ``timeout`` seconds where it waits on another loop."""

    def _setup(self, app: AppT, state: AppState[AppT]) -> None:
        """Anything more ``init_app`` does for the framework."""

    # -- set-up ---------------------------------------------------------------------------

    def init_app(self, app: AppT) -> None:
        """Read the app's ``ASYNCTASQ_*`` keys (a bad one raises ConfigError) and add the CLI."""
        state = AppState(app, AppSettings(app.config), self._app_context)
        app.extensions[EXTENSION_KEY] = state
        self._setup(app, state)
        app.cli.add_command(self._cli_group(app))

    def _state(self, app: AppT | None = None) -> AppState[AppT]:
        app = app or self._current_app() or self.app
        if app is None:
            raise RuntimeError("no app: call this inside an app context, or create AsyncTasQ(app)")
        state = app.extensions.get(EXTENSION_KEY)
        if not isinstance(state, AppState):
            raise RuntimeError(f"asynctasq is not set up on app {app.import_name!r}: call init_app(app)")
        return state

    @property
    def settings(self) -> AppSettings:
        return self._state().settings

    # -- producing ------------------------------------------------------------------------

    @overload
    def task(self, func: Callable[P, R], /) -> AppTask[P, R]: ...
    @overload
    def task(
        self, func: None = None, /, **options: Unpack[TaskOptions]
    ) -> Callable[[Callable[P, R]], AppTask[P, R]]: ...

    def task(self, func: Callable[..., Any] | None = None, /, **options: Unpack[TaskOptions]) -> Any:
        """Register ``func`` as a task (the options of :func:`asynctasq.task`) that also has
        ``func.enqueue(...)`` on its queue through this extension::

            @tq.task(queue="email")
            def send_password_reset(user_id: int) -> None: ...

            send_password_reset.enqueue(user_id=7)

        The queue is checked when enqueuing: the app may be set up after the module is imported.
        """

        def decorate(f: Callable[..., Any]) -> AppTask[..., Any]:
            if isinstance(f, TaskFunction):  # a task already: give it enqueue(), keep its options
                if options:
                    raise TaskDefinitionError(f"{f.name} is a task already: give its options to @task")
                return AppTask(f, self)
            return AppTask(define_task(**options)(f), self)

        if func is not None:
            return decorate(func)
        return decorate

    job = task
    """Flask-RQ's name for :meth:`task`."""

    @property
    def queue(self) -> AppQueue:
        """The app's default queue (Flask-RQ's ``rq.queue``)."""
        return self.queues[self.settings.config.default_queue]

    @property
    def queues(self) -> AppQueues:
        """The app's configured queues by name (Flask-RQ's ``rq.queues``)."""
        state = self._state()
        return AppQueues(state.settings, lambda name: AppQueue(name, state.producer, self._produce))

    async def dispatch(self, call: TaskCall | Task) -> str:
        """Enqueue ``call`` on its queue's connection; return the task id."""
        return await self._produce(self._state().producer.dispatch(call))

    async def dispatch_many(self, calls: Sequence[TaskCall | Task]) -> list[str]:
        """Enqueue ``calls``, one round trip per connection; return their ids in order."""
        return await self._produce(self._state().producer.dispatch_many(calls))

    def dispatch_sync(self, call: TaskCall | Task, timeout: float | None = DEFAULT_DISPATCH_TIMEOUT_S) -> str:
        """:meth:`dispatch` from sync code (no running loop), on asynctasq's background loop."""
        return run_sync(self._state().producer.dispatch(call), timeout)

    def dispatch_many_sync(
        self, calls: Sequence[TaskCall | Task], timeout: float | None = DEFAULT_DISPATCH_TIMEOUT_S
    ) -> list[str]:
        return run_sync(self._state().producer.dispatch_many(calls), timeout)

    # -- working --------------------------------------------------------------------------

    @property
    def task_context(self) -> TaskContextFactory:
        """The per-task context factory for a :class:`Worker` of this app."""
        return self._state().task_context

    def make_worker(self, queues: Sequence[str] | None = None, **options: Any) -> AppWorker:
        """A worker for ``queues`` (default: every configured queue, in order) on the
        connection of the first of them, as Flask-RQ's; ``options`` override Worker arguments.
        Every task runs inside an app context of its own::

            with app.app_context():
                worker = tq.make_worker()
                worker.work()                    # sync: blocks until a signal (or burst end)

            await tq.make_worker(["email"], concurrency=20).start()   # async
        """
        state = self._state()
        return state.make_worker(state.settings.worker_config(queues), options)

    def run_worker(self, queues: Sequence[str] | None = None, **options: Any) -> AppWorker:
        """``make_worker(queues, **options).work()``; return the worker."""
        worker = self.make_worker(queues, **options)
        worker.work()
        return worker

    def _cli_group(self, app: AppT) -> click.Group:
        import click

        from asynctasq.utils.loop import run

        def run_worker(queues: list[str] | None, settings: dict[str, Any]) -> None:
            state = self._state(app)
            config = state.settings.worker_config(queues).replace(**settings)
            prepare_worker_process(config)
            run(state.make_worker(config, {}).start())

        group = click.Group(
            "asynctasq",
            help="asynctasq for this app: workers, queue sizes, the failed registry and dispatching, "
            "all on the app's own ASYNCTASQ_* configuration.",
        )
        group.add_command(worker_command(run_worker))
        for command in app_commands(lambda: self._state(app).settings):
            group.add_command(command)
        return group


# -- the app's other commands: the bodies of asynctasq.cli, on the app's config ----------------


def call_cli(command: Callable[..., None], config: Config, **arguments: Any) -> None:
    """Run a command function of :mod:`asynctasq.cli` with ``config`` as its settings: every
    setting option of the command is passed from ``config``, so it reads no flags or
    environment of its own. Its exit (an error it printed) becomes the click command's."""
    import click
    import typer

    flags = {
        name: getattr(config, name) for name in inspect.signature(command).parameters if name in _BY_NAME
    }
    try:
        command(**arguments, **flags)
    except typer.Exit as exc:  # typer carries its own click: its Exit is not this click's
        if exc.exit_code:
            raise click.exceptions.Exit(exc.exit_code) from None


def _connection_queues(settings: AppSettings, only: str | None) -> list[tuple[Config, list[str]]]:
    """(connection, its queues) for every connection of the app, or only the one of ``only``."""
    if only is not None:
        return [(settings.config_for(only), [only])]
    found: list[tuple[Config, list[str]]] = []
    for index, config in enumerate(settings.connections):
        queues = [q for q in settings.queues if settings.connection_index(q) == index]
        found.append((config, queues))
    return found


def _each_connection(
    settings: AppSettings, only: str | None, body: Callable[[Config, list[str]], None]
) -> None:
    import click

    connections = _connection_queues(settings, only)
    for config, queues in connections:
        if len(connections) > 1:
            where = DriverFactory.create_from_config(config).describe()
            click.echo(f"== {', '.join(queues)} on {where}")
        body(config, queues)


def app_commands(settings: Callable[[], AppSettings]) -> list[click.Command]:
    """``info``, ``failed list|requeue|purge`` and ``dispatch`` of an app's CLI group: the
    bodies of ``python -m asynctasq``'s commands, given the app's config for each connection."""
    import click

    from asynctasq import cli

    def guarded(body: Callable[..., None]) -> Callable[..., None]:
        def run(**given: Any) -> None:
            try:
                body(**given)
            except AsyncTasQError as exc:
                raise click.ClickException(str(exc)) from None

        return run

    def info() -> None:
        s = settings()
        _each_connection(s, None, lambda config, queues: call_cli(cli.info, config.replace(queues=queues)))

    def failed_list(queue: str | None, limit: int) -> None:
        s = settings()
        _each_connection(
            s, queue, lambda config, _: call_cli(cli.failed_list, config, queue=queue, limit=limit)
        )

    def failed_bulk(command: Callable[..., None]) -> Callable[..., None]:
        def run(ids: tuple[str, ...], queue: str | None, all_: bool) -> None:
            s = settings()
            _each_connection(
                s, queue, lambda config, _: call_cli(command, config, ids=list(ids), queue=queue, all_=all_)
            )

        return run

    def dispatch(task_name: str, args: str, kwargs: str, queue: str | None, delay: float) -> None:
        from asynctasq.registry import registry

        s = settings()
        definition = registry.get(task_name)
        target = queue or (definition.queue if definition is not None else None) or s.config.default_queue
        config = s.config_for(target)
        call_cli(
            cli.dispatch, config, task_name=task_name, args=args, kwargs=kwargs, queue=queue, delay=delay
        )

    only_queue = click.Option(["--queue", "-q"], default=None, help="Only this queue (and its connection).")
    ids = click.Argument(["ids"], nargs=-1)
    every = click.Option(["--all", "all_"], is_flag=True, default=False, help="Every failed task.")
    failed = click.Group("failed", help="List, requeue or purge tasks in the failed registry.")
    failed.add_command(
        click.Command(
            "list",
            callback=guarded(failed_list),
            params=[only_queue, click.Option(["--limit"], type=int, default=50, help="Most entries shown.")],
            help="List failed tasks with their error.",
        )
    )
    for name, bulk in (("requeue", cli.failed_requeue), ("purge", cli.failed_purge)):
        failed.add_command(
            click.Command(
                name, callback=guarded(failed_bulk(bulk)), params=[ids, only_queue, every], help=bulk.__doc__
            )
        )
    return [
        click.Command(
            "info",
            callback=guarded(info),
            help="Queue sizes of the app's queues and the registered workers, per connection.",
        ),
        failed,
        click.Command(
            "dispatch",
            callback=guarded(dispatch),
            params=[
                click.Argument(["task_name"]),
                click.Option(["--args"], default="[]", help="Positional arguments as a JSON list."),
                click.Option(["--kwargs"], default="{}", help="Keyword arguments as a JSON object."),
                click.Option(["--queue", "-q"], default=None, help="Queue (default: the task's)."),
                click.Option(
                    ["--delay"], type=float, default=0.0, help="Seconds before the task becomes visible."
                ),
            ],
            help="Dispatch a registered task of the app on its queue's connection; prints the task id.",
        ),
    ]


# -- loading an app: python -m asynctasq worker --app ------------------------------------------


def load_app(spec: str) -> Any:
    """The app named by ``spec``: ``module:attribute``, the attribute an app or a factory called
    with no arguments; a bare ``module`` tries ``app``, ``application``, ``create_app``,
    ``make_app``."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ConfigError(f"cannot import {module_name!r} for --app {spec}: check --path") from None
        raise
    names = [attribute] if attribute else [n for n in APP_NAMES if hasattr(module, n)]
    if not names or not hasattr(module, names[0]):
        wanted = repr(attribute) if attribute else "app or create_app"
        raise ConfigError(f"module {module_name!r} has no {wanted}: use --app module:attribute")
    target = getattr(module, names[0])
    if not isinstance(getattr(target, "extensions", None), dict) and callable(target):
        target = target()
    if not isinstance(getattr(target, "extensions", None), dict):
        raise ConfigError(f"--app {spec} is not a Flask or Quart app, nor a factory returning one")
    return target


def load_app_worker(spec: str, queues: Sequence[str] | None = None) -> tuple[Config, TaskContextFactory]:
    """The worker config and per-task context of the app named by ``spec`` (see
    :func:`load_app`), for ``python -m asynctasq worker --app myapp:create_app``.

    The config is the app's connection for the first of ``queues`` (default: every configured
    queue) with ``queues`` set; the factory runs each task inside the app's app context.
    """
    app = load_app(spec)
    state = app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, AppState):
        raise ConfigError(
            f"--app {spec}: the app has no asynctasq extension; create it with AsyncTasQ(app) "
            "from asynctasq.integrations.flask (or .quart)"
        )
    factory: TaskContextFactory = state.task_context
    return state.settings.worker_config(queues), factory


__all__ = [
    "EXTENSION_KEY",
    "AppQueue",
    "AppQueues",
    "AppSettings",
    "AppState",
    "AppTask",
    "AppWorker",
    "BaseAsyncTasQ",
    "UnknownQueue",
    "app_commands",
    "call_cli",
    "load_app",
    "load_app_worker",
    "settings_from_app_config",
    "worker_command",
    "worker_options",
]
