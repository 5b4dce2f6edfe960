"""Flask-RQ's documentation pages (seeds 000 and 002) as the ``my_app`` they assume, with our
names: ``rq`` -> ``tq``, ``RQ_`` -> ``ASYNCTASQ_``. Worker processes import it too
(``flask --app tests.flaskrq_app:create_app asynctasq worker``, tests/flaskrq_worker.py).

Each task returns what proves where it ran: the app of its app context and the connection
(the broker location from the worker's own config, via the app's settings)."""

from __future__ import annotations

import json
import os
from typing import Any

from flask import Flask, current_app, request

from asynctasq.integrations.flask import AsyncTasQ

CONFIG_ENV = "TEST_FLASKRQ_CONFIG"
"""The app's ASYNCTASQ_* keys as a JSON object (worker processes read them from here)."""

tq = AsyncTasQ()


def where(task: str, **arguments: Any) -> dict[str, Any]:
    """What a task saw: the app context it ran in and its arguments."""
    return {"task": task, "app": current_app.name, "mark": current_app.config["MARK"], **arguments}


@tq.job
def update_stats(data: dict[str, int]) -> dict[str, Any]:
    return where("update_stats", data=data)


@tq.job(queue="email")
def send_password_reset(user_id: int) -> dict[str, Any]:
    return where("send_password_reset", user_id=user_id)


@tq.task(queue="email")
async def send_welcome(user_id: int) -> dict[str, Any]:
    return where("send_welcome", user_id=user_id)


def create_app(**config: Any) -> Flask:
    app = Flask("my_app")
    app.config.update(MARK="flask-rq seed app")
    app.config.update(json.loads(os.environ.get(CONFIG_ENV, "{}")), **config)
    tq.init_app(app)

    @app.post("/stats")
    def stats() -> dict[str, str]:  # a sync view, Flask-RQ's own example
        job = tq.queue.enqueue(update_stats, data=request.get_json())
        return {"id": job.id, "queue": job.queue}

    @app.post("/users/<int:user_id>/reset")
    def reset(user_id: int) -> dict[str, str]:
        job = tq.queues["email"].enqueue(send_password_reset, user_id=user_id)
        return {"id": job.id, "queue": job.queue}

    @app.post("/users/<int:user_id>/reset-decorated")
    def reset_decorated(user_id: int) -> dict[str, str]:
        job = send_password_reset.enqueue(user_id=user_id)
        return {"id": job.id, "queue": job.queue}

    @app.post("/users/<int:user_id>/reset-priority")
    def reset_priority(user_id: int) -> dict[str, str]:
        job = tq.queues["priority"].enqueue(send_password_reset, user_id=user_id)
        return {"id": job.id, "queue": job.queue}

    @app.post("/users/<int:user_id>/welcome")
    async def welcome(user_id: int) -> dict[str, str]:  # an async view (flask[async])
        job = await tq.queues["email"].enqueue(send_welcome, user_id=user_id)
        return {"id": job.id, "queue": job.queue}

    return app


@tq.job(max_attempts=1)
def broken(reason: str) -> None:
    """Not in the seeds: a task for the failed registry of ``flask asynctasq failed``."""
    raise ValueError(reason)
