from __future__ import annotations

from typing import Any

from asynctasq.drivers.memory import MemoryDriver

NO_FALLBACK_POLL: dict[str, Any] = {}  # every change happens in-process and wakes the hub


async def make_driver(namespace: str, **options: Any) -> MemoryDriver:
    driver = MemoryDriver(namespace=namespace, **options)
    await driver.connect()
    return driver


async def cleanup(namespace: str) -> None:
    MemoryDriver.reset(namespace)


def driver_config(namespace: str) -> dict[str, Any]:
    raise NotImplementedError("the memory driver lives in one process")


# -- hooks of the chaos and security suites (tests/test_chaos.py, tests/test_security.py) ----

RESTART_NOT_APPLICABLE = "the memory driver lives in one process: there is no broker to restart"


def unreachable_config(secret: str) -> dict[str, Any]:
    raise NotImplementedError("the memory driver has no broker that could be unreachable")
