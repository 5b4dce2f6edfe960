"""Brokers the chaos and security suites may stop and start: private servers on free ports.

A backend module (tests/backends/<name>_backend.py) that supports the broker-restart tests has
``restartable_broker(namespace)``: an async context manager yielding a :class:`Restartable`.
The private servers here (redis-server with AOF, a PostgreSQL cluster made by initdb) belong to
the test alone, so restarting them disturbs nobody; a backend on a shared server (MariaDB,
RabbitMQ) implements the same interface and restores the server in its ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from asynctasq.drivers.base import BaseDriver
from tests.backends import unavailable

SECRET = "hunter2-Zq8vX"
"""The password of every private broker: it must never show in logs, output, errors or reprs."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s") from None
            await asyncio.sleep(0.02)
        else:
            writer.close()
            await writer.wait_closed()
            return


@dataclass
class Restartable:
    """A broker a test may stop and start. ``config``: the Config keywords of a worker or
    producer subprocess on it (with ``secret`` as its password where it has one)."""

    config: dict[str, Any]
    make_driver: Callable[..., Awaitable[BaseDriver]]
    stop: Callable[[], Awaitable[None]]
    start: Callable[[], Awaitable[None]]
    """Returns once the broker accepts connections again."""
    secret: str | None = None
    reconnect_timeout_option: str | None = None
    """The constructor keyword of the driver's reconnect budget, so a test can make it short."""

    async def restart(self, down_s: float = 0.0) -> None:
        await self.stop()
        try:
            await asyncio.sleep(down_s)  # the outage a test asks for, not a wait for a condition
        finally:
            await self.start()


class PrivateRedis:
    """``redis-server --appendonly yes`` on a free port, with ``requirepass``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="asynctasq-chaos-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
             "--requirepass", SECRET],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        await wait_port(self.port)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # a clean shutdown flushes the AOF
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://:{SECRET}@127.0.0.1:{self.port}/0"


@contextlib.asynccontextmanager
async def private_redis() -> AsyncIterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed: the restart tests start their own")
    server = PrivateRedis()
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


PG_BIN = os.environ.get("ASYNCTASQ_TEST_PG_BIN", "/usr/lib/postgresql/15/bin")


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb, trust auth, fsync off) on a free port. As root,
    it runs as the ``postgres`` user (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="asynctasq-chaos-pg-")
        self.data = os.path.join(self.dir, "data")
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(
            f"{PG_BIN}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"
        )

    async def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        await asyncio.to_thread(
            self._run,
            f"{PG_BIN}/pg_ctl",
            "-D",
            self.data,
            "-o",
            options,
            "-l",
            f"{self.dir}/log",
            "-w",
            "start",
        )
        await wait_port(self.port)

    async def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            await asyncio.to_thread(
                self._run, f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"
            )

    @property
    def dsn(self) -> str:
        # trust auth ignores the password, but every log line and error must still hide it
        return f"postgresql://postgres:{SECRET}@127.0.0.1:{self.port}/postgres"


@contextlib.asynccontextmanager
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    if not os.path.exists(f"{PG_BIN}/initdb"):
        unavailable(f"{PG_BIN}/initdb is missing: set ASYNCTASQ_TEST_PG_BIN to PostgreSQL's bin directory")
    server = PrivatePostgres()
    try:
        await asyncio.to_thread(server.init)
        await server.start()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
