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

One claim script promotes due delayed messages, puts expired leases back in front of the queue
(their token is dropped, so the old holder is fenced off), pops up to ``limit`` ids and leases
them, all in one atomic step. When every queue is empty the consumer blocks on the queues'
``wake`` lists for at most the time until the next delayed message or lease falls due.
Round trips: enqueue 1, enqueue_many 1 per call, dequeue 1 per batch per queue visited, ack and
extend 1 per batch, release and fail 1.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import random
import secrets
import ssl
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar, cast
from urllib.parse import urlsplit

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
    import hiredis
    from redis.connection import parse_url
    from redis.exceptions import (
        AuthenticationError,
        BusyLoadingError,
        NoScriptError,
        ReadOnlyError,
        ResponseError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise DriverNotAvailable(
        'the redis driver needs redis-py and hiredis: pip install "asynctasq[redis]"'
    ) from exc

if TYPE_CHECKING:
    from asynctasq.config import Config

log = logging.getLogger("asynctasq.redis")

T = TypeVar("T")

DEFAULT_URL = "redis://localhost:6379"
DEFAULT_PREFIX = "asynctasq"
DEFAULT_MAX_CONNECTIONS = 50
DEFAULT_RECONNECT_S = 60.0
"""How long an operation keeps retrying a lost connection (backoff) before raising DriverError."""
DEFAULT_SOCKET_TIMEOUT_S = 15.0
MAX_BLOCK_S = 5.0
"""Longest single BLPOP/BLMOVE; kept well under the socket timeout."""
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0
COMMAND_TTL_S = 86_400
"""Commands sent to a worker that never reads them vanish after a day."""
_LUA_UNPACK_CHUNK = 500
MAX_CLAIM = _LUA_UNPACK_CHUNK
"""Most messages one claim script leases; a larger ``limit`` takes several (Lua stack limit)."""

_RETRYABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, BusyLoadingError, OSError)

# -- Lua -------------------------------------------------------------------------------------
# Shared by the scripts that move messages: the Redis clock in ms, and RPUSH/LPUSH/ZREM/HDEL in
# chunks (Lua's unpack has a stack limit).
_LUA_COMMON = f"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function each_chunk(cmd, key, list)
  local n = #list
  for i = 1, n, {_LUA_UNPACK_CHUNK} do
    redis.call(cmd, key, unpack(list, i, math.min(i + {_LUA_UNPACK_CHUNK - 1}, n)))
  end
end
local function signal(wake)
  if redis.call('LLEN', wake) == 0 then redis.call('RPUSH', wake, '1') end
end
local warning = ''
local function expect(key, kind, now)
  -- a key of the wrong type (written by hand) is set aside so the queue keeps working
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= kind then
    local aside = key .. ':corrupt:' .. now
    redis.call('RENAME', key, aside)
    warning = warning .. key .. ' held a ' .. t .. ' instead of a ' .. kind .. '; moved to ' .. aside .. '. '
  end
end
"""

# KEYS: ready delayed leased body count token wake
# ARGV: limit lease_ms token_base
# -> {wait_hint_ms, warning, id1, body1, count1, token1, ...}; the hint (ms until the next
#    delayed message or lease falls due, -1 for none) only when nothing was claimed.
_CLAIM = (
    _LUA_COMMON
    + f"""
local ready, delayed, leased, body, count, token, wake = unpack(KEYS)
local now = now_ms()
expect(ready, 'list', now); expect(delayed, 'zset', now)
expect(leased, 'zset', now); expect(wake, 'list', now)
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, {_LUA_UNPACK_CHUNK})
if #due > 0 then
  redis.call('ZREM', delayed, unpack(due))
  redis.call('RPUSH', ready, unpack(due))
end
local lost = redis.call('ZRANGEBYSCORE', leased, '-inf', now, 'LIMIT', 0, {_LUA_UNPACK_CHUNK})
if #lost > 0 then
  redis.call('ZREM', leased, unpack(lost))
  redis.call('HDEL', token, unpack(lost))
  local back = {{}}
  for i = #lost, 1, -1 do back[#back + 1] = lost[i] end
  redis.call('LPUSH', ready, unpack(back))
end
local out = {{-1, warning}}
local limit = tonumber(ARGV[1])
local ids = false
if limit > 0 then ids = redis.call('LPOP', ready, limit) end
if ids then
  local bodies = redis.call('HMGET', body, unpack(ids))
  local expiry = now + tonumber(ARGV[2])
  local base = ARGV[3]
  local leases, tokens = {{}}, {{}}
  for i = 1, #ids do
    local id, b = ids[i], bodies[i]
    if not b then
      -- not one of our ids: a value pushed by hand; deliver it as a message of its own
      b = id
      id = base .. '-raw' .. i
      redis.call('HSET', body, id, b)
    end
    local tok = base .. '.' .. i
    local n = redis.call('HINCRBY', count, id, 1)
    leases[#leases + 1] = expiry; leases[#leases + 1] = id
    tokens[#tokens + 1] = id; tokens[#tokens + 1] = tok
    out[#out + 1] = id; out[#out + 1] = b; out[#out + 1] = n; out[#out + 1] = tok
  end
  redis.call('ZADD', leased, unpack(leases))
  redis.call('HSET', token, unpack(tokens))
  if redis.call('LLEN', ready) > 0 then signal(wake) end
else
  local hint = -1
  local d = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  if d[2] then hint = tonumber(d[2]) - now end
  local l = redis.call('ZRANGE', leased, 0, 0, 'WITHSCORES')
  if l[2] and (hint < 0 or tonumber(l[2]) - now < hint) then hint = tonumber(l[2]) - now end
  if hint == 0 then hint = 1 end
  out[1] = hint
end
return out
"""
)

# KEYS: ready delayed body wake
# ARGV: id1 body1 delay_ms1 id2 body2 delay_ms2 ... -> a warning ('' when all is well)
# An id already stored is skipped, so a retried enqueue never doubles a message.
_ENQUEUE = (
    _LUA_COMMON
    + """
local ready, delayed, body, wake = unpack(KEYS)
local now = now_ms()
expect(ready, 'list', now); expect(delayed, 'zset', now); expect(wake, 'list', now)
local push, later = {}, nil
for i = 1, #ARGV, 3 do
  local id = ARGV[i]
  if redis.call('HSETNX', body, id, ARGV[i + 1]) == 1 then
    local ms = tonumber(ARGV[i + 2])
    if ms > 0 then
      redis.call('ZADD', delayed, now + ms, id)
      later = later or {}
      later[id] = true
    else
      push[#push + 1] = id
    end
  end
end
if #push > 0 then
  each_chunk('RPUSH', ready, push)
  signal(wake)
elseif later then
  -- a new earliest delayed message: wake a blocked consumer so it waits less
  local first = redis.call('ZRANGE', delayed, 0, 0)[1]
  if first and later[first] then signal(wake) end
end
return warning
"""
)

# KEYS: leased body count token ; ARGV: id1 token1 id2 token2 ...
_ACK = (
    _LUA_COMMON
    + """
local leased, body, count, token = unpack(KEYS)
local done = {}
for i = 1, #ARGV, 2 do
  if redis.call('HGET', token, ARGV[i]) == ARGV[i + 1] then done[#done + 1] = ARGV[i] end
end
if #done > 0 then
  each_chunk('ZREM', leased, done)
  each_chunk('HDEL', body, done)
  each_chunk('HDEL', count, done)
  each_chunk('HDEL', token, done)
end
return #done
"""
)

# KEYS: leased token ; ARGV: lease_ms id1 token1 ...
_EXTEND = (
    _LUA_COMMON
    + """
local leased, token = unpack(KEYS)
local expiry = now_ms() + tonumber(ARGV[1])
local held = 0
for i = 2, #ARGV, 2 do
  if redis.call('HGET', token, ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', leased, 'XX', expiry, ARGV[i])
    held = held + 1
  end
end
return held
"""
)

# KEYS: ready delayed leased body count token wake
# ARGV: id token delay_ms has_body body
_RELEASE = (
    _LUA_COMMON
    + """
local ready, delayed, leased, body, count, token, wake = unpack(KEYS)
local id = ARGV[1]
if redis.call('HGET', token, id) ~= ARGV[2] then return 0 end
redis.call('HDEL', token, id)
redis.call('ZREM', leased, id)
if ARGV[4] == '1' then
  redis.call('HSET', body, id, ARGV[5])
  redis.call('HDEL', count, id)
else
  local n = redis.call('HINCRBY', count, id, -1)
  if n <= 0 then redis.call('HDEL', count, id) end
end
local ms = tonumber(ARGV[3])
if ms > 0 then
  redis.call('ZADD', delayed, now_ms() + ms, id)
  if redis.call('ZRANGE', delayed, 0, 0)[1] == id then signal(wake) end
else
  redis.call('RPUSH', ready, id)
  signal(wake)
end
return 1
"""
)

# KEYS: leased body count token failed failed_error failed_at ; ARGV: id token error
_FAIL = (
    _LUA_COMMON
    + """
local leased, body, count, token, failed, failed_error, failed_at = unpack(KEYS)
local id = ARGV[1]
if redis.call('HGET', token, id) ~= ARGV[2] then return 0 end
local b = redis.call('HGET', body, id) or ''
redis.call('ZREM', leased, id)
redis.call('HDEL', body, id)
redis.call('HDEL', count, id)
redis.call('HDEL', token, id)
redis.call('HSET', failed, id, b)
redis.call('HSET', failed_error, id, ARGV[3])
redis.call('ZADD', failed_at, now_ms(), id)
return 1
"""
)

# KEYS: ready body count failed failed_error failed_at wake ; ARGV: ids (none: all)
_FAILED_REQUEUE = (
    _LUA_COMMON
    + """
local ready, body, count, failed, failed_error, failed_at, wake = unpack(KEYS)
local ids = ARGV
if #ids == 0 then ids = redis.call('ZRANGE', failed_at, 0, -1) end
local back = {}
for i = 1, #ids do
  local b = redis.call('HGET', failed, ids[i])
  if b then
    redis.call('HSET', body, ids[i], b)
    redis.call('HDEL', count, ids[i])
    redis.call('HDEL', failed, ids[i])
    redis.call('HDEL', failed_error, ids[i])
    redis.call('ZREM', failed_at, ids[i])
    back[#back + 1] = ids[i]
  end
end
if #back > 0 then
  each_chunk('RPUSH', ready, back)
  signal(wake)
end
return #back
"""
)

# KEYS: failed failed_error failed_at ; ARGV: ids (none: all)
_FAILED_PURGE = """
local failed, failed_error, failed_at = unpack(KEYS)
if #ARGV == 0 then
  local n = redis.call('ZCARD', failed_at)
  redis.call('DEL', failed, failed_error, failed_at)
  return n
end
local n = 0
for i = 1, #ARGV do
  if redis.call('HDEL', failed, ARGV[i]) == 1 then n = n + 1 end
  redis.call('HDEL', failed_error, ARGV[i])
  redis.call('ZREM', failed_at, ARGV[i])
end
return n
"""

# KEYS: ready delayed leased body count token wake
_PURGE = """
local n = redis.call('HLEN', KEYS[4])
redis.call('UNLINK', unpack(KEYS))
return n
"""

# KEYS: result ; ARGV: value ttl_ms
_STORE_RESULT = """
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: workers workers_expiry ; ARGV: name info ttl_ms
_REGISTER_WORKER = (
    _LUA_COMMON
    + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

# KEYS: workers workers_expiry -> infos of live workers
_LIST_WORKERS = (
    _LUA_COMMON
    + """
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms())
if #gone > 0 then
  each_chunk('ZREM', KEYS[2], gone)
  each_chunk('HDEL', KEYS[1], gone)
end
return redis.call('HVALS', KEYS[1])
"""
)


# -- the connection: RESP over asyncio with hiredis ------------------------------------------
# One multiplexed connection carries every non-blocking command: requests are written in order
# and replies resolve waiting futures in the same order, so concurrent callers (the fetcher, the
# ack flusher, the lease heartbeat) share a socket without a pool checkout per command. BLPOP
# and BLMOVE take a connection of their own from a small idle list.


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float):
        return repr(value).encode()
    return bytes(value)


def _pack(args: Sequence[Any], head: bytes = b"", head_len: int = 0) -> bytes:
    """One RESP command: ``head`` (already packed, ``head_len`` items) followed by ``args``."""
    out = [b"*%d\r\n" % (head_len + len(args)), head]
    for arg in args:
        data = _encode(arg)
        out += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(out)


def _reply_error(reply: Any) -> Exception:
    text = str(reply)
    code = text.split(" ", 1)[0]
    cls = {
        "NOSCRIPT": NoScriptError,
        "READONLY": ReadOnlyError,
        "LOADING": BusyLoadingError,
        "WRONGPASS": AuthenticationError,
        "NOAUTH": AuthenticationError,
    }.get(code, ResponseError)
    return cls(text)


class _Resp(asyncio.Protocol):
    """One Redis connection; replies resolve ``waiters`` in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self.progress = 0.0
        self.grace = 0.0
        self.writable = asyncio.Event()
        self.writable.set()
        self.watchdog: asyncio.TimerHandle | None = None
        self.outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiters = self.waiters
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(exc)
                return
            if reply is False:
                break
            if not waiters:
                self.abort(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(reply)
        self.progress = time.monotonic()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionResetError("connection closed")
        error = RedisConnectionError(f"lost the connection to Redis ({self.lost})")
        for fut in self.waiters:
            if not fut.done():
                fut.set_exception(error)
        self.waiters.clear()
        self.writable.set()
        if self.watchdog is not None:
            self.watchdog.cancel()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def abort(self, exc: BaseException) -> None:
        if self.lost is None and self.transport is not None:
            self.lost = exc
            self.transport.abort()

    def send(self, packed: bytes, replies: int, timeout: float) -> list[asyncio.Future[Any]]:
        if self.lost is not None or self.transport is None:
            raise RedisConnectionError(f"lost the connection to Redis ({self.lost})")
        loop = asyncio.get_running_loop()
        if not self.waiters:
            self.progress = time.monotonic()
            if self.watchdog is None:
                self.watchdog = loop.call_later(timeout, self._check, timeout)
        futs = [loop.create_future() for _ in range(replies)]
        self.waiters.extend(futs)
        # commands sent in the same loop iteration (an ack flush and a claim, say) leave in one
        # write: one system call and one read on the server for all of them
        if not self.outgoing:
            loop.call_soon(self._write)
        self.outgoing.append(packed)
        return futs

    def _write(self) -> None:
        data, self.outgoing = self.outgoing, []
        if self.transport is not None and self.lost is None:
            self.transport.write(data[0] if len(data) == 1 else b"".join(data))

    def _check(self, timeout: float) -> None:
        """Abort when a reply is overdue (a dead peer); re-arm while requests are out."""
        self.watchdog = None
        if self.lost is not None or not self.waiters:
            return
        overdue = time.monotonic() - self.progress - self.grace - timeout
        if overdue >= 0:
            self.abort(RedisTimeoutError(f"no reply from Redis within {timeout + self.grace:.0f}s"))
            return
        self.watchdog = asyncio.get_running_loop().call_later(-overdue + 0.01, self._check, timeout)


class _Connection:
    """The driver's connections to one Redis server."""

    def __init__(
        self, url: str, password: str | None, db: int | None, timeout: float, max_blocking: int
    ) -> None:
        params: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self.path: str | None = params.get("path")
        self.host: str = params.get("host") or "localhost"
        self.port: int = int(params.get("port") or 6379)
        self.username: str | None = params.get("username")
        self.password = password if password is not None else params.get("password")
        self.db = int(db if db is not None else params.get("db") or 0)
        self.timeout = timeout
        self.max_blocking = max_blocking
        self.ssl: ssl.SSLContext | None = None
        if url.startswith("rediss://"):
            self.ssl = ssl.create_default_context(cafile=params.get("ssl_ca_certs"))
            reqs = str(params.get("ssl_cert_reqs", "required")).lower()
            if reqs in ("none", "optional"):
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE if reqs == "none" else ssl.CERT_OPTIONAL
            if params.get("ssl_certfile"):
                self.ssl.load_cert_chain(params["ssl_certfile"], params.get("ssl_keyfile"))
        self.address = self.path or f"{self.host}:{self.port}"
        self.opened: weakref.WeakSet[_Resp] = weakref.WeakSet()
        """Every connection opened, so close() reaches the ones busy in a blocking command."""
        self._main: _Resp | None = None
        self._opening: asyncio.Lock | None = None
        self._idle_blocking: list[_Resp] = []

    async def open(self) -> _Resp:
        loop = asyncio.get_running_loop()
        proto: _Resp | None = None
        try:
            async with asyncio.timeout(min(self.timeout, 5.0)):
                if self.path:
                    _, proto = await loop.create_unix_connection(_Resp, self.path)
                else:
                    _, proto = await loop.create_connection(
                        _Resp,
                        self.host,
                        self.port,
                        ssl=self.ssl,
                        server_hostname=self.host if self.ssl else None,
                    )
                hello: list[list[Any]] = []
                if self.password is not None:
                    hello.append(
                        ["AUTH", self.username, self.password] if self.username else ["AUTH", self.password]
                    )
                if self.db:
                    hello.append(["SELECT", self.db])
                for command in hello:
                    [fut] = proto.send(_pack(command), 1, self.timeout)
                    reply = await fut
                    if isinstance(reply, hiredis.ReplyError):
                        raise _reply_error(reply)
        except BaseException as exc:
            if proto is not None:
                proto.abort(RedisConnectionError("connection setup failed"))
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"timed out connecting to {self.address}") from None
            if isinstance(exc, OSError):
                reason = exc.strerror or exc
                raise RedisConnectionError(f"error connecting to {self.address}: {reason}") from None
            raise
        self.opened.add(proto)
        return proto

    async def main(self) -> _Resp:
        proto = self._main
        if proto is not None and proto.lost is None:
            return proto
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._main is None or self._main.lost is not None:
                self._main = await self.open()
            return self._main

    async def execute(self, packed: bytes) -> Any:
        """Send one packed command; raise its error reply."""
        proto = self._main
        if proto is None or proto.lost is not None:
            proto = await self.main()
        [fut] = proto.send(packed, 1, self.timeout)
        reply = await fut
        if isinstance(reply, hiredis.ReplyError):
            raise _reply_error(reply)
        if not proto.writable.is_set():
            await proto.writable.wait()
        return reply

    async def execute_many(self, packed: Sequence[bytes]) -> list[Any]:
        """Send commands in one write (one round trip); error replies come back as exceptions."""
        proto = self._main
        if proto is None or proto.lost is not None:
            proto = await self.main()
        futs = proto.send(b"".join(packed), len(packed), self.timeout)
        replies = [await fut for fut in futs]
        if not proto.writable.is_set():
            await proto.writable.wait()
        return [_reply_error(r) if isinstance(r, hiredis.ReplyError) else r for r in replies]

    async def blocking(self, packed: bytes, block_s: float) -> Any:
        """A blocking command on a connection of its own (dropped if the caller gives up)."""
        proto = None
        while self._idle_blocking:
            candidate = self._idle_blocking.pop()
            if candidate.lost is None:
                proto = candidate
                break
        if proto is None:
            proto = await self.open()
        proto.grace = block_s
        try:
            [fut] = proto.send(packed, 1, self.timeout)
            reply = await fut
        except BaseException:
            proto.abort(RedisConnectionError("blocking command abandoned"))
            raise
        proto.grace = 0.0
        if len(self._idle_blocking) < self.max_blocking:
            self._idle_blocking.append(proto)
        else:
            proto.abort(RedisConnectionError("closing a spare connection"))
        if isinstance(reply, hiredis.ReplyError):
            raise _reply_error(reply)
        return reply

    def close(self) -> None:
        for proto in list(self.opened):
            if proto.transport is not None and proto.lost is None:
                proto.transport.close()
        self.opened.clear()
        self._main = None
        self._idle_blocking.clear()


class _Script(NamedTuple):
    source: str
    sha: str


def _script(source: str) -> _Script:
    return _Script(source, hashlib.sha1(source.encode()).hexdigest())


_SCRIPTS = {
    name: _script(src)
    for name, src in {
        "claim": _CLAIM,
        "enqueue": _ENQUEUE,
        "ack": _ACK,
        "extend": _EXTEND,
        "release": _RELEASE,
        "fail": _FAIL,
        "failed_requeue": _FAILED_REQUEUE,
        "failed_purge": _FAILED_PURGE,
        "purge": _PURGE,
        "store_result": _STORE_RESULT,
        "register_worker": _REGISTER_WORKER,
        "list_workers": _LIST_WORKERS,
    }.items()
}


class _QueueKeys:
    __slots__ = (
        "body",
        "count",
        "delayed",
        "failed",
        "failed_at",
        "failed_error",
        "heads",
        "leased",
        "ready",
        "token",
        "wake",
    )

    def __init__(self, prefix: str, queue: str) -> None:
        self.heads: dict[str, tuple[bytes, int]] = {}
        tag = f"{{{prefix}:{queue}}}"
        self.ready = f"{tag}:ready"
        self.delayed = f"{tag}:delayed"
        self.leased = f"{tag}:leased"
        self.body = f"{tag}:body"
        self.count = f"{tag}:count"
        self.token = f"{tag}:token"
        self.wake = f"{tag}:wake"
        self.failed = f"{tag}:failed"
        self.failed_error = f"{tag}:failed:error"
        self.failed_at = f"{tag}:failed:at"

    @property
    def claim(self) -> tuple[str, ...]:
        return (self.ready, self.delayed, self.leased, self.body, self.count, self.token, self.wake)

    @property
    def enqueue(self) -> tuple[str, ...]:
        return (self.ready, self.delayed, self.body, self.wake)

    @property
    def ack(self) -> tuple[str, ...]:
        return (self.leased, self.body, self.count, self.token)

    @property
    def failed_keys(self) -> tuple[str, ...]:
        return (self.failed, self.failed_error, self.failed_at)

    def command(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> bytes:
        """``EVALSHA`` of ``script`` on ``keys`` (always the same ones per script) with ``args``."""
        head = self.heads.get(script)
        if head is None:
            head = self.heads[script] = _script_head(script, keys)
        return _pack(args, *head)


def _script_head(script: str, keys: Sequence[str]) -> tuple[bytes, int]:
    items = ["EVALSHA", _SCRIPTS[script].sha, len(keys), *keys]
    return _pack(items)[len(b"*%d\r\n" % len(items)) :], len(items)


def _script_command(script: str, keys: Sequence[str], args: Sequence[Any]) -> bytes:
    return _pack(args, *_script_head(script, keys))


def _ms(seconds: float) -> int:
    return max(round(seconds * 1000), 0)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisDriver(BaseDriver):
    """Queues in Redis (6.2+; 7 recommended), spoken to through hiredis on asyncio.

    Arguments: ``url`` (``redis://``, ``rediss://`` or ``unix://``; ``?ssl_cert_reqs=none``
    and ``ssl_ca_certs=`` for TLS), ``password`` and ``db`` (override the URL's),
    ``max_connections`` (connections kept for blocking waits; one more carries every other
    command), ``prefix`` (key namespace, so several apps share one Redis), ``lease_seconds``,
    ``reconnect_timeout`` (seconds an operation retries a lost connection with backoff before it
    raises :class:`DriverError`), ``socket_timeout`` (a reply overdue this long drops the
    connection).
    """

    name = "redis"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"stats", "failed", "results", "workers", "control", "purge"}
    )

    def __init__(
        self,
        *,
        url: str = DEFAULT_URL,
        password: str | None = None,
        db: int | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        prefix: str = DEFAULT_PREFIX,
        lease_seconds: float = DEFAULT_LEASE_S,
        reconnect_timeout: float = DEFAULT_RECONNECT_S,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT_S,
    ) -> None:
        super().__init__(lease_seconds=lease_seconds)
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"redis url {redact_url(url)!r} must start with redis://, rediss:// or unix://")
        if not prefix or any(c in prefix for c in "{} \n"):
            raise ConfigError(f"redis prefix {prefix!r} must be non-empty, without braces or spaces")
        if max_connections < 1:
            raise ConfigError("redis max_connections must be at least 1")
        try:
            self._conn = _Connection(url, password, db, socket_timeout, max_connections)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"redis url {redact_url(url)!r} is invalid: {exc}") from None
        self.url = url
        self.prefix = prefix
        self.reconnect_timeout = reconnect_timeout
        self._password = self._conn.password
        self._db = db
        self._connected = False
        self._queue_keys: dict[str, _QueueKeys] = {}
        self._known_queues: set[str] = set()
        self._ids = itertools.count(1)
        self._id_base = secrets.token_hex(8)
        ns = f"{{{prefix}}}"
        self._queues_key = f"{ns}:queues"
        self._workers_key = f"{ns}:workers"
        self._workers_expiry_key = f"{ns}:workers:expiry"

    @classmethod
    def from_config(cls, config: Config) -> RedisDriver:
        return cls(
            url=config.redis_url,
            password=config.redis_password,
            db=config.redis_db,
            max_connections=config.redis_max_connections,
            prefix=config.redis_prefix,
            lease_seconds=config.lease_seconds,
        )

    def describe(self) -> str:
        db = "" if self._db is None else f" db={self._db}"
        return f"redis {redact_url(self.url)}{db} prefix={self.prefix}"

    # -- connection ------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._connected:
            return
        try:
            await self._conn.main()
            await self._load_scripts()
        except AuthenticationError as exc:
            self._conn.close()
            raise DriverError(
                f"Redis at {self._conn.address} refused the credentials ({exc}): check the password "
                "in --redis-url / --redis-password (ASYNCTASQ_REDIS_URL / ASYNCTASQ_REDIS_PASSWORD)"
            ) from None
        except ResponseError as exc:
            self._conn.close()
            raise DriverError(
                f"Redis at {self._conn.address} refused the connection setup ({exc}): check "
                "--redis-url, --redis-password and --redis-db"
            ) from None
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._conn.close()
            raise DriverError(self._unreachable(exc)) from None
        self._connected = True

    async def disconnect(self) -> None:
        self._connected = False
        self._conn.close()

    def _unreachable(self, exc: BaseException) -> str:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        return (
            f"cannot reach Redis at {self._conn.address} ({reason}): start Redis there or point "
            "--redis-url / ASYNCTASQ_REDIS_URL at a running server"
        )

    async def _load_scripts(self) -> None:
        replies = await self._conn.execute_many(
            [_pack(("SCRIPT", "LOAD", s.source)) for s in _SCRIPTS.values()]
        )
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply

    async def _run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)``, retrying a lost connection with jittered backoff for
        ``reconnect_timeout`` seconds (every operation is safe to repeat)."""
        deadline = 0.0
        delay = BACKOFF_FIRST_S
        while True:
            if not self._connected:
                raise DriverError("the redis driver is not connected: call `await driver.connect()` first")
            try:
                return await fn(*args)
            except NoScriptError:
                await self._load_scripts()  # the server restarted or flushed its script cache
            except _RETRYABLE as exc:
                now = time.monotonic()
                if not deadline:
                    deadline = now + self.reconnect_timeout
                    log.warning("lost Redis at %s (%s); reconnecting", self._conn.address, exc)
                if now >= deadline:
                    raise DriverError(self._unreachable(exc)) from None
                await asyncio.sleep(min(delay * (0.5 + random.random()), max(deadline - now, 0.0)))
                delay = min(delay * 2, BACKOFF_MAX_S)
            except ResponseError as exc:
                raise DriverError(f"Redis at {self._conn.address} answered with an error: {exc}") from exc

    async def _execute(self, *args: Any) -> Any:
        return await self._conn.execute(_pack(args))

    async def _execute_many(self, commands: Sequence[bytes]) -> list[Any]:
        """Commands in one round trip; NOSCRIPT reloads the scripts and reruns those."""
        if len(commands) == 1:
            return [await self._conn.execute(commands[0])]
        results = await self._conn.execute_many(commands)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            await self._load_scripts()
            again = await self._conn.execute_many([commands[i] for i in missing])
            for i, r in zip(missing, again, strict=True):
                results[i] = r
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results

    def _keys(self, queue: str) -> _QueueKeys:
        keys = self._queue_keys.get(queue)
        if keys is None:
            validate_queue_name(queue)
            keys = self._queue_keys[queue] = _QueueKeys(self.prefix, queue)
        return keys

    def _next_id(self) -> str:
        return f"{self._id_base}{next(self._ids):x}"

    # -- contract --------------------------------------------------------------------------

    async def enqueue(self, queue: str, body: bytes, delay: float = 0.0) -> str:
        return (await self.enqueue_many([EnqueueItem(queue, body, delay)]))[0]

    async def enqueue_many(self, items: Sequence[EnqueueItem]) -> list[str]:
        ids: list[str] = []
        by_queue: dict[str, list[Any]] = {}
        for item in items:
            self._keys(item.queue)
            msg_id = self._next_id()
            ids.append(msg_id)
            by_queue.setdefault(item.queue, []).extend((msg_id, item.body, _ms(item.delay)))
        if not by_queue:
            return ids
        commands = [
            self._keys(q).command("enqueue", self._keys(q).enqueue, args) for q, args in by_queue.items()
        ]
        new = [q for q in by_queue if q not in self._known_queues]
        if new:
            commands.append(_pack(("SADD", self._queues_key, *new)))
        replies = await self._run(self._execute_many, commands)
        self._known_queues.update(new)
        for queue, warning in zip(by_queue, replies, strict=False):
            if warning:
                log.warning("queue %s: %s", queue, _text(warning).strip())
        return ids

    async def dequeue(self, queues: Sequence[str], limit: int, wait: float) -> list[Delivery]:
        keys = [self._keys(q) for q in queues]
        if limit <= 0 or not keys:
            return []
        deadline = time.monotonic() + max(wait, 0.0)
        lease_ms = _ms(self.lease_seconds)
        while True:
            out: list[Delivery] = []
            hint_ms = -1
            for queue, qk in zip(queues, keys, strict=True):
                while len(out) < limit:
                    want = min(limit - len(out), MAX_CLAIM)
                    command = qk.command("claim", qk.claim, (want, lease_ms, self._next_id()))
                    res = await self._run(self._conn.execute, command)
                    if res[1]:
                        log.warning("queue %s: %s", queue, _text(res[1]).strip())
                    if len(res) == 2:
                        if res[0] >= 0 and (hint_ms < 0 or res[0] < hint_ms):
                            hint_ms = res[0]
                        break
                    for i in range(2, len(res), 4):
                        out.append(
                            Delivery(res[i].decode(), queue, res[i + 1], res[i + 3].decode(), res[i + 2])
                        )
                    if len(res) - 2 < 4 * want:
                        break
                if len(out) >= limit:
                    break
            if out:
                return out
            remaining = deadline - time.monotonic()
            if remaining < 0.001:
                return out
            timeout = min(remaining, MAX_BLOCK_S)
            if hint_ms >= 0:
                timeout = min(timeout, max(hint_ms / 1000, 0.001))
            command = _pack(("BLPOP", *(qk.wake for qk in keys), f"{timeout:.3f}"))
            await self._run(self._conn.blocking, command, timeout)

    async def ack(self, deliveries: Sequence[Delivery]) -> int:
        if not deliveries:
            return 0
        by_queue: dict[str, list[str]] = {}
        for d in deliveries:
            by_queue.setdefault(d.queue, []).extend((d.id, d.token))
        commands = [self._keys(q).command("ack", self._keys(q).ack, args) for q, args in by_queue.items()]
        return sum(await self._run(self._execute_many, commands))

    async def extend(self, deliveries: Sequence[Delivery], seconds: float | None = None) -> int:
        if not deliveries:
            return 0
        ms = _ms(self.lease_seconds if seconds is None else seconds)
        by_queue: dict[str, list[Any]] = {}
        for d in deliveries:
            by_queue.setdefault(d.queue, [ms]).extend((d.id, d.token))
        commands = []
        for q, args in by_queue.items():
            qk = self._keys(q)
            commands.append(qk.command("extend", (qk.leased, qk.token), args))
        return sum(await self._run(self._execute_many, commands))

    async def release(self, delivery: Delivery, delay: float = 0.0, body: bytes | None = None) -> bool:
        qk = self._keys(delivery.queue)
        args = (delivery.id, delivery.token, _ms(delay), "0" if body is None else "1", body or b"")
        return bool(await self._run(self._conn.execute, qk.command("release", qk.claim, args)))

    async def fail(self, delivery: Delivery, error: str) -> bool:
        qk = self._keys(delivery.queue)
        commands = [qk.command("fail", (*qk.ack, *qk.failed_keys), (delivery.id, delivery.token, error))]
        new = delivery.queue not in self._known_queues
        if new:
            commands.append(_pack(("SADD", self._queues_key, delivery.queue)))
        done = await self._run(self._execute_many, commands)
        if new:
            self._known_queues.add(delivery.queue)
        return bool(done[0])

    # -- optional: stats, purge, failed registry -------------------------------------------

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        commands = []
        for q in queues:
            qk = self._keys(q)
            commands += [
                qk.command("claim", qk.claim, (0, 0, "")),  # limit 0: only promote and reap
                _pack(("LLEN", qk.ready)),
                _pack(("ZCARD", qk.delayed)),
                _pack(("ZCARD", qk.leased)),
                _pack(("ZCARD", qk.failed_at)),
            ]
        res = await self._run(self._execute_many, commands) if commands else []
        out: dict[str, QueueStats] = {}
        for i, q in enumerate(queues):
            _, ready, delayed, leased, failed = res[i * 5 : i * 5 + 5]
            out[q] = QueueStats(ready=ready, delayed=delayed, leased=leased, failed=failed)
        return out

    async def purge(self, queue: str) -> int:
        qk = self._keys(queue)
        return int(await self._run(self._conn.execute, qk.command("purge", qk.claim, ())))

    async def _queues_for(self, queue: str | None) -> list[str]:
        if queue is not None:
            self._keys(queue)
            return [queue]
        members = await self._run(self._execute, "SMEMBERS", self._queues_key)
        return sorted(_text(m) for m in members)

    async def failed_list(self, queue: str | None = None, limit: int = 100) -> list[FailedEntry]:
        queues = await self._queues_for(queue)
        if not queues or limit <= 0:
            return []
        commands = [_pack(("ZRANGE", self._keys(q).failed_at, 0, limit - 1, "WITHSCORES")) for q in queues]
        heads = await self._run(self._execute_many, commands)
        picked = sorted(
            (float(head[i + 1]), _text(head[i]), q)
            for q, head in zip(queues, heads, strict=True)
            for i in range(0, len(head), 2)
        )[:limit]
        if not picked:
            return []
        commands = []
        for _, msg_id, q in picked:
            qk = self._keys(q)
            commands += [_pack(("HGET", qk.failed, msg_id)), _pack(("HGET", qk.failed_error, msg_id))]
        info = await self._run(self._execute_many, commands)
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
        args = [] if ids is None else list(ids)
        if ids is not None and not args:
            return 0
        commands = []
        for q in await self._queues_for(queue):
            qk = self._keys(q)
            keys = (qk.ready, qk.body, qk.count, *qk.failed_keys, qk.wake)
            commands.append(qk.command("failed_requeue", keys, args))
        return sum(await self._run(self._execute_many, commands)) if commands else 0

    async def failed_purge(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        args = [] if ids is None else list(ids)
        if ids is not None and not args:
            return 0
        commands = []
        for q in await self._queues_for(queue):
            qk = self._keys(q)
            commands.append(qk.command("failed_purge", qk.failed_keys, args))
        return sum(await self._run(self._execute_many, commands)) if commands else 0

    # -- optional: results -----------------------------------------------------------------

    def _result_key(self, task_id: str) -> str:
        return f"{{{self.prefix}:result:{task_id}}}"

    async def store_results(self, results: Sequence[tuple[str, bytes]], ttl: float) -> None:
        ttl_ms = _ms(ttl)
        if not results or ttl_ms <= 0:
            return
        commands = [
            _script_command("store_result", (self._result_key(task_id),), (payload, ttl_ms))
            for task_id, payload in results
        ]
        await self._run(self._execute_many, commands)

    async def get_result(self, task_id: str, wait: float) -> bytes | None:
        key = self._result_key(task_id)
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            remaining = deadline - time.monotonic()
            if remaining < 0.001:
                value = await self._run(self._execute, "LINDEX", key, 0)
                return None if value is None else _bytes(value)
            timeout = min(remaining, MAX_BLOCK_S)
            # rotating the one-element list onto itself reads it without taking it, and every
            # blocked reader wakes when the worker pushes it
            command = _pack(("BLMOVE", key, key, "RIGHT", "LEFT", f"{timeout:.3f}"))
            value = await self._run(self._conn.blocking, command, timeout)
            if value is not None:
                return _bytes(value)

    # -- optional: worker registry and commands --------------------------------------------

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        keys = (self._workers_key, self._workers_expiry_key)
        args = (info["name"], json.dumps(info, default=str), _ms(ttl))
        await self._run(self._conn.execute, _script_command("register_worker", keys, args))

    async def deregister_worker(self, name: str) -> None:
        commands = [
            _pack(("HDEL", self._workers_key, name)),
            _pack(("ZREM", self._workers_expiry_key, name)),
            _pack(("DEL", self._command_key(name))),
        ]
        await self._run(self._execute_many, commands)

    async def list_workers(self) -> list[WorkerInfo]:
        keys = (self._workers_key, self._workers_expiry_key)
        raw = await self._run(self._conn.execute, _script_command("list_workers", keys, ()))
        workers: list[WorkerInfo] = [json.loads(r) for r in raw]
        return sorted(workers, key=lambda w: w.get("name", ""))

    def _command_key(self, worker: str) -> str:
        return f"{{{self.prefix}}}:cmd:{worker}"

    async def send_command(self, worker: str, command: dict[str, Any]) -> None:
        key = self._command_key(worker)
        commands = [
            _pack(("MULTI",)),
            _pack(("RPUSH", key, json.dumps(command))),
            _pack(("EXPIRE", key, COMMAND_TTL_S)),
            _pack(("EXEC",)),
        ]
        await self._run(self._execute_many, commands)

    async def receive_commands(self, worker: str) -> list[dict[str, Any]]:
        raw = await self._run(self._execute, "LPOP", self._command_key(worker), 1000)
        return [json.loads(r) for r in raw or ()]


__all__ = ["RedisDriver"]
