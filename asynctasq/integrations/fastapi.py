"""FastAPI and Starlette: a lifespan that connects the producer on startup and closes it on
shutdown, so the first request does not pay for the connection and nothing is left open::

    from fastapi import FastAPI
    from asynctasq import Config
    from asynctasq.integrations.fastapi import lifespan

    app = FastAPI(lifespan=lifespan(Config(driver="redis", redis_url="redis://localhost:6379")))

    @app.post("/signup")
    async def signup() -> dict[str, str]:
        return {"task": await send_welcome(user_id=7).dispatch()}

With a lifespan of your own, enter ours inside it::

    @contextlib.asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with lifespan(config):
            yield

Sync endpoints (run in threads) use ``call.dispatch_sync()``. Nothing here imports FastAPI.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from asynctasq.config import Config, configure
from asynctasq.drivers.base import BaseDriver
from asynctasq.task import close_producer, producer_driver


class Lifespan:
    """An async context manager, and a ``lifespan=`` callable (``lifespan(app)`` returns it)."""

    def __init__(self, config: Config | None = None, **settings: Any) -> None:
        self.config = config
        self.settings = settings
        self.driver: BaseDriver | None = None

    def __call__(self, app: Any) -> Lifespan:
        return self

    async def __aenter__(self) -> None:
        if self.config is not None or self.settings:
            configure(self.config, **self.settings)
        self.driver = await producer_driver()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.driver = None
        await close_producer()


def lifespan(config: Config | None = None, **settings: Any) -> Lifespan:
    """Configure asynctasq with ``config`` and/or ``settings`` (none: keep the current
    process-wide config), connect the producer on startup, close it on shutdown."""
    return Lifespan(config, **settings)


__all__ = ["Lifespan", "lifespan"]
