"""A small Redis client: RESP2 over asyncio, replies parsed by hiredis.

::

    client = RespClient(parse_url("redis://localhost:6379/0"))
    [pong] = await client.execute_many([pack(("PING",))])
    client.close()

One multiplexed connection carries every non-blocking command of a process's callers:
requests are written in order and replies resolve the callers' futures in the same order, so
the fetcher, the ack flusher and the lease heartbeat share a socket with no pool checkout per
command, and commands issued in the same loop iteration leave in one write. A batch
(:meth:`RespClient.execute_many`) waits on ONE future for all its replies, so a lost
connection fails exactly the futures someone awaits (none is left "never retrieved").
Blocking commands (``BLPOP``, ``BLMOVE``) take a connection of their own from a small idle set.

A reply overdue by ``timeout`` seconds (plus the blocking time of a blocking command) aborts the
connection (a dead peer, a cut network). What it does not do: Cluster ``MOVED``/``ASK``
redirects, Sentinel discovery, RESP3, pub/sub.

Errors: :class:`ConnectionLost` (retryable: reconnect and try again), :class:`ReplyError` and
its subclasses for error replies (``NOSCRIPT``, ``READONLY``, ``LOADING`` are worth a retry or a
script reload; the rest are answers), :class:`HandshakeError` for TLS set-up failures and
:class:`AuthFailed` for refused credentials.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from asynctasq.constants import DEFAULT_REDIS_MAX_CONNECTIONS, DEFAULT_REDIS_SOCKET_TIMEOUT_S

DEFAULT_PORT = 6379
CONNECT_TIMEOUT_S = 5.0
"""Longest wait for a TCP/TLS connection and its AUTH/SELECT handshake."""


class RedisError(Exception):
    """Root of this client's errors."""


class ConnectionLost(RedisError, ConnectionError):
    """The connection failed, was refused or closed; the command may or may not have run."""


class ReplyTimeout(ConnectionLost):
    """No reply within the timeout: the connection was dropped."""


class HandshakeError(RedisError):
    """The TLS handshake failed (certificate, or a server that does not speak TLS)."""


class ReplyError(RedisError):
    """An error reply from Redis; ``code`` is its first word (``ERR``, ``WRONGTYPE``...)."""

    @property
    def code(self) -> str:
        return str(self).split(" ", 1)[0]


class NoScript(ReplyError):
    pass


class ReadOnly(ReplyError):
    """A replica (or a failed-over primary) refused a write."""


class Loading(ReplyError):
    """The server is loading its dataset after a restart."""


class AuthFailed(ReplyError):
    pass


RETRYABLE: tuple[type[BaseException], ...] = (ConnectionLost, ReadOnly, Loading, OSError)
"""What a caller may retry after reconnecting (every one means: try again soon)."""

_ERRORS: dict[str, type[ReplyError]] = {
    "NOSCRIPT": NoScript,
    "READONLY": ReadOnly,
    "LOADING": Loading,
    "WRONGPASS": AuthFailed,
    "NOAUTH": AuthFailed,
    "NOPERM": AuthFailed,
}


def reply_error(reply: Any) -> ReplyError:
    """The exception of an error reply (a ``hiredis.ReplyError``)."""
    text = str(reply)
    return _ERRORS.get(text.split(" ", 1)[0], ReplyError)(text)


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int | float):
        return repr(value).encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"cannot send a {type(value).__name__} to Redis: use bytes, str, int or float")


def pack(args: Sequence[Any], head: bytes = b"", head_len: int = 0) -> bytes:
    """One RESP command: ``head`` (already packed, ``head_len`` items) followed by ``args``."""
    out = [b"*%d\r\n" % (head_len + len(args)), head]
    for arg in args:
        data = _encode(arg)
        out += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(out)


def pack_head(items: Sequence[Any]) -> tuple[bytes, int]:
    """``items`` packed as the start of a longer command (for :func:`pack`'s ``head``)."""
    packed = pack(items)
    return packed[len(b"*%d\r\n" % len(items)) :], len(items)


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect (from :func:`parse_url`)."""

    host: str = "localhost"
    port: int = DEFAULT_PORT
    path: str | None = None
    """A unix socket path (``unix://`` URLs)."""
    username: str | None = None
    password: str | None = None
    db: int = 0
    ssl: ssl.SSLContext | None = None

    @property
    def address(self) -> str:
        """``host:port`` or the socket path: safe to log."""
        return self.path or f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"<Endpoint {self.address} db={self.db}{' tls' if self.ssl else ''}>"


def parse_url(url: str, password: str | None = None, db: int | None = None) -> Endpoint:
    """``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS; query
    ``ssl_cert_reqs=none|optional|required``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``)
    or ``unix:///path.sock?db=N``; ``password`` and ``db`` override the URL's. Raises ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("the scheme must be redis://, rediss:// or unix://")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if password is None and parts.password is not None:
        password = unquote(parts.password)
    username = unquote(parts.username) if parts.username else None
    if db is None:
        raw = query.get("db") or (parts.path.strip("/") if parts.scheme != "unix" else "")
        try:
            db = int(raw or 0)
        except ValueError:
            raise ValueError(f"the database number must be an integer, not {raw!r}") from None
    if db < 0:
        raise ValueError("the database number must not be negative")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs a socket path: unix:///run/redis.sock")
        return Endpoint(path=parts.path, username=username, password=password, db=db)
    context = None
    if parts.scheme == "rediss":
        context = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
        reqs = query.get("ssl_cert_reqs", "required").lower()
        if reqs not in ("none", "optional", "required"):
            raise ValueError(f"ssl_cert_reqs must be none, optional or required, not {reqs!r}")
        if reqs != "required":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE if reqs == "none" else ssl.CERT_OPTIONAL
        if query.get("ssl_certfile"):
            context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile"))
    return Endpoint(
        host=parts.hostname or "localhost",
        port=parts.port or DEFAULT_PORT,
        username=username,
        password=password,
        db=db,
        ssl=context,
    )


class RespProtocol(asyncio.Protocol):
    """One connection. ``pending`` holds (future, n, orphan) per request in send order: n == 0
    is one command whose future gets its reply, n > 0 a batch whose future gets the list of n
    replies (error replies stay in it as ``hiredis.ReplyError``); ``orphan``, when given, gets
    the reply instead of a future that was cancelled (a claim's leases, to give them back)."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.pending: deque[tuple[asyncio.Future[Any], int, Callable[[Any], None] | None]] = deque()
        self.partial: list[Any] = []
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self.progress = 0.0
        """When the last reply (or the first request after an idle spell) came."""
        self.grace = 0.0
        """Extra seconds a reply may take (a blocking command's own timeout)."""
        self.writable = asyncio.Event()
        self.writable.set()
        self.watchdog: asyncio.TimerHandle | None = None
        self.outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.pending
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(ConnectionLost(f"Redis sent data that is not RESP ({exc})"))
                return
            if reply is False:
                break
            if not pending:
                self.abort(ConnectionLost("Redis sent a reply nobody asked for"))
                return
            fut, n, orphan = pending[0]
            if n:
                self.partial.append(reply)
                if len(self.partial) < n:
                    continue
                reply, self.partial = self.partial, []
            pending.popleft()
            if not fut.done():
                fut.set_result(reply)
            elif orphan is not None and fut.cancelled():
                orphan(reply)  # its caller is gone: what the command did is given back
        self.progress = time.monotonic()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.lost is None:
            self.lost = exc or ConnectionResetError("connection closed")
        error = self.lost if isinstance(self.lost, ConnectionLost) else None
        if error is None:
            error = ConnectionLost(f"lost the connection to Redis ({self.lost})")
        for fut, _, _ in self.pending:
            if not fut.done():
                fut.set_exception(error)
        self.pending.clear()  # an orphan's command is lost with them: its leases expire
        self.partial = []
        self.outgoing = []
        self.writable.set()
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def abort(self, exc: BaseException) -> None:
        """Drop the connection; pending requests fail with ``exc`` (when it is ConnectionLost)."""
        if self.lost is None and self.transport is not None:
            self.lost = exc
            self.transport.abort()

    def send(
        self, packed: bytes, n: int, timeout: float, orphan: Callable[[Any], None] | None = None
    ) -> asyncio.Future[Any]:
        """Queue ``packed`` (``n`` commands, 0 for one) for the next write; the future resolves
        with the reply (or the n replies)."""
        if self.lost is not None or self.transport is None:
            raise ConnectionLost(f"lost the connection to Redis ({self.lost})")
        loop = asyncio.get_running_loop()
        if not self.pending:
            self.progress = time.monotonic()
            if self.watchdog is None:
                self.watchdog = loop.call_later(timeout, self._check, timeout)
        fut = loop.create_future()
        self.pending.append((fut, n, orphan))
        if not self.outgoing:
            loop.call_soon(self._write)
        self.outgoing.append(packed)
        return fut

    def _write(self) -> None:
        data, self.outgoing = self.outgoing, []
        if data and self.transport is not None and self.lost is None:
            self.transport.write(data[0] if len(data) == 1 else b"".join(data))

    def _check(self, timeout: float) -> None:
        """Abort when a reply is overdue; re-arm while requests are out."""
        self.watchdog = None
        if self.lost is not None or not self.pending:
            return
        overdue = time.monotonic() - self.progress - self.grace - timeout
        if overdue >= 0:
            self.abort(ReplyTimeout(f"no reply from Redis within {timeout + self.grace:.0f}s"))
            return
        self.watchdog = asyncio.get_running_loop().call_later(-overdue + 0.01, self._check, timeout)


class RespClient:
    """The connections to one Redis server: one shared for ordinary commands, up to
    ``max_blocking`` idle ones kept for blocking commands. ``timeout``: seconds a reply may be
    overdue before the connection is dropped."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = DEFAULT_REDIS_SOCKET_TIMEOUT_S,
        max_blocking: int = DEFAULT_REDIS_MAX_CONNECTIONS,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.max_blocking = max_blocking
        self.opened: weakref.WeakSet[RespProtocol] = weakref.WeakSet()
        """Every live connection, so close() reaches the ones busy in a blocking command."""
        self._main: RespProtocol | None = None
        self._opening: asyncio.Lock | None = None
        self._idle: list[RespProtocol] = []

    @property
    def address(self) -> str:
        return self.endpoint.address

    async def open(self) -> RespProtocol:
        """A new connection, authenticated and on the right database."""
        ep = self.endpoint
        loop = asyncio.get_running_loop()
        proto: RespProtocol | None = None
        handshaking = False
        limit = min(self.timeout, CONNECT_TIMEOUT_S)
        try:
            async with asyncio.timeout(limit):
                if ep.path:
                    _, proto = await loop.create_unix_connection(RespProtocol, ep.path)
                else:
                    transport, proto = await loop.create_connection(RespProtocol, ep.host, ep.port)
                    if ep.ssl is not None:  # TLS apart, so a server that never answers it is told apart
                        handshaking = True
                        tls = await loop.start_tls(transport, proto, ep.ssl, server_hostname=ep.host)
                        if tls is None:
                            raise ConnectionLost(f"{ep.address} closed the connection during TLS set-up")
                        proto.transport = tls
                        handshaking = False
                hello: list[tuple[Any, ...]] = []
                if ep.password is not None:
                    hello.append(("AUTH", ep.username, ep.password) if ep.username else ("AUTH", ep.password))
                if ep.db:
                    hello.append(("SELECT", ep.db))
                if hello:
                    fut = proto.send(b"".join(pack(c) for c in hello), len(hello), self.timeout)
                    for command, reply in zip(hello, await fut, strict=True):
                        if isinstance(reply, hiredis.ReplyError):
                            error = reply_error(reply)
                            if command[0] == "AUTH" and not isinstance(error, AuthFailed):
                                error = AuthFailed(str(error))
                            raise error
        except BaseException as exc:
            if proto is not None:
                proto.abort(ConnectionLost("connection set-up failed"))
            if isinstance(exc, ssl.SSLError):
                raise HandshakeError(f"TLS handshake with {ep.address} failed: {exc}") from None
            if handshaking and isinstance(exc, TimeoutError | ConnectionError):
                raise HandshakeError(
                    f"{ep.address} did not complete a TLS handshake within {limit:g}s: is it a TLS port?"
                ) from None
            if isinstance(exc, TimeoutError):
                raise ConnectionLost(f"timed out connecting to {ep.address}") from None
            if isinstance(exc, OSError) and not isinstance(exc, ConnectionLost):
                reason = exc.strerror or exc
                raise ConnectionLost(f"error connecting to {ep.address}: {reason}") from None
            raise
        self.opened.add(proto)
        return proto

    async def main(self) -> RespProtocol:
        """The shared connection, opened (again) when needed."""
        proto = self._main
        if proto is not None and proto.lost is None:
            return proto
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._main is None or self._main.lost is not None:
                self._main = await self.open()
            return self._main

    async def execute(self, packed: bytes, orphan: Callable[[Any], None] | None = None) -> Any:
        """One packed command on the shared connection; an error reply raises. When the caller
        is cancelled after the command went out, ``orphan`` still gets its reply."""
        proto = self._main
        if proto is None or proto.lost is not None:
            proto = await self.main()
        fut = proto.send(packed, 0, self.timeout, orphan)
        try:
            reply = await fut
        except asyncio.CancelledError:
            # the reply still to come reaches orphan through the connection; one that came
            # just as we were cancelled is handed to it here
            if orphan is not None and not fut.cancelled() and fut.done() and fut.exception() is None:
                orphan(fut.result())
            raise
        if isinstance(reply, hiredis.ReplyError):
            raise reply_error(reply)
        if not proto.writable.is_set():
            try:
                await proto.writable.wait()
            except asyncio.CancelledError:
                if orphan is not None:
                    orphan(reply)
                raise
        return reply

    async def execute_many(self, packed: Sequence[bytes]) -> list[Any]:
        """Commands in one write and one round trip; error replies come back as
        :class:`ReplyError` instances in the list, in place."""
        if not packed:
            return []
        proto = self._main
        if proto is None or proto.lost is not None:
            proto = await self.main()
        replies: list[Any] = await proto.send(b"".join(packed), len(packed), self.timeout)
        if not proto.writable.is_set():
            await proto.writable.wait()
        return [reply_error(r) if isinstance(r, hiredis.ReplyError) else r for r in replies]

    async def blocking(self, packed: bytes, block_s: float) -> Any:
        """A blocking command on a connection of its own, which is dropped when the caller
        gives up (cancelled) and kept for the next one otherwise."""
        proto = None
        while self._idle:
            candidate = self._idle.pop()
            if candidate.lost is None:
                proto = candidate
                break
        if proto is None:
            proto = await self.open()
        proto.grace = block_s
        try:
            reply = await proto.send(packed, 0, self.timeout)
        except BaseException:
            proto.abort(ConnectionLost("blocking command abandoned"))
            raise
        proto.grace = 0.0
        if len(self._idle) < self.max_blocking:
            self._idle.append(proto)
        else:
            proto.abort(ConnectionLost("closing a spare connection"))
        if isinstance(reply, hiredis.ReplyError):
            raise reply_error(reply)
        return reply

    def drop(self, reason: str) -> None:
        """Abort the shared connection (its pending calls fail with :class:`ConnectionLost`);
        the next command opens a new one (after a failover moved the primary, say)."""
        proto, self._main = self._main, None
        if proto is not None:
            proto.abort(ConnectionLost(reason))

    def close(self) -> None:
        """Close every connection; calls waiting on them fail with :class:`ConnectionLost`."""
        for proto in list(self.opened):
            if proto.transport is not None and proto.lost is None:
                proto.lost = ConnectionLost("the client was closed")
                proto.transport.close()
        self.opened.clear()
        self._main = None
        self._idle.clear()


__all__ = [
    "RETRYABLE",
    "AuthFailed",
    "ConnectionLost",
    "Endpoint",
    "HandshakeError",
    "Loading",
    "NoScript",
    "ReadOnly",
    "RedisError",
    "ReplyError",
    "ReplyTimeout",
    "RespClient",
    "RespProtocol",
    "pack",
    "pack_head",
    "parse_url",
    "reply_error",
]
