"""What the Flask and Quart extensions share: an app's settings, the extension itself with its
``worker`` command, and loading an app for ``python -m asynctasq worker --app``.

A framework module subclasses :class:`BaseAsyncTasQ` with three hooks: the current app, the
app context a task runs in, and how an async view's dispatch reaches the producer's loop::

    class AsyncTasQ(BaseAsyncTasQ[flask.Flask]):
        def _current_app(self) -> flask.Flask | None: ...
        def _app_context(self, app: flask.Flask) -> AbstractAsyncContextManager[Any]: ...
        async def _produce(self, dispatching: Coroutine[Any, Any, T]) -> T: ...

Nothing here imports a web framework; click is imported when an app's CLI group is made.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from asynctasq.config import Config, SettingInfo
from asynctasq.constants import DEFAULT_DISPATCH_TIMEOUT_S
from asynctasq.core.driver_factory import DriverFactory
from asynctasq.core.worker import TaskContextFactory, Worker
from asynctasq.drivers import DRIVERS
from asynctasq.drivers.base import validate_queue_name
from asynctasq.errors import AsyncTasQError, ConfigError
from asynctasq.message import Envelope
from asynctasq.task import Producer, Task, TaskCall, run_sync

if TYPE_CHECKING:
    import click

T = TypeVar("T")

EXTENSION_KEY = "asynctasq"
"""Where an extension keeps its per-app state: ``app.extensions["asynctasq"]``."""
KEY_PREFIX = "ASYNCTASQ_"
QUEUE_CONNECTIONS_KEY = "ASYNCTASQ_QUEUE_CONNECTIONS"
APP_NAMES = ("app", "application", "create_app", "make_app")
"""Tried in this order when an ``--app`` spec names only a module."""

_BY_NAME = {s.name: s.name for s in Config.settings()}
_BY_KEY = {s.env: s.name for s in Config.settings()}


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
        if not isinstance(key, str) or not key.startswith(KEY_PREFIX) or key == QUEUE_CONNECTIONS_KEY:
            continue
        name = _BY_KEY.get(key)
        if name is None:
            valid = [*_BY_KEY, QUEUE_CONNECTIONS_KEY]
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


class AppSettings:
    """The asynctasq settings of one web app, read from its config mapping.

    ``ASYNCTASQ_*`` keys are the settings' environment names (``ASYNCTASQ_DRIVER``,
    ``ASYNCTASQ_REDIS_URL``...); anything not given comes from the environment, then the
    defaults. ``ASYNCTASQ_QUEUES`` lists the queues; the default queue is always one of them
    (first, unless listed elsewhere). ``ASYNCTASQ_QUEUE_CONNECTIONS`` gives a queue its own
    connection: a dict of settings, a string for the connection setting of the app's driver
    (``redis_url``, ``postgres_dsn``, ``sqlite_path``...), or the name of another configured
    queue whose connection it shares. Queues with equal settings share one connection.
    """

    def __init__(self, mapping: Mapping[str, Any]) -> None:
        settings = settings_from_app_config(mapping)
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
        for queue, value in raw.items():
            if queue not in self.queues:
                raise ConfigError(
                    f"{QUEUE_CONNECTIONS_KEY} names queue {queue!r}, which is not configured: "
                    f"add it to ASYNCTASQ_QUEUES (configured: {', '.join(self.queues)})"
                )
            if queue == default:
                raise ConfigError(
                    f"{QUEUE_CONNECTIONS_KEY}: the {default!r} queue always uses the app's own "
                    "ASYNCTASQ_* connection; set those keys instead"
                )
            if value is None or (isinstance(value, str) and value in self.queues):
                continue  # the app's connection, or a reference resolved below
            if isinstance(value, Mapping):
                overrides = _connection_settings(queue, value)
            elif isinstance(value, str):
                setting = DRIVERS[self.config.driver].connection_setting
                if setting is None:
                    raise ConfigError(
                        f"{QUEUE_CONNECTIONS_KEY}[{queue!r}]: the {self.config.driver} driver has no "
                        "connection URL; give a dict of settings"
                    )
                overrides = {setting: value}
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
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
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

    def make_worker(self, config: Config, options: dict[str, Any]) -> Worker:
        options.setdefault("task_context", self.task_context)
        return Worker.from_config(DriverFactory.create_from_config(config), config, **options)

    async def work(self, worker: Worker) -> None:
        """Run ``worker`` on its own connection until it stops, then close the producer
        connections that its tasks opened by dispatching."""
        try:
            async with worker.driver:
                await worker.start()
        finally:
            await self.producer.close_everywhere()


class BaseAsyncTasQ(ABC, Generic[AppT]):
    """The extension, less the framework: ``AsyncTasQ(app)``, or ``ext = AsyncTasQ()`` then
    ``ext.init_app(app)`` in an app factory. Methods act on the current app inside an app
    context, else on the app given to the constructor.

    Producing: :meth:`dispatch`, :meth:`dispatch_many` (async views), :meth:`dispatch_sync`,
    :meth:`dispatch_many_sync` (sync views); each task goes to the connection of its queue.
    ``call.dispatch()`` itself uses the process-wide config, not the app's. Working:
    :meth:`make_worker`, :meth:`run_worker`, :attr:`task_context` and the app's
    ``asynctasq worker`` command.
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
    async def _produce(self, dispatching: Coroutine[Any, Any, T]) -> T:
        """Run a producer coroutine for an async view (on the loop whose connections it uses)."""

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

    def make_worker(self, queues: Sequence[str] | None = None, **options: Any) -> Worker:
        """A worker for ``queues`` (default: every configured queue, in order) on the
        connection of the first of them; ``options`` override Worker arguments. Its driver is
        not connected yet::

            worker = tasks.make_worker(["email"], concurrency=20)
            async with worker.driver:
                await worker.start()
        """
        state = self._state()
        return state.make_worker(state.settings.worker_config(queues), options)

    def run_worker(self, queues: Sequence[str] | None = None, **options: Any) -> Worker:
        """Make a worker and run it on a new event loop until it stops (signal, burst end,
        max_tasks); return it."""
        from asynctasq.utils.loop import run

        state = self._state()
        worker = state.make_worker(state.settings.worker_config(queues), options)
        run(state.work(worker))
        return worker

    def _cli_group(self, app: AppT) -> click.Group:
        import click

        from asynctasq.utils.loop import run

        def run_worker(queues: list[str] | None, settings: dict[str, Any]) -> None:
            state = self._state(app)
            config = state.settings.worker_config(queues).replace(**settings)
            prepare_worker_process(config)
            run(state.work(state.make_worker(config, {})))

        group = click.Group("asynctasq", help="asynctasq workers for this app.")
        group.add_command(worker_command(run_worker))
        return group


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
    "AppSettings",
    "AppState",
    "BaseAsyncTasQ",
    "load_app",
    "load_app_worker",
    "settings_from_app_config",
    "worker_command",
    "worker_options",
]
