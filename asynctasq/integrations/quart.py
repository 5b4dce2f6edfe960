"""Quart: settings from ``app.config``, tasks inside ``async with app.app_context()``,
``quart asynctasq worker``.

::

    from quart import Quart
    from asynctasq.integrations.quart import AsyncTasQ

    app = Quart(__name__)
    app.config.update(ASYNCTASQ_CONNECTION="redis://localhost:6379", ASYNCTASQ_QUEUES=["email"])
    tq = AsyncTasQ(app)

    @tq.job(queue="email")
    async def send_welcome(user_id: int) -> None: ...

    @app.post("/signup")
    async def signup():
        await send_welcome.enqueue(user_id=7)
        ...

Settings, queues and per-queue connections work as in :mod:`asynctasq.integrations.flask`.
The producer's connections live on the serving loop and close in ``after_serving``. The
worker does not run ``before_serving``/``after_serving``: resources a task needs are opened by
the task context (``teardown_appcontext`` closes them) or by your own worker script.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

try:
    import quart
except ImportError as exc:  # pragma: no cover - depends on the environment
    from asynctasq.integrations.base import missing_framework

    raise missing_framework("Quart", "quart") from exc

from asynctasq.constants import DEFAULT_DISPATCH_TIMEOUT_S
from asynctasq.integrations.base import AppState, BaseAsyncTasQ

T = TypeVar("T")


class AsyncTasQ(BaseAsyncTasQ[quart.Quart]):
    """The Quart extension (see :class:`~asynctasq.integrations.base.BaseAsyncTasQ`):
    ``await tq.queues["email"].enqueue(...)`` and ``await tq.dispatch(call)`` run on the calling
    loop, the app's own; sync views, which Quart runs in threads, call the same ``enqueue``
    without ``await`` (or :meth:`dispatch_sync`)."""

    def _current_app(self) -> quart.Quart | None:
        if not quart.has_app_context():
            return None
        app: quart.Quart = quart.current_app._get_current_object()  # type: ignore[attr-defined]
        return app

    def _app_context(self, app: quart.Quart) -> AbstractAsyncContextManager[None]:
        return _app_context(app)

    async def _produce(
        self, dispatching: Coroutine[Any, Any, T], timeout: float | None = DEFAULT_DISPATCH_TIMEOUT_S
    ) -> T:
        return await dispatching

    def _setup(self, app: quart.Quart, state: AppState[quart.Quart]) -> None:
        app.after_serving(state.producer.close_everywhere)

    async def close(self) -> None:
        """Disconnect the producer connections (done in ``after_serving``); they reconnect on the
        next dispatch."""
        await self._state().producer.close_everywhere()


@asynccontextmanager
async def _app_context(app: quart.Quart) -> AsyncIterator[None]:
    async with app.app_context():  # popped with the task's exception, cancellation included
        yield


__all__ = ["AsyncTasQ"]
