"""MySQL/MariaDB backend: each test namespace gets tables of its own (``t<namespace>*``) in the
``test`` database, dropped in cleanup."""

from __future__ import annotations

import os
from typing import Any

from asynctasq.drivers.mysql import MySQLDriver
from tests.backends import ServiceUnavailable, check_port

HOST, PORT = "127.0.0.1", 3306
DSN = os.environ.get("ASYNCTASQ_TEST_MYSQL_DSN", f"mysql://root@{HOST}:{PORT}/test")

NO_FALLBACK_POLL: dict[str, Any] = {"poll": False}
"""Constructor options that turn the periodic poll off (wake-up tests: only in-process wakes)."""


def table(namespace: str) -> str:
    return f"t{namespace}"


async def make_driver(namespace: str, **options: Any) -> MySQLDriver:
    check_port("MariaDB", HOST, PORT)
    options.setdefault("max_pool_size", 4)
    options.setdefault("connect_timeout_s", 5.0)
    driver = MySQLDriver(DSN, table=table(namespace), **options)
    try:
        await driver.connect()
    except ConnectionError as exc:  # BrokerUnavailable; the port check above catches most of it
        raise ServiceUnavailable(f"MariaDB is not reachable: {exc}") from exc
    return driver


async def cleanup(namespace: str) -> None:
    try:
        await MySQLDriver(DSN, table=table(namespace)).drop_tables()
    except Exception:  # noqa: BLE001 - the server may be gone; nothing to clean then
        pass


def driver_config(namespace: str) -> dict[str, Any]:
    return {"driver": "mysql", "mysql_dsn": DSN, "mysql_table": table(namespace)}


def unreachable_config(secret: str) -> dict[str, Any]:
    """Nothing listens on the port; the DSN carries ``secret`` as its password."""
    from tests.chaos_brokers import free_port

    return {"driver": "mysql", "mysql_dsn": f"mysql://root:{secret}@127.0.0.1:{free_port()}/test"}
