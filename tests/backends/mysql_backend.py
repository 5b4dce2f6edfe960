"""MySQL/MariaDB backend: each test namespace gets tables of its own (``t<namespace>*``) in the
``test`` database, dropped in cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
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


# -- hooks of the chaos and security suites (tests/test_chaos.py, tests/test_security.py) ----

MARIADB_START = ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"]
"""How /work/shared/services.md starts the shared server (as root)."""
CHAOS_USER = "asynctasq_chaos"
"""A user with a password (tests.chaos_brokers.SECRET), made for the restart hook, so the
password tests have a real secret to hide: the shared root has none."""


async def _admin(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        ["mariadb-admin", "--protocol=tcp", "-h", HOST, "-P", str(PORT), "-uroot", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def _answers() -> bool:
    """The server accepts a login and answers a query (not only its port)."""
    return (await _admin("--connect-timeout=2", "status", timeout=10)).returncode == 0


async def _sql(statement: str) -> None:
    proc = await asyncio.to_thread(
        subprocess.run,
        ["mariadb", "--protocol=tcp", "-h", HOST, "-P", str(PORT), "-uroot", "-e", statement],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"mariadb -e failed: {proc.stderr.strip()}")


async def _start_shared(timeout: float = 60.0) -> None:
    """Start the shared MariaDB unless it answers; return once it does."""
    deadline = time.monotonic() + timeout
    if await _answers():
        return
    await asyncio.to_thread(subprocess.run, MARIADB_START, capture_output=True, timeout=30)
    while not await _answers():
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the shared MariaDB did not answer {timeout:.0f}s after `{' '.join(MARIADB_START)}`"
            )
        await asyncio.sleep(0.05)


async def _stop_shared(timeout: float = 60.0) -> None:
    """A clean shutdown of the shared MariaDB; return once its port is closed."""
    await _admin("shutdown", timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            check_port("MariaDB", HOST, PORT)
        except ServiceUnavailable:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the shared MariaDB still listens {timeout:.0f}s after its shutdown")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def restartable_broker(namespace: str) -> AsyncIterator[Any]:
    """The shared MariaDB (there is no private one to start: its data directory takes an
    install step per run), reached as a user with a password; stop() shuts it down and
    start() brings it back. The ``finally`` restarts it whatever happened and drops the user."""
    from tests.chaos_brokers import SECRET, Restartable

    check_port("MariaDB", HOST, PORT)
    if os.geteuid() != 0 or shutil.which("mariadb-admin") is None or not os.path.exists(MARIADB_START[-1]):
        from tests.backends import unavailable

        unavailable("restarting the shared MariaDB needs root, mariadb-admin and /usr/sbin/mariadbd")
    user = f"{CHAOS_USER}_{namespace}"[:32]
    await _sql(
        f"CREATE OR REPLACE USER '{user}'@'%' IDENTIFIED BY '{SECRET}'; "
        f"GRANT ALL PRIVILEGES ON test.* TO '{user}'@'%'"
    )
    dsn = f"mysql://{user}:{SECRET}@{HOST}:{PORT}/test"
    try:

        async def make(**options: Any) -> MySQLDriver:
            options.setdefault("max_pool_size", 4)
            options.setdefault("connect_timeout_s", 5.0)
            driver = MySQLDriver(dsn, table=table(namespace), **options)
            await driver.connect()
            return driver

        config = {"driver": "mysql", "mysql_dsn": dsn, "mysql_table": table(namespace)}
        yield Restartable(config, make, _stop_shared, _start_shared, SECRET, "reconnect_timeout_s")
    finally:
        await _start_shared()
        await cleanup(namespace)
        await _sql(f"DROP USER IF EXISTS '{user}'@'%'")


def unreachable_config(secret: str) -> dict[str, Any]:
    """Nothing listens on the port; the DSN carries ``secret`` as its password."""
    from tests.chaos_brokers import free_port

    return {"driver": "mysql", "mysql_dsn": f"mysql://root:{secret}@127.0.0.1:{free_port()}/test"}
