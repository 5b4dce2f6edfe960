"""Web framework integrations, and the parts they share.

- :mod:`asynctasq.integrations.flask` and :mod:`asynctasq.integrations.quart`: the
  ``AsyncTasQ(app)`` extension (settings from ``app.config``, per-queue connections, every task
  inside an app context, a ``worker`` CLI command).
- :mod:`asynctasq.integrations.fastapi`: a lifespan that connects and closes the producer.

This package never imports a framework itself; :func:`load_app_worker` finds the extension on
an app that has one (``python -m asynctasq worker --app myapp:create_app``).
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from asynctasq.config import Config
from asynctasq.core.worker import TaskContextFactory
from asynctasq.drivers.base import BaseDriver, EnqueueItem, validate_queue_name
from asynctasq.errors import AsyncTasQError, ConfigError
from asynctasq.serializers import get_serializer
from asynctasq.task import Task, TaskCall

EXTENSION_KEY = "asynctasq"
"""Where an extension keeps its per-app state: ``app.extensions["asynctasq"]``."""
KEY_PREFIX = "ASYNCTASQ_"
QUEUE_CONNECTIONS_KEY = "ASYNCTASQ_QUEUE_CONNECTIONS"
APP_NAMES = ("app", "application", "create_app", "make_app")
"""Tried in this order when an ``--app`` spec names only a module."""

# the setting a plain string in ASYNCTASQ_QUEUE_CONNECTIONS sets, per driver
_URL_SETTING = {
    "sqlite": "sqlite_path",
    "redis": "redis_url",
    "postgres": "postgres_dsn",
    "mysql": "mysql_dsn",
    "rabbitmq": "rabbitmq_url",
    "sqs": "sqs_queue_url_prefix",
}
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
                setting = _URL_SETTING.get(self.config.driver)
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


class Producer:
    """Connected drivers that dispatch an app's tasks: one per connection and event loop, so each
    task goes to the connection of its queue."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self._drivers: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[int, asyncio.Future[BaseDriver]]
        ] = weakref.WeakKeyDictionary()

    async def driver(self, queue: str) -> BaseDriver:
        """The connected driver of ``queue`` in the running loop (connected on first use)."""
        index = self.settings.connection_index(queue)
        drivers = self._drivers.setdefault(asyncio.get_running_loop(), {})
        pending = drivers.get(index)
        if pending is None:
            pending = drivers[index] = asyncio.ensure_future(self._connect(index))
        try:
            return await asyncio.shield(pending)
        except Exception:
            if drivers.get(index) is pending:
                del drivers[index]  # the next dispatch tries again
            raise

    async def _connect(self, index: int) -> BaseDriver:
        from asynctasq.core.driver_factory import DriverFactory

        driver = DriverFactory.create_from_config(self.settings.connections[index])
        await driver.connect()
        return driver

    def _item(self, call: TaskCall | Task) -> tuple[str, EnqueueItem]:
        tc = call.call() if isinstance(call, Task) else call
        env = tc.envelope(self.settings.config)
        serializer = get_serializer(self.settings.config_for(env.queue).serializer)
        return env.id, EnqueueItem(env.queue, env.encode(serializer), tc._delay)

    async def dispatch(self, call: TaskCall | Task) -> str:
        task_id, item = self._item(call)
        driver = await self.driver(item.queue)
        await driver.enqueue(item.queue, item.body, item.delay)
        return task_id

    async def dispatch_many(self, calls: Sequence[TaskCall | Task]) -> list[str]:
        """Enqueue ``calls``, one batch per connection; return their ids in order."""
        ids: list[str] = []
        batches: dict[int, list[EnqueueItem]] = {}
        for call in calls:
            task_id, item = self._item(call)
            ids.append(task_id)
            batches.setdefault(self.settings.connection_index(item.queue), []).append(item)
        for items in batches.values():
            driver = await self.driver(items[0].queue)
            await driver.enqueue_many(items)
        return ids

    async def close(self) -> None:
        """Disconnect the drivers of the running loop."""
        drivers = self._drivers.pop(asyncio.get_running_loop(), {})
        for pending in drivers.values():
            if pending.done() and not pending.cancelled() and pending.exception() is None:
                await pending.result().disconnect()
            elif not pending.done():
                pending.cancel()

    async def close_everywhere(self) -> None:
        """Disconnect the drivers of every loop: this one directly, others (still running, such as
        asynctasq's background loop of ``dispatch_sync``) through a thread-safe call."""
        here = asyncio.get_running_loop()
        for loop in list(self._drivers):
            if loop is here:
                await self.close()
            elif loop.is_running():
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.close(), loop))
            else:
                self._drivers.pop(loop, None)


def prepare_worker_process(config: Config) -> None:
    """Logging at the config's level and its ``imports`` (ASYNCTASQ_IMPORT), before a worker."""
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for module in config.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"cannot import {module!r} ({exc}): check ASYNCTASQ_IMPORT") from None


def worker_command(run: Callable[[list[str] | None, dict[str, Any]], None]) -> Any:
    """The click ``worker`` command of the Flask and Quart CLIs; ``run(queues, options)`` runs
    the worker with the Worker arguments given on the command line."""
    import click

    @click.command("worker")
    @click.argument("queues", nargs=-1)
    @click.option("--burst/--no-burst", default=None, help="Process what is queued, then exit.")
    @click.option("--concurrency", type=click.IntRange(min=1), help="Most tasks run at once.")
    @click.option("--max-tasks", type=click.IntRange(min=1), help="Exit after exactly this many tasks.")
    @click.option("--max-idle-time", type=float, help="Exit after this many seconds without a task.")
    @click.option(
        "--dequeue-strategy",
        type=click.Choice(["round_robin", "priority", "random"]),
        help="How queues are visited (default round_robin).",
    )
    @click.option("--name", "worker_id", help="Worker name (default: host.pid.random).")
    @click.option("--shutdown-timeout", type=float, help="Seconds running tasks get after SIGTERM.")
    def worker(queues: tuple[str, ...], **given: Any) -> None:
        """Run a worker for this app on QUEUES (default: every configured queue), on the
        connection of the first one. Every task runs inside the app context."""
        try:
            run(list(queues) or None, {k: v for k, v in given.items() if v is not None})
        except AsyncTasQError as exc:
            raise click.ClickException(str(exc)) from None

    return worker


class _AppState(Protocol):
    settings: AppSettings

    def task_context(self, envelope: Any) -> Any: ...


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
    state: _AppState | None = app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise ConfigError(
            f"--app {spec}: the app has no asynctasq extension; create it with AsyncTasQ(app) "
            "from asynctasq.integrations.flask (or .quart)"
        )
    factory: TaskContextFactory = state.task_context
    return state.settings.worker_config(queues), factory


__all__ = [
    "EXTENSION_KEY",
    "AppSettings",
    "Producer",
    "load_app",
    "load_app_worker",
    "settings_from_app_config",
]
