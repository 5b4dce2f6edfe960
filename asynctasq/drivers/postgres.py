"""PostgreSQL driver (asyncpg): one-statement batch claims with ``FOR UPDATE SKIP LOCKED``.

Tables, all in ``schema`` and named after ``table`` (default ``public.asynctasq_tasks``):

- ``<table>``: one row per message. ``visible_at`` is when a waiting row may be claimed (its run
  time) and, while the row is leased, when the lease expires. One b-tree on
  ``(queue, visible_at, id)`` therefore serves the whole claim: a range scan up to ``now()``
  returns ready rows and expired leases alike, with no ``OR`` and no second probe.
  ``lease_token`` fences ack/release/extend/fail.
- ``<table>_failed`` (dead letters), ``<table>_results``, ``<table>_workers``,
  ``<table>_commands`` and ``<table>_schema_version``.

Round trips: enqueue 1 (INSERT + ``pg_notify`` in one statement), a batch enqueue 1 (UNNEST),
a batch claim 1, a batch ack 1. Wake-ups travel by LISTEN/NOTIFY on a dedicated connection,
re-opened after a loss; a fallback poll covers the gap.

The schema is versioned: ``await driver.migrate()`` (``python -m asynctasq migrate --driver
postgres``) creates or upgrades it. ``connect()`` creates it when none of it exists yet, and
refuses to run against an older version::

    driver = PostgresDriver(dsn="postgresql://app@db/app", schema="jobs")
    async with driver:
        await driver.enqueue("default", b"...")
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

from asynctasq.constants import (
    DEFAULT_FAILED_RETENTION_S,
    DEFAULT_LEASE_S,
    DEFAULT_POSTGRES_DSN,
    DEFAULT_POSTGRES_MAX_POOL_SIZE,
    DEFAULT_POSTGRES_MIN_POOL_SIZE,
    DEFAULT_POSTGRES_SCHEMA,
    DEFAULT_POSTGRES_TABLE,
    DEFAULT_RECONNECT_TIMEOUT_S,
)
from asynctasq.drivers._postgres_schema import MIGRATE_HINT, MIGRATIONS, SCHEMA_VERSION
from asynctasq.drivers._reconnect import Reconnect, one_line
from asynctasq.drivers._sql import check_version, int_ids, pending, validate_identifier
from asynctasq.drivers._wait import Waiter, WakeHub, queue_key, result_key
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
from asynctasq.errors import BrokerError, ConfigError, DriverError, DriverNotAvailable, SchemaError
from asynctasq.utils.urls import redact_url

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise DriverNotAvailable('the postgres driver needs asyncpg: pip install "asynctasq[postgres]"') from exc

log = logging.getLogger(__name__)
T = TypeVar("T")


def _quiet_pool_floor(record: logging.LogRecord) -> bool:
    """Drop asyncpg's "Failed to restore the pool connection floor" warnings: during an outage
    the pool logs one with a full traceback per retry, while ``Reconnect`` already reports the
    outage once when it starts and once when it ends (tests/test_chaos.py: broker restart)."""
    return not record.getMessage().startswith("Failed to restore the pool connection floor")


logging.getLogger("asyncpg.pool").addFilter(_quiet_pool_floor)

DEFAULT_POLL_INTERVAL_S = 1.0
"""Fallback poll of a waiting dequeue, in case a notification is lost."""
RETENTION_SWEEP_INTERVAL_S = 60.0
CONNECT_TIMEOUT_S = 10.0
LISTENER_RETRY_MAX_S = 2.0
TABLE_NAME_MAX_LEN = 40
_NOTIFY_PAYLOAD_MAX = 7000
_SERVER_SETTINGS = {"application_name": "asynctasq", "jit": "off"}
_LOST = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.TooManyConnectionsError,
)
"""A lost, refused or broken connection (a restart, a failover): retried with backoff."""
_DB_ERRORS = (*_LOST, asyncpg.PostgresError)
_HINT = "start PostgreSQL there or point --postgres-dsn / ASYNCTASQ_POSTGRES_DSN at a running server"


class PostgresDriver(BaseDriver):
    """Queues in PostgreSQL tables.

    Arguments: ``dsn`` (libpq URL), ``schema`` and ``table`` (validated identifiers),
    ``min_pool_size`` / ``max_pool_size``, ``lease_seconds``, ``max_message_bytes``,
    ``poll_interval_s`` (fallback poll of a waiting dequeue, in case a notification is lost),
    ``failed_retention_s`` (0 keeps failed entries forever), ``reconnect_timeout_s`` (how long an
    operation retries a lost connection before it raises :class:`BrokerUnavailable`).
    """

    name = "postgres"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"stats", "failed", "results", "workers", "control", "purge", "cancel", "migrations", "fencing"}
    )
    shield_claims = False  # a cancelled claim gives back by its token (_fetch_claim)

    def __init__(
        self,
        *,
        dsn: str = DEFAULT_POSTGRES_DSN,
        schema: str = DEFAULT_POSTGRES_SCHEMA,
        table: str = DEFAULT_POSTGRES_TABLE,
        min_pool_size: int = DEFAULT_POSTGRES_MIN_POOL_SIZE,
        max_pool_size: int = DEFAULT_POSTGRES_MAX_POOL_SIZE,
        lease_seconds: float = DEFAULT_LEASE_S,
        max_message_bytes: int | None = None,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        failed_retention_s: float = DEFAULT_FAILED_RETENTION_S,
        reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S,
    ) -> None:
        super().__init__(lease_seconds=lease_seconds, max_message_bytes=max_message_bytes)
        self.dsn = dsn
        self.schema = validate_identifier(schema, "schema", "postgres")
        self.table = validate_identifier(table, "table", "postgres", TABLE_NAME_MAX_LEN)
        if min_pool_size < 0 or max_pool_size < max(min_pool_size, 1):
            raise ConfigError("postgres pool sizes need 0 <= min_pool_size <= max_pool_size, max >= 1")
        self.min_pool_size = min_pool_size
        self.max_pool_size = max_pool_size
        self.poll_interval_s = poll_interval_s
        self.failed_retention_s = failed_retention_s
        channel = f"{schema}.{table}"
        if len(channel) > 60:
            channel = "asynctasq_" + hashlib.sha1(channel.encode()).hexdigest()[:32]
        self.channel = channel
        self._pool: Any = None
        self._listener: Any = None
        self._listener_lock = asyncio.Lock()
        self._listener_task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_sweep = 0.0
        self._sql = _Statements(f'"{self.schema}"', self.table)
        self._reconnect = Reconnect(
            f"PostgreSQL at {redact_url(dsn)}",
            _HINT,
            _LOST,
            timeout_s=reconnect_timeout_s,
            on_lost=self._drop_connections,
        )

    def describe(self) -> str:
        return f"postgres:{redact_url(self.dsn)} ({self.schema}.{self.table})"

    def wake_scope(self) -> str:
        return f"{self.dsn}|{self.schema}.{self.table}"

    async def _db(self, what: str, op: Callable[[Any], Awaitable[T]]) -> T:
        """``op(pool)``: a lost connection is retried with backoff (``Reconnect``); any other
        database error becomes a :class:`BrokerError` naming ``what`` failed."""

        try:
            try:
                return await op(self._p)  # the hot path: one try, no wrapper
            except _LOST as exc:
                return await self._reconnect.run(lambda: op(self._p), failed=exc)
        except asyncpg.PostgresError as exc:
            raise BrokerError(f"postgres {what} failed: {one_line(exc)}") from exc

    async def _drop_connections(self, _exc: BaseException) -> None:
        """After a lost connection: the pool's other idle connections are likely dead too."""
        pool = self._pool
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.expire_connections()

    # -- lifecycle -------------------------------------------------------------------------

    async def _open(self) -> Any:
        """A new connection outside the pool (migrations, the listener)."""
        try:
            return await asyncpg.connect(
                self.dsn, timeout=CONNECT_TIMEOUT_S, server_settings=_SERVER_SETTINGS
            )
        except (TimeoutError, *_DB_ERRORS) as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: BaseException) -> DriverError:
        if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
            return BrokerError(
                f"PostgreSQL at {redact_url(self.dsn)} refused the credentials ({one_line(exc)}): "
                "check the user and password in --postgres-dsn / ASYNCTASQ_POSTGRES_DSN"
            )
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            return BrokerError(
                f"PostgreSQL at {redact_url(self.dsn)}: {one_line(exc)}: create the database or "
                "name an existing one in --postgres-dsn"
            )
        return self._reconnect.unavailable(exc)

    async def connect(self) -> None:
        if self._pool is not None:
            return
        self._closing = False
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.min_pool_size,
                max_size=self.max_pool_size,
                timeout=CONNECT_TIMEOUT_S,
                server_settings=_SERVER_SETTINGS,
                reset=_keep_session,
            )
        except (TimeoutError, *_DB_ERRORS) as exc:
            raise self._unreachable(exc) from None
        try:
            async with pool.acquire() as conn:
                await self._check_schema(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def disconnect(self) -> None:
        await self._settle_background()
        self._closing = True
        task, self._listener_task = self._listener_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            with contextlib.suppress(Exception):
                await listener.close(timeout=2)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        self.hub.wake_all()

    @property
    def _p(self) -> Any:
        if self._pool is None:
            raise DriverError("the postgres driver is not connected: await driver.connect() first")
        return self._pool

    # -- migrations ------------------------------------------------------------------------

    async def schema_version(self, conn: Any) -> int | None:
        """The applied schema version, or None when the version table does not exist."""
        exists = await conn.fetchval("SELECT to_regclass($1)", self._sql.version_regclass)
        if exists is None:
            return None
        version = await conn.fetchval(f"SELECT max(version) FROM {self._sql.version_table}")
        return int(version or 0)

    async def _check_schema(self, conn: Any) -> None:
        version = await self.schema_version(conn)
        if version is None:
            tasks = await conn.fetchval("SELECT to_regclass($1)", self._sql.tasks_regclass)
            if tasks is not None:
                raise SchemaError(
                    f"table {self.schema}.{self.table} exists without a schema version table; "
                    "it was not made by asynctasq: choose another postgres_table"
                )
            await self._migrate(conn, None)  # a fresh database: create the schema
            return
        check_version(version, SCHEMA_VERSION, f"{self.schema}.{self.table}", MIGRATE_HINT)

    async def migrate(self, target: int | None = None) -> list[str]:
        """Create or upgrade the schema up to ``target`` (default: the latest); return what ran."""
        if self._pool is not None:
            async with self._pool.acquire() as conn:
                return await self._migrate(conn, target)
        conn = await self._open()
        try:
            return await self._migrate(conn, target)
        finally:
            await conn.close()

    async def _migrate(self, conn: Any, target: int | None) -> list[str]:
        names = {"s": f'"{self.schema}"', "t": f'"{self.table}"', "x": self.table}
        applied: list[str] = []
        async with conn.transaction():
            # one migrator at a time per table set; others wait, then find the work done
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.channel)
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._sql.version_table} ("
                "version integer PRIMARY KEY, description text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {self._sql.version_table}")
            for version, description, statements in pending(MIGRATIONS, current, target):
                for statement in statements:
                    await conn.execute(statement.format(**names))
                await conn.execute(
                    f"INSERT INTO {self._sql.version_table} (version, description) VALUES ($1, $2)",
                    version,
                    description,
                )
                applied.append(f"{version}: {description}")
        if applied:
            log.info("postgres schema %s.%s: applied %s", self.schema, self.table, ", ".join(applied))
        return applied

    # -- wake-ups --------------------------------------------------------------------------

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        kind, _, rest = payload.partition(":")
        if kind == "q":
            self.hub.wake([queue_key(rest)])
        elif kind == "r":
            self.hub.wake([result_key(t) for t in rest.split(",")])
        else:
            self.hub.wake([WakeHub.ALL])

    def _on_listener_lost(self, _conn: Any) -> None:
        if self._closing:
            return
        log.warning("postgres LISTEN connection lost; reconnecting")
        self._listener = None
        self.hub.wake_all()
        if self._listener_task is None or self._listener_task.done():
            self._listener_task = asyncio.get_running_loop().create_task(self._relisten())

    async def _relisten(self) -> None:
        delay = 0.05
        while not self._closing:
            try:
                await self._ensure_listener()
            except DriverError as exc:
                log.warning("postgres LISTEN reconnect failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, LISTENER_RETRY_MAX_S)
            else:
                self.hub.wake_all()  # something may have been missed while we were away
                return

    async def _ensure_listener(self) -> None:
        """Open the dedicated LISTEN connection (not from the pool) if it is not open."""
        if self._listener is not None and not self._listener.is_closed():
            return
        async with self._listener_lock:
            if self._listener is not None and not self._listener.is_closed():
                return
            conn = await self._open()
            try:
                await conn.add_listener(self.channel, self._on_notify)
            except _DB_ERRORS as exc:
                await conn.close()
                raise self._unreachable(exc) from None
            conn.add_termination_listener(self._on_listener_lost)
            self._listener = conn

    def _listening(self) -> bool:
        return self._listener is not None and not self._listener.is_closed()

    async def _wait_listening(self) -> None:
        """Start the listener for a wait; while it cannot start, the fallback poll carries on."""
        if self._listening() or self._closing:
            return
        if self._listener_task is not None and not self._listener_task.done():
            return  # being re-opened: it wakes every waiter when it is back
        try:
            await self._ensure_listener()
        except DriverError as exc:
            log.warning("postgres LISTEN unavailable (%s); polling until it is back", exc)
            self._listener_task = asyncio.get_running_loop().create_task(self._relisten())

    # -- contract --------------------------------------------------------------------------

    async def _enqueue(self, item: EnqueueItem) -> str:
        sql = self._sql.enqueue
        task_id = await self._db(
            "enqueue", lambda p: p.fetchval(sql, item.queue, float(item.delay), item.body, self.channel)
        )
        return str(task_id)

    async def _enqueue_many(self, items: Sequence[EnqueueItem]) -> list[str]:
        queues = [i.queue for i in items]
        delays = [float(i.delay) for i in items]
        bodies = [i.body for i in items]
        sql = self._sql.enqueue_many
        ids = await self._db("enqueue", lambda p: p.fetchval(sql, queues, delays, bodies, self.channel))
        return [str(i) for i in ids]

    async def _claim(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        token = secrets.randbits(63)
        str_token = str(token)
        lease = self.lease_seconds
        if len(queues) == 1:
            queue = queues[0]
            args: tuple[Any, ...] = (self._sql.claim_one, queue, limit, lease, token)
            rows = await self._db("dequeue", lambda p: self._fetch_claim(p, args, queues))
            return [Delivery(str(r[0]), queue, r[1], str_token, r[2]) for r in rows]
        args = (self._sql.claim_many, list(queues), limit, lease, token)
        rows = await self._db("dequeue", lambda p: self._fetch_claim(p, args, queues))
        return [Delivery(str(r[0]), r[1], r[2], str_token, r[3]) for r in rows]

    async def _fetch_claim(self, pool: Any, args: tuple[Any, ...], queues: Sequence[str]) -> list[Any]:
        """``pool.fetch(*args)`` for a claim whose lease token is ``args[4]``, except that a
        caller cancelled meanwhile leaves no lease behind: the give-back by that token runs on
        the claim's own connection, which asyncpg holds until the cancelled statement has
        ended, so it lands after the claim whether or not the claim committed."""
        con = await pool.acquire()
        try:
            rows: list[Any] = await con.fetch(*args)
        except asyncio.CancelledError:
            self._in_background(self._unlease_token(pool, con, args[4], queues))
            raise
        except BaseException:
            await pool.release(con)
            raise
        try:
            await pool.release(con)
        except asyncio.CancelledError:
            self._in_background(self._unlease_token(pool, None, args[4], queues))
            raise
        return rows

    async def _unlease_token(self, pool: Any, con: Any, token: int, queues: Sequence[str]) -> None:
        """Give back, uncounted, what the claim of ``token`` leased (a cancelled dequeue)."""
        sql, names = self._sql.unlease_token, list(queues)
        try:
            if con is None:
                given = await pool.fetchval(sql, token, names, self.channel)
            else:
                try:
                    given = await con.fetchval(sql, token, names, self.channel)
                finally:
                    await pool.release(con)
        except _DB_ERRORS as exc:  # their leases expire instead
            log.warning("could not give back what a cancelled dequeue leased: %s", one_line(exc))
            return
        if given:
            self.wake_queues(queues)

    async def _pause(self, waiter: Waiter, queues: Sequence[str], left: float) -> None:
        """Until a NOTIFY (or an in-process wake-up), the next delayed message or lease
        falling due, the fallback poll, or ``left`` seconds."""
        if not self._listening():
            await self._wait_listening()
        timeout = min(left, self.poll_interval_s)
        if queues:
            names = list(queues)
            sql = self._sql.next_due
            next_due = await self._db("dequeue", lambda p: p.fetchval(sql, names))
            if next_due is not None:
                timeout = min(timeout, max(float(next_due), 0.001))
        await waiter.sleep(timeout)

    @staticmethod
    def _held(deliveries: Sequence[Delivery], row: Any) -> list[Delivery]:
        """From a ``(count, ids, tokens)`` row of a fenced batch statement."""
        if row[0] == len(deliveries):
            return list(deliveries)
        return still_held(deliveries, zip(map(str, row[1] or ()), map(str, row[2] or ()), strict=True))

    async def _ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        ids = [int(d.id) for d in deliveries]
        tokens = [int(d.token) for d in deliveries]
        sql = self._sql.ack
        return self._held(deliveries, await self._db("ack", lambda p: p.fetchrow(sql, ids, tokens)))

    async def _complete(
        self, deliveries: Sequence[Delivery], results: Sequence[tuple[str, bytes]], results_ttl: float
    ) -> list[Delivery]:
        """Results stored and messages deleted by one statement: atomic, one round trip."""
        task_ids, payloads, notices = _result_rows(results)
        ids = [int(d.id) for d in deliveries]
        tokens = [int(d.token) for d in deliveries]
        sql = self._sql.complete
        row = await self._db(
            "ack",
            lambda p: p.fetchrow(
                sql, ids, tokens, task_ids, payloads, float(results_ttl), self.channel, notices
            ),
        )
        self.wake_results(task_ids)
        await self._sweep()
        return self._held(deliveries, row)

    async def _release(self, delivery: Delivery, delay: float, body: bytes | None) -> bool:
        sql = self._sql.release
        args = (int(delivery.id), int(delivery.token), float(delay), body, self.channel)
        return await self._db("release", lambda p: p.fetchval(sql, *args)) is not None

    async def _extend(self, deliveries: Sequence[Delivery], seconds: float) -> list[Delivery]:
        ids = [int(d.id) for d in deliveries]
        tokens = [int(d.token) for d in deliveries]
        sql = self._sql.extend
        row = await self._db("extend", lambda p: p.fetchrow(sql, ids, tokens, float(seconds)))
        return self._held(deliveries, row)

    async def _fail(self, delivery: Delivery, error: str) -> bool:
        sql = self._sql.fail
        args = (int(delivery.id), int(delivery.token), error)
        status = await self._db("failure record", lambda p: p.execute(sql, *args))
        await self._sweep()
        return _count(status) == 1

    # -- optional --------------------------------------------------------------------------

    async def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep >= RETENTION_SWEEP_INTERVAL_S:
            self._last_sweep = now
            await self.sweep()

    async def peek(self, queue: str, limit: int = 100) -> list[tuple[str, bytes]]:
        validate_queue_name(queue)
        rows = await self._db("peek", lambda p: p.fetch(self._sql.peek, queue, limit))
        return [(str(r[0]), bytes(r[1])) for r in rows]

    async def maintain(self) -> None:
        await self.sweep()

    async def sweep(self) -> None:
        """Retention: delete expired results and failed entries older than ``failed_retention_s``.

        Runs by itself at most once a minute from ``fail`` and ``store_results``.
        """
        await self._db("retention sweep", lambda p: p.execute(self._sql.sweep_results))
        if self.failed_retention_s > 0:
            keep = float(self.failed_retention_s)
            await self._db("retention sweep", lambda p: p.execute(self._sql.sweep_failed, keep))

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        for q in queues:
            validate_queue_name(q)
        out = {q: QueueStats(ready=0, delayed=0, leased=0, failed=0) for q in queues}
        names = list(queues)
        for row in await self._db("stats", lambda p: p.fetch(self._sql.stats, names)):
            out[row[0]] = QueueStats(ready=row[1], delayed=row[2], leased=row[3], failed=row[4])
        return out

    async def purge(self, queue: str) -> int:
        validate_queue_name(queue)
        return _count(await self._db("purge", lambda p: p.execute(self._sql.purge, queue)))

    async def oldest_waiting(self, queues: Sequence[str]) -> dict[str, float | None]:
        names = list(dict.fromkeys(validate_queue_name(q) for q in queues))
        rows = await self._db("oldest waiting", lambda p: p.fetch(self._sql.oldest_waiting, names))
        return {r[0]: (None if r[1] is None else max(float(r[1]), 0.0)) for r in rows}

    async def list_queues(self) -> list[str]:
        rows = await self._db("list queues", lambda p: p.fetch(self._sql.list_queues))
        return [r[0] for r in rows]

    async def cancel(self, queue: str, message_id: str) -> bool:
        validate_queue_name(queue)
        ids = int_ids([message_id])
        if not ids:
            return False
        sql = self._sql.cancel
        return _count(await self._db("cancel", lambda p: p.execute(sql, ids[0], queue))) == 1

    async def failed_list(self, queue: str | None = None, limit: int = 100) -> list[FailedEntry]:
        rows = await self._db("failed list", lambda p: p.fetch(self._sql.failed_list, queue, limit))
        return [FailedEntry(id=str(r[0]), queue=r[1], body=r[2], error=r[3], failed_at=r[4]) for r in rows]

    @staticmethod
    def _ids(ids: Iterable[str] | None) -> list[int] | None:
        return None if ids is None else int_ids(ids)

    async def failed_requeue(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        wanted = self._ids(ids)
        sql = self._sql.failed_requeue
        row = await self._db("failed requeue", lambda p: p.fetchrow(sql, wanted, queue, self.channel))
        if row[0]:
            self.hub.wake_all()
        return int(row[0])

    async def failed_purge(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        wanted = self._ids(ids)
        return _count(
            await self._db("failed purge", lambda p: p.execute(self._sql.failed_purge, wanted, queue))
        )

    async def store_results(self, results: Sequence[tuple[str, bytes]], ttl: float) -> None:
        if not results:
            return
        task_ids, payloads, notices = _result_rows(results)
        sql = self._sql.store_results
        await self._db(
            "result store", lambda p: p.execute(sql, task_ids, payloads, float(ttl), self.channel, notices)
        )
        self.wake_results(task_ids)
        await self._sweep()

    async def _read_result(self, task_id: str) -> bytes | None:
        payload: bytes | None = await self._db(
            "result read", lambda p: p.fetchval(self._sql.get_result, task_id)
        )
        return payload

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        args = (info["name"], json.dumps(info), float(ttl))
        await self._db("worker registry", lambda p: p.execute(self._sql.register_worker, *args))

    async def deregister_worker(self, name: str) -> None:
        await self._db("worker registry", lambda p: p.execute(self._sql.deregister_worker, name))

    async def list_workers(self) -> list[WorkerInfo]:
        rows = await self._db("worker registry", lambda p: p.fetch(self._sql.list_workers))
        return [json.loads(r[0]) for r in rows]

    async def send_command(self, worker: str, command: dict[str, Any]) -> None:
        encoded = json.dumps(command)
        await self._db("command", lambda p: p.execute(self._sql.send_command, worker, encoded))

    async def receive_commands(self, worker: str) -> list[dict[str, Any]]:
        rows = await self._db("command", lambda p: p.fetch(self._sql.receive_commands, worker))
        return [json.loads(r[0]) for r in rows]


async def _keep_session(_conn: Any) -> None:
    """Pool reset hook: nothing to undo.

    asyncpg's default reset sends ``RESET ALL; UNLISTEN *; ...`` on every release: a second
    round trip per statement. Pool connections never LISTEN, SET or take session locks (the
    listener has its own connection, migrations use transaction-scoped locks), and asyncpg
    still rolls back a transaction left open before calling this.
    """


def _count(status: str) -> int:
    """The row count of a command status such as ``DELETE 3`` or ``INSERT 0 1``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


def _result_rows(results: Sequence[tuple[str, bytes]]) -> tuple[list[str], list[bytes], list[str]]:
    """Task ids, payloads (one per id: the last wins) and the NOTIFY payloads announcing them."""
    latest = dict(results)
    task_ids = list(latest)
    return task_ids, [bytes(p) for p in latest.values()], _chunk_ids(task_ids)


def _chunk_ids(task_ids: list[str]) -> list[str]:
    """NOTIFY payloads ``r:id1,id2,...`` under the 8000-byte limit."""
    out: list[str] = []
    current: list[str] = []
    size = 0
    for task_id in task_ids:
        if current and size + len(task_id) + 1 > _NOTIFY_PAYLOAD_MAX:
            out.append("r:" + ",".join(current))
            current, size = [], 0
        current.append(task_id)
        size += len(task_id) + 1
    if current:
        out.append("r:" + ",".join(current))
    return out


class _Statements:
    """Every statement of the driver, built once per table set (asyncpg prepares each)."""

    def __init__(self, s: str, x: str) -> None:
        t = f'{s}."{x}"'
        failed = f'{s}."{x}_failed"'
        results = f'{s}."{x}_results"'
        workers = f'{s}."{x}_workers"'
        commands = f'{s}."{x}_commands"'
        self.version_table = f'{s}."{x}_schema_version"'
        self.version_regclass = self.version_table
        self.tasks_regclass = t
        secs = "make_interval(secs => {})"
        # Claims, acks and lease extensions commit without waiting for the WAL flush: one that
        # a server crash loses only means the task runs again (the lease or the row comes
        # back), never that it is lost. Enqueues, retries and failures stay synchronous.
        nowait = "(SELECT set_config('synchronous_commit', 'off', true)) AS nowait"
        self.enqueue = f"""
            WITH ins AS (
                INSERT INTO {t} (queue, visible_at, body) VALUES ($1, now() + {secs.format("$2")}, $3)
                RETURNING id
            )
            SELECT id FROM ins, pg_notify($4, 'q:' || $1)
        """
        self.enqueue_many = f"""
            WITH ins AS (
                INSERT INTO {t} (queue, visible_at, body)
                SELECT q, now() + {secs.format("d")}, b
                FROM unnest($1::text[], $2::float8[], $3::bytea[]) AS i(q, d, b)
                RETURNING id
            ), woken AS (
                SELECT count(pg_notify($4, 'q:' || q)) AS n FROM (SELECT DISTINCT unnest($1::text[]) AS q) u
            )
            SELECT array_agg(id ORDER BY id) FROM ins, woken
        """
        # The update finds its rows by ``id = ANY(ARRAY(...))``, not by joining the CTE: a
        # prepared statement's generic plan may turn that join into a merge join that walks the
        # primary key from its first entry, which costs milliseconds behind delayed rows.
        self.claim_one = f"""
            WITH c AS (
                SELECT id, visible_at FROM {t}
                WHERE queue = $1 AND visible_at <= now()
                ORDER BY visible_at, id
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            ), u AS (
                UPDATE {t} SET lease_token = $4, visible_at = now() + {secs.format("$3")},
                    delivery_count = delivery_count + 1
                WHERE id = ANY(ARRAY(SELECT id FROM c))
                RETURNING id, body, delivery_count
            )
            SELECT u.id, u.body, u.delivery_count FROM u JOIN c USING (id), {nowait}
            ORDER BY c.visible_at, u.id
        """
        # One lateral index probe per queue, in the given order; the nested loop stops as soon
        # as the limit is filled, so later queues are only read when earlier ones run short.
        self.claim_many = f"""
            WITH c AS (
                SELECT x.id, x.visible_at, q.pos
                FROM unnest($1::text[]) WITH ORDINALITY AS q(name, pos)
                CROSS JOIN LATERAL (
                    SELECT id, visible_at FROM {t}
                    WHERE queue = q.name AND visible_at <= now()
                    ORDER BY visible_at, id
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED
                ) x
                LIMIT $2
            ), u AS (
                UPDATE {t} SET lease_token = $4, visible_at = now() + {secs.format("$3")},
                    delivery_count = delivery_count + 1
                WHERE id = ANY(ARRAY(SELECT id FROM c))
                RETURNING id, queue, body, delivery_count
            )
            SELECT u.id, u.queue, u.body, u.delivery_count FROM u JOIN c USING (id), {nowait}
            ORDER BY c.pos, c.visible_at, u.id
        """
        self.next_due = f"""
            SELECT extract(epoch FROM min(n.visible_at) - now())::float8
            FROM unnest($1::text[]) AS q(name)
            CROSS JOIN LATERAL (
                SELECT visible_at FROM {t} WHERE queue = q.name AND visible_at > now()
                ORDER BY visible_at LIMIT 1
            ) n
        """
        # fenced batches return (count, ids, tokens) of the rows they changed
        ack = f"""
                DELETE FROM {t} t USING unnest($1::bigint[], $2::bigint[]) AS a(id, token)
                WHERE t.id = a.id AND t.lease_token = a.token
                RETURNING t.id, a.token
        """
        held = "SELECT count(*)::int, array_agg(id), array_agg(token) FROM d"

        def upsert_results(ids: str, payloads: str, ttl: str) -> str:
            return f"""
                INSERT INTO {results} (task_id, payload, expires_at)
                SELECT i, p, now() + {secs.format(ttl)}
                FROM unnest({ids}::text[], {payloads}::bytea[]) AS r(i, p)
                ON CONFLICT (task_id) DO UPDATE SET payload = excluded.payload,
                    expires_at = excluded.expires_at
                RETURNING 1
            """

        self.ack = f"WITH d AS ({ack}) {held}, {nowait}"
        # results first in the same statement: both commit together, or neither does
        self.complete = f"""
            WITH ins AS ({upsert_results("$3", "$4", "$5")}), d AS ({ack}), woken AS (
                SELECT count(pg_notify($6, n)) AS n FROM unnest($7::text[]) AS n
            )
            {held}, (SELECT count(*) FROM ins) AS stored, (SELECT n FROM woken) AS woken
        """
        self.release = f"""
            WITH u AS (
                UPDATE {t} SET lease_token = NULL, visible_at = now() + {secs.format("$3")},
                    body = coalesce($4, body),
                    delivery_count = CASE WHEN $4::bytea IS NULL
                                          THEN greatest(delivery_count - 1, 0) ELSE 0 END
                WHERE id = $1 AND lease_token = $2
                RETURNING queue
            )
            SELECT 1 FROM u, pg_notify($5, 'q:' || u.queue)
        """
        self.unlease_token = f"""
            WITH u AS (
                UPDATE {t} SET lease_token = NULL, visible_at = now(),
                    delivery_count = greatest(delivery_count - 1, 0)
                WHERE queue = ANY($2::text[]) AND visible_at > now() AND lease_token = $1
                RETURNING queue
            )
            SELECT count(pg_notify($3, 'q:' || q)) FROM (SELECT DISTINCT queue AS q FROM u) g
        """
        self.extend = f"""
            WITH d AS (
                UPDATE {t} t SET visible_at = now() + {secs.format("$3")}
                FROM unnest($1::bigint[], $2::bigint[]) AS a(id, token)
                WHERE t.id = a.id AND t.lease_token = a.token
                RETURNING t.id, a.token
            )
            {held}, {nowait}
        """
        self.fail = f"""
            WITH d AS (DELETE FROM {t} WHERE id = $1 AND lease_token = $2 RETURNING id, queue, body)
            INSERT INTO {failed} (id, queue, body, error)
            SELECT id, queue, body, $3 FROM d
            ON CONFLICT (id) DO UPDATE SET body = excluded.body, error = excluded.error,
                failed_at = excluded.failed_at
        """
        self.stats = f"""
            SELECT q.name,
                coalesce(s.ready, 0)::int, coalesce(s.delayed, 0)::int, coalesce(s.leased, 0)::int,
                (SELECT count(*) FROM {failed} f WHERE f.queue = q.name)::int
            FROM unnest($1::text[]) AS q(name)
            LEFT JOIN LATERAL (
                SELECT count(*) FILTER (WHERE visible_at <= now()) AS ready,
                    count(*) FILTER (WHERE visible_at > now() AND lease_token IS NULL) AS delayed,
                    count(*) FILTER (WHERE visible_at > now() AND lease_token IS NOT NULL) AS leased
                FROM {t} WHERE queue = q.name
            ) s ON true
        """
        self.purge = f"DELETE FROM {t} WHERE queue = $1"
        self.peek = f"""
            SELECT id, body FROM {t} WHERE queue = $1 AND (lease_token IS NULL OR visible_at <= now())
            ORDER BY visible_at, id LIMIT $2
        """
        self.oldest_waiting = f"""
            SELECT q.name, extract(epoch FROM now() - (
                SELECT min(visible_at) FROM {t} WHERE queue = q.name AND visible_at <= now()
            ))::float8
            FROM unnest($1::text[]) AS q(name)
        """
        # a loose index scan: one probe per distinct queue, not a read of every row
        self.list_queues = f"""
            WITH RECURSIVE q AS (
                (SELECT queue FROM {t} ORDER BY queue LIMIT 1)
                UNION ALL
                SELECT (SELECT queue FROM {t} WHERE queue > q.queue ORDER BY queue LIMIT 1) FROM q
                WHERE q.queue IS NOT NULL
            )
            SELECT queue FROM q WHERE queue IS NOT NULL
            UNION SELECT DISTINCT queue FROM {failed} ORDER BY 1
        """
        self.cancel = (
            f"DELETE FROM {t} WHERE id = $1 AND queue = $2 AND (lease_token IS NULL OR visible_at <= now())"
        )
        where_failed = "($1::bigint[] IS NULL OR id = ANY($1)) AND ($2::text IS NULL OR queue = $2)"
        self.failed_list = f"""
            SELECT id, queue, body, error, extract(epoch FROM failed_at)::float8 FROM {failed}
            WHERE $1::text IS NULL OR queue = $1 ORDER BY failed_at, id LIMIT $2
        """
        self.failed_requeue = f"""
            WITH d AS (DELETE FROM {failed} WHERE {where_failed} RETURNING id, queue, body),
            ins AS (
                INSERT INTO {t} (id, queue, visible_at, body) OVERRIDING SYSTEM VALUE
                SELECT id, queue, now(), body FROM d
                RETURNING queue
            )
            SELECT count(*)::int,
                (SELECT count(pg_notify($3, 'q:' || q)) FROM (SELECT DISTINCT queue AS q FROM ins) u)
            FROM ins
        """
        self.failed_purge = f"DELETE FROM {failed} WHERE {where_failed}"
        self.sweep_failed = f"""
            DELETE FROM {failed} WHERE failed_at < now() - {secs.format("$1")}
        """
        self.store_results = f"""
            WITH ins AS ({upsert_results("$1", "$2", "$3")})
            SELECT count(*), (SELECT count(pg_notify($4, n)) FROM unnest($5::text[]) AS n) FROM ins
        """
        self.get_result = f"SELECT payload FROM {results} WHERE task_id = $1 AND expires_at > now()"
        self.sweep_results = f"""
            DELETE FROM {results} WHERE task_id IN (
                SELECT task_id FROM {results} WHERE expires_at <= now() LIMIT 10000
            )
        """
        self.register_worker = f"""
            INSERT INTO {workers} (name, info, expires_at) VALUES ($1, $2::jsonb, now() + {secs.format("$3")})
            ON CONFLICT (name) DO UPDATE SET info = excluded.info, expires_at = excluded.expires_at
        """
        self.deregister_worker = f"""
            WITH w AS (DELETE FROM {workers} WHERE name = $1)
            DELETE FROM {commands} WHERE worker = $1
        """
        self.list_workers = f"""
            WITH gone AS (DELETE FROM {workers} WHERE expires_at <= now())
            SELECT info::text FROM {workers} WHERE expires_at > now() ORDER BY name
        """
        self.send_command = f"INSERT INTO {commands} (worker, command) VALUES ($1, $2::jsonb)"
        self.receive_commands = f"""
            WITH d AS (DELETE FROM {commands} WHERE worker = $1 RETURNING id, command)
            SELECT command::text FROM d ORDER BY id
        """


__all__ = ["SCHEMA_VERSION", "PostgresDriver", "validate_identifier"]
