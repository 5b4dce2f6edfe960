"""MySQL / MariaDB driver (aiomysql): batch claims with ``FOR UPDATE SKIP LOCKED``, touched by
primary key only::

    driver = MySQLDriver("mysql://app:secret@db:3306/app", table="jobs")
    async with driver:
        await driver.enqueue("default", b"...")

Needs MySQL >= 8.0.1 or MariaDB >= 10.6 (``SKIP LOCKED``), checked at connect. Tables and the
claim index are in :mod:`asynctasq.drivers._mysql_schema`; docs/drivers/mysql.md has the long
form. In short:

- A claim is a short transaction on one connection, in two round trips::

      START TRANSACTION;
      SELECT id, queue, body, deliveries FROM t WHERE queue = ? AND due <= UTC_TIMESTAMP(6)
        ORDER BY due, id LIMIT n FOR UPDATE SKIP LOCKED;
      -- second round trip
      UPDATE t SET token = <r> ^ id, deliveries = deliveries + 1, due = <now + lease>
        WHERE id IN (...); COMMIT

  The SELECT locks rows in the fixed index order ``(queue, due, id)`` and skips the rows other
  claimers hold, so claimers never wait on each other; the UPDATE reaches each locked row by
  primary key. MariaDB has no ``UPDATE ... RETURNING``; of the designs measured here this one
  is the fastest (a one-statement ``UPDATE`` joined to a ``SKIP LOCKED`` derived table, read
  back by the index, costs one round trip but 1.5x the server time: docs/drivers/mysql.md).
  A token is a fresh random number XOR the row id, so it differs for every delivery. Several
  queues are one locking ``SELECT`` per queue in the same round trip, in the order given.
- Sessions run at READ COMMITTED (no gap locks, so inserts never wait on a claim) in UTC.
  Errors 1213 (deadlock) and 1205 (lock wait timeout) roll the transaction back and are
  retried a few times with jitter; a rolled-back claim claimed nothing, so no task is claimed
  twice.
- Round trips: a batch enqueue 1 (multi-row INSERT, split by ``max_allowed_packet``), a batch
  claim 2, a batch ack 1 (MariaDB: ``DELETE ... RETURNING``; MySQL: ``SELECT ... FOR UPDATE``
  and ``DELETE`` in one transaction), a batch extend 1, a retry 1, a failure 1.
- No NOTIFY: a waiting dequeue probes ``MIN(due)`` per queue (an index lookup) with an adaptive
  interval (2 ms after work, growing to 50 ms, and 250 ms with jitter once no work came for
  2 s) and sleeps until the earliest delayed message or lease falls due; a producer in the
  same process wakes it at once. An idle worker's claims start with that probe too, so it
  costs the server a few read-only queries a second and no transactions.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import secrets
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from asynctasq.constants import (
    DEFAULT_FAILED_RETENTION_S,
    DEFAULT_LEASE_S,
    DEFAULT_MYSQL_BUSY_POLL_INTERVAL_S,
    DEFAULT_MYSQL_CONNECT_TIMEOUT_S,
    DEFAULT_MYSQL_DSN,
    DEFAULT_MYSQL_IDLE_AFTER_S,
    DEFAULT_MYSQL_MAX_POLL_INTERVAL_S,
    DEFAULT_MYSQL_MAX_POOL_SIZE,
    DEFAULT_MYSQL_POLL_INTERVAL_S,
    DEFAULT_MYSQL_TABLE,
    DEFAULT_RECONNECT_TIMEOUT_S,
)
from asynctasq.drivers._mysql_schema import (
    MIGRATE_HINT,
    MIGRATIONS,
    SCHEMA_VERSION,
    TABLE_SUFFIXES,
    VERSION_TABLE,
)
from asynctasq.drivers._reconnect import Reconnect, one_line
from asynctasq.drivers._sql import check_version, chunks, int_ids, latest, pending, validate_identifier
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
from asynctasq.errors import (
    BrokerError,
    ConfigError,
    DriverError,
    DriverNotAvailable,
    MessageTooLarge,
    SchemaError,
)
from asynctasq.utils.urls import redact_url

try:
    import aiomysql
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise DriverNotAvailable('the mysql driver needs aiomysql: pip install "asynctasq[mysql]"') from exc

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_MYSQL_VERSION = (8, 0, 1)
MIN_MARIADB_VERSION = (10, 6, 0)
TABLE_NAME_MAX_LEN = 40
"""Leaves room for the longest suffix (``_schema_version``) within MySQL's 64 characters."""
BATCH_ROWS = 1000
"""Rows per statement for batched acks, extends and lookups."""
PACKET_MARGIN_BYTES = 4096
"""Room for the SQL around the bodies within ``max_allowed_packet``."""
LOCK_RETRIES = 5
"""Retries of a statement that met a deadlock (1213) or a lock wait timeout (1205)."""
LOCK_RETRY_FIRST_S = 0.005
LOCK_WAIT_TIMEOUT_S = 10
"""The session's ``innodb_lock_wait_timeout``: only acks and extends can wait (on a claim)."""
MIGRATION_LOCK_TIMEOUT_S = 60
CLEANUP_INTERVAL_S = 30.0
"""Expired results and old failed entries are deleted at most this often."""
_LOST_CODES = frozenset({1040, 1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031})
"""Server errors that mean the connection is gone (or not there yet): reconnect and retry."""
_LOCK_CODES = frozenset({1205, 1213})
_CLIENT_FOUND_ROWS = 2
"""Protocol flag: UPDATE reports the rows it matched, not only those it changed."""
_DSN_OPTIONS = ("charset", "ssl", "ssl_ca", "ssl_verify", "unix_socket", "connect_timeout")
_TRUE = ("1", "true", "yes", "on", "require", "required")
_FALSE = ("0", "false", "no", "off", "disable", "disabled")


class PacketTooLarge(MessageTooLarge):
    """A message that cannot fit the server's ``max_allowed_packet``."""

    def __init__(self, size: int, limit: int, driver: str = "mysql") -> None:
        super().__init__(size, limit, driver)
        self.args = (
            f"task message of {size:,} bytes does not fit the MySQL server's max_allowed_packet "
            f"({limit:,} bytes, less room for the statement): raise it on the server "
            "(SET GLOBAL max_allowed_packet = 67108864, and in my.cnf) or pass large data by "
            "reference (a file path or an object-store key)",
        )

    def __str__(self) -> str:
        return str(self.args[0])


class _Lost(Exception):
    """A lost or refused connection (retried by :class:`Reconnect`)."""


class _QuietCursor(aiomysql.Cursor):  # type: ignore[misc]
    """aiomysql turns each server warning into a Python warning, with a ``SHOW WARNINGS`` round
    trip first; the driver's statements expect none worth that (notes such as "table exists")."""

    async def _show_warnings(self, conn: Any) -> None:
        return None


def parse_version(text: str) -> tuple[str, tuple[int, int, int]]:
    """``("MariaDB" | "MySQL", (major, minor, patch))`` from ``SELECT VERSION()``."""
    flavor = "MariaDB" if "mariadb" in text.lower() else "MySQL"
    head = text.split("-")[0]
    if flavor == "MariaDB" and text.startswith("5.5.5-"):  # the old replication prefix
        head = text.split("-")[1]
    numbers = []
    for part in head.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits or 0))
    while len(numbers) < 3:
        numbers.append(0)
    return flavor, (numbers[0], numbers[1], numbers[2])


def check_server_version(text: str) -> str:
    """Return the flavor of the server that said ``text``, or raise :class:`BrokerError`."""
    flavor, found = parse_version(text)
    need = MIN_MARIADB_VERSION if flavor == "MariaDB" else MIN_MYSQL_VERSION
    if found < need:
        raise BrokerError(
            f"the mysql driver needs MySQL >= {'.'.join(map(str, MIN_MYSQL_VERSION))} or MariaDB >= "
            f"{'.'.join(map(str, MIN_MARIADB_VERSION[:2]))} (for SKIP LOCKED), but the server is "
            f"{flavor} {'.'.join(map(str, found))}: upgrade the server"
        )
    return flavor


def parse_dsn(dsn: str) -> dict[str, Any]:
    """aiomysql connect keywords from ``mysql://user:password@host:port/db?charset=..&ssl=..``.

    User, password and database are percent-decoded (a password with ``@ : /`` is written
    ``%40 %3A %2F``). Query options: ``charset`` (default utf8mb4), ``ssl`` (true: verify the
    server with the system's CAs; false), ``ssl_ca`` (a CA file; implies ssl), ``ssl_verify``
    (false: encrypt without checking the certificate), ``unix_socket``, ``connect_timeout``."""
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"invalid mysql DSN {redact_url(dsn)}: {exc}") from None
    if parts.scheme not in ("mysql", "mariadb"):
        raise ConfigError(f"invalid mysql DSN {redact_url(dsn)}: it must start with mysql:// (or mariadb://)")
    db = unquote(parts.path.lstrip("/"))
    if not db or "/" in db:
        raise ConfigError(
            f"the mysql DSN {redact_url(dsn)} names no database: add one, as in mysql://user@host:3306/dbname"
        )
    options: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": port or 3306,
        "user": unquote(parts.username) if parts.username else "root",
        "password": unquote(parts.password) if parts.password is not None else "",
        "db": db,
        "charset": "utf8mb4",
    }
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - set(_DSN_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} in the mysql DSN: use {', '.join(_DSN_OPTIONS)}"
        )
    if "charset" in query:
        options["charset"] = query["charset"]
    if "unix_socket" in query:
        options["unix_socket"] = query["unix_socket"]
    if "connect_timeout" in query:
        try:
            options["connect_timeout"] = float(query["connect_timeout"])
        except ValueError:
            raise ConfigError("connect_timeout in the mysql DSN must be a number of seconds") from None
    use_ssl = _flag(query, "ssl", default="ssl_ca" in query)
    if use_ssl:
        context = ssl_module.create_default_context(cafile=query.get("ssl_ca") or None)
        if not _flag(query, "ssl_verify", default=True):
            context.check_hostname = False
            context.verify_mode = ssl_module.CERT_NONE
        options["ssl"] = context
    return options


def _flag(query: dict[str, str], key: str, *, default: bool) -> bool:
    value = query.get(key)
    if value is None:
        return default
    if value.lower() in _TRUE or value == "":
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(f"{key} in the mysql DSN must be true or false, not {value!r}")


def _ids(deliveries: Iterable[Delivery]) -> list[tuple[int, int]]:
    """(id, token) as integers; a delivery that is not one of ours matches nothing."""
    out = []
    for d in deliveries:
        try:
            out.append((int(d.id), int(d.token)))
        except (TypeError, ValueError):
            continue
    return out


def _marks(n: int) -> str:
    return ",".join(["%s"] * n)


def _chunks(items: Sequence[T], size: int = BATCH_ROWS) -> Iterable[Sequence[T]]:
    return chunks(items, size)


def _seconds(rows: Sequence[Any]) -> float | None:
    """The probe's microseconds as seconds (None: no row)."""
    value = rows[0][0] if rows else None
    return None if value is None else int(value) / 1_000_000


def _us(seconds: float) -> int:
    return max(int(seconds * 1_000_000), 0)


async def _results(cur: Any) -> list[tuple[int, list[Any]]]:
    """(affected rows, rows) of every statement of a multi-statement query, in order."""
    out = [(cur.rowcount, list(await cur.fetchall()))]
    while await cur.nextset():
        out.append((cur.rowcount, list(await cur.fetchall())))
    return out


class MySQLDriver(BaseDriver):
    """Queues in MySQL / MariaDB tables.

    Arguments:
        dsn: ``mysql://user:password@host:3306/dbname`` (see :func:`parse_dsn` for options).
        table: the tasks table; the others are named after it (validated identifier).
        max_pool_size / min_pool_size: the connection pool.
        lease_seconds / max_message_bytes: as for every driver; messages are also held to the
            server's ``max_allowed_packet``, read at connect.
        poll_interval_s / max_poll_interval_s / idle_after_s: the adaptive poll of a waiting
            dequeue (first interval after work; the interval once no work came for
            ``idle_after_s``). ``poll=False`` turns the periodic poll
            off: a waiting dequeue then wakes only for producers in this process and for the
            delayed messages and leases it saw falling due.
        reconnect_timeout_s: how long an operation retries a lost server before it raises.
        connect_timeout_s: how long one connection attempt (TCP and handshake) may take.
            ``connect()`` tries once: a server that is not there is a ``BrokerUnavailable``
            at once; only connections lost after that are retried (``reconnect_timeout_s``).
        failed_retention_s: failed entries older than this are deleted (0 keeps them).
    """

    name = "mysql"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"stats", "purge", "cancel", "failed", "results", "workers", "control", "migrations", "fencing"}
    )

    def __init__(
        self,
        dsn: str = DEFAULT_MYSQL_DSN,
        *,
        table: str = DEFAULT_MYSQL_TABLE,
        max_pool_size: int = DEFAULT_MYSQL_MAX_POOL_SIZE,
        min_pool_size: int = 1,
        lease_seconds: float = DEFAULT_LEASE_S,
        max_message_bytes: int | None = None,
        poll_interval_s: float = DEFAULT_MYSQL_POLL_INTERVAL_S,
        max_poll_interval_s: float = DEFAULT_MYSQL_MAX_POLL_INTERVAL_S,
        poll: bool = True,
        idle_after_s: float = DEFAULT_MYSQL_IDLE_AFTER_S,
        reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_MYSQL_CONNECT_TIMEOUT_S,
        failed_retention_s: float = DEFAULT_FAILED_RETENTION_S,
    ) -> None:
        super().__init__(lease_seconds=lease_seconds, max_message_bytes=max_message_bytes)
        self.dsn = dsn
        self._options = parse_dsn(dsn)
        self.table = validate_identifier(table, "table", "mysql", TABLE_NAME_MAX_LEN)
        if min_pool_size < 0 or max_pool_size < max(min_pool_size, 1):
            raise ConfigError("mysql pool sizes need 0 <= min_pool_size <= max_pool_size, max >= 1")
        if poll_interval_s <= 0 or max_poll_interval_s < poll_interval_s:
            raise ConfigError("mysql poll intervals need 0 < poll_interval_s <= max_poll_interval_s")
        self.max_pool_size = int(max_pool_size)
        self.min_pool_size = int(min_pool_size)
        self.poll_interval_s = float(poll_interval_s)
        self.max_poll_interval_s = float(max_poll_interval_s)
        self.poll = bool(poll)
        self.idle_after_s = float(idle_after_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.failed_retention_s = float(failed_retention_s)
        self.flavor: str | None = None
        """"MariaDB" or "MySQL", known after connect."""
        self.server_version: str | None = None
        self.max_allowed_packet: int | None = None
        self._returning = False
        """Whether the server has ``DELETE ... RETURNING`` / ``INSERT ... RETURNING`` (MariaDB)."""
        self._pool: Any = None
        self._connecting: asyncio.Lock | None = None
        self._closed = False
        self._poll = AdaptivePoll(
            self.poll_interval_s,
            max(min(DEFAULT_MYSQL_BUSY_POLL_INTERVAL_S, self.max_poll_interval_s), self.poll_interval_s),
        )
        self._active_at = time.monotonic()
        """When a claim last found work (or a probe saw some), for the idle back-off."""
        self._maybe_empty = False
        """The last claim found nothing and nothing woke us since: probe before claiming."""
        self._result_poll = AdaptivePoll(self.poll_interval_s, self.max_poll_interval_s)
        self._next_cleanup = 0.0
        self._claim_sql: dict[int, str] = {}
        self._probed: tuple[float, frozenset[str], float | None] | None = None
        """(when, queues, seconds from then to their next due row) of the last probe."""
        self._next_probe_at = 0.0
        """While idle, neither a claim nor a wait queries the server before this (monotonic)."""
        self._probe_sql: dict[int, str] = {}
        opts = self._options
        self._where = f"MySQL at {opts['host']}:{opts['port']}/{opts['db']}"
        self._reconnect = Reconnect(
            self._where,
            "start the server there, or point --mysql-dsn / ASYNCTASQ_MYSQL_DSN at a running one",
            (_Lost,),
            timeout_s=reconnect_timeout_s,
            secret=opts["password"] or None,
            on_lost=self._drop_idle,
        )

    @property
    def _t(self) -> str:
        return f"`{self.table}`"

    def describe(self) -> str:
        return f"mysql:{redact_url(self.dsn)} table={self.table}"

    def wake_scope(self) -> str:
        opts = self._options
        return f"{opts.get('unix_socket') or opts['host']}:{opts['port']}/{opts['db']}/{self.table}"

    # -- connections -----------------------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self._options)
        kwargs.setdefault("connect_timeout", self.connect_timeout_s)
        kwargs.update(autocommit=True, cursorclass=_QuietCursor, client_flag=_CLIENT_FOUND_ROWS)
        return kwargs

    async def _open_one(self) -> Any:
        """A connection outside the pool (version checks, migrations)."""
        try:
            return await aiomysql.connect(**self._connect_kwargs())
        except aiomysql.MySQLError as exc:
            raise self._translate(exc) from None
        except (OSError, TimeoutError) as exc:
            raise _Lost(one_line(exc)) from None

    async def connect(self) -> None:
        if self._pool is not None:
            return
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._pool is not None:
                return
            self._closed = False
            # one attempt: a server that is not there is one clear error now (the reconnect
            # with backoff is for connections lost after this one existed)
            try:
                init = await self._prepare()
                try:
                    pool = await aiomysql.create_pool(
                        minsize=self.min_pool_size,
                        maxsize=self.max_pool_size,
                        init_command=init,
                        **self._connect_kwargs(),
                    )
                except aiomysql.MySQLError as exc:
                    raise self._translate(exc) from None
                except (OSError, TimeoutError) as exc:
                    raise _Lost(one_line(exc)) from None
            except _Lost as exc:
                raise self._reconnect.unavailable(exc) from None
            self._pool = pool

    async def _prepare(self) -> str:
        """Check the server and the schema (creating it in an empty database); return the
        session set-up statement for the pool's connections."""
        conn = await self._open_one()
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT VERSION(), @@max_allowed_packet")
                version, packet = (await cur.fetchall())[0]
                self._use_server(str(version))
                self.max_allowed_packet = int(packet)
                try:  # MySQL 8 and MariaDB >= 11.1; older MariaDB only has tx_isolation
                    await cur.execute("SELECT @@SESSION.transaction_isolation")
                    await cur.fetchall()
                    isolation = "transaction_isolation"
                except aiomysql.MySQLError:
                    isolation = "tx_isolation"
            found = await self._schema_version(conn)
            if found == 0 and not await self._table_exists(conn, self.table):
                await self._migrate_on(conn, None)
                found = await self._schema_version(conn)
            check_version(found, SCHEMA_VERSION, f"{self._where} (table {self.table})", MIGRATE_HINT)
        except aiomysql.MySQLError as exc:
            raise self._translate(exc) from None
        finally:
            conn.close()
        return (
            f"SET SESSION {isolation} = 'READ-COMMITTED', time_zone = '+00:00', "
            f"innodb_lock_wait_timeout = {LOCK_WAIT_TIMEOUT_S}"
        )

    def _use_server(self, version: str) -> None:
        """Check the server's ``VERSION()`` and pick the statements for it: MariaDB's
        ``DELETE/INSERT ... RETURNING``, or MySQL's locking ``SELECT`` first (MySQL has no
        ``RETURNING``). Every other statement is the same on both."""
        self.flavor = check_server_version(version)
        self.server_version = version
        self._returning = self.flavor == "MariaDB"

    async def disconnect(self) -> None:
        await self._settle_background()
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            try:
                await asyncio.wait_for(pool.wait_closed(), 5)
            except (TimeoutError, aiomysql.MySQLError, OSError):  # pragma: no cover
                pool.terminate()
        self.hub.wake_all()

    async def _drop_idle(self, exc: BaseException) -> None:
        """After a lost connection the idle ones are dead too: drop them."""
        pool = self._pool
        if pool is not None:
            try:
                await pool.clear()
            except Exception:  # noqa: BLE001 - best effort; the next acquire reconnects
                pass

    def _translate(self, exc: BaseException) -> Exception:
        """An aiomysql (PyMySQL) error as the exception the caller sees (``_Lost`` is retried)."""
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        text = one_line(exc, self._options["password"] or None)
        if isinstance(exc, aiomysql.InterfaceError) or code in _LOST_CODES:
            return _Lost(text)
        if code == 1146:
            return SchemaError(
                f"the asynctasq table {self.table} is missing in {self._where}: {MIGRATE_HINT}"
            )
        if code in (1044, 1045, 1142, 1143, 1227):
            return BrokerError(
                f"{self._where} refused access ({text}): check the user and password in --mysql-dsn "
                "and that the user may create, read and write tables in that database"
            )
        if code == 1049:
            return BrokerError(f"{self._where}: {text}: create the database (CREATE DATABASE ...) first")
        if code == 1153:
            return BrokerError(
                f"{self._where} refused a statement over its max_allowed_packet ({text}): "
                "raise it on the server"
            )
        return BrokerError(f"{self._where} failed a statement ({text})")

    async def _pool_or_connect(self) -> Any:
        if self._pool is None:
            if self._closed:
                raise DriverError("the mysql driver was disconnected: call connect() again to use it")
            await self.connect()
        return self._pool

    async def _run(self, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``op(connection)`` on a pooled connection: reconnecting while the server is away,
        retrying (a few times, with jitter) after a deadlock or a lock wait timeout, which roll
        the work back. Other server errors become :class:`BrokerError`."""

        async def attempt() -> T:
            delay = LOCK_RETRY_FIRST_S
            for retry in range(LOCK_RETRIES + 1):
                pool = await self._pool_or_connect()
                try:
                    async with pool.acquire() as conn:
                        try:
                            return await op(conn)
                        except BaseException:
                            await self._abandon(conn)
                            raise
                except aiomysql.MySQLError as exc:
                    code = exc.args[0] if exc.args else 0
                    if code in _LOCK_CODES and retry < LOCK_RETRIES:
                        log.debug("%s: %s; retrying", self._where, one_line(exc))
                        await asyncio.sleep(delay * (0.5 + random.random()))
                        delay *= 2
                        continue
                    raise self._translate(exc) from None
                except (OSError, TimeoutError) as exc:
                    raise _Lost(one_line(exc)) from None
            raise AssertionError("unreachable")  # pragma: no cover

        return await self._reconnect.run(attempt)

    @staticmethod
    async def _abandon(conn: Any) -> None:
        """After an error inside ``op``: roll back an open transaction (the pool closes a
        connection still in one), so no half-done work survives."""
        if conn.closed:
            return
        try:
            if conn.get_transaction_status():
                await conn.rollback()
        except Exception:  # noqa: BLE001 - a broken connection: the pool drops it
            conn.close()

    async def _query(self, sql: str, args: Sequence[Any] | None = None) -> list[tuple[int, list[Any]]]:
        """One round trip of one or more statements; (affected rows, rows) per statement."""

        async def op(conn: Any) -> list[tuple[int, list[Any]]]:
            async with conn.cursor() as cur:
                await cur.execute(sql, args)
                return await _results(cur)

        return await self._run(op)

    # -- schema ----------------------------------------------------------------------------

    async def _table_exists(self, conn: Any, name: str) -> bool:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() "
                "AND table_name = %s",
                (name,),
            )
            return bool((await cur.fetchall())[0][0])

    async def _schema_version(self, conn: Any) -> int:
        if not await self._table_exists(conn, f"{self.table}_schema_version"):
            return 0
        async with conn.cursor() as cur:
            await cur.execute(f"SELECT COALESCE(MAX(version), 0) FROM `{self.table}_schema_version`")
            return int((await cur.fetchall())[0][0])

    def _lock_name(self) -> str:
        digest = hashlib.sha1(f"{self._options['db']}.{self.table}".encode()).hexdigest()
        return "asynctasq:" + digest[:40]

    async def _migrate_on(self, conn: Any, target: int | None) -> list[str]:
        top = latest(MIGRATIONS)
        if target is not None and not 0 <= target <= top:
            raise SchemaError(f"no mysql schema version {target}: this asynctasq knows 1-{top}")
        async with conn.cursor() as cur:
            await cur.execute("SELECT GET_LOCK(%s, %s)", (self._lock_name(), MIGRATION_LOCK_TIMEOUT_S))
            if (await cur.fetchall())[0][0] != 1:
                raise SchemaError(
                    f"another process has held the migration lock of {self.table} for "
                    f"{MIGRATION_LOCK_TIMEOUT_S}s: wait for its migration to end, then try again"
                )
            try:
                await cur.execute(VERSION_TABLE.format(t=self.table))
                current = await self._schema_version(conn)
                applied = []
                for migration in pending(MIGRATIONS, current, target):
                    for statement in migration.statements:
                        await cur.execute(statement.format(t=self.table))
                    await cur.execute(
                        f"INSERT INTO `{self.table}_schema_version` (version, description, applied_at) "
                        "VALUES (%s, %s, UTC_TIMESTAMP(6))",
                        (migration.version, migration.description),
                    )
                    applied.append(f"mysql {self.table}: {migration.version} {migration.description}")
                    log.info("applied %s", applied[-1])
                return applied
            finally:
                await cur.execute("SELECT RELEASE_LOCK(%s)", (self._lock_name(),))
                await cur.fetchall()

    async def migrate(self, target: int | None = None) -> list[str]:
        """Create or upgrade the tables up to ``target`` (default: the latest), under the
        database's ``GET_LOCK``; return the steps applied. Needs no ``connect()`` first."""

        try:
            conn = await self._open_one()
            try:
                async with conn.cursor() as cur:
                    await cur.execute("SELECT VERSION()")
                    check_server_version(str((await cur.fetchall())[0][0]))
                return await self._migrate_on(conn, target)
            except aiomysql.MySQLError as exc:
                raise self._translate(exc) from None
            finally:
                conn.close()
        except _Lost as exc:  # one attempt, as connect()
            raise self._reconnect.unavailable(exc) from None

    async def drop_tables(self) -> None:
        """Drop every table of this driver's ``table`` (tests, benchmarks); the data is gone."""
        conn = await self._open_one()
        try:
            async with conn.cursor() as cur:
                names = ", ".join(f"`{self.table}{suffix}`" for suffix in TABLE_SUFFIXES)
                await cur.execute(f"DROP TABLE IF EXISTS {names}")
        finally:
            conn.close()

    # -- message size ----------------------------------------------------------------------

    def _packet_room(self) -> int | None:
        packet = self.max_allowed_packet
        return None if packet is None else packet - PACKET_MARGIN_BYTES

    def check_message(self, body: bytes) -> None:
        """The server's packet limit first where it is the lower one: its error names it."""
        room = self._packet_room()
        if room is not None and len(body) > room and room < self.max_message_bytes:
            raise PacketTooLarge(len(body), self.max_allowed_packet or 0)
        super().check_message(body)

    def _literal(self, body: bytes) -> str:
        """``body`` as an SQL literal; raises :class:`PacketTooLarge` if it cannot be sent."""
        # surrogateescape keeps each byte one character; the connection encodes it back
        escaped: str = aiomysql.escape_string(bytes(body).decode("ascii", "surrogateescape"))
        text = "_binary'" + escaped + "'"
        room = self._packet_room()
        if room is not None and len(text) > room:
            raise PacketTooLarge(len(body), self.max_allowed_packet or 0)
        return text

    # -- enqueue ---------------------------------------------------------------------------

    async def _enqueue_many(self, items: Sequence[EnqueueItem]) -> list[str]:
        await self._pool_or_connect()  # the packet limit is known once connected
        room = self._packet_room() or (1 << 24)
        head = f"INSERT INTO {self._t} (queue, due, created_at, body) VALUES "
        tail = " RETURNING id" if self._returning else ""
        # queue names and delays are bound parameters; bodies are escaped literals (their size
        # must be known to split the batch by max_allowed_packet), with % doubled for binding
        statements: list[tuple[str, list[Any], int]] = []
        rows: list[str] = []
        args: list[Any] = []
        size = 0
        for item in items:
            row = (
                "(%s, UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND, UTC_TIMESTAMP(6), "
                + self._literal(item.body).replace("%", "%%")
                + ")"
            )
            if rows and (size + len(row) + len(item.queue) > room or len(rows) >= BATCH_ROWS):
                statements.append((head + ",".join(rows) + tail, args, len(rows)))
                rows, args, size = [], [], 0
            rows.append(row)
            args += (item.queue, _us(item.delay))
            size += len(row) + len(item.queue) + 24
        statements.append((head + ",".join(rows) + tail, args, len(rows)))

        async def op(conn: Any) -> list[int]:
            ids: list[int] = []
            async with conn.cursor() as cur:
                if len(statements) > 1:
                    await conn.begin()
                for sql, values, n in statements:
                    await cur.execute(sql, values)
                    if self._returning:
                        ids += sorted(int(r[0]) for r in await cur.fetchall())
                    else:
                        # a multi-row INSERT takes consecutive ids from LAST_INSERT_ID()
                        first = int(cur.lastrowid)
                        ids += range(first, first + n)
                if len(statements) > 1:
                    await conn.commit()
            return ids

        ids = [str(i) for i in await self._run(op)]
        self._next_probe_at = 0.0  # our own consumers look again at once
        return ids

    # -- claim -----------------------------------------------------------------------------

    def _pick_statement(self, n: int) -> str:
        """``START TRANSACTION`` and one locking ``SELECT`` per queue, in the queues' order.
        Plain statements rather than a ``UNION`` of locking parts: a locking clause inside a
        union member is MariaDB syntax that MySQL 8 only parses in some versions."""
        sql = self._claim_sql.get(n)
        if sql is None:
            pick = (
                f"SELECT id, queue, body, deliveries FROM {self._t} "
                "WHERE queue = %s AND due <= UTC_TIMESTAMP(6) "
                "ORDER BY due, id LIMIT %s FOR UPDATE SKIP LOCKED"
            )
            sql = self._claim_sql[n] = "START TRANSACTION; " + "; ".join([pick] * n)
        return sql

    async def dequeue(self, queues: Sequence[str], limit: int, wait: float) -> list[Delivery]:
        """As on every driver. A dequeue that does not wait claims what is ready now; a waiting
        one may start from the last probe's answer while it is current (within the poll
        interval), since its wait probes anyway: that keeps an idle worker's loop read-only."""
        if wait <= 0:
            self._maybe_empty = False  # rows other processes made ready since the last probe
        return await super().dequeue(queues, limit, wait)

    async def _claim(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        """Two round trips on one connection: lock up to ``limit`` claimable rows, skipping
        those other claimers hold (``START TRANSACTION; SELECT ... FOR UPDATE SKIP LOCKED``),
        then lease them by primary key and commit (``UPDATE ... WHERE id IN (...); COMMIT``).
        An empty claim commits and probes the next due time in its second round trip."""
        nonce = secrets.randbits(62) | (1 << 62)
        args: list[Any] = []
        for q in queues:
            args += (q, limit)
        pick = self._pick_statement(len(queues))
        if self._maybe_empty and not self._due(await self._next_due_cached(queues)):
            return []  # idle: a read-only probe at the poll interval, no transaction

        async def op(conn: Any) -> list[Any]:
            async with conn.cursor() as cur:
                await cur.execute(pick, args)
                # the first queue's rows first; rows past the limit stay unleased (their locks
                # end with this transaction)
                rows = [row for _, part in (await _results(cur))[1:] for row in part][:limit]
                if not rows:
                    await cur.execute("COMMIT; " + self._probe_statement(len(queues)), list(queues))
                    self._probe_seen(queues, _seconds((await _results(cur))[-1][1]))
                    return []
                await cur.execute(
                    f"UPDATE {self._t} SET token = %s ^ id, deliveries = deliveries + 1, "
                    "due = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND "
                    f"WHERE id IN ({_marks(len(rows))}); COMMIT",
                    [nonce, _us(self.lease_seconds), *(r[0] for r in rows)],
                )
                await _results(cur)
                return rows

        rows = await self._run(op)
        self._maybe_empty = not rows
        if not rows:
            return []
        self._active()
        return [Delivery(str(r[0]), r[1], bytes(r[2]), str(nonce ^ int(r[0])), int(r[3]) + 1) for r in rows]

    async def _unlease(self, deliveries: Sequence[Delivery]) -> None:
        """Give back what a cancelled dequeue leased, in one statement."""
        pairs = _ids(deliveries)
        if not pairs:
            return
        try:
            await self._query(
                f"UPDATE {self._t} SET token = NULL, due = UTC_TIMESTAMP(6), "
                f"deliveries = GREATEST(deliveries - 1, 0) WHERE {self._fence(len(pairs))}",
                [*(i for i, _ in pairs), *(t for _, t in pairs)],
            )
        except DriverError as exc:  # their leases expire instead
            log.warning("could not give back %d message(s) of a cancelled dequeue: %s", len(pairs), exc)

    # -- waiting ---------------------------------------------------------------------------

    def _probe_statement(self, n: int) -> str:
        sql = self._probe_sql.get(n)
        if sql is None:
            one = f"SELECT MIN(due) AS m FROM {self._t} WHERE queue = %s"
            source = f"({one})" if n == 1 else "(" + " UNION ALL ".join(f"({one})" for _ in range(n)) + ")"
            sql = f"SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), MIN(m)) FROM {source} AS x"
            self._probe_sql[n] = sql
        return sql

    async def _next_due(self, queues: Sequence[str]) -> float | None:
        """Seconds until the earliest row of ``queues`` may be claimed (<= 0: now; None: none)."""
        return _seconds((await self._query(self._probe_statement(len(queues)), list(queues)))[0][1])

    def _probe_seen(self, queues: Sequence[str], until: float | None) -> None:
        now = time.monotonic()
        self._probed = (now, frozenset(queues), until)
        self._next_probe_at = now + self._poll_pause() if self.poll else now

    async def _next_due_cached(self, queues: Sequence[str]) -> float | None:
        """Seconds to the next due row of ``queues``: the last probe's answer until the next
        poll is due, else a new probe."""
        probed = self._probed
        now = time.monotonic()
        if probed is not None and probed[1] == frozenset(queues) and now < self._next_probe_at:
            return None if probed[2] is None else probed[2] - (now - probed[0])
        until = await self._next_due(queues)
        self._probe_seen(queues, until)
        return until

    @staticmethod
    def _due(until: float | None) -> bool:
        return until is not None and until <= 0

    async def _pause(self, waiter: Waiter, queues: Sequence[str], left: float) -> None:
        """Until woken in-process, a row of ``queues`` may be claimed (the probe says so), or
        ``left`` seconds pass. The probe runs at the adaptive interval (without ``poll``, once
        per wait, to learn when the next delayed message or lease falls due)."""
        deadline = time.monotonic() + left
        if not queues:  # waiting for a result: poll its row
            pause = self._result_poll.next() if self.poll else left
            await waiter.sleep(min(pause, left))
            return
        if not self.poll:
            self._next_probe_at = 0.0
        while True:
            until = await self._next_due_cached(queues)
            if self._due(until):
                self._active()
                return
            now = time.monotonic()
            timeout = deadline - now
            if self.poll:
                timeout = min(timeout, self._next_probe_at - now)
            if until is not None:
                timeout = min(timeout, until)
            if timeout <= 0 and now < deadline and self.poll:
                continue  # the next poll is due now
            if timeout <= 0:
                return
            if await waiter.sleep(timeout):
                self._maybe_empty = False  # a producer of this process: claim at once
                return
            if not self.poll and (until is None or time.monotonic() >= deadline):
                return

    def _active(self) -> None:
        self._active_at = time.monotonic()
        self._maybe_empty = False
        self._next_probe_at = 0.0
        self._poll.reset()

    def _poll_pause(self) -> float:
        """The next poll interval: 2 ms after work, growing to 50 ms, and once no work came for
        ``idle_after_s``, ``max_poll_interval_s`` (jittered)."""
        pause = self._poll.next()
        if time.monotonic() - self._active_at >= self.idle_after_s:
            pause = max(pause, self.max_poll_interval_s * random.uniform(0.9, 1.1))
        return pause

    # -- lease operations ------------------------------------------------------------------

    def _fence(self, n: int) -> str:
        return f"id IN ({_marks(n)}) AND token IN ({_marks(n)})"

    async def _ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        pairs = _ids(deliveries)
        held: list[tuple[str, str]] = []
        for chunk in _chunks(pairs):
            held += await self._ack_chunk(chunk)
        return list(deliveries) if len(held) == len(deliveries) else still_held(deliveries, held)

    async def _ack_chunk(
        self, chunk: Sequence[tuple[int, int]], prefix: str = "", prefix_args: Sequence[Any] = ()
    ) -> list[tuple[str, str]]:
        args = [*prefix_args, *(i for i, _ in chunk), *(t for _, t in chunk)]
        fence = self._fence(len(chunk))
        if self._returning:
            sql = f"{prefix}DELETE FROM {self._t} WHERE {fence} RETURNING id, token"
            rows = (await self._query(sql, args))[-1][1]
        else:
            sql = (
                f"{prefix}START TRANSACTION; "
                f"SELECT id, token FROM {self._t} WHERE {fence} ORDER BY id FOR UPDATE; "
                f"DELETE FROM {self._t} WHERE {fence}; COMMIT"
            )
            args += args[len(prefix_args) :]
            rows = (await self._query(sql, args))[-3][1]
        return [(str(r[0]), str(r[1])) for r in rows]

    async def _complete(
        self, deliveries: Sequence[Delivery], results: Sequence[tuple[str, bytes]], results_ttl: float
    ) -> list[Delivery]:
        """The results, then the ack, in one round trip (each statement commits by itself, in
        order: a crash in between repeats the task, never loses its result)."""
        pairs = _ids(deliveries)
        if len(pairs) > BATCH_ROWS or len(results) > BATCH_ROWS or not pairs:
            return await super()._complete(deliveries, results, results_ttl)
        prefix, prefix_args = self._results_statement(results, results_ttl)
        held = await self._ack_chunk(pairs, prefix + "; ", prefix_args)
        self.wake_results(task_id for task_id, _ in results)
        return list(deliveries) if len(held) == len(deliveries) else still_held(deliveries, held)

    async def _extend(self, deliveries: Sequence[Delivery], seconds: float) -> list[Delivery]:
        pairs = _ids(deliveries)
        held: list[tuple[str, str]] = []
        for chunk in _chunks(pairs):
            args = [*(i for i, _ in chunk), *(t for _, t in chunk)]
            fence = self._fence(len(chunk))
            [(matched, _)] = await self._query(
                f"UPDATE {self._t} SET due = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND WHERE {fence}",
                [_us(seconds), *args],
            )
            if matched == len(chunk):
                held += [(str(i), str(t)) for i, t in chunk]
                continue
            rows = (await self._query(f"SELECT id, token FROM {self._t} WHERE {fence}", args))[0][1]
            held += [(str(r[0]), str(r[1])) for r in rows]
        return list(deliveries) if len(held) == len(deliveries) else still_held(deliveries, held)

    async def _release(self, delivery: Delivery, delay: float, body: bytes | None) -> bool:
        pairs = _ids([delivery])
        if not pairs:
            return False
        if body is None:
            change = "deliveries = GREATEST(deliveries - 1, 0)"
        else:
            change = "deliveries = 0, body = " + self._literal(body)
        [(matched, _)] = await self._query(
            f"UPDATE {self._t} SET token = NULL, due = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND, "
            f"{change.replace('%', '%%')} WHERE id = %s AND token = %s",
            [_us(delay), *pairs[0]],
        )
        return bool(matched == 1)

    async def _fail(self, delivery: Delivery, error: str) -> bool:
        pairs = _ids([delivery])
        if not pairs:
            return False
        t, ft = self._t, f"`{self.table}_failed`"
        where = "id = %s AND token = %s"
        sql = (
            f"START TRANSACTION; SELECT id FROM {t} WHERE {where} FOR UPDATE; "
            f"REPLACE INTO {ft} (id, queue, error, failed_at, body) "
            f"SELECT id, queue, %s, UTC_TIMESTAMP(6), body FROM {t} WHERE {where}; "
            f"DELETE FROM {t} WHERE {where}; COMMIT"
        )
        key = list(pairs[0])
        results = await self._query(sql, [*key, error, *key, *key])
        await self._sweep()
        return bool(results[-2][0] == 1)

    async def peek(self, queue: str, limit: int = 100) -> list[tuple[str, bytes]]:
        validate_queue_name(queue)
        rows = (
            await self._query(
                f"SELECT id, body FROM {self._t} WHERE queue = %s "
                "AND (token IS NULL OR due <= UTC_TIMESTAMP(6)) ORDER BY due, id LIMIT %s",
                [queue, int(limit)],
            )
        )[0][1]
        return [(str(r[0]), bytes(r[1])) for r in rows]

    async def maintain(self) -> None:
        self._next_cleanup = 0.0
        await self._sweep()

    async def _sweep(self) -> None:
        """Now and then: delete expired results and failed entries past their retention."""
        now = time.monotonic()
        if now < self._next_cleanup:
            return
        self._next_cleanup = now + CLEANUP_INTERVAL_S
        sql = f"DELETE FROM `{self.table}_results` WHERE expires_at <= UTC_TIMESTAMP(6) LIMIT 1000"
        args: list[Any] = []
        if self.failed_retention_s > 0:
            sql += (
                f"; DELETE FROM `{self.table}_failed` "
                "WHERE failed_at < UTC_TIMESTAMP(6) - INTERVAL %s MICROSECOND LIMIT 1000"
            )
            args.append(_us(self.failed_retention_s))
        await self._query(sql, args or None)

    # -- stats and purge -------------------------------------------------------------------

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        names = list(dict.fromkeys(validate_queue_name(q) for q in queues))
        out = {q: QueueStats(ready=0, delayed=0, leased=0, failed=0) for q in names}
        if not names:
            return out
        marks = _marks(len(names))
        results = await self._query(
            "SET @asynctasq_now := UTC_TIMESTAMP(6); "
            "SELECT queue, SUM(due <= @asynctasq_now), SUM(due > @asynctasq_now AND token IS NULL), "
            "SUM(due > @asynctasq_now AND token IS NOT NULL) "
            f"FROM {self._t} WHERE queue IN ({marks}) GROUP BY queue; "
            f"SELECT queue, COUNT(*) FROM `{self.table}_failed` WHERE queue IN ({marks}) GROUP BY queue",
            [*names, *names],
        )
        for queue, ready, delayed, leased in results[1][1]:
            out[queue] = QueueStats(ready=int(ready), delayed=int(delayed), leased=int(leased), failed=0)
        for queue, count in results[2][1]:
            out[queue]["failed"] = int(count)
        return out

    async def cancel(self, queue: str, message_id: str) -> bool:
        validate_queue_name(queue)
        ids = int_ids([message_id])
        if not ids:
            return False
        # by primary key (the claim's lock order); a live lease keeps the row
        done = await self._query(
            f"DELETE FROM {self._t} WHERE id = %s AND queue = %s "
            "AND (token IS NULL OR due <= UTC_TIMESTAMP(6))",
            [ids[0], queue],
        )
        return done[0][0] == 1

    async def oldest_waiting(self, queues: Sequence[str]) -> dict[str, float | None]:
        names = list(dict.fromkeys(validate_queue_name(q) for q in queues))
        out: dict[str, float | None] = {q: None for q in names}
        if not names:
            return out
        results = await self._query(
            "SET @asynctasq_now := UTC_TIMESTAMP(6); "
            + " UNION ALL ".join(
                [
                    "SELECT %s, TIMESTAMPDIFF(MICROSECOND, "
                    f"(SELECT MIN(due) FROM {self._t} WHERE queue = %s AND due <= @asynctasq_now), "
                    "@asynctasq_now)"
                ]
                * len(names)
            ),
            [x for q in names for x in (q, q)],
        )
        for queue, micros in results[1][1]:
            out[str(queue)] = None if micros is None else max(int(micros) / 1e6, 0.0)
        return out

    async def list_queues(self) -> list[str]:
        rows = (
            await self._query(
                f"SELECT DISTINCT queue FROM {self._t} "
                f"UNION SELECT DISTINCT queue FROM `{self.table}_failed` ORDER BY 1"
            )
        )[0][1]
        return [str(r[0]) for r in rows]

    async def purge(self, queue: str) -> int:
        """Delete the queue's rows in primary-key batches (never one big delete by the
        secondary index, which would lock index ranges producers insert into)."""
        validate_queue_name(queue)
        deleted = 0
        while True:
            rows = (
                await self._query(
                    f"SELECT id FROM {self._t} WHERE queue = %s ORDER BY id LIMIT %s", [queue, BATCH_ROWS]
                )
            )[0][1]
            if not rows:
                return deleted
            ids = [int(r[0]) for r in rows]
            [(n, _)] = await self._query(
                f"DELETE FROM {self._t} WHERE id IN ({_marks(len(ids))}) AND queue = %s", [*ids, queue]
            )
            deleted += n

    # -- failed registry -------------------------------------------------------------------

    async def failed_list(self, queue: str | None = None, limit: int = 100) -> list[FailedEntry]:
        where, args = ("WHERE queue = %s", [queue]) if queue is not None else ("", [])
        rows = (
            await self._query(
                f"SELECT id, queue, body, error, UNIX_TIMESTAMP(failed_at) FROM `{self.table}_failed` "
                f"{where} ORDER BY failed_at, id LIMIT %s",
                [*args, max(int(limit), 0)],
            )
        )[0][1]
        return [
            FailedEntry(id=str(r[0]), queue=r[1], body=bytes(r[2]), error=r[3], failed_at=float(r[4]))
            for r in rows
        ]

    async def _failed_ids(self, ids: Iterable[str] | None, queue: str | None) -> list[int]:
        ft = f"`{self.table}_failed`"
        if ids is None:
            where, args = ("WHERE queue = %s", [queue]) if queue is not None else ("", [])
            rows = (await self._query(f"SELECT id FROM {ft} {where} ORDER BY id", args or None))[0][1]
            return [int(r[0]) for r in rows]
        wanted = int_ids(ids)
        found: list[int] = []
        for chunk in _chunks(wanted):
            extra, args = (" AND queue = %s", [queue]) if queue is not None else ("", [])
            rows = (
                await self._query(
                    f"SELECT id FROM {ft} WHERE id IN ({_marks(len(chunk))}){extra}", [*chunk, *args]
                )
            )[0][1]
            found += [int(r[0]) for r in rows]
        return found

    async def failed_requeue(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        """Move failed entries back to their queue (ready now, delivery count 0), by primary
        key in one transaction per batch: each entry lands once, none is lost."""
        t, ft = self._t, f"`{self.table}_failed`"
        moved = 0
        for chunk in _chunks(await self._failed_ids(ids, queue)):
            marks = _marks(len(chunk))
            results = await self._query(
                f"START TRANSACTION; SELECT id FROM {ft} WHERE id IN ({marks}) FOR UPDATE; "
                f"INSERT INTO {t} (id, queue, due, token, deliveries, created_at, body) "
                "SELECT id, queue, UTC_TIMESTAMP(6), NULL, 0, UTC_TIMESTAMP(6), body "
                f"FROM {ft} WHERE id IN ({marks}); "
                f"DELETE FROM {ft} WHERE id IN ({marks}); COMMIT",
                [*chunk, *chunk, *chunk],
            )
            moved += results[2][0]
        if moved:
            self.hub.wake_all()
        return moved

    async def failed_purge(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        deleted = 0
        for chunk in _chunks(await self._failed_ids(ids, queue)):
            [(n, _)] = await self._query(
                f"DELETE FROM `{self.table}_failed` WHERE id IN ({_marks(len(chunk))})", list(chunk)
            )
            deleted += n
        return deleted

    # -- results ---------------------------------------------------------------------------

    def _results_statement(self, results: Sequence[tuple[str, bytes]], ttl: float) -> tuple[str, list[Any]]:
        rows = ",".join(
            f"(%s, UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND, {self._literal(body).replace('%', '%%')})"
            for _, body in results
        )
        args: list[Any] = []
        for task_id, _ in results:
            args += (str(task_id), _us(ttl))
        return f"REPLACE INTO `{self.table}_results` (task_id, expires_at, body) VALUES {rows}", args

    async def store_results(self, results: Sequence[tuple[str, bytes]], ttl: float) -> None:
        if not results or ttl <= 0:
            return
        rows = list(results)
        for chunk in _chunks(rows):
            sql, args = self._results_statement(chunk, ttl)
            await self._query(sql, args)
        self.wake_results(task_id for task_id, _ in rows)
        await self._sweep()

    async def _read_result(self, task_id: str) -> bytes | None:
        rows = (
            await self._query(
                f"SELECT body FROM `{self.table}_results` "
                "WHERE task_id = %s AND expires_at > UTC_TIMESTAMP(6)",
                [str(task_id)],
            )
        )[0][1]
        return bytes(rows[0][0]) if rows else None

    # -- worker registry and control -------------------------------------------------------

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        await self._query(
            f"REPLACE INTO `{self.table}_workers` (name, expires_at, info) "
            "VALUES (%s, UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND, %s)",
            [info["name"], _us(ttl), json.dumps(info)],
        )

    async def deregister_worker(self, name: str) -> None:
        await self._query(
            f"DELETE FROM `{self.table}_workers` WHERE name = %s; "
            f"DELETE FROM `{self.table}_commands` WHERE worker = %s",
            [name, name],
        )

    async def list_workers(self) -> list[WorkerInfo]:
        results = await self._query(
            f"DELETE FROM `{self.table}_workers` WHERE expires_at <= UTC_TIMESTAMP(6); "
            f"SELECT info FROM `{self.table}_workers` ORDER BY name"
        )
        infos: list[WorkerInfo] = [json.loads(r[0]) for r in results[1][1]]
        return infos

    async def send_command(self, worker: str, command: dict[str, Any]) -> None:
        await self._query(
            f"INSERT INTO `{self.table}_commands` (worker, command) VALUES (%s, %s)",
            [worker, json.dumps(command)],
        )

    async def receive_commands(self, worker: str) -> list[dict[str, Any]]:
        ct = f"`{self.table}_commands`"
        if self._returning:
            rows = (await self._query(f"DELETE FROM {ct} WHERE worker = %s RETURNING id, command", [worker]))[
                0
            ][1]
        else:
            rows = (await self._query(f"SELECT id, command FROM {ct} WHERE worker = %s", [worker]))[0][1]
            if rows:
                ids = [int(r[0]) for r in rows]
                await self._query(f"DELETE FROM {ct} WHERE id IN ({_marks(len(ids))})", ids)
        return [json.loads(command) for _, command in sorted(rows)]


__all__ = ["MySQLDriver", "PacketTooLarge", "check_server_version", "parse_dsn", "parse_version"]
