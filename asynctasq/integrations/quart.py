"""Quart: settings from ``app.config``, tasks inside ``async with app.app_context()``,
``quart asynctasq worker``.

::

    from quart import Quart
    from asynctasq.integrations.quart import AsyncTasQ

    app = Quart(__name__)
    app.config.update(ASYNCTASQ_DRIVER="redis", ASYNCTASQ_QUEUES=["email"])
    tasks = AsyncTasQ(app)

    @app.post("/signup")
    async def signup():
        await tasks.dispatch(send_welcome(user_id=7))
        ...

Settings, queues and per-queue connections work as in :mod:`asynctasq.integrations.flask`.
The producer's connections live on the serving loop and close in ``after_serving``. The
worker does not run ``before_serving``/``after_serving``: resources a task needs are opened by
the task context (``teardown_appcontext`` closes them) or by your own worker script.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

try:
    import click
    import quart
except ImportError as exc:  # pragma: no cover - depends on the environment
    from asynctasq.integrations import missing_framework

    raise missing_framework("Quart", "quart") from exc

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


class _QuartState:
    def __init__(self, app: quart.Quart, settings: AppSettings) -> None:
        self.app = app
        self.settings = settings
        self.producer = Producer(settings)

    def task_context(self, envelope: Envelope) -> contextlib.AbstractAsyncContextManager[None]:
        return _app_context(self.app)


@contextlib.asynccontextmanager
async def _app_context(app: quart.Quart) -> AsyncIterator[None]:
    async with app.app_context():  # popped with the task's exception, cancellation included
        yield


class AsyncTasQ:
    """The Quart extension: ``AsyncTasQ(app)`` or ``init_app(app)`` in a factory; methods act on
    ``current_app`` inside an app context, else on the constructor's app.

    Producing: ``await ext.dispatch(call)``, ``await ext.dispatch_many(calls)``, and
    :meth:`dispatch_sync` for sync views (Quart runs them in threads); each task goes to the
    connection of its queue. Working: :meth:`make_worker`, :meth:`run_worker`,
    :attr:`task_context`, and the ``quart asynctasq worker`` command.
    """

    def __init__(self, app: quart.Quart | None = None) -> None:
        self.app = app
        if app is not None:
            self.init_app(app)

    def init_app(self, app: quart.Quart) -> None:
        """Read the app's ``ASYNCTASQ_*`` keys (a bad one raises ConfigError) and add the CLI."""
        state = _QuartState(app, AppSettings(app.config))
        app.extensions[EXTENSION_KEY] = state
        app.after_serving(state.producer.close_everywhere)
        app.cli.add_command(_cli_group(self, app))

    def _state(self, app: quart.Quart | None = None) -> _QuartState:
        if app is None and quart.has_app_context():
            app = quart.current_app._get_current_object()  # type: ignore[attr-defined]
        app = app or self.app
        if app is None:
            raise RuntimeError("no app: call this inside an app context, or create AsyncTasQ(app)")
        state = app.extensions.get(EXTENSION_KEY)
        if not isinstance(state, _QuartState):
            raise RuntimeError(f"asynctasq is not set up on app {app.name!r}: call init_app(app)")
        return state

    @property
    def settings(self) -> AppSettings:
        return self._state().settings

    # -- producing -----------------------------------------------------------------------

    async def dispatch(self, call: TaskCall | Task) -> str:
        """Enqueue ``call`` on its queue's connection; returns the task id."""
        return await self._state().producer.dispatch(call)

    async def dispatch_many(self, calls: Sequence[TaskCall | Task]) -> list[str]:
        return await self._state().producer.dispatch_many(calls)

    def dispatch_sync(self, call: TaskCall | Task, timeout: float | None = DEFAULT_DISPATCH_TIMEOUT_S) -> str:
        """From a sync view (a worker thread, no running loop): runs on asynctasq's background
        loop."""
        return run_sync(self._state().producer.dispatch(call), timeout)

    async def close(self) -> None:
        """Disconnect the producer connections (done in ``after_serving``); they reconnect on the
        next dispatch."""
        await self._state().producer.close_everywhere()

    # -- working -------------------------------------------------------------------------

    @property
    def task_context(self) -> TaskContextFactory:
        """The per-task context factory for a :class:`Worker` of this app."""
        return self._state().task_context

    def make_worker(self, queues: Sequence[str] | None = None, **options: Any) -> Worker:
        """A worker for ``queues`` (default: every configured queue, in order) on the
        connection of the first; ``options`` override Worker arguments. Connect its driver::

            worker = tasks.make_worker(["email"])
            async with worker.driver:
                await worker.start()
        """
        return _make_worker(self._state(), queues, options)

    def run_worker(self, queues: Sequence[str] | None = None, **options: Any) -> Worker:
        """Make a worker and run it on a new event loop until it stops; returns it."""
        state = self._state()
        worker = _make_worker(state, queues, options)
        from asynctasq.utils.loop import run

        run(_work(state, worker))
        return worker


async def _work(state: _QuartState, worker: Worker) -> None:
    try:
        async with worker.driver:
            await worker.start()
    finally:
        await state.producer.close_everywhere()  # tasks that dispatched opened connections here


def _make_worker(state: _QuartState, queues: Sequence[str] | None, options: dict[str, Any]) -> Worker:
    config = state.settings.worker_config(queues)
    driver = DriverFactory.create_from_config(config)
    options.setdefault("task_context", state.task_context)
    return Worker.from_config(driver, config, **options)


def _cli_group(ext: AsyncTasQ, app: quart.Quart) -> click.Group:
    group = click.Group("asynctasq", help="asynctasq workers for this app.")

    def run(queues: list[str] | None, options: dict[str, Any]) -> None:
        state = ext._state(app)
        prepare_worker_process(state.settings.worker_config(queues))
        from asynctasq.utils.loop import run

        run(_work(state, _make_worker(state, queues, options)))

    group.add_command(worker_command(run))
    return group


__all__ = ["AsyncTasQ"]
