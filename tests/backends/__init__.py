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

RELIABILITY_PENDING: dict[str, str] = {}
"""Drivers that landed before they passed the reliability suite (tests/test_chaos.py,
tests/test_state_machine.py, and the broker-restart and unreachable-broker tests of
tests/test_security.py), with what is missing: open items of the reliability issue, not skips.
``RELIABILITY_BACKENDS`` is what those suites run on."""
RELIABILITY_BACKENDS = [b for b in BACKENDS if b not in RELIABILITY_PENDING]
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


# -- optional hooks of the chaos and security suites ------------------------------------------
#
# A backend module may also define (tests/test_chaos.py and tests/test_security.py call them;
# a backend that has neither the hook nor its "not applicable" reason fails those tests):
#
# - ``restartable_broker(namespace)``: an async context manager yielding a
#   ``tests.chaos_brokers.Restartable`` (config, make_driver, stop, start, secret) on a broker
#   the test may stop and start: a private server on a free port where possible, else the shared
#   one, which it restores in a ``finally`` and waits for before it returns. Or
#   ``RESTART_NOT_APPLICABLE = "reason"`` where there is no server (memory, SQLite).
# - ``unreachable_config(secret)``: Config keywords naming a broker that cannot be reached, with
#   ``secret`` as its password where the driver takes one (raise NotImplementedError where
#   nothing can be unreachable: memory).


def backend_module(backend: str) -> Any:
    return importlib.import_module(f"tests.backends.{backend}_backend")


def restart_not_applicable(backend: str) -> str | None:
    """Why ``backend`` has no broker restart test, or None when it has one. A backend with
    neither the hook nor a reason is an error, so a new driver cannot skip the test silently."""
    module = backend_module(backend)
    if hasattr(module, "restartable_broker"):
        return None
    reason = getattr(module, "RESTART_NOT_APPLICABLE", None)
    if not reason:
        raise AssertionError(
            f"tests/backends/{backend}_backend.py needs restartable_broker(namespace) or "
            "RESTART_NOT_APPLICABLE = '<why>' (see tests/backends/__init__.py)"
        )
    return str(reason)


def restartable_broker(backend: str, namespace: str) -> Any:
    """The backend's ``restartable_broker(namespace)`` async context manager."""
    return backend_module(backend).restartable_broker(namespace)


def handover_s(backend: str) -> float:
    """How long a ready message may stay out of a consumer's reach because another consumer of
    the same broker prefetched it without asking (``HANDOVER_S`` of the backend; 0: never). A
    model waits that long for it, no longer."""
    return float(getattr(backend_module(backend), "HANDOVER_S", 0.0))


def resume_bound_s(backend: str) -> float:
    """How long the broker-restart test waits for work to resume after the broker is back
    (``RESUME_BOUND_S`` of the backend; 10 s by default). The test reports the time it took."""
    return float(getattr(backend_module(backend), "RESUME_BOUND_S", 10.0))


def stats_count_own_leases(backend: str) -> bool:
    """Whether the backend's ``stats()["leased"]`` counts only the calling driver's own leases
    (``STATS_OWN_LEASES``; RabbitMQ: AMQP tells nobody what other connections hold unacked)."""
    return bool(getattr(backend_module(backend), "STATS_OWN_LEASES", False))


def unreachable_config(backend: str, secret: str) -> dict[str, Any] | None:
    """Config keywords of an unreachable broker of ``backend``, or None where none can be."""
    module = backend_module(backend)
    if not hasattr(module, "unreachable_config"):
        raise AssertionError(f"tests/backends/{backend}_backend.py needs unreachable_config(secret)")
    try:
        config: dict[str, Any] = module.unreachable_config(secret)
    except NotImplementedError:
        return None
    return config
