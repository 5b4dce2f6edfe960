"""The RabbitMQ backend: the shared broker on 127.0.0.1:5672, one name prefix per namespace.

AMQP cannot list queues, so cleanup deletes the work queues the namespace's drivers declared
(plus any a test names with :func:`remember`), and the namespace's ladder and failed queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
import weakref
from collections.abc import AsyncIterator
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


# -- hooks of the chaos and security suites (tests/test_chaos.py, tests/test_security.py) ----

CHAOS_USER = "asynctasq-chaos"


def _rabbitmqctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which("rabbitmqctl") is None:
        from tests.backends import unavailable

        unavailable("rabbitmqctl is not on PATH: the restart tests stop and start the shared broker")
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
    return done


async def _answers(url: str) -> bool:
    """Whether the broker accepts an AMQP connection (a listening port is not enough: the
    listener comes back before the vhosts do)."""
    import aiormq

    try:
        conn = await asyncio.wait_for(aiormq.connect(url), 5)
    except Exception:  # noqa: BLE001 - not yet
        return False
    await conn.close()
    return True


async def _start_app(url: str, starting: list[asyncio.Task[Any]]) -> None:
    """``rabbitmqctl start_app``, returning as soon as the broker answers AMQP (the command itself
    returns a second or two later; its task goes into ``starting`` to be awaited at the end)."""
    task = asyncio.create_task(asyncio.to_thread(_rabbitmqctl, "start_app"))
    starting.append(task)
    deadline = time.monotonic() + 120
    while not await _answers(url):
        if task.done() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise RuntimeError("RabbitMQ did not answer within 120 s of start_app")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def restartable_broker(namespace: str) -> AsyncIterator[Any]:
    """The shared broker, with a user of our own whose password is the suite's secret; ``stop``
    and ``start`` are ``rabbitmqctl stop_app`` / ``start_app``, and the broker is started again
    in the ``finally`` (and waited for until it answers), whatever the test did."""
    from tests.chaos_brokers import SECRET, Restartable

    check_rabbitmq()
    parts = urlsplit(RABBITMQ_URL)
    vhost = parts.path[1:] or "/"
    if _rabbitmqctl("add_user", CHAOS_USER, SECRET, check=False).returncode != 0:
        _rabbitmqctl("change_password", CHAOS_USER, SECRET)
    _rabbitmqctl("set_permissions", "-p", vhost, CHAOS_USER, ".*", ".*", ".*")
    url = f"amqp://{CHAOS_USER}:{SECRET}@{parts.hostname or '127.0.0.1'}:{parts.port or 5672}/"
    stopped = False
    starting: list[asyncio.Task[Any]] = []

    async def stop() -> None:
        nonlocal stopped
        stopped = True
        await asyncio.to_thread(_rabbitmqctl, "stop_app")

    async def start() -> None:
        nonlocal stopped
        await _start_app(url, starting)
        stopped = False

    async def make(**options: Any) -> Any:
        from asynctasq.drivers.rabbitmq import RabbitMQDriver

        driver = RabbitMQDriver(url=url, prefix=namespace, **options)
        await driver.connect()
        _drivers.setdefault(namespace, weakref.WeakSet()).add(driver)
        return driver

    config = {"driver": "rabbitmq", "rabbitmq_url": url, "rabbitmq_prefix": namespace}
    try:
        yield Restartable(config, make, stop, start, SECRET, "reconnect_timeout_s")
    finally:
        if stopped or not await _answers(RABBITMQ_URL):
            await _start_app(RABBITMQ_URL, starting)
        await asyncio.gather(*starting, return_exceptions=True)
        remember(namespace, "default")
        await cleanup(namespace)
        await asyncio.to_thread(_heal_dead_letter_supervisor)


def _heal_dead_letter_supervisor() -> None:
    """RabbitMQ 3.10: quorum queues deleted while their at-least-once dead-letter workers start
    (as right after ``start_app``) crash those workers, and two crashes in a few seconds stop
    ``rabbit_fifo_dlx_sup`` for good: every publish to such a queue is then nacked until the
    node restarts. Start it again if that happened, so the shared broker is left as found."""
    where = _rabbitmqctl("eval", "whereis(rabbit_fifo_dlx_sup).", check=False)
    if where.returncode == 0 and "undefined" in where.stdout:
        _rabbitmqctl("eval", "supervisor:restart_child(rabbit_sup, rabbit_fifo_dlx_sup).")
