from __future__ import annotations

import os
import tempfile
from typing import Any

from asynctasq.drivers.sqlite import SQLiteDriver

_DIR = tempfile.mkdtemp(prefix="asynctasq-tests-")


def _path(namespace: str) -> str:
    return os.path.join(_DIR, f"{namespace}.db")


NO_FALLBACK_POLL: dict[str, Any] = {"poll_interval_s": 3600.0, "max_poll_interval_s": 3600.0}


async def make_driver(namespace: str, **options: Any) -> SQLiteDriver:
    driver = SQLiteDriver(path=_path(namespace), **options)
    await driver.connect()
    return driver


async def cleanup(namespace: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(_path(namespace) + suffix)
        except FileNotFoundError:
            pass


def driver_config(namespace: str) -> dict[str, Any]:
    return {"driver": "sqlite", "sqlite_path": _path(namespace)}


# -- hooks of the chaos and security suites (tests/test_chaos.py, tests/test_security.py) ----

RESTART_NOT_APPLICABLE = (
    "SQLite is a file, not a server: there is nothing to restart (a writer killed mid-transaction "
    "is the kill-half test)"
)


def unreachable_config(secret: str) -> dict[str, Any]:
    """A database that cannot be opened (SQLite has no password: ``secret`` is unused)."""
    return {"driver": "sqlite", "sqlite_path": "/nonexistent-asynctasq-dir/tasks.db"}
