"""Real brokers for the Flask-RQ seed tests: two connections (the app's and a second one, for
``ASYNCTASQ_QUEUE_CONNECTIONS``) on SQLite files or on two Redis databases, one namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from asynctasq.config import Config
from asynctasq.core.driver_factory import DriverFactory
from asynctasq.task import result
from tests.backends import make_driver, unavailable
from tests.backends.redis_backend import REDIS_URL

SEED_BACKENDS = ["sqlite", "redis"]
SEED_CONFIG_ENV = "TEST_FLASKRQ_CONFIG"
"""The seed apps' ASYNCTASQ_* keys as a JSON object (worker processes read them from here)."""


@dataclass
class Broker:
    backend: str
    main: str
    """The app's connection, as ``ASYNCTASQ_CONNECTION``."""
    other: str
    """Another connection of the same kind (the seeds' ``email-redis``)."""
    keys: dict[str, Any] = field(default_factory=dict)
    """More ASYNCTASQ_* keys the app needs (Redis: its key prefix)."""

    def app_config(self, **more: Any) -> dict[str, Any]:
        return {"ASYNCTASQ_CONNECTION": self.main, **self.keys, **more}

    def describes(self, config: Config) -> str:
        """Which of the two connections ``config`` is: "main" or "other"."""
        location = config.sqlite_path if self.backend == "sqlite" else config.redis_url
        return {self.location(self.main): "main", self.location(self.other): "other"}[location]

    def location(self, url: str) -> str:
        return url.removeprefix("sqlite:///") if self.backend == "sqlite" else url


async def open_broker(backend: str, tmp_path: Path) -> Broker:
    namespace = "frq" + uuid.uuid4().hex[:10]
    if backend == "sqlite":
        return Broker("sqlite", f"sqlite:///{tmp_path / 'main.db'}", f"sqlite:///{tmp_path / 'email.db'}")
    try:
        await (await make_driver("redis", namespace)).disconnect()  # skips (or fails in CI) without Redis
    except TypeError as exc:  # the driver is being ported to the new driver base
        unavailable(f"the redis driver cannot be made in this tree: {exc}")
    base = REDIS_URL.rpartition("/")[0]
    return Broker("redis", f"{base}/0", f"{base}/1", {"ASYNCTASQ_REDIS_PREFIX": namespace})


async def close_broker(broker: Broker) -> None:
    if broker.backend != "redis":
        return
    import redis.asyncio as aioredis

    prefix = broker.keys["ASYNCTASQ_REDIS_PREFIX"]
    for url in (broker.main, broker.other):
        client = aioredis.Redis.from_url(url)
        try:
            doomed = [key async for key in client.scan_iter(match=f"{{{prefix}[:}}]*", count=1000)]
            if doomed:
                await client.delete(*doomed)
        finally:
            await client.aclose()


async def ready(config: Config, queue: str) -> int:
    """Ready tasks of ``queue`` on the connection of ``config``."""
    driver = DriverFactory.create_from_config(config)
    async with driver:
        return (await driver.stats([queue]))[queue]["ready"]


async def result_on(config: Config, task_id: str) -> Any:
    driver = DriverFactory.create_from_config(config)
    async with driver:
        return await result(task_id, timeout=10, driver=driver)


ROOT = Path(__file__).resolve().parent.parent


def clean_env(**more: str) -> dict[str, str]:
    """This process's environment without ASYNCTASQ_* variables, plus ``more``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    env.update(more)
    return env


def app_cli(
    framework: str, app_spec: str, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``flask|quart --app APP_SPEC asynctasq ARGS...`` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", framework, "--app", app_spec, "asynctasq", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def seed_cli(
    framework: str, broker: Broker, *args: str, **app_config: Any
) -> subprocess.CompletedProcess[str]:
    """The seeds' app (tests/flaskrq_app.py or flaskrq_quart.py) from the command line."""
    module = "flaskrq_app" if framework == "flask" else "flaskrq_quart"
    env = clean_env(**{SEED_CONFIG_ENV: json.dumps(broker.app_config(**app_config))})
    return app_cli(framework, f"tests.{module}:create_app", *args, env=env)


def ran_in_the_app(value: object, task: str, **arguments: object) -> bool:
    """Whether a seed task's return value says it ran in the seeds' app context."""
    return value == {"task": task, "app": "my_app", "mark": "flask-rq seed app", **arguments}


def reference_example(broker: Broker) -> dict[str, object]:
    """The queues page's last block: RQ_QUEUES and RQ_QUEUE_CONNECTIONS with a second connection
    and a queue sharing it by reference (RQ_CONNECTION is the broker's main one)."""
    return {
        "ASYNCTASQ_QUEUES": ["priority", "email", "email-priority"],
        "ASYNCTASQ_QUEUE_CONNECTIONS": {"email": broker.other, "email-priority": "email"},
    }


@pytest.fixture(params=SEED_BACKENDS, name="broker")
async def broker_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    """Two connections on the backend, emptied afterwards."""
    found = await open_broker(str(request.param), tmp_path)
    try:
        yield found
    finally:
        await close_broker(found)
