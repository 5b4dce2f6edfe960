"""The RabbitMQ backend: the shared broker on 127.0.0.1:5672, one name prefix per namespace.

AMQP cannot list queues, so cleanup deletes the work queues the namespace's drivers declared
(plus any a test names with :func:`remember`), and the namespace's ladder and failed queue.
"""

from __future__ import annotations

import os
import weakref
from typing import Any
from urllib.parse import urlsplit

from tests.backends import ServiceUnavailable, check_port

RABBITMQ_URL = os.environ.get("ASYNCTASQ_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
NO_FALLBACK_POLL: dict[str, Any] = {}
"""The driver never polls (deliveries are pushed): nothing to turn off."""
PREFETCH_HOLD_S = 0.2
"""The tests' drivers give back prefetched deliveries nobody asked for after this long."""
HANDOVER_S = PREFETCH_HOLD_S
"""How long another consumer's prefetch may keep a ready message (tests/backends/__init__.py)."""
STATS_OWN_LEASES = True
"""``stats()["leased"]`` counts the calling driver's own leases only."""

_drivers: dict[str, weakref.WeakSet[Any]] = {}
_queues: dict[str, set[str]] = {}


def check_rabbitmq() -> None:
    parts = urlsplit(RABBITMQ_URL)
    check_port("RabbitMQ", parts.hostname or "127.0.0.1", parts.port or 5672)


def remember(namespace: str, *queues: str) -> None:
    """Have :func:`cleanup` delete these work queues too (used by other processes)."""
    _queues.setdefault(namespace, set()).update(queues)


async def make_driver(namespace: str, **options: Any) -> Any:
    check_rabbitmq()
    try:
        from asynctasq.drivers.rabbitmq import RabbitMQDriver
    except ImportError as exc:
        raise ServiceUnavailable(f"aio-pika is not installed: {exc}") from exc
    options.setdefault("prefetch_hold_s", PREFETCH_HOLD_S)
    driver = RabbitMQDriver(url=RABBITMQ_URL, prefix=namespace, **options)
    await driver.connect()
    _drivers.setdefault(namespace, weakref.WeakSet()).add(driver)
    return driver


async def cleanup(namespace: str) -> None:
    from asynctasq.drivers.rabbitmq import RabbitMQDriver

    queues = set(_queues.pop(namespace, set()))
    for driver in _drivers.pop(namespace, weakref.WeakSet()):
        queues |= driver.queues_seen
    try:
        check_rabbitmq()
    except ServiceUnavailable:
        return
    driver = RabbitMQDriver(url=RABBITMQ_URL, prefix=namespace, reconnect_timeout_s=5)
    try:
        await driver.delete_everything(sorted(queues))
    finally:
        await driver.disconnect()


def driver_config(namespace: str) -> dict[str, Any]:
    return {"driver": "rabbitmq", "rabbitmq_url": RABBITMQ_URL, "rabbitmq_prefix": namespace}


def unreachable_config(secret: str) -> dict[str, Any]:
    """Nothing listens on the port; the URL carries ``secret`` as its password."""
    from tests.chaos_brokers import free_port

    return {"driver": "rabbitmq", "rabbitmq_url": f"amqp://guest:{secret}@127.0.0.1:{free_port()}/"}
