"""The FastAPI/Starlette lifespan with real apps (starlette's TestClient) and a real worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")  # starlette's TestClient

from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import asynctasq
from asynctasq import Config, task
from asynctasq.core.driver_factory import DriverFactory
from asynctasq.core.worker import Worker
from asynctasq.drivers.base import BaseDriver
from asynctasq.integrations.fastapi import lifespan
from asynctasq.task import close_producer, producer_driver, run_sync


@task(name="fastapi_tests.double")
async def double(n: int) -> int:
    return 2 * n


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Config]:
    previous = asynctasq.get_config()
    yield Config(driver="sqlite", sqlite_path=str(tmp_path / "api.db"), results_ttl=60)
    run_sync(close_producer())  # dispatch_sync's connection, on the background loop
    asynctasq.configure(previous)


def connected(driver: BaseDriver | None) -> bool:
    return driver is not None and driver._conn is not None  # type: ignore[attr-defined]


async def run_burst(config: Config, ids: list[str]) -> list[object]:
    driver = DriverFactory.create_from_config(config)
    async with driver:
        await Worker(driver, burst=True, install_signal_handlers=False).start()
        return [await asynctasq.result(task_id, timeout=5, driver=driver) for task_id in ids]


def test_fastapi_lifespan_connects_on_startup_and_closes_on_shutdown(config: Config) -> None:
    asynctasq.configure(driver="memory")  # the lifespan replaces it with its own config
    hook = lifespan(config)
    app = FastAPI(lifespan=hook)
    used: list[BaseDriver] = []

    @app.post("/double/{n}")
    async def dispatch(n: int) -> dict[str, str]:
        used.append(await producer_driver())
        return {"id": await double(n).dispatch()}

    @app.post("/double-sync/{n}")
    def dispatch_sync(n: int) -> dict[str, str]:  # a thread: no running loop
        return {"id": double(n).dispatch_sync()}

    with TestClient(app) as client:
        driver = hook.driver
        assert connected(driver)  # before the first request
        assert asynctasq.get_config() == config
        ids = [client.post("/double/3").json()["id"], client.post("/double-sync/4").json()["id"]]
        assert used == [driver]  # dispatch() used the lifespan's connection
    assert hook.driver is None
    assert not connected(driver)  # closed on shutdown
    assert asyncio.run(run_burst(config, ids)) == [6, 8]


def test_composes_with_the_apps_own_lifespan(config: Config) -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("app up")
        async with lifespan(config, results_ttl=30):  # settings on top of the config
            events.append("asynctasq up")
            yield
        events.append("app down")

    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({"id": await double(int(request.path_params["n"])).dispatch()})

    app = Starlette(routes=[Route("/double/{n}", endpoint, methods=["POST"])], lifespan=app_lifespan)
    with TestClient(app) as client:
        assert asynctasq.get_config().results_ttl == 30
        task_id = client.post("/double/5").json()["id"]
    assert events == ["app up", "asynctasq up", "app down"]
    assert asyncio.run(run_burst(config, [task_id])) == [10]


async def test_without_a_config_the_current_one_stays(config: Config) -> None:
    asynctasq.configure(config)
    async with lifespan() as nothing:
        assert nothing is None
        assert asynctasq.get_config() is config
        driver = await producer_driver()
        assert connected(driver)
    assert not connected(driver)
