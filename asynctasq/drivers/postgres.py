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
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from asynctasq.config import redact_url
from asynctasq.drivers.base import (
    DEFAULT_LEASE_S,
    BaseDriver,
    Delivery,
    EnqueueItem,
    FailedEntry,
    QueueStats,
    WorkerInfo,
    validate_queue_name,
)
from asynctasq.errors import ConfigError, DriverError, DriverNotAvailable

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise DriverNotAvailable('the postgres driver needs asyncpg: pip install "asynctasq[postgres]"') from exc

if TYPE_CHECKING:
    from asynctasq.config import Config

log = logging.getLogger(__name__)

DEFAULT_DSN = "postgresql://postgres@localhost:5432/postgres"
DEFAULT_SCHEMA = "public"
DEFAULT_TABLE = "asynctasq_tasks"
DEFAULT_POLL_INTERVAL_S = 1.0
"""Fallback poll of a waiting dequeue, in case a notification is lost."""
DEFAULT_FAILED_RETENTION_S = 7 * 24 * 3600.0
"""Failed-registry entries older than this are deleted (0 keeps them forever)."""
RETENTION_SWEEP_INTERVAL_S = 60.0
CONNECT_TIMEOUT_S = 10.0
LISTENER_RETRY_MAX_S = 2.0
TABLE_NAME_MAX_LEN = 40
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NOTIFY_PAYLOAD_MAX = 7000
_ALL = "*"
_SERVER_SETTINGS = {"application_name": "asynctasq", "jit": "off"}
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
"""What a lost connection or a failed statement raises; surfaced as :class:`DriverError`."""


def validate_identifier(value: str, what: str, max_len: int = 63) -> str:
    """Return ``value`` if it is a plain SQL identifier of at most ``max_len`` characters."""
    if not isinstance(value, str) or len(value) > max_len or not _IDENTIFIER_RE.match(value):
        raise ConfigError(
            f"invalid postgres {what} {value!r}: use 1-{max_len} letters, digits and _, "
            "not starting with a digit"
        )
    return value


# -- migrations ------------------------------------------------------------------------------
# Each entry: (version, description, statements). {s} is the quoted schema, {t} the quoted
# table name prefix: f'"{table}"', and {x} the raw table name for derived names. Never edit a
# shipped migration; append a new one.

_MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "tasks and failed tables",
        [
            """
            CREATE TABLE {s}.{t} (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                queue text NOT NULL,
                visible_at timestamptz NOT NULL,
                lease_token bigint,
                delivery_count integer NOT NULL DEFAULT 0,
                body bytea NOT NULL
            ) WITH (
                fillfactor = 80,
                autovacuum_vacuum_scale_factor = 0.01,
                autovacuum_vacuum_threshold = 1000,
                autovacuum_vacuum_insert_scale_factor = 0.05,
                autovacuum_analyze_scale_factor = 0.02,
                autovacuum_vacuum_cost_delay = 0
            )
            """,
            'CREATE INDEX "{x}_claim" ON {s}.{t} (queue, visible_at, id)',
            """
            CREATE TABLE {s}."{x}_failed" (
                id bigint PRIMARY KEY,
                queue text NOT NULL,
                body bytea NOT NULL,
                error text NOT NULL,
                failed_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            'CREATE INDEX "{x}_failed_queue" ON {s}."{x}_failed" (queue, failed_at)',
            'CREATE INDEX "{x}_failed_at" ON {s}."{x}_failed" (failed_at)',
        ],
    ),
    (
        2,
        "results, worker registry and commands tables",
        [
            """
            CREATE TABLE {s}."{x}_results" (
                task_id text PRIMARY KEY,
                payload bytea NOT NULL,
                expires_at timestamptz NOT NULL
            ) WITH (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.02)
            """,
            'CREATE INDEX "{x}_results_expiry" ON {s}."{x}_results" (expires_at)',
            """
            CREATE TABLE {s}."{x}_workers" (
                name text PRIMARY KEY,
                info jsonb NOT NULL,
                expires_at timestamptz NOT NULL
            ) WITH (fillfactor = 50)
            """,
            """
            CREATE TABLE {s}."{x}_commands" (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                worker text NOT NULL,
                command jsonb NOT NULL
            )
            """,
            'CREATE INDEX "{x}_commands_worker" ON {s}."{x}_commands" (worker, id)',
        ],
    ),
]
SCHEMA_VERSION = _MIGRATIONS[-1][0]
MIGRATE_HINT = "run `python -m asynctasq migrate --driver postgres`"


class PostgresDriver(BaseDriver):
    """Queues in PostgreSQL tables.

    Arguments: ``dsn`` (libpq URL), ``schema`` and ``table`` (validated identifiers),
    ``min_pool_size`` / ``max_pool_size``, ``lease_seconds``, ``poll_interval_s`` (fallback poll
    of a waiting dequeue), ``failed_retention_s`` (0 keeps failed entries forever).
    """

    name = "postgres"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"stats", "failed", "results", "workers", "control", "purge"}
    )

    def __init__(
        self,
        *,
        dsn: str = DEFAULT_DSN,
        schema: str = DEFAULT_SCHEMA,
        table: str = DEFAULT_TABLE,
        min_pool_size: int = 1,
        max_pool_size: int = 10,
        lease_seconds: float = DEFAULT_LEASE_S,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        failed_retention_s: float = DEFAULT_FAILED_RETENTION_S,
    ) -> None:
        super().__init__(lease_seconds=lease_seconds)
        self.dsn = dsn
        self.schema = validate_identifier(schema, "schema")
        self.table = validate_identifier(table, "table", TABLE_NAME_MAX_LEN)
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
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._last_sweep = 0.0
        self._sql = _Statements(f'"{self.schema}"', self.table)

    @classmethod
    def from_config(cls, config: Config) -> PostgresDriver:
        return cls(
            dsn=config.postgres_dsn,
            schema=config.postgres_schema,
            table=config.postgres_table,
            min_pool_size=config.postgres_min_pool_size,
            max_pool_size=config.postgres_max_pool_size,
            lease_seconds=config.lease_seconds,
        )

    def describe(self) -> str:
        return f"postgres:{redact_url(self.dsn)} ({self.schema}.{self.table})"

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
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return DriverError(f"cannot connect to PostgreSQL at {redact_url(self.dsn)}: {reason}")

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
        self._wake(_ALL)

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
                raise DriverError(
                    f"table {self.schema}.{self.table} exists without a schema version table; "
                    "it was not made by asynctasq: choose another postgres_table"
                )
            await self._migrate(conn, None)  # a fresh database: create the schema
            return
        if version < SCHEMA_VERSION:
            raise DriverError(
                f"the asynctasq tables in {self.schema}.{self.table} are at schema version {version}, "
                f"this asynctasq needs {SCHEMA_VERSION}: {MIGRATE_HINT}"
            )
        if version > SCHEMA_VERSION:
            raise DriverError(
                f"the asynctasq tables in {self.schema}.{self.table} are at schema version {version}, "
                f"newer than this asynctasq knows ({SCHEMA_VERSION}): upgrade asynctasq"
            )

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
        target = SCHEMA_VERSION if target is None else target
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
            for version, description, statements in _MIGRATIONS:
                if version <= current or version > target:
                    continue
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

    def _wake(self, key: str) -> None:
        if key == _ALL:
            groups = list(self._waiters.values())
            self._waiters.clear()
        else:
            group = self._waiters.pop(key, None)
            groups = [group] if group else []
        for futures in groups:
            for fut in futures:
                if not fut.done():
                    fut.set_result(None)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        kind, _, rest = payload.partition(":")
        if kind == "q":
            self._wake("q:" + rest)
        elif kind == "r":
            for task_id in rest.split(","):
                self._wake("r:" + task_id)
        else:
            self._wake(_ALL)

    def _on_listener_lost(self, _conn: Any) -> None:
        if self._closing:
            return
        log.warning("postgres LISTEN connection lost; reconnecting")
        self._listener = None
        self._wake(_ALL)
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
                self._wake(_ALL)  # something may have been missed while we were away
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

    def _register(self, keys: Iterable[str]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for key in keys:
            self._waiters.setdefault(key, set()).add(fut)
        return fut

    def _unregister(self, keys: Iterable[str], fut: asyncio.Future[None]) -> None:
        for key in keys:
            group = self._waiters.get(key)
            if group is not None:
                group.discard(fut)
                if not group:
                    del self._waiters[key]

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

    async def enqueue(self, queue: str, body: bytes, delay: float = 0.0) -> str:
        validate_queue_name(queue)
        try:
            task_id = await self._p.fetchval(self._sql.enqueue, queue, float(delay), body, self.channel)
        except _DB_ERRORS as exc:
            raise DriverError(f"postgres enqueue failed: {exc}") from exc
        return str(task_id)

    async def enqueue_many(self, items: Sequence[EnqueueItem]) -> list[str]:
        if not items:
            return []
        queues = [validate_queue_name(i.queue) for i in items]
        delays = [float(i.delay) for i in items]
        bodies = [i.body for i in items]
        try:
            ids = await self._p.fetchval(self._sql.enqueue_many, queues, delays, bodies, self.channel)
        except _DB_ERRORS as exc:
            raise DriverError(f"postgres enqueue failed: {exc}") from exc
        return [str(i) for i in ids]

    async def _claim(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        token = secrets.randbits(63)
        try:
            if len(queues) == 1:
                queue = queues[0]
                rows = await self._p.fetch(self._sql.claim_one, queue, limit, self.lease_seconds, token)
                str_token = str(token)
                return [Delivery(str(r[0]), queue, r[1], str_token, r[2]) for r in rows]
            rows = await self._p.fetch(self._sql.claim_many, list(queues), limit, self.lease_seconds, token)
        except _DB_ERRORS as exc:
            raise DriverError(f"postgres dequeue failed: {exc}") from exc
        str_token = str(token)
        return [Delivery(str(r[0]), r[1], r[2], str_token, r[3]) for r in rows]

    async def dequeue(self, queues: Sequence[str], limit: int, wait: float) -> list[Delivery]:
        for q in queues:
            validate_queue_name(q)
        if limit <= 0 or not queues:
            return []
        if wait <= 0:
            return await self._claim(queues, limit)
        deadline = time.monotonic() + wait
        keys = ["q:" + q for q in queues]
        await self._wait_listening()
        while True:
            fut = self._register(keys)  # before the claim: a notify from now on is not lost
            try:
                got = await self._claim(queues, limit)
                now = time.monotonic()
                if got or now >= deadline:
                    return got
                timeout = min(deadline - now, self.poll_interval_s)
                try:
                    next_due = await self._p.fetchval(self._sql.next_due, list(queues))
                except _DB_ERRORS as exc:
                    raise DriverError(f"postgres dequeue failed: {exc}") from exc
                if next_due is not None:
                    timeout = min(timeout, max(float(next_due), 0.001))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(fut, timeout)
            finally:
                self._unregister(keys, fut)
            if not self._listening():
                await self._wait_listening()

    async def ack(self, deliveries: Sequence[Delivery]) -> int:
        if not deliveries:
            return 0
        ids = [int(d.id) for d in deliveries]
        tokens = [int(d.token) for d in deliveries]
        try:
            done: int = await self._p.fetchval(self._sql.ack, ids, tokens)
        except _DB_ERRORS as exc:
            raise DriverError(f"postgres ack failed: {exc}") from exc
        return done

    async def release(self, delivery: Delivery, delay: float = 0.0, body: bytes | None = None) -> bool:
        try:
            row = await self._p.fetchval(
                self._sql.release, int(delivery.id), int(delivery.token), float(delay), body, self.channel
            )
        except _DB_ERRORS as exc:
            raise DriverError(f"postgres release failed: {exc}") from exc
        return row is not None

    async def extend(self, deliveries: Sequence[Delivery], seconds: float | None = None) -> int:
        if not deliveries:
            return 0
        seconds = self.lease_seconds if seconds is None else seconds
        try:
            held: int = await self._p.fetchval(
                self._sql.extend,
                [int(d.id) for d in deliveries],
                [int(d.token) for d in deliveries],
                float(seconds),
            )
        except _DB_ERRORS as exc:
            raise DriverError(f"postgres extend failed: {exc}") from exc
        return held

    async def fail(self, delivery: Delivery, error: str) -> bool:
        try:
            status = await self._p.execute(self._sql.fail, int(delivery.id), int(delivery.token), error)
        except _DB_ERRORS as exc:
            raise DriverError(f"postgres could not record the failure: {exc}") from exc
        await self._sweep()
        return _count(status) == 1

    # -- optional --------------------------------------------------------------------------

    async def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep >= RETENTION_SWEEP_INTERVAL_S:
            self._last_sweep = now
            await self.sweep()

    async def sweep(self) -> None:
        """Retention: delete expired results and failed entries older than ``failed_retention_s``.

        Runs by itself at most once a minute from ``fail`` and ``store_results``.
        """
        await self._p.execute(self._sql.sweep_results)
        if self.failed_retention_s > 0:
            await self._p.execute(self._sql.sweep_failed, float(self.failed_retention_s))

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        for q in queues:
            validate_queue_name(q)
        out = {q: QueueStats(ready=0, delayed=0, leased=0, failed=0) for q in queues}
        for row in await self._p.fetch(self._sql.stats, list(queues)):
            out[row[0]] = QueueStats(ready=row[1], delayed=row[2], leased=row[3], failed=row[4])
        return out

    async def purge(self, queue: str) -> int:
        validate_queue_name(queue)
        return _count(await self._p.execute(self._sql.purge, queue))

    async def failed_list(self, queue: str | None = None, limit: int = 100) -> list[FailedEntry]:
        rows = await self._p.fetch(self._sql.failed_list, queue, limit)
        return [FailedEntry(id=str(r[0]), queue=r[1], body=r[2], error=r[3], failed_at=r[4]) for r in rows]

    @staticmethod
    def _ids(ids: Iterable[str] | None) -> list[int] | None:
        if ids is None:
            return None
        out = []
        for i in ids:
            with contextlib.suppress(ValueError):
                out.append(int(i))
        return out

    async def failed_requeue(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        row = await self._p.fetchrow(self._sql.failed_requeue, self._ids(ids), queue, self.channel)
        return int(row[0])

    async def failed_purge(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        return _count(await self._p.execute(self._sql.failed_purge, self._ids(ids), queue))

    async def store_results(self, results: Sequence[tuple[str, bytes]], ttl: float) -> None:
        if not results:
            return
        latest = dict(results)  # one row per task id, the last one wins
        task_ids = list(latest)
        payloads = [bytes(p) for p in latest.values()]
        notices = _chunk_ids(task_ids)
        await self._p.execute(self._sql.store_results, task_ids, payloads, float(ttl), self.channel, notices)
        await self._sweep()

    async def get_result(self, task_id: str, wait: float) -> bytes | None:
        payload: bytes | None = await self._p.fetchval(self._sql.get_result, task_id)
        if payload is not None or wait <= 0:
            return payload
        deadline = time.monotonic() + wait
        keys = ["r:" + task_id]
        await self._wait_listening()
        while True:
            fut = self._register(keys)
            try:
                payload = await self._p.fetchval(self._sql.get_result, task_id)
                now = time.monotonic()
                if payload is not None or now >= deadline:
                    return payload
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(fut, min(deadline - now, self.poll_interval_s))
            finally:
                self._unregister(keys, fut)
            if not self._listening():
                await self._wait_listening()

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        await self._p.execute(self._sql.register_worker, info["name"], json.dumps(info), float(ttl))

    async def deregister_worker(self, name: str) -> None:
        await self._p.execute(self._sql.deregister_worker, name)

    async def list_workers(self) -> list[WorkerInfo]:
        rows = await self._p.fetch(self._sql.list_workers)
        return [json.loads(r[0]) for r in rows]

    async def send_command(self, worker: str, command: dict[str, Any]) -> None:
        await self._p.execute(self._sql.send_command, worker, json.dumps(command))

    async def receive_commands(self, worker: str) -> list[dict[str, Any]]:
        rows = await self._p.fetch(self._sql.receive_commands, worker)
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
        self.ack = f"""
            WITH d AS (
                DELETE FROM {t} t USING unnest($1::bigint[], $2::bigint[]) AS a(id, token)
                WHERE t.id = a.id AND t.lease_token = a.token
                RETURNING 1
            )
            SELECT count(*)::int FROM d, {nowait}
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
        self.extend = f"""
            WITH e AS (
                UPDATE {t} t SET visible_at = now() + {secs.format("$3")}
                FROM unnest($1::bigint[], $2::bigint[]) AS a(id, token)
                WHERE t.id = a.id AND t.lease_token = a.token
                RETURNING 1
            )
            SELECT count(*)::int FROM e, {nowait}
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
            WITH ins AS (
                INSERT INTO {results} (task_id, payload, expires_at)
                SELECT i, p, now() + {secs.format("$3")} FROM unnest($1::text[], $2::bytea[]) AS r(i, p)
                ON CONFLICT (task_id) DO UPDATE SET payload = excluded.payload,
                    expires_at = excluded.expires_at
                RETURNING 1
            )
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
