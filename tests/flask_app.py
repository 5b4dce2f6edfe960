"""The Flask app of tests/test_integration_flask.py, also loaded by its worker processes
(``flask --app tests.flask_app:create_app asynctasq worker``)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import Any

from flask import Flask, current_app, g

from asynctasq import task
from asynctasq.integrations.flask import AsyncTasQ

DB_ENV = "TEST_ASYNCTASQ_DB"
"""The SQLite file of the app's default connection, for worker processes."""
CONFIG_ENV = "TEST_ASYNCTASQ_APP_CONFIG"
"""More app.config keys as a JSON object, for worker processes."""

tasks = AsyncTasQ()
TEARDOWNS: list[tuple[str | None, str | None]] = []
"""(label set by the task in g, exception type passed to teardown_appcontext or None)."""
started = threading.Event()


@task(name="flask_app.greeting")
async def greeting(label: str) -> str:
    g.label = label
    return str(current_app.config["GREETING"])


@task(name="flask_app.greeting_sync", max_attempts=1)
def greeting_sync(label: str) -> str:
    g.label = label
    return str(current_app.config["GREETING"]) + " in " + threading.current_thread().name


@task(name="flask_app.own_g")
async def own_g(n: int) -> int:
    g.label = f"own-{n}"
    g.n = n
    await asyncio.sleep(0.05)  # other tasks set their g meanwhile
    return int(g.n)


@task(name="flask_app.fails", max_attempts=1)
async def fails(label: str) -> None:
    g.label = label
    raise ValueError("boom")


@task(name="flask_app.slow", max_attempts=1, timeout=0.2)
async def slow(label: str) -> None:
    g.label = label
    await asyncio.sleep(30)


@task(name="flask_app.waits", max_attempts=1)
async def waits(label: str) -> None:
    g.label = label
    started.set()
    await asyncio.sleep(30)


def create_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(
        ASYNCTASQ_DRIVER="sqlite",
        ASYNCTASQ_SQLITE_PATH=os.environ.get(DB_ENV, "flask-test.db"),
        ASYNCTASQ_QUEUES=["email", "priority"],
        ASYNCTASQ_RESULTS_TTL=60,
        GREETING="hello from flask",
    )
    app.config.update(json.loads(os.environ.get(CONFIG_ENV, "{}")), **config)
    tasks.init_app(app)

    @app.teardown_appcontext
    def record(exc: BaseException | None) -> None:
        TEARDOWNS.append((g.get("label"), type(exc).__name__ if exc is not None else None))

    @app.post("/greet/<label>")
    def greet(label: str) -> dict[str, str]:
        return {"id": tasks.dispatch_sync(greeting(label).on_queue("email"))}

    return app
