"""The embedded default driver: one SQLite file, no server, safe for several producer and worker
processes on one machine::

    driver = SQLiteDriver("asynctasq.db")
    async with driver:
        await driver.enqueue("default", b"...")

How it works (docs/drivers/sqlite.md has the long form):

- One ``tasks`` row per message. ``due`` is when the row may next be claimed: the time it becomes
  visible while it waits (ready or delayed), the lease expiry while it is leased (``token`` set).
  So one index ``(queue, due)`` serves the claim, and an expired lease is claimable by the very
  same query, which raises its delivery count: recovery needs no reaper.
- The claim is one ``UPDATE ... WHERE id IN (<per-queue LIMIT subqueries>) RETURNING`` statement
  for all queues, in the order given, with a fresh random token per row. Acks and extends are
  one statement per batch, fenced by token and lease expiry.
- WAL journal, ``busy_timeout``, and writes that take the write lock up front: a single write
  statement does so by itself (autocommit), several statements run inside ``BEGIN IMMEDIATE``.
  A write that still meets "database is locked" is retried with a bounded backoff. Within one
  process an ``asyncio.Lock`` keeps coroutines from interleaving on the connection.
- A blocked ``dequeue`` wakes at once on an enqueue by any driver of this process on the same
  file (the shared wake-up hub, :mod:`asynctasq.drivers._wait`), and otherwise polls
  ``PRAGMA data_version``, which moves when another connection commits: every 2 ms at first,
  backing off to 50 ms while idle. It runs the claim only when that moved or a delayed message
  or lease falls due. The first pause of a wait records the version and claims once more, so
  a commit that lands between a claim and the first poll is never missed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

from asynctasq.constants import DEFAULT_LEASE_S, DEFAULT_SQLITE_PATH
from asynctasq.drivers._sql import chunks, int_ids
from asynctasq.drivers._wait import AdaptivePoll, Waiter
from asynctasq.drivers.base import (
    BaseDriver,
    Delivery,
    EnqueueItem,
    FailedEntry,
    QueueStats,
    WorkerInfo,
    still_held,
    validate_queue_name,
)
from asynctasq.errors import BrokerError, DriverError, DriverNotAvailable, SchemaError

try:
    import aiosqlite
except ImportError as exc:  # pragma: no cover - aiosqlite is a core dependency
    raise DriverNotAvailable('the sqlite driver needs aiosqlite: pip install "aiosqlite>=0.20"') from exc

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
"""Recorded in ``PRAGMA user_version``."""
MIN_SQLITE_VERSION = (3, 35, 0)
"""``UPDATE ... RETURNING`` arrived in SQLite 3.35."""
DEFAULT_BUSY_TIMEOUT_S = 5.0
"""How long SQLite itself waits for another process's write lock before saying "locked"."""
DEFAULT_POLL_INTERVAL_S = 0.002
"""First ``PRAGMA data_version`` poll interval of a blocked dequeue, and the one after activity."""
DEFAULT_MAX_POLL_INTERVAL_S = 0.05
"""The poll interval backs off to this while nothing happens."""
LOCKED_RETRIES = 8
"""Retries of a write that failed with "database is locked" (each after SQLite's busy timeout)."""
LOCKED_RETRY_FIRST_S = 0.01
LOCKED_RETRY_MAX_S = 1.0
CLEANUP_INTERVAL_S = 30.0
"""Expired results are deleted at most this often (and expired ones are never returned)."""
BATCH_ROWS = 400
"""Rows per statement for batched acks, extends and inserts (SQLite bounds bound parameters)."""
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

_SCHEMA = (
    # due: ready/delayed -> visible from (unix s); leased (token set) -> lease expiry (unix s)
    """CREATE TABLE IF NOT EXISTS tasks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        body BLOB NOT NULL,
        due REAL NOT NULL,
        token TEXT,
        deliveries INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS tasks_claim ON tasks (queue, due)",
    """CREATE TABLE IF NOT EXISTS failed (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        body BLOB NOT NULL,
        error TEXT NOT NULL,
        failed_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS failed_queue ON failed (queue, failed_at)",
    """CREATE TABLE IF NOT EXISTS results (
        task_id TEXT PRIMARY KEY,
        body BLOB NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS results_expiry ON results (expires_at)",
    """CREATE TABLE IF NOT EXISTS workers (
        name TEXT PRIMARY KEY,
        info TEXT NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS commands (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        worker TEXT NOT NULL,
        command TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS commands_worker ON commands (worker)",
)

_FENCE = "id IN ({ids}) AND token IN ({tokens}) AND due > ?"
"""A delivery is still held while its token is current and its lease has not expired.
Tokens are 128 random bits, so matching the token sets is matching the (id, token) pairs."""


# -- helpers ---------------------------------------------------------------------------------


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(exc)
    return "locked" in text or "busy" in text


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _chunks(items: Sequence[T], size: int = BATCH_ROWS) -> Iterable[Sequence[T]]:
    return chunks(items, size)


def _daemonize(conn: aiosqlite.Connection) -> None:
    """Make aiosqlite's (not yet started) thread a daemon, so that a program that never calls
    ``disconnect()`` (a script that dispatches and ends) still exits instead of hanging on it.
    Whatever was committed is safe in the WAL; the next open recovers the rest."""
    thread = getattr(conn, "_thread", None)
    if isinstance(thread, threading.Thread) and not thread.is_alive():
        thread.daemon = True


def _try_open(path: str) -> None:
    sqlite3.connect(path).close()


def _check_sqlite_version() -> None:
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        need = ".".join(map(str, MIN_SQLITE_VERSION))
        raise BrokerError(
            f"the sqlite driver needs SQLite >= {need} (for UPDATE ... RETURNING), but this Python "
            f"is linked against SQLite {sqlite3.sqlite_version}: use a Python build with a newer "
            "SQLite (python.org builds and current Linux distributions have one), or pick a server "
            "driver with --driver redis / postgres"
        )


class SQLiteDriver(BaseDriver):
    """Queues in one SQLite file, shared by the processes of one machine.

    Arguments:
        path: the database file (created with its tables on first connect). Use a file of its
            own, on a local disk: WAL needs shared memory, so not on a network file system.
        lease_seconds / max_message_bytes: as for every driver.
        busy_timeout_s: how long SQLite waits for another process's write lock.
        poll_interval_s / max_poll_interval_s: the adaptive ``PRAGMA data_version`` poll of a
            blocked dequeue, for commits made by other processes.
        synchronous: ``PRAGMA synchronous``. ``NORMAL`` (default) is safe in WAL mode: a power
            loss can lose the last commits but never corrupts the file; ``FULL`` also keeps them.
    """

    name = "sqlite"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"stats", "failed", "results", "workers", "control", "purge", "cancel", "fencing"}
    )
    shield_claims = False  # a cancelled claim gives back by its token (_claim)

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_SQLITE_PATH,
        *,
        lease_seconds: float = DEFAULT_LEASE_S,
        max_message_bytes: int | None = None,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        max_poll_interval_s: float = DEFAULT_MAX_POLL_INTERVAL_S,
        synchronous: str = "NORMAL",
    ) -> None:
        super().__init__(lease_seconds=lease_seconds, max_message_bytes=max_message_bytes)
        path = os.fspath(path)
        if not isinstance(path, str) or not path or "\x00" in path:
            raise DriverError(f"invalid SQLite path {path!r}: give a file name such as 'asynctasq.db'")
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}")
        if busy_timeout_s < 0 or poll_interval_s <= 0 or max_poll_interval_s < poll_interval_s:
            raise ValueError("need busy_timeout_s >= 0 and 0 < poll_interval_s <= max_poll_interval_s")
        self.memory = path == ":memory:"
        self.path = path if self.memory else os.path.abspath(path)
        # drivers on one file share wake-ups; ":memory:" databases are private to their connection
        self._key = f":memory:{id(self)}" if self.memory else os.path.realpath(self.path)
        self.busy_timeout_s = float(busy_timeout_s)
        self.poll_interval_s = float(poll_interval_s)
        self.max_poll_interval_s = float(max_poll_interval_s)
        self.synchronous = synchronous.upper()
        self._conn: aiosqlite.Connection | None = None
        self._closed = False
        self._locks: tuple[asyncio.AbstractEventLoop, asyncio.Lock, asyncio.Lock] | None = None
        self._next_cleanup = 0.0
        self._fenced_sql: dict[tuple[str, int], str] = {}
        self._claim_sql: dict[int, str] = {}
        self._probe_sql: dict[int, str] = {}

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        """``sqlite:///relative.db``, ``sqlite:////absolute/path.db``, ``sqlite://`` (in memory)."""
        rest = url.partition("://")[2]
        path = rest[1:] if rest.startswith("/") else rest
        return {"path": path.partition("?")[0] or ":memory:"}

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def wake_scope(self) -> str:
        return self._key

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._conn is not None:
            return
        async with self._lock_for_loop(connect=True):
            if self._conn is not None:
                return
            self._closed = False
            _check_sqlite_version()
            try:
                # open once in plain sqlite3 first: aiosqlite leaves its thread behind when opening
                # fails, to report on a loop that may be gone by then
                await asyncio.to_thread(_try_open, self.path)
                conn = aiosqlite.connect(self.path, isolation_level=None, timeout=self.busy_timeout_s)
                _daemonize(conn)
                await conn
            except (sqlite3.Error, ValueError, OSError) as exc:
                raise BrokerError(
                    f"cannot open the SQLite database {self.path!r}: {exc}; check that the path "
                    "names a file in an existing directory this process can write to"
                ) from exc
            try:
                await self._prepare(conn)
            except BaseException:
                await conn.close()
                raise
            self._conn = conn

    async def _prepare(self, conn: aiosqlite.Connection) -> None:
        try:
            mode = await self._retry_busy(lambda: self._fetch_one(conn, "PRAGMA journal_mode=WAL"))
            if not self.memory and str(mode).lower() != "wal":
                log.warning(
                    "SQLite database %s is in journal mode %r, not WAL: it works across processes, "
                    "but slower (is it on a network file system?)",
                    self.path,
                    mode,
                )
            await conn.execute(f"PRAGMA synchronous={self.synchronous}")
            version = await self._fetch_one(conn, "PRAGMA user_version")
            if version < SCHEMA_VERSION:
                await self._retry_busy(lambda: self._create_schema(conn))
            elif version > SCHEMA_VERSION:
                raise SchemaError(
                    f"the SQLite database {self.path!r} has schema version {version}, newer than "
                    f"this asynctasq's {SCHEMA_VERSION}: upgrade asynctasq, or use another file"
                )
        except sqlite3.Error as exc:
            raise SchemaError(
                f"cannot use {self.path!r} as an asynctasq SQLite database: {exc}; "
                "point sqlite_path at a file of its own (a new name creates one)"
            ) from exc

    async def _create_schema(self, conn: aiosqlite.Connection) -> None:
        async def create() -> None:
            if await self._fetch_one(conn, "PRAGMA user_version") >= SCHEMA_VERSION:
                return  # another process got there first
            for statement in _SCHEMA:
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

        await self._transaction(conn, create)

    async def disconnect(self) -> None:
        await self._settle_background()
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            async with self._lock_for_loop():
                await conn.close()
        self.hub.wake_all()  # blocked calls of this driver find it closed

    # -- plumbing --------------------------------------------------------------------------

    def _lock_for_loop(self, *, connect: bool = False) -> asyncio.Lock:
        """The statement lock (or the connect lock) of the running loop: a driver may be used
        from one loop after another (sync code calling ``asyncio.run`` per dispatch), though
        not from two at once."""
        loop = asyncio.get_running_loop()
        if self._locks is None or self._locks[0] is not loop:
            self._locks = (loop, asyncio.Lock(), asyncio.Lock())
        return self._locks[2] if connect else self._locks[1]

    async def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            if self._closed:
                raise DriverError("the sqlite driver was disconnected: call connect() again to use it")
            await self.connect()
        assert self._conn is not None
        return self._conn

    @staticmethod
    async def _fetch_one(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = list(await conn.execute_fetchall(sql, params))
        return rows[0][0] if rows else None

    @staticmethod
    async def _retry_busy(op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op``, again after a growing pause while SQLite reports the database locked."""
        pause = LOCKED_RETRY_FIRST_S
        for _ in range(LOCKED_RETRIES):
            try:
                return await op()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                log.debug("SQLite busy (%s), retrying in %.3fs", exc, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, LOCKED_RETRY_MAX_S)
        return await op()

    async def _run(self, op: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run ``op`` alone on the connection, retrying while locked; errors become DriverError."""
        conn = await self._connection()

        async def attempt() -> T:
            async with self._lock_for_loop():
                if self._conn is not conn:
                    raise DriverError("the sqlite driver was disconnected")
                return await op(conn)

        try:
            return await self._retry_busy(attempt)
        except sqlite3.Error as exc:
            hint = " (another process holds the write lock)" if _is_busy(exc) else ""
            raise BrokerError(f"SQLite error on {self.path!r}: {exc}{hint}") from exc
        except ValueError as exc:  # aiosqlite: "Connection closed"
            raise DriverError(f"SQLite connection to {self.path!r} is closed: {exc}") from exc

    @staticmethod
    async def _transaction(conn: aiosqlite.Connection, body: Callable[[], Awaitable[T]]) -> T:
        """``body`` inside BEGIN IMMEDIATE ... COMMIT; rolled back on any error or cancellation."""
        try:
            await conn.execute("BEGIN IMMEDIATE")
            result = await body()
            await conn.execute("COMMIT")
        except BaseException:
            # The connection thread runs calls in the order queued, so this rollback lands after
            # the statement we were waiting on, even when we were cancelled: wait it out, so that
            # no other coroutine's statement slips into the dead transaction.
            rollback = asyncio.ensure_future(conn.rollback())
            cancelled = False
            while not rollback.done():
                try:
                    await asyncio.shield(rollback)
                except asyncio.CancelledError:
                    cancelled = True
                except Exception:  # noqa: BLE001 - the original error matters more
                    break
            if cancelled:
                raise asyncio.CancelledError from None
            raise
        return result

    # -- enqueue ---------------------------------------------------------------------------

    async def _enqueue(self, item: EnqueueItem) -> str:
        async def op(conn: aiosqlite.Connection) -> int:
            now = time.time()
            cursor = await conn.execute(
                "INSERT INTO tasks (queue, body, due, created_at) VALUES (?, ?, ?, ?)",
                (item.queue, bytes(item.body), now + item.delay, now),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        return str(await self._run(op))

    async def _enqueue_many(self, items: Sequence[EnqueueItem]) -> list[str]:
        async def insert(conn: aiosqlite.Connection, chunk: Sequence[EnqueueItem], now: float) -> list[int]:
            # ids ascend in VALUES order (AUTOINCREMENT under the write lock); RETURNING's own
            # row order is unspecified, hence the sort
            params: list[Any] = []
            for item in chunk:
                params += (item.queue, bytes(item.body), now + item.delay, now)
            rows = await conn.execute_fetchall(
                "INSERT INTO tasks (queue, body, due, created_at) VALUES "
                + ",".join(["(?,?,?,?)"] * len(chunk))
                + " RETURNING id",
                params,
            )
            return sorted(row[0] for row in rows)

        async def op(conn: aiosqlite.Connection) -> list[int]:
            now = time.time()
            if len(items) <= BATCH_ROWS:
                return await insert(conn, items, now)  # one statement: atomic by itself

            async def all_chunks() -> list[int]:
                ids: list[int] = []
                for chunk in _chunks(items):
                    ids += await insert(conn, chunk, now)
                return ids

            return await self._transaction(conn, all_chunks)

        return [str(i) for i in await self._run(op)]

    # -- dequeue ---------------------------------------------------------------------------

    def _claim_statement(self, n: int) -> str:
        sql = self._claim_sql.get(n)
        if sql is None:
            pick = "SELECT {cols} FROM tasks WHERE queue = ? AND due <= ? ORDER BY due, id LIMIT ?"
            if n == 1:
                chosen = pick.format(cols="id")
            else:
                ranked = pick.format(cols="id, due")
                union = " UNION ALL ".join(f"SELECT id, {i} AS rank, due FROM ({ranked})" for i in range(n))
                chosen = f"SELECT id FROM ({union}) ORDER BY rank, due, id LIMIT ?"
            sql = (
                "UPDATE tasks SET token = ?, due = ?, deliveries = deliveries + 1 "
                f"WHERE id IN ({chosen}) RETURNING id, queue, body, token, deliveries"
            )
            self._claim_sql[n] = sql
        return sql

    def _probe_statement(self, n: int) -> str:
        sql = self._probe_sql.get(n)
        if sql is None:
            mins = ", ".join(["(SELECT min(due) FROM tasks WHERE queue = ? AND due > ?)"] * n)
            sql = f"SELECT (SELECT data_version FROM pragma_data_version), {mins or 'NULL'}"
            self._probe_sql[n] = sql
        return sql

    async def _claim(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        token = secrets.token_hex(16)  # one per claim: what a cancelled claim leased carries it

        async def op(conn: aiosqlite.Connection) -> list[Delivery]:
            now = time.time()
            params: list[Any] = [token, now + self.lease_seconds]
            for q in queues:
                params += (q, now, limit)
            if len(queues) > 1:
                params.append(limit)
            rows = await conn.execute_fetchall(self._claim_statement(len(queues)), params)
            return [Delivery(str(r[0]), r[1], r[2], r[3], r[4]) for r in rows]

        try:
            deliveries = await self._run(op)
        except asyncio.CancelledError:
            # the connection's thread runs statements in the order given: a give-back by the
            # claim's token queued now runs after the claim, whether or not it had started
            self._in_background(self._unlease_token(token, queues))
            raise
        if len(deliveries) > 1:
            rank = {q: i for i, q in enumerate(queues)}
            deliveries.sort(key=lambda d: (rank[d.queue], int(d.id)))
        return deliveries

    async def _probe(self, queues: Sequence[str]) -> tuple[int | None, float | None]:
        """(data_version, earliest future due time among ``queues``), read-only and lock-free."""
        conn = await self._connection()
        now = time.time()
        params: list[Any] = []
        for q in queues:
            params += (q, now)
        try:
            rows = list(await conn.execute_fetchall(self._probe_statement(len(queues)), params))
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                return None, None  # try again at the next poll
            raise BrokerError(f"SQLite error on {self.path!r}: {exc}") from exc
        except ValueError as exc:
            raise BrokerError(f"SQLite connection to {self.path!r} is closed: {exc}") from exc
        dues = [d for d in rows[0][1:] if d is not None]
        return rows[0][0], (min(dues) if dues else None)

    async def _pause(self, waiter: Waiter, queues: Sequence[str], left: float) -> None:
        """Until woken in-process, another process's commit (``data_version`` moved since this
        wait last looked), a delayed message or lease falling due, or ``left`` seconds.

        The first pause of a wait only reads the version and returns, so the claim runs once
        more after it: a commit that landed between the first claim and that read is seen by
        the second claim, every later one by the version. (The claim itself reads no version,
        so the busy path costs nothing extra.)"""
        deadline = time.monotonic() + left
        poll = AdaptivePoll(self.poll_interval_s, self.max_poll_interval_s)
        next_due: float | None = None
        while True:
            if next_due is not None and next_due <= time.time():
                return  # a delayed message or a lease fell due (the probe no longer lists it)
            version, next_due = await self._probe(queues)
            if version is not None and version != waiter.seen:
                waiter.seen = version  # the first look, or another process committed: claim
                return
            timeout = min(poll.next(), deadline - time.monotonic())
            if next_due is not None:
                timeout = min(timeout, next_due - time.time())
            if timeout <= 0 or await waiter.sleep(timeout):
                return

    # -- lease operations ------------------------------------------------------------------

    async def _fenced(self, sql: str, deliveries: Sequence[Delivery], head: Sequence[Any]) -> list[Delivery]:
        """Run ``sql`` (containing ``_FENCE``, ending in ``RETURNING id, token``) over
        ``deliveries`` in chunks; return the deliveries it changed."""
        held = []
        for d in deliveries:  # ids that cannot be rows of ours match nothing
            if d.id.isascii() and d.id.isdigit():
                held.append((int(d.id), d.token))
        if not held:
            return []
        statements = self._fenced_sql

        async def one(conn: aiosqlite.Connection, chunk: Sequence[tuple[int, str]]) -> list[Any]:
            statement = statements.get((sql, len(chunk)))
            if statement is None:
                marks = _marks(len(chunk))
                statement = statements[(sql, len(chunk))] = sql.format(ids=marks, tokens=marks)
            params = [*head, *(i for i, _ in chunk), *(t for _, t in chunk), time.time()]
            return list(await conn.execute_fetchall(statement, params))

        async def op(conn: aiosqlite.Connection) -> list[Any]:
            if len(held) <= BATCH_ROWS:
                return await one(conn, held)

            async def all_chunks() -> list[Any]:
                return [row for chunk in _chunks(held) for row in await one(conn, chunk)]

            return await self._transaction(conn, all_chunks)

        rows = await self._run(op)
        if len(rows) == len(deliveries):
            return list(deliveries)
        return still_held(deliveries, ((str(r[0]), r[1]) for r in rows))

    async def _ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        return await self._fenced(f"DELETE FROM tasks WHERE {_FENCE} RETURNING id, token", deliveries, ())

    async def _extend(self, deliveries: Sequence[Delivery], seconds: float) -> list[Delivery]:
        until = time.time() + seconds
        return await self._fenced(
            f"UPDATE tasks SET due = ? WHERE {_FENCE} RETURNING id, token", deliveries, (until,)
        )

    async def _unlease_token(self, token: str, queues: Sequence[str]) -> None:
        """Give back, uncounted, what the claim of ``token`` leased (a cancelled dequeue)."""

        async def op(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(
                "UPDATE tasks SET token = NULL, due = ?, deliveries = max(deliveries - 1, 0) WHERE token = ?",
                (time.time(), token),
            )
            return cursor.rowcount

        try:
            if await self._run(op):
                self.wake_queues(queues)
        except DriverError as exc:  # their leases expire instead
            log.warning("could not give back what a cancelled dequeue leased: %s", exc)

    async def _release(self, delivery: Delivery, delay: float, body: bytes | None) -> bool:
        ids = int_ids([delivery.id])
        if not ids:
            return False
        msg_id = ids[0]

        async def op(conn: aiosqlite.Connection) -> int:
            now = time.time()
            fence = (msg_id, delivery.token, now)
            if body is None:
                cursor = await conn.execute(
                    "UPDATE tasks SET token = NULL, due = ?, deliveries = max(deliveries - 1, 0) "
                    "WHERE id = ? AND token = ? AND due > ?",
                    (now + delay, *fence),
                )
            else:
                cursor = await conn.execute(
                    "UPDATE tasks SET token = NULL, due = ?, deliveries = 0, body = ? "
                    "WHERE id = ? AND token = ? AND due > ?",
                    (now + delay, bytes(body), *fence),
                )
            return cursor.rowcount

        return await self._run(op) == 1

    async def _fail(self, delivery: Delivery, error: str) -> bool:
        ids = int_ids([delivery.id])
        if not ids:
            return False
        msg_id = ids[0]

        async def op(conn: aiosqlite.Connection) -> bool:
            async def move() -> bool:
                now = time.time()
                cursor = await conn.execute(
                    "INSERT OR REPLACE INTO failed (id, queue, body, error, failed_at) "
                    "SELECT id, queue, body, ?, ? FROM tasks WHERE id = ? AND token = ? AND due > ?",
                    (str(error), now, msg_id, delivery.token, now),
                )
                if cursor.rowcount != 1:
                    return False
                await conn.execute("DELETE FROM tasks WHERE id = ?", (msg_id,))
                return True

            return await self._transaction(conn, move)

        return await self._run(op)

    # -- stats and purge -------------------------------------------------------------------

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        queues = list(dict.fromkeys(validate_queue_name(q) for q in queues))
        out = {q: QueueStats(ready=0, delayed=0, leased=0, failed=0) for q in queues}
        if not queues:
            return out

        async def op(conn: aiosqlite.Connection) -> tuple[list[Any], list[Any]]:
            now = time.time()
            marks = _marks(len(queues))
            tasks = await conn.execute_fetchall(
                "SELECT queue, sum(due <= ?), sum(due > ? AND token IS NULL), "
                f"sum(due > ? AND token IS NOT NULL) FROM tasks WHERE queue IN ({marks}) GROUP BY queue",
                (now, now, now, *queues),
            )
            failed = await conn.execute_fetchall(
                f"SELECT queue, count(*) FROM failed WHERE queue IN ({marks}) GROUP BY queue", queues
            )
            return list(tasks), list(failed)

        tasks, failed = await self._run(op)
        for queue, ready, delayed, leased in tasks:
            out[queue] = QueueStats(ready=ready, delayed=delayed, leased=leased, failed=0)
        for queue, count in failed:
            out[queue]["failed"] = count
        return out

    async def purge(self, queue: str) -> int:
        validate_queue_name(queue)

        async def op(conn: aiosqlite.Connection) -> int:
            return (await conn.execute("DELETE FROM tasks WHERE queue = ?", (queue,))).rowcount

        return await self._run(op)

    async def oldest_waiting(self, queues: Sequence[str]) -> dict[str, float | None]:
        names = list(dict.fromkeys(validate_queue_name(q) for q in queues))
        out: dict[str, float | None] = {q: None for q in names}

        async def op(conn: aiosqlite.Connection) -> list[Any]:
            now = time.time()  # one probe of the claim index per queue
            return list(
                await conn.execute_fetchall(
                    " UNION ALL ".join(
                        ["SELECT ?, ? - (SELECT min(due) FROM tasks WHERE queue = ? AND due <= ?)"]
                        * len(names)
                    ),
                    [x for q in names for x in (q, now, q, now)],
                )
            )

        if names:
            for queue, age in await self._run(op):
                out[queue] = None if age is None else max(float(age), 0.0)
        return out

    async def peek(self, queue: str, limit: int = 100) -> list[tuple[str, bytes]]:
        validate_queue_name(queue)

        async def op(conn: aiosqlite.Connection) -> list[Any]:
            return list(
                await conn.execute_fetchall(
                    "SELECT id, body FROM tasks WHERE queue = ? AND (token IS NULL OR due <= ?) "
                    "ORDER BY due, id LIMIT ?",
                    (queue, time.time(), limit),
                )
            )

        return [(str(r[0]), bytes(r[1])) for r in await self._run(op)]

    async def maintain(self) -> None:
        async def op(conn: aiosqlite.Connection) -> None:
            await conn.execute("DELETE FROM results WHERE expires_at <= ?", (time.time(),))

        await self._run(op)

    async def list_queues(self) -> list[str]:
        async def op(conn: aiosqlite.Connection) -> list[str]:
            rows = await conn.execute_fetchall(
                "SELECT queue FROM tasks UNION SELECT queue FROM failed ORDER BY 1"
            )
            return [r[0] for r in rows]

        return await self._run(op)

    async def cancel(self, queue: str, message_id: str) -> bool:
        validate_queue_name(queue)
        ids = int_ids([message_id])
        if not ids:
            return False

        async def op(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(
                "DELETE FROM tasks WHERE id = ? AND queue = ? AND (token IS NULL OR due <= ?)",
                (ids[0], queue, time.time()),
            )
            return cursor.rowcount

        return await self._run(op) == 1

    # -- failed registry -------------------------------------------------------------------

    @staticmethod
    def _failed_filter(ids: Iterable[str] | None, queue: str | None) -> list[tuple[str, list[Any]]]:
        """WHERE clauses (with parameters) that together select the matching failed rows."""
        queue_part = ("queue = ?", [queue]) if queue is not None else ("1", [])
        if ids is None:
            return [queue_part]
        wanted = int_ids(ids)
        return [
            (f"id IN ({_marks(len(chunk))}) AND {queue_part[0]}", [*chunk, *queue_part[1]])
            for chunk in _chunks(wanted)
        ]

    async def failed_list(self, queue: str | None = None, limit: int = 100) -> list[FailedEntry]:
        where, params = ("queue = ?", [queue]) if queue is not None else ("1", [])

        async def op(conn: aiosqlite.Connection) -> list[Any]:
            return list(
                await conn.execute_fetchall(
                    f"SELECT id, queue, body, error, failed_at FROM failed WHERE {where} "
                    "ORDER BY failed_at, id LIMIT ?",
                    (*params, max(limit, 0)),
                )
            )

        return [
            FailedEntry(id=str(r[0]), queue=r[1], body=r[2], error=r[3], failed_at=r[4])
            for r in await self._run(op)
        ]

    async def failed_requeue(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        clauses = self._failed_filter(ids, queue)

        async def op(conn: aiosqlite.Connection) -> int:
            async def move() -> int:
                now = time.time()
                moved = 0
                for where, params in clauses:
                    cursor = await conn.execute(
                        "INSERT INTO tasks (id, queue, body, due, token, deliveries, created_at) "
                        f"SELECT id, queue, body, ?, NULL, 0, ? FROM failed WHERE {where}",
                        (now, now, *params),
                    )
                    moved += cursor.rowcount
                    await conn.execute(f"DELETE FROM failed WHERE {where}", params)
                return moved

            return await self._transaction(conn, move)

        moved = await self._run(op)
        if moved:
            self.hub.wake_all()
        return moved

    async def failed_purge(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        clauses = self._failed_filter(ids, queue)

        async def op(conn: aiosqlite.Connection) -> int:
            async def purge() -> int:
                deleted = 0
                for where, params in clauses:
                    deleted += (await conn.execute(f"DELETE FROM failed WHERE {where}", params)).rowcount
                return deleted

            return await self._transaction(conn, purge)

        return await self._run(op)

    # -- results ---------------------------------------------------------------------------

    async def store_results(self, results: Sequence[tuple[str, bytes]], ttl: float) -> None:
        if not results or ttl <= 0:
            return
        rows = list(results)

        async def op(conn: aiosqlite.Connection) -> None:
            now = time.time()

            async def store() -> None:
                for chunk in _chunks(rows):
                    params: list[Any] = []
                    for task_id, payload in chunk:
                        params += (str(task_id), bytes(payload), now + ttl)
                    await conn.execute(
                        "INSERT OR REPLACE INTO results (task_id, body, expires_at) VALUES "
                        + ",".join(["(?,?,?)"] * len(chunk)),
                        params,
                    )

            if len(rows) <= BATCH_ROWS:
                await store()
            else:
                await self._transaction(conn, store)
            if now >= self._next_cleanup:
                self._next_cleanup = now + CLEANUP_INTERVAL_S
                await conn.execute("DELETE FROM results WHERE expires_at <= ?", (now,))

        await self._run(op)
        self.wake_results(task_id for task_id, _ in rows)

    async def _read_result(self, task_id: str) -> bytes | None:
        async def op(conn: aiosqlite.Connection) -> Any:
            return await self._fetch_one(
                conn, "SELECT body FROM results WHERE task_id = ? AND expires_at > ?", (task_id, time.time())
            )

        found = await self._run(op)
        return None if found is None else bytes(found)

    # -- worker registry and control -------------------------------------------------------

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        encoded = json.dumps(info)

        async def op(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT OR REPLACE INTO workers (name, info, expires_at) VALUES (?, ?, ?)",
                (info["name"], encoded, time.time() + ttl),
            )

        await self._run(op)

    async def deregister_worker(self, name: str) -> None:
        async def op(conn: aiosqlite.Connection) -> None:
            await self._transaction(conn, lambda: self._forget_worker(conn, name))

        await self._run(op)

    @staticmethod
    async def _forget_worker(conn: aiosqlite.Connection, name: str) -> None:
        await conn.execute("DELETE FROM workers WHERE name = ?", (name,))
        await conn.execute("DELETE FROM commands WHERE worker = ?", (name,))

    async def list_workers(self) -> list[WorkerInfo]:
        async def op(conn: aiosqlite.Connection) -> list[Any]:
            now = time.time()
            await conn.execute("DELETE FROM workers WHERE expires_at <= ?", (now,))
            return list(await conn.execute_fetchall("SELECT info FROM workers ORDER BY name"))

        infos: list[WorkerInfo] = [json.loads(row[0]) for row in await self._run(op)]
        return infos

    async def send_command(self, worker: str, command: dict[str, Any]) -> None:
        encoded = json.dumps(command)

        async def op(conn: aiosqlite.Connection) -> None:
            await conn.execute("INSERT INTO commands (worker, command) VALUES (?, ?)", (worker, encoded))

        await self._run(op)

    async def receive_commands(self, worker: str) -> list[dict[str, Any]]:
        async def op(conn: aiosqlite.Connection) -> list[Any]:
            return list(
                await conn.execute_fetchall(
                    "DELETE FROM commands WHERE worker = ? RETURNING id, command", (worker,)
                )
            )

        rows = sorted(await self._run(op))
        return [json.loads(command) for _, command in rows]


__all__ = [
    "DEFAULT_BUSY_TIMEOUT_S",
    "DEFAULT_MAX_POLL_INTERVAL_S",
    "DEFAULT_POLL_INTERVAL_S",
    "SQLiteDriver",
]
