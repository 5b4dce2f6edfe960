"""Flask-RQ's documentation pages (seeds 000 and 002) as a Quart ``my_app``, with our names
(``rq`` -> ``tq``, ``RQ_`` -> ``ASYNCTASQ_``) and Quart's ``await``. Worker processes import it
too (``quart --app tests.flaskrq_quart:create_app asynctasq worker``,
tests/flaskrq_quart_worker.py)."""

from __future__ import annotations

import json
import os
from typing import Any

from quart import Quart, current_app, request

from asynctasq.integrations.quart import AsyncTasQ

CONFIG_ENV = "TEST_FLASKRQ_CONFIG"
"""The app's ASYNCTASQ_* keys as a JSON object (worker processes read them from here)."""

tq = AsyncTasQ()


def where(task: str, **arguments: Any) -> dict[str, Any]:
    """What a task saw: the app context it ran in and its arguments."""
    return {"task": task, "app": current_app.name, "mark": current_app.config["MARK"], **arguments}


@tq.job
async def update_stats(data: dict[str, int]) -> dict[str, Any]:
    return where("update_stats", data=data)


@tq.job(queue="email")
async def send_password_reset(user_id: int) -> dict[str, Any]:
    return where("send_password_reset", user_id=user_id)


@tq.job(max_attempts=1)
async def broken(reason: str) -> None:
    """Not in the seeds: a task for the failed registry of ``quart asynctasq failed``."""
    raise ValueError(reason)


def create_app(**config: Any) -> Quart:
    app = Quart("my_app")
    app.config.update(MARK="flask-rq seed app")
    app.config.update(json.loads(os.environ.get(CONFIG_ENV, "{}")), **config)
    tq.init_app(app)

    @app.post("/stats")
    async def stats() -> dict[str, str]:
        job = await tq.queue.enqueue(update_stats, data=await request.get_json())
        return {"id": job.id, "queue": job.queue}

    @app.post("/users/<int:user_id>/reset")
    async def reset(user_id: int) -> dict[str, str]:
        job = await tq.queues["email"].enqueue(send_password_reset, user_id=user_id)
        return {"id": job.id, "queue": job.queue}

    @app.post("/users/<int:user_id>/reset-decorated")
    async def reset_decorated(user_id: int) -> dict[str, str]:
        job = await send_password_reset.enqueue(user_id=user_id)
        return {"id": job.id, "queue": job.queue}

    @app.post("/users/<int:user_id>/reset-priority")
    def reset_priority(user_id: int) -> dict[str, str]:  # a sync view: Quart runs it in a thread
        job = tq.queues["priority"].enqueue(send_password_reset, user_id=user_id)
        return {"id": job.id, "queue": job.queue}

    return app
