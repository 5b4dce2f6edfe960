from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from asynctasq.drivers.base import BaseDriver
from tests.backends import BACKENDS, cleanup, make_driver, services_required


@pytest.hookimpl(tryfirst=True)
def pytest_collectreport(report: pytest.CollectReport) -> None:
    """With ASYNCTASQ_REQUIRE_SERVICES=1 (CI), a test module skipped at import time (a missing
    test dependency behind ``pytest.importorskip``) is a collection error, not a skip."""
    if report.skipped and services_required():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{report.nodeid} was skipped, but ASYNCTASQ_REQUIRE_SERVICES=1: {reason}"
        _skipped_modules.append(report.nodeid)


_skipped_modules: list[str] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped_modules and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


async def wait_for(
    condition: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Wait until ``condition()`` is true, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
async def driver_factory(backend: str, namespace: str) -> AsyncIterator[Callable[..., Awaitable[BaseDriver]]]:
    """Make more connected drivers sharing one broker namespace (competing consumers)."""
    made: list[BaseDriver] = []

    async def make(**options: Any) -> BaseDriver:
        driver = await make_driver(backend, namespace, **options)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        try:
            await driver.disconnect()
        except Exception:  # noqa: BLE001 - teardown must reach cleanup
            pass
    await cleanup(backend, namespace)


@pytest.fixture
async def driver(driver_factory: Callable[..., Awaitable[BaseDriver]]) -> BaseDriver:
    return await driver_factory()


@pytest.fixture
def queue() -> str:
    return "q-" + uuid.uuid4().hex[:8]
