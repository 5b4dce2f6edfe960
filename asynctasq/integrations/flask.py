"""Flask: settings from ``app.config``, tasks inside the app context, ``flask asynctasq worker``.

::

    from flask import Flask
    from asynctasq.integrations.flask import AsyncTasQ

    app = Flask(__name__)
    app.config.update(
        ASYNCTASQ_DRIVER="redis",
        ASYNCTASQ_REDIS_URL="redis://localhost:6379",
        ASYNCTASQ_QUEUES=["email", "priority"],  # plus "default", always there
        ASYNCTASQ_QUEUE_CONNECTIONS={"email": "redis://mail-redis:6379"},
    )
    tasks = AsyncTasQ(app)

    @app.post("/signup")
    def signup():
        tasks.dispatch_sync(send_welcome(user_id=7))  # a sync view: no event loop of its own
        ...

Then ``flask asynctasq worker email priority`` runs a worker whose tasks see ``current_app``
and ``g``: each task gets its own app context, torn down (``teardown_appcontext``) however the
task ends: success, error, timeout or cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

try:
    import click
    import flask
except ImportError as exc:  # pragma: no cover - depends on the environment
    from asynctasq.integrations import missing_framework

    raise missing_framework("Flask", "flask") from exc

from asynctasq.core.driver_factory import DriverFactory
from asynctasq.core.worker import TaskContextFactory, Worker
from asynctasq.integrations import (
    EXTENSION_KEY,
    AppSettings,
    Producer,
    prepare_worker_process,
    worker_command,
)
from asynctasq.message import Envelope
from asynctasq.task import Task, TaskCall, run_sync

DEFAULT_DISPATCH_TIMEOUT_S = 30.0


class _FlaskState:
    def __init__(self, app: flask.Flask, settings: AppSettings) -> None:
        self.app = app
        self.settings = settings
        self.producer = Producer(settings)  # used on asynctasq's background loop only

    def task_context(self, envelope: Envelope) -> contextlib.AbstractAsyncContextManager[None]:
        return _app_context(self.app)


@contextlib.asynccontextmanager
async def _app_context(app: flask.Flask) -> AsyncIterator[None]:
    with app.app_context():  # popped with the task's exception, cancellation included
        yield


class AsyncTasQ:
    """The Flask extension. ``AsyncTasQ(app)``, or ``ext = AsyncTasQ()`` then
    ``ext.init_app(app)`` in an app factory; methods act on ``current_app`` when called inside
    an app context, else on the app given to the constructor.

    Producing: :meth:`dispatch_sync` (sync views), :meth:`dispatch` (async views),
    :meth:`dispatch_many`; each task goes to the connection of its queue. ``call.dispatch()``
    itself uses the process-wide config (:func:`asynctasq.configure`), not the app's.
    Working: :meth:`make_worker`, :meth:`run_worker`, :attr:`task_context`, and the
    ``flask asynctasq worker`` command.
    """

    def __init__(self, app: flask.Flask | None = None) -> None:
        self.app = app
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        """Read the app's ``ASYNCTASQ_*`` keys (a bad one raises ConfigError) and add the CLI."""
        app.extensions[EXTENSION_KEY] = _FlaskState(app, AppSettings(app.config))
        app.cli.add_command(_cli_group(self, app))

    def _state(self, app: flask.Flask | None = None) -> _FlaskState:
        if app is None and flask.has_app_context():
            app = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        app = app or self.app
        if app is None:
            raise RuntimeError("no app: call this inside an app context, or create AsyncTasQ(app)")
        state = app.extensions.get(EXTENSION_KEY)
        if not isinstance(state, _FlaskState):
            raise RuntimeError(f"asynctasq is not set up on app {app.name!r}: call init_app(app)")
        return state

    @property
    def settings(self) -> AppSettings:
        return self._state().settings

    # -- producing -----------------------------------------------------------------------

    def dispatch_sync(self, call: TaskCall | Task, timeout: float | None = DEFAULT_DISPATCH_TIMEOUT_S) -> str:
        """Enqueue ``call`` on its queue's connection from sync code; returns the task id."""
        return run_sync(self._state().producer.dispatch(call), timeout)

    def dispatch_many_sync(
        self, calls: Sequence[TaskCall | Task], timeout: float | None = DEFAULT_DISPATCH_TIMEOUT_S
    ) -> list[str]:
        return run_sync(self._state().producer.dispatch_many(calls), timeout)

    async def dispatch(self, call: TaskCall | Task) -> str:
        """The same from an async view. Flask gives each async view a short-lived loop, so the
        connections live on asynctasq's background loop, reached through a thread."""
        state = self._state()
        return await asyncio.to_thread(run_sync, state.producer.dispatch(call), DEFAULT_DISPATCH_TIMEOUT_S)

    async def dispatch_many(self, calls: Sequence[TaskCall | Task]) -> list[str]:
        state = self._state()
        return await asyncio.to_thread(
            run_sync, state.producer.dispatch_many(calls), DEFAULT_DISPATCH_TIMEOUT_S
        )

    def close(self) -> None:
        """Disconnect the app's producer connections (they reconnect on the next dispatch)."""
        run_sync(self._state().producer.close())

    # -- working -------------------------------------------------------------------------

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
        return _make_worker(self._state(), queues, options)

    def run_worker(self, queues: Sequence[str] | None = None, **options: Any) -> Worker:
        """Make a worker and run it until it stops (signal, burst end, max_tasks); returns it."""
        worker = self.make_worker(queues, **options)
        from asynctasq.utils.loop import run

        run(_work(worker))
        return worker


async def _work(worker: Worker) -> None:
    async with worker.driver:
        await worker.start()


def _make_worker(state: _FlaskState, queues: Sequence[str] | None, options: dict[str, Any]) -> Worker:
    config = state.settings.worker_config(queues)
    driver = DriverFactory.create_from_config(config)
    options.setdefault("task_context", state.task_context)
    return Worker.from_config(driver, config, **options)


def _cli_group(ext: AsyncTasQ, app: flask.Flask) -> click.Group:
    group = click.Group("asynctasq", help="asynctasq workers for this app.")

    def run(queues: list[str] | None, options: dict[str, Any]) -> None:
        state = ext._state(app)
        prepare_worker_process(state.settings.worker_config(queues))
        from asynctasq.utils.loop import run

        run(_work(_make_worker(state, queues, options)))

    group.add_command(worker_command(run))
    return group


__all__ = ["AsyncTasQ"]
