"""Test backends: one module per driver, each with ``make_driver(namespace, **options)``.

A backend whose broker cannot be reached raises :class:`ServiceUnavailable`; the fixtures turn
that into a skip with the reason, or into a failure when ``ASYNCTASQ_REQUIRE_SERVICES=1``.
A new driver adds its module here and its name to ``BACKENDS``. Each module has
``make_driver(namespace, **options)``, ``cleanup(namespace)``, ``driver_config(namespace)`` (the
Config keywords of a worker subprocess on the same broker) and ``NO_FALLBACK_POLL`` (constructor
options that turn fallback polls off).
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from asynctasq.drivers.base import BaseDriver

BACKENDS = ["memory", "postgres", "sqlite", "redis", "mysql", "sqs", "rabbitmq"]
"""Every driver the conformance suite runs against."""

MakeDriver = Callable[..., Awaitable[BaseDriver]]


class ServiceUnavailable(Exception):
    pass


def services_required() -> bool:
    return os.environ.get("ASYNCTASQ_REQUIRE_SERVICES", "") not in ("", "0", "false", "no")


def check_port(name: str, host: str, port: int) -> None:
    """Raise ServiceUnavailable unless something listens on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return
    except OSError as exc:
        raise ServiceUnavailable(
            f"{name} is not reachable at {host}:{port} ({exc}); start it (see shared/services.md) "
            "or unset ASYNCTASQ_REQUIRE_SERVICES to skip"
        ) from exc


def unavailable(reason: str) -> None:
    """Skip the current test, or fail it when services are required."""
    if services_required():
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


async def make_driver(
    backend: str, namespace: str, *, no_fallback_poll: bool = False, **options: Any
) -> BaseDriver:
    """A connected driver of ``backend`` isolated under ``namespace``. ``no_fallback_poll``
    turns off any fallback poll (the backend's ``NO_FALLBACK_POLL`` options), so that only the
    broker's own signal or the in-process wake-up can end a wait early."""
    module = importlib.import_module(f"tests.backends.{backend}_backend")
    if no_fallback_poll:
        options = {**module.NO_FALLBACK_POLL, **options}
    try:
        driver: BaseDriver = await module.make_driver(namespace, **options)
    except ServiceUnavailable as exc:
        unavailable(str(exc))
        raise
    return driver


async def cleanup(backend: str, namespace: str) -> None:
    module = importlib.import_module(f"tests.backends.{backend}_backend")
    hook = getattr(module, "cleanup", None)
    if hook is not None:
        await hook(namespace)


def driver_config(backend: str, namespace: str) -> dict[str, Any]:
    """Config keyword arguments that point a worker subprocess at the same broker."""
    module = importlib.import_module(f"tests.backends.{backend}_backend")
    config: dict[str, Any] = module.driver_config(namespace)
    return config
