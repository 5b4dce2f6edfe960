"""Redis driver: atomic Lua claims into per-task leases, a blocking wait, batched round trips.

::

    driver = RedisDriver(url="redis://localhost:6379/0", prefix="myapp")
    async with driver:
        await driver.enqueue("default", b"...")

Keys of queue ``q`` under prefix ``p`` share the hash tag ``{p:q}``, so every script touches one
cluster slot:

- ``{p:q}:ready``  list of message ids, oldest first
- ``{p:q}:delayed`` sorted set id -> due time (ms, Redis clock)
- ``{p:q}:leased`` sorted set id -> lease expiry (ms, Redis clock)
- ``{p:q}:body`` / ``:count`` / ``:token`` hashes id -> body, delivery count, lease token
- ``{p:q}:wake``  a list of at most one element that a blocked consumer BLPOPs
- ``{p:q}:failed`` / ``:failed:error`` / ``:failed:at`` the failed registry of the queue

Namespace keys: ``{p}:queues`` (queues seen), ``{p}:workers`` and ``{p}:workers:expiry`` (the
worker registry), ``{p}:cmd:<worker>`` (remote commands); results live in ``{p:result:<id>}``.

The claim script (:mod:`asynctasq.drivers._redis_scripts`) promotes due delayed messages, puts
expired leases back in front of the queue (their token is dropped, so the old holder is fenced
off), pops up to ``limit`` ids and leases them, all in one atomic step. When every queue is
empty the consumer blocks on the queues' ``wake`` lists for at most the time until the next
delayed message or lease falls due. Round trips: enqueue 1, enqueue_many 1 per call, dequeue 1
per batch per queue visited, ack, extend and complete 1 per batch, release and fail 1. The
client is :mod:`asynctasq.drivers._resp` (docs/drivers/redis.md says why not redis-py's).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from asynctasq.constants import (
    DEFAULT_LEASE_S,
    DEFAULT_RECONNECT_TIMEOUT_S,
    DEFAULT_REDIS_MAX_CONNECTIONS,
    DEFAULT_REDIS_PREFIX,
    DEFAULT_REDIS_SOCKET_TIMEOUT_S,
    DEFAULT_REDIS_URL,
)
from asynctasq.drivers._reconnect import Reconnect, one_line
from asynctasq.drivers._wait import Waiter
from asynctasq.drivers.base import (
    BaseDriver,
    Delivery,
    EnqueueItem,
    FailedEntry,
    QueueStats,
    WorkerInfo,
    validate_queue_name,
)
from asynctasq.errors import BrokerError, ConfigError, DriverError, DriverNotAvailable
from asynctasq.utils.urls import redact_url

try:
    from asynctasq.drivers import _redis_scripts as lua
    from asynctasq.drivers._resp import (
        RETRYABLE,
        AuthFailed,
        HandshakeError,
        NoScript,
        ReadOnly,
        RedisError,
        ReplyError,
        RespClient,
        pack,
        parse_url,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise DriverNotAvailable(
        f'the redis driver needs hiredis ({exc}): pip install "asynctasq[redis]"'
    ) from exc

log = logging.getLogger("asynctasq.redis")

T = TypeVar("T")

MAX_BLOCK_S = 5.0
"""Longest single BLPOP/BLMOVE; kept well under the socket timeout."""
MAX_HINTS = 1024
"""Wait hints kept for queue lists that no blocking wait followed (``wait=0`` callers)."""
COMMAND_TTL_S = 86_400
"""Commands sent to a worker that never reads them vanish after a day."""
_SLOW_PATH: tuple[type[BaseException], ...] = (NoScript, *RETRYABLE)
"""What sends a command on to the reconnect policy (a reload of the scripts, a retry)."""
HINT = "start Redis there or point --redis-url / ASYNCTASQ_REDIS_URL at a running server"


class _QueueKeys:
    """The keys of one queue, grouped as each script takes them."""

    __slots__ = (
        "ack", "cancel", "claim", "enqueue", "extend", "fail", "failed_keys", "ready", "requeue", "wake"
    )  # fmt: skip

    def __init__(self, prefix: str, queue: str) -> None:
        tag = f"{{{prefix}:{queue}}}"
        ready, delayed, leased = f"{tag}:ready", f"{tag}:delayed", f"{tag}:leased"
        body, count, token, wake = f"{tag}:body", f"{tag}:count", f"{tag}:token", f"{tag}:wake"
        self.ready = ready
        self.wake = wake
        self.failed_keys = (f"{tag}:failed", f"{tag}:failed:error", f"{tag}:failed:at")
        self.claim = (ready, delayed, leased, body, count, token, wake)
        """Also the keys of release and purge."""
        self.cancel = (ready, delayed, leased, body, count, token)
        self.enqueue = (ready, delayed, body, wake)
        self.ack = (leased, body, count, token)
        self.extend = (leased, token)
        self.fail = (*self.ack, *self.failed_keys)
        self.requeue = (ready, body, count, *self.failed_keys, wake)


def _ms(seconds: float) -> int:
    return max(round(seconds * 1000), 0)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _held(
    deliveries: Sequence[Delivery], groups: Iterable[Sequence[Delivery]], replies: Sequence[Any]
) -> list[Delivery]:
    """The deliveries still held, from the ack/extend scripts' replies (per group: positions of
    the pairs that were not held; all empty, the usual case, when every one was)."""
    if not any(replies):
        return list(deliveries)
    out: list[Delivery] = []
    for group, stale in zip(groups, replies, strict=True):
        skip = set(stale)
        out.extend(d for i, d in enumerate(group) if i not in skip)
    return out


def _by_queue(deliveries: Sequence[Delivery]) -> Mapping[str, Sequence[Delivery]]:
    queue = deliveries[0].queue
    for d in deliveries:
        if d.queue != queue:
            break
    else:
        return {queue: deliveries}  # the usual batch: one queue
    groups: dict[str, list[Delivery]] = {}
    for d in deliveries:
        group = groups.get(d.queue)
        if group is None:
            group = groups[d.queue] = []
        group.append(d)
    return groups


def _pairs(deliveries: Sequence[Delivery], first: Sequence[Any] = ()) -> list[Any]:
    args = list(first)
    for d in deliveries:
        args += (d.id, d.token)
    return args


def _claimed(queue: str, res: list[Any]) -> list[Delivery]:
    """The deliveries of a CLAIM script's reply: (hint, warning, then id, body, count, token)."""
    return [
        Delivery(res[i].decode(), queue, res[i + 1], res[i + 3].decode(), res[i + 2])
        for i in range(2, len(res), 4)
    ]


class RedisDriver(BaseDriver):
    """Queues in Redis (6.2+; 7 recommended), spoken to through our own RESP client.

    Arguments: ``url`` (``redis://``, ``rediss://`` or ``unix://``; ``?ssl_cert_reqs=none``
    and ``ssl_ca_certs=`` for TLS), ``password`` and ``db`` (override the URL's),
    ``max_connections`` (connections kept for blocking waits; one more carries every other
    command), ``prefix`` (key namespace, so several apps share one Redis), ``lease_seconds``,
    ``max_message_bytes``, ``reconnect_timeout`` (seconds an operation retries a lost
    connection before it raises :class:`BrokerUnavailable`), ``socket_timeout`` (a reply
    overdue this long drops the connection).
    """

    name = "redis"
    signals_persist = True  # the wake lists keep a signal until a consumer BLPOPs it
    shield_claims = False  # a cancelled claim gives back what it leased (_claim's orphan)
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"stats", "failed", "results", "workers", "control", "purge", "cancel", "fencing"}
    )

    def __init__(
        self,
        *,
        url: str = DEFAULT_REDIS_URL,
        password: str | None = None,
        db: int | None = None,
        max_connections: int = DEFAULT_REDIS_MAX_CONNECTIONS,
        prefix: str = DEFAULT_REDIS_PREFIX,
        lease_seconds: float = DEFAULT_LEASE_S,
        max_message_bytes: int | None = None,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT_S,
        socket_timeout: float = DEFAULT_REDIS_SOCKET_TIMEOUT_S,
    ) -> None:
        super().__init__(lease_seconds=lease_seconds, max_message_bytes=max_message_bytes)
        try:
            scheme = urlsplit(url).scheme
        except ValueError:
            scheme = ""
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"redis url {redact_url(url)!r} must start with redis://, rediss:// or unix://")
        if not prefix or any(c in prefix for c in "{} \n"):
            raise ConfigError(f"redis prefix {prefix!r} must be non-empty, without braces or spaces")
        if max_connections < 1:
            raise ConfigError("redis max_connections must be at least 1")
        try:
            endpoint = parse_url(url, password, db)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"redis url {redact_url(url)!r} is invalid: {exc}") from None
        self._client = RespClient(endpoint, timeout=socket_timeout, max_blocking=max_connections)
        self.url = url
        self.prefix = prefix
        self.reconnect_timeout = reconnect_timeout
        self._db = db
        self._connected = False
        self._reconnect = Reconnect(
            f"Redis at {endpoint.address}",
            HINT,
            RETRYABLE,
            timeout_s=reconnect_timeout,
            secret=endpoint.password,
            on_lost=self._on_lost,
        )
        self._queue_keys: dict[str, _QueueKeys] = {}
        self._known_queues: set[str] = set()
        self._hints: dict[tuple[str, ...], int] = {}
        """Queues -> ms until their next delayed message or lease falls due (from the last
        empty claim), for the blocking wait that follows."""
        self._ids = itertools.count(1)
        self._id_base = secrets.token_hex(8)
        ns = f"{{{prefix}}}"
        self._queues_key = f"{ns}:queues"
        self._workers_key = f"{ns}:workers"
        self._workers_expiry_key = f"{ns}:workers:expiry"

    def describe(self) -> str:
        db = "" if self._db is None else f" db={self._db}"
        return f"redis {redact_url(self.url)}{db} prefix={self.prefix}"

    # -- connection ------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._connected:
            return
        where = self._reconnect.where
        secret = self._client.endpoint.password
        try:
            await self._client.main()
            await self._load_scripts()
        except AuthFailed as exc:
            self._client.close()
            raise BrokerError(
                f"{where} refused the credentials ({one_line(exc, secret)}): check the password "
                "in --redis-url / --redis-password (ASYNCTASQ_REDIS_URL / ASYNCTASQ_REDIS_PASSWORD)"
            ) from None
        except HandshakeError as exc:
            self._client.close()
            raise BrokerError(
                f"{one_line(exc, secret)}: for a self-signed server add ?ssl_cert_reqs=none or "
                "ssl_ca_certs=/path/ca.pem to the rediss:// URL; a server without TLS takes redis://"
            ) from None
        except ReplyError as exc:
            self._client.close()
            raise BrokerError(
                f"{where} refused the connection set-up ({one_line(exc, secret)}): check "
                "--redis-url, --redis-password and --redis-db"
            ) from None
        except RETRYABLE as exc:
            self._client.close()
            raise self._reconnect.unavailable(exc) from None
        self._connected = True

    async def disconnect(self) -> None:
        await self._settle_background()
        self._connected = False
        self._client.close()

    async def _load_scripts(self) -> None:
        for reply in await self._client.execute_many(lua.load_commands()):
            if isinstance(reply, Exception):
                raise reply

    def _on_lost(self, exc: BaseException) -> None:
        if isinstance(exc, ReadOnly):  # a replica now: the primary may be elsewhere after a failover
            self._client.drop("the server turned read-only")

    def _check_connected(self) -> None:
        if not self._connected:
            raise DriverError("the redis driver is not connected: call `await driver.connect()` first")

    async def _run(self, op: Callable[[], Awaitable[T]]) -> T:
        """``await op()`` under the reconnect policy (every operation is safe to repeat); error
        replies become :class:`BrokerError`."""
        try:
            return await self._reconnect.run(op)
        except RedisError as exc:
            raise self._broker_error(exc) from None

    def _broker_error(self, exc: RedisError) -> BrokerError:
        reason = one_line(exc, self._client.endpoint.password)
        return BrokerError(
            f"{self._reconnect.where} answered with an error ({reason}): check that it is Redis 6.2 "
            f"or newer and that only asynctasq writes the keys under {{{self.prefix}"
        )

    async def _one_now(self, packed: bytes, orphan: Callable[[Any], None] | None = None) -> Any:
        self._check_connected()
        try:
            return await self._client.execute(packed, orphan)
        except NoScript:  # the server restarted or flushed its script cache
            await self._load_scripts()
            return await self._client.execute(packed, orphan)

    async def _many_now(self, commands: Sequence[bytes]) -> list[Any]:
        self._check_connected()
        replies = await self._client.execute_many(commands)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScript)]
        if missing:
            await self._load_scripts()
            again = await self._client.execute_many([commands[i] for i in missing])
            for i, r in zip(missing, again, strict=True):
                replies[i] = r
        for r in replies:
            if isinstance(r, Exception):
                raise r
        return replies

    async def _blocking_now(self, packed: bytes, block_s: float) -> Any:
        self._check_connected()
        return await self._client.blocking(packed, block_s)

    async def _one(self, packed: bytes, orphan: Callable[[Any], None] | None = None) -> Any:
        """One command, one round trip. The first try goes straight to the client (the hot
        path); a lost connection, a ``NOSCRIPT`` or a call before connect() goes on under
        :meth:`_run`, which says what is wrong or retries with backoff. ``orphan`` gets the
        reply of a command whose caller was cancelled after it went out."""
        if self._connected:
            try:
                return await self._client.execute(packed, orphan)
            except _SLOW_PATH:
                pass
            except RedisError as exc:
                raise self._broker_error(exc) from None
        return await self._run(lambda: self._one_now(packed, orphan))

    async def _many(self, commands: Sequence[bytes]) -> list[Any]:
        """Commands in one write, one round trip (tried as :meth:`_one`)."""
        if len(commands) == 1:  # the usual ack: one queue
            return [await self._one(commands[0])]
        if self._connected:
            try:
                replies = await self._client.execute_many(commands)
            except RETRYABLE:
                pass
            else:
                for r in replies:
                    if isinstance(r, ReplyError):
                        if isinstance(r, _SLOW_PATH):
                            break  # reload the scripts, or wait for the server, under _run
                        raise self._broker_error(r) from None
                else:
                    return replies
        return await self._run(lambda: self._many_now(commands))

    def _keys(self, queue: str) -> _QueueKeys:
        keys = self._queue_keys.get(queue)
        if keys is None:
            validate_queue_name(queue)
            keys = self._queue_keys[queue] = _QueueKeys(self.prefix, queue)
        return keys

    def _next_id(self) -> str:
        return f"{self._id_base}{next(self._ids):x}"

    def _register_queues(self, queues: Iterable[str], commands: list[bytes]) -> list[str]:
        new = [q for q in queues if q not in self._known_queues]
        if new:
            commands.append(pack(("SADD", self._queues_key, *new)))
        return new

    # -- contract hooks --------------------------------------------------------------------

    async def _enqueue_many(self, items: Sequence[EnqueueItem]) -> list[str]:
        ids: list[str] = []
        by_queue: dict[str, list[Any]] = {}
        for item in items:
            msg_id = self._next_id()
            ids.append(msg_id)
            by_queue.setdefault(item.queue, []).extend((msg_id, item.body, _ms(item.delay)))
        commands = [lua.command(lua.ENQUEUE, self._keys(q).enqueue, args) for q, args in by_queue.items()]
        new = self._register_queues(by_queue, commands)
        replies = await self._many(commands)
        self._known_queues.update(new)
        for queue, warning in zip(by_queue, replies, strict=False):
            if warning:
                log.warning("queue %s: %s", queue, _text(warning).strip())
        return ids

    async def _claim(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        lease_ms = _ms(self.lease_seconds)
        out: list[Delivery] = []
        hint_ms = -1
        queue = ""

        def orphan(reply: Any) -> None:  # the claim in flight when the caller was cancelled
            if isinstance(reply, list):
                self._unlease_soon(_claimed(queue, reply))

        try:
            for queue in queues:
                qk = self._keys(queue)
                while len(out) < limit:
                    want = min(limit - len(out), lua.MAX_CLAIM)
                    res = await self._one(
                        lua.command(lua.CLAIM, qk.claim, (want, lease_ms, self._next_id())), orphan
                    )
                    if res[1]:
                        log.warning("queue %s: %s", queue, _text(res[1]).strip())
                    if len(res) == 2:
                        if res[0] >= 0 and (hint_ms < 0 or res[0] < hint_ms):
                            hint_ms = res[0]
                        break
                    out += _claimed(queue, res)
                    if len(res) - 2 < 4 * want:
                        break
                if len(out) >= limit:
                    break
        except asyncio.CancelledError:
            self._unlease_soon(out)  # what earlier queues gave; the one in flight: orphan()
            raise
        if not out:
            if len(self._hints) >= MAX_HINTS:
                self._hints.clear()
            self._hints[tuple(queues)] = hint_ms
        return out

    async def _pause(self, waiter: Waiter, queues: Sequence[str], left: float) -> None:
        """BLPOP on the queues' wake lists, at most until the next delayed message or lease falls
        due (the last claim's hint) and at most ``MAX_BLOCK_S``."""
        if not queues:
            await waiter.sleep(left)
            return
        timeout = min(left, MAX_BLOCK_S)
        hint_ms = self._hints.pop(tuple(queues), -1)
        if hint_ms >= 0:
            timeout = min(timeout, hint_ms / 1000)
        timeout = max(timeout, 0.001)  # BLPOP 0 would block for ever
        packed = pack(("BLPOP", *(self._keys(q).wake for q in queues), f"{timeout:.3f}"))
        await self._run(lambda: self._blocking_now(packed, timeout))

    def _ack_commands(self, groups: Mapping[str, Sequence[Delivery]]) -> list[bytes]:
        return [lua.command(lua.ACK, self._keys(q).ack, _pairs(ds)) for q, ds in groups.items()]

    async def _ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        groups = _by_queue(deliveries)
        replies = await self._many(self._ack_commands(groups))
        return _held(deliveries, groups.values(), replies)

    async def _complete(
        self, deliveries: Sequence[Delivery], results: Sequence[tuple[str, bytes]], results_ttl: float
    ) -> list[Delivery]:
        """Results, then the acks, in one write: Redis runs them in that order."""
        groups = _by_queue(deliveries)
        commands = self._result_commands(results, results_ttl) + self._ack_commands(groups)
        replies = await self._many(commands)
        return _held(deliveries, groups.values(), replies[len(replies) - len(groups) :])

    async def _extend(self, deliveries: Sequence[Delivery], seconds: float) -> list[Delivery]:
        groups = _by_queue(deliveries)
        ms = _ms(seconds)
        commands = [
            lua.command(lua.EXTEND, self._keys(q).extend, _pairs(ds, (ms,))) for q, ds in groups.items()
        ]
        return _held(deliveries, groups.values(), await self._many(commands))

    async def _release(self, delivery: Delivery, delay: float, body: bytes | None) -> bool:
        qk = self._keys(delivery.queue)
        args = (delivery.id, delivery.token, _ms(delay), "0" if body is None else "1", body or b"")
        return bool(await self._one(lua.command(lua.RELEASE, qk.claim, args)))

    async def _fail(self, delivery: Delivery, error: str) -> bool:
        qk = self._keys(delivery.queue)
        commands = [lua.command(lua.FAIL, qk.fail, (delivery.id, delivery.token, error))]
        new = self._register_queues((delivery.queue,), commands)
        done = await self._many(commands)
        self._known_queues.update(new)
        return bool(done[0])

    # -- optional: stats, purge, failed registry -------------------------------------------

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        commands = []
        for q in queues:
            qk = self._keys(q)
            ready, delayed, leased = qk.claim[:3]
            commands += [
                lua.command(lua.CLAIM, qk.claim, (0, 0, "")),  # limit 0: only promote and reap
                pack(("LLEN", ready)),
                pack(("ZCARD", delayed)),
                pack(("ZCARD", leased)),
                pack(("ZCARD", qk.failed_keys[2])),
            ]
        res = await self._many(commands) if commands else []
        out: dict[str, QueueStats] = {}
        for i, q in enumerate(queues):
            _, ready_n, delayed_n, leased_n, failed_n = res[i * 5 : i * 5 + 5]
            out[q] = QueueStats(ready=ready_n, delayed=delayed_n, leased=leased_n, failed=failed_n)
        return out

    async def purge(self, queue: str) -> int:
        return int(await self._one(lua.command(lua.PURGE, self._keys(queue).claim, ())))

    async def list_queues(self) -> list[str]:
        return await self._queues_for(None)  # every queue this prefix ever used

    async def cancel(self, queue: str, message_id: str) -> bool:
        return bool(await self._one(lua.command(lua.CANCEL, self._keys(queue).cancel, (message_id,))))

    async def peek(self, queue: str, limit: int = 100) -> list[tuple[str, bytes]]:
        qk = self._keys(queue)
        if limit <= 0:
            return []
        ready_key, delayed_key, _, body_key = qk.cancel[:4]
        ready, delayed = await self._many(
            [pack(("LRANGE", ready_key, 0, limit - 1)), pack(("ZRANGE", delayed_key, 0, limit - 1))]
        )
        ids = [*ready, *delayed][:limit]
        if not ids:
            return []
        bodies = await self._one(pack(("HMGET", body_key, *ids)))
        return [(_text(i), b) for i, b in zip(ids, bodies, strict=True) if b is not None]

    async def _queues_for(self, queue: str | None) -> list[str]:
        if queue is not None:
            self._keys(queue)
            return [queue]
        members = await self._one(pack(("SMEMBERS", self._queues_key)))
        return sorted(_text(m) for m in members)

    async def failed_list(self, queue: str | None = None, limit: int = 100) -> list[FailedEntry]:
        queues = await self._queues_for(queue)
        if not queues or limit <= 0:
            return []
        commands = [
            pack(("ZRANGE", self._keys(q).failed_keys[2], 0, limit - 1, "WITHSCORES")) for q in queues
        ]
        heads = await self._many(commands)
        picked = sorted(
            (float(head[i + 1]), _text(head[i]), q)
            for q, head in zip(queues, heads, strict=True)
            for i in range(0, len(head), 2)
        )[:limit]
        if not picked:
            return []
        commands = []
        for _, msg_id, q in picked:
            failed, failed_error, _at = self._keys(q).failed_keys
            commands += [pack(("HGET", failed, msg_id)), pack(("HGET", failed_error, msg_id))]
        info = await self._many(commands)
        return [
            FailedEntry(
                id=msg_id,
                queue=q,
                body=info[2 * i] or b"",
                error=_text(info[2 * i + 1] or b""),
                failed_at=score / 1000,
            )
            for i, (score, msg_id, q) in enumerate(picked)
        ]

    async def failed_requeue(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        return await self._on_failed(lua.FAILED_REQUEUE, "requeue", ids, queue)

    async def failed_purge(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        return await self._on_failed(lua.FAILED_PURGE, "failed_keys", ids, queue)

    async def _on_failed(
        self, script: lua.Script, keys: str, ids: Iterable[str] | None, queue: str | None
    ) -> int:
        """Run ``script`` on the failed entries ``ids`` (all when None) of ``queue`` (or of every
        queue), with each queue's ``keys`` attribute as its keys; return how many it touched."""
        args = [] if ids is None else list(ids)
        if ids is not None and not args:
            return 0
        queues = await self._queues_for(queue)
        commands = [lua.command(script, getattr(self._keys(q), keys), args) for q in queues]
        return sum(await self._many(commands)) if commands else 0

    # -- optional: results -----------------------------------------------------------------

    def _result_key(self, task_id: str) -> str:
        return f"{{{self.prefix}:result:{task_id}}}"

    def _result_commands(self, results: Sequence[tuple[str, bytes]], ttl: float) -> list[bytes]:
        ttl_ms = _ms(ttl)
        if ttl_ms <= 0:
            return []
        return [
            lua.command(lua.STORE_RESULT, (self._result_key(task_id),), (payload, ttl_ms))
            for task_id, payload in results
        ]

    async def store_results(self, results: Sequence[tuple[str, bytes]], ttl: float) -> None:
        commands = self._result_commands(results, ttl)
        if commands:
            await self._many(commands)

    async def _read_result(self, task_id: str) -> bytes | None:
        value = await self._one(pack(("LINDEX", self._result_key(task_id), 0)))
        return None if value is None else _bytes(value)

    async def get_result(self, task_id: str, wait: float) -> bytes | None:
        """Blocks in ``BLMOVE key key``: rotating the one-element list onto itself reads it
        without taking it, and every blocked reader wakes when the worker pushes it."""
        key = self._result_key(task_id)
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            remaining = deadline - time.monotonic()
            if remaining < 0.001:
                return await self._read_result(task_id)
            timeout = min(remaining, MAX_BLOCK_S)
            value = await self._run(self._blmove(key, timeout))
            if value is not None:
                return _bytes(value)

    def _blmove(self, key: str, timeout: float) -> Callable[[], Awaitable[Any]]:
        packed = pack(("BLMOVE", key, key, "RIGHT", "LEFT", f"{timeout:.3f}"))
        return lambda: self._blocking_now(packed, timeout)

    # -- optional: worker registry and commands --------------------------------------------

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        keys = (self._workers_key, self._workers_expiry_key)
        args = (info["name"], json.dumps(info, default=str), _ms(ttl))
        await self._one(lua.command(lua.REGISTER_WORKER, keys, args))

    async def deregister_worker(self, name: str) -> None:
        await self._many(
            [
                pack(("HDEL", self._workers_key, name)),
                pack(("ZREM", self._workers_expiry_key, name)),
                pack(("DEL", self._command_key(name))),
            ]
        )

    async def list_workers(self) -> list[WorkerInfo]:
        keys = (self._workers_key, self._workers_expiry_key)
        raw = await self._one(lua.command(lua.LIST_WORKERS, keys, ()))
        workers: list[WorkerInfo] = [json.loads(r) for r in raw]
        return sorted(workers, key=lambda w: w.get("name", ""))

    def _command_key(self, worker: str) -> str:
        return f"{{{self.prefix}}}:cmd:{worker}"

    async def send_command(self, worker: str, command: dict[str, Any]) -> None:
        key = self._command_key(worker)
        await self._many(
            [
                pack(("MULTI",)),
                pack(("RPUSH", key, json.dumps(command))),
                pack(("EXPIRE", key, COMMAND_TTL_S)),
                pack(("EXEC",)),
            ]
        )

    async def receive_commands(self, worker: str) -> list[dict[str, Any]]:
        raw = await self._one(pack(("LPOP", self._command_key(worker), 1000)))
        return [json.loads(r) for r in raw or ()]


__all__ = ["RedisDriver"]
