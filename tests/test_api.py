"""The public surface: exported names, type checking of task calls, and the producer behind dispatch()."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest

import asynctasq
from asynctasq import Config, task
from asynctasq.core.driver_factory import DriverFactory
from asynctasq.drivers.base import BaseDriver
from asynctasq.errors import DriverError
from asynctasq.task import Producer, close_producer, default_producer

EXPECTED = {
    "AsyncTasQError",
    "BaseDriver",
    "Config",
    "ConfigError",
    "Delivery",
    "DriverError",
    "DriverFactory",
    "Job",
    "Queue",
    "ResultTimeout",
    "Retry",
    "Task",
    "TaskCall",
    "TaskFailed",
    "TaskFunction",
    "UnknownTaskError",
    "Worker",
    "__version__",
    "configure",
    "connect",
    "current_task",
    "dispatch_many",
    "get_config",
    "result",
    "task",
}


def test_exported_names() -> None:
    assert set(asynctasq.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(asynctasq, name)


def test_import_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, asynctasq; "
        "heavy = {'redis', 'asyncpg', 'aiomysql', 'aioboto3', 'aio_pika', 'flask', 'quart', 'aiosqlite', "
        "'click', 'asynctasq.integrations'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_mypy_rejects_wrong_arguments_at_the_call_site(tmp_path: pytest.TempPathFactory) -> None:
    api = pytest.importorskip("mypy.api")
    source = textwrap.dedent(
        """
        from asynctasq import task

        @task
        async def send_email(to: str, subject: str, timeout: int = 5) -> str:
            return to

        @task(queue="x")
        def resize(path: str) -> None: ...

        async def main() -> None:
            ok: str = await send_email(to="a", subject="b", timeout=3).on_queue("q").dispatch()
            await resize("p").dispatch()
            await send_email(to=1, subject="b").dispatch()
            await resize().dispatch()
        """
    )
    path = os.path.join(str(tmp_path), "snippet.py")
    with open(path, "w") as f:
        f.write(source)
    out, _, status = api.run(["--strict", "--no-incremental", "--cache-dir", os.devnull, path])
    assert status == 1, out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 2, out
    assert 'Argument "to" to "__call__" of "TaskFunction" has incompatible type "int"' in errors[0]
    assert 'Missing positional argument "path"' in errors[1]


# -- the producer behind dispatch() ----------------------------------------------------------


@task(name="api_tests.noop")
async def noop() -> None: ...


async def ready(config: Config, queue: str) -> int:
    driver = DriverFactory.create_from_config(config)
    async with driver:
        return (await driver.stats([queue]))[queue]["ready"]


async def test_a_producer_routes_queues_to_their_connections(tmp_path: Path) -> None:
    main = Config(driver="sqlite", sqlite_path=str(tmp_path / "main.db"))
    other = Config(driver="sqlite", sqlite_path=str(tmp_path / "later" / "other.db"))
    producer = Producer([main, other], route=lambda queue: 1 if queue == "other" else 0)
    try:
        with pytest.raises(DriverError, match="cannot open"):
            await producer.dispatch(noop().on_queue("other"))  # no such directory yet
        (tmp_path / "later").mkdir()
        await producer.dispatch_many([noop(), noop().on_queue("other"), noop()])  # connects again
    finally:
        await producer.close()
    assert (await ready(main, "default"), await ready(main, "other")) == (2, 0)
    assert (await ready(other, "default"), await ready(other, "other")) == (0, 1)


async def test_one_connection_per_event_loop_until_configure(tmp_path: Path) -> None:
    previous = asynctasq.get_config()
    asynctasq.configure(driver="sqlite", sqlite_path=str(tmp_path / "tasks.db"))
    producer = default_producer()

    async def on_another_loop() -> BaseDriver:
        try:
            return await producer.driver()
        finally:
            await producer.close()

    try:
        here = await producer.driver()
        await noop().dispatch()
        assert await producer.driver() is here
        assert await asyncio.to_thread(asyncio.run, on_another_loop()) is not here
        await producer.close()
        asynctasq.configure(driver="sqlite", sqlite_path=str(tmp_path / "other.db"))
        assert default_producer() is not producer  # a new config: a new producer
        await noop().dispatch()
        assert await ready(asynctasq.get_config(), "default") == 1
    finally:
        await close_producer()
        asynctasq.configure(previous)
