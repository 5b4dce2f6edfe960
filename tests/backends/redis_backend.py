"""The Redis backend: the shared server on 127.0.0.1:6379, one key prefix per namespace."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from tests.backends import ServiceUnavailable, check_port

REDIS_URL = os.environ.get("ASYNCTASQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def check_redis() -> None:
    parts = urlsplit(REDIS_URL)
    check_port("Redis", parts.hostname or "127.0.0.1", parts.port or 6379)


NO_FALLBACK_POLL: dict[str, Any] = {}  # BLPOP on the wake lists is the only wait


async def make_driver(namespace: str, **options: Any) -> Any:
    check_redis()
    try:
        from asynctasq.drivers.redis import RedisDriver
    except ImportError as exc:
        raise ServiceUnavailable(f"the redis driver cannot load ({exc}): pip install hiredis") from exc
    driver = RedisDriver(url=REDIS_URL, prefix=namespace, **options)
    await driver.connect()
    return driver


async def cleanup(namespace: str) -> None:
    """Delete every key of ``namespace`` (all of them start with ``{namespace``)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        doomed = [key async for key in client.scan_iter(match=f"{{{namespace}[:}}]*", count=1000)]
        for i in range(0, len(doomed), 500):
            await client.delete(*doomed[i : i + 500])
    finally:
        await client.aclose()


def driver_config(namespace: str) -> dict[str, Any]:
    return {"driver": "redis", "redis_url": REDIS_URL, "redis_prefix": namespace}


# -- hooks of the chaos and security suites (tests/test_chaos.py, tests/test_security.py) ----


@contextlib.asynccontextmanager
async def restartable_broker(namespace: str) -> AsyncIterator[Any]:
    """A private redis-server with AOF and a password, on a free port (tests/chaos_brokers.py)."""
    from tests.chaos_brokers import SECRET, Restartable, private_redis

    async with private_redis() as server:

        async def make(**options: Any) -> Any:
            from asynctasq.drivers.redis import RedisDriver

            driver = RedisDriver(url=server.url, prefix=namespace, **options)
            await driver.connect()
            return driver

        config = {"driver": "redis", "redis_url": server.url, "redis_prefix": namespace}
        yield Restartable(config, make, server.stop, server.start, SECRET, "reconnect_timeout")


def unreachable_config(secret: str) -> dict[str, Any]:
    """Nothing listens on the port; the URL carries ``secret`` as its password."""
    from tests.chaos_brokers import free_port

    return {"driver": "redis", "redis_url": f"redis://:{secret}@127.0.0.1:{free_port()}/0"}
