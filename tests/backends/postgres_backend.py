"""PostgreSQL backend: each test namespace gets its own schema in the ``test`` database."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from asynctasq.drivers.postgres import PostgresDriver
from tests.backends import ServiceUnavailable, check_port

HOST, PORT = "127.0.0.1", 5432
DSN = os.environ.get("ASYNCTASQ_TEST_POSTGRES_DSN", f"postgresql://postgres@{HOST}:{PORT}/test")


NO_FALLBACK_POLL: dict[str, Any] = {"poll_interval_s": 3600.0}


async def make_driver(namespace: str, **options: Any) -> PostgresDriver:
    check_port("PostgreSQL", HOST, PORT)
    options.setdefault("max_pool_size", 4)
    driver = PostgresDriver(dsn=DSN, schema=namespace, **options)
    try:
        await driver.connect()
    except OSError as exc:  # pragma: no cover - the port check above catches most of this
        raise ServiceUnavailable(f"PostgreSQL is not reachable: {exc}") from exc
    return driver


async def cleanup(namespace: str) -> None:
    import asyncpg

    try:
        conn = await asyncpg.connect(DSN, timeout=5)
    except OSError:
        return
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
    finally:
        await conn.close()


def driver_config(namespace: str) -> dict[str, Any]:
    return {"driver": "postgres", "postgres_dsn": DSN, "postgres_schema": namespace}


# -- hooks of the chaos and security suites (tests/test_chaos.py, tests/test_security.py) ----


@contextlib.asynccontextmanager
async def restartable_broker(namespace: str) -> AsyncIterator[Any]:
    """A private PostgreSQL cluster on a free port (tests/chaos_brokers.py): restarting it
    disturbs nobody else on the shared server."""
    from tests.chaos_brokers import SECRET, Restartable, private_postgres

    async with private_postgres() as server:

        async def make(**options: Any) -> PostgresDriver:
            options.setdefault("max_pool_size", 4)
            driver = PostgresDriver(dsn=server.dsn, schema=namespace, **options)
            await driver.connect()
            return driver

        config = {"driver": "postgres", "postgres_dsn": server.dsn, "postgres_schema": namespace}
        yield Restartable(config, make, server.stop, server.start, SECRET, "reconnect_timeout_s")


def unreachable_config(secret: str) -> dict[str, Any]:
    """Nothing listens on the port; the DSN carries ``secret`` as its password."""
    from tests.chaos_brokers import free_port

    return {
        "driver": "postgres",
        "postgres_dsn": f"postgresql://postgres:{secret}@127.0.0.1:{free_port()}/test",
    }
