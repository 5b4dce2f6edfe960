"""The Quart app of tests/test_integration_quart.py, also loaded by its worker processes
(``quart --app tests.quart_app:create_app asynctasq worker``)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from quart import Quart, current_app, g

from asynctasq import task
from asynctasq.integrations.quart import AsyncTasQ

DB_ENV = "TEST_ASYNCTASQ_DB"

tasks = AsyncTasQ()
TEARDOWNS: list[tuple[str | None, str | None]] = []
"""(label set by the task in g, exception type passed to teardown_appcontext or None)."""
started = asyncio.Event()


@task(name="quart_app.greeting")
async def greeting(label: str) -> str:
    g.label = label
    return str(current_app.config["GREETING"])


@task(name="quart_app.chain")
async def chain(label: str) -> str:
    """Dispatches a follow-up from inside the worker, through the app's connections."""
    return await tasks.dispatch(greeting(label).on_queue("email"))


@task(name="quart_app.own_g")
async def own_g(n: int) -> int:
    g.label = f"own-{n}"
    g.n = n
    await asyncio.sleep(0.05)  # other tasks set their g meanwhile
    return int(g.n)


@task(name="quart_app.fails", max_attempts=1)
async def fails(label: str) -> None:
    g.label = label
    raise ValueError("boom")


@task(name="quart_app.slow", max_attempts=1, timeout=0.2)
async def slow(label: str) -> None:
    g.label = label
    await asyncio.sleep(30)


@task(name="quart_app.waits", max_attempts=1)
async def waits(label: str) -> None:
    g.label = label
    started.set()
    await asyncio.sleep(30)


def create_app(**config: Any) -> Quart:
    app = Quart(__name__)
    app.config.update(
        ASYNCTASQ_DRIVER="sqlite",
        ASYNCTASQ_SQLITE_PATH=os.environ.get(DB_ENV, "quart-test.db"),
        ASYNCTASQ_QUEUES=["email", "priority"],
        ASYNCTASQ_RESULTS_TTL=60,
        GREETING="hello from quart",
    )
    app.config.update(config)
    tasks.init_app(app)

    @app.teardown_appcontext
    async def record(exc: BaseException | None) -> None:
        await asyncio.sleep(0)  # an async teardown: awaited by the task's context
        TEARDOWNS.append((g.get("label"), type(exc).__name__ if exc is not None else None))

    @app.post("/greet/<label>")
    async def greet(label: str) -> dict[str, str]:
        return {"id": await tasks.dispatch(greeting(label).on_queue("email"))}

    @app.post("/greet-sync/<label>")
    def greet_sync(label: str) -> dict[str, str]:  # Quart runs it in a thread
        return {"id": tasks.dispatch_sync(greeting(label))}

    return app
