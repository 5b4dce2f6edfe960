"""Flask: Flask-RQ's API on asynctasq; settings from ``app.config``, tasks inside the app
context, ``flask asynctasq worker|info|failed|dispatch``.

::

    from flask import Flask
    from asynctasq.integrations.flask import AsyncTasQ

    app = Flask(__name__)
    app.config.update(
        ASYNCTASQ_CONNECTION="redis://localhost:6379",
        ASYNCTASQ_QUEUES=["email", "priority"],  # plus "default", always there
        ASYNCTASQ_QUEUE_CONNECTIONS={"email": "redis://mail-redis:6379"},
    )
    tq = AsyncTasQ(app)

    @tq.job(queue="email")
    def send_welcome(user_id: int) -> None: ...

    @app.post("/signup")
    def signup():
        send_welcome.enqueue(user_id=7)  # a sync view: no event loop of its own
        ...

Then ``flask asynctasq worker email priority`` runs a worker whose tasks see ``current_app``
and ``g``: each task gets its own app context, torn down (``teardown_appcontext``) however the
task ends: success, error, timeout or cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

try:
    import flask
except ImportError as exc:  # pragma: no cover - depends on the environment
    from asynctasq.integrations.base import missing_framework

    raise missing_framework("Flask", "flask") from exc

from asynctasq.constants import DEFAULT_DISPATCH_TIMEOUT_S
from asynctasq.integrations.base import BaseAsyncTasQ
from asynctasq.task import run_sync

T = TypeVar("T")


class AsyncTasQ(BaseAsyncTasQ[flask.Flask]):
    """The Flask extension (see :class:`~asynctasq.integrations.base.BaseAsyncTasQ`).

    Flask gives each async view a short-lived event loop of its own, so awaited enqueues
    (``await tq.queue.enqueue(...)``, :meth:`dispatch`, :meth:`dispatch_many`) too run on
    asynctasq's background loop, whose connections outlive the request; :meth:`close` closes
    them.
    """

    def _current_app(self) -> flask.Flask | None:
        if not flask.has_app_context():
            return None
        app: flask.Flask = flask.current_app._get_current_object()  # type: ignore[attr-defined]
        return app

    def _app_context(self, app: flask.Flask) -> contextlib.AbstractAsyncContextManager[None]:
        return _app_context(app)

    async def _produce(
        self, dispatching: Coroutine[Any, Any, T], timeout: float | None = DEFAULT_DISPATCH_TIMEOUT_S
    ) -> T:
        return await asyncio.to_thread(run_sync, dispatching, timeout)

    def close(self) -> None:
        """Disconnect the app's producer connections (they reconnect on the next dispatch)."""
        run_sync(self._state().producer.close())


@contextlib.asynccontextmanager
async def _app_context(app: flask.Flask) -> AsyncIterator[None]:
    with app.app_context():  # popped with the task's exception, cancellation included
        yield


__all__ = ["AsyncTasQ"]
