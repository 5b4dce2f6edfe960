"""The consumers' AMQP 0-9-1 connection of the RabbitMQ driver: one channel, with
``basic.qos``, ``basic.consume``, ``basic.cancel`` and ``basic.ack``, deliveries parsed straight
from the bytes received (the measured reason is in docs/drivers/rabbitmq.md and in
:class:`ConsumerConnection`'s docstring). Publishes, declares and the failed registry go
through aiormq in the driver itself.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import pamqp.decode
import pamqp.frame
from pamqp import commands as spec
from pamqp.header import ProtocolHeader


@dataclass(slots=True)
class Msg:
    """One delivery as the consumer connection parsed it."""

    tag: int
    consumer: str
    redelivered: bool
    message_id: str | None
    headers: dict[str, Any]
    body: bytes


class ConsumerConnectionLost(ConnectionError):
    """The consumer connection closed (the broker went, or closed it)."""


_FRAME_HEAD = struct.Struct(">BHI")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_METHOD = struct.Struct(">HH")
_HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"
_DELIVER = (60, 60)
_ACK = struct.Struct(">BHIHHQBB")
_CHANNEL = 1


class ConsumerConnection(asyncio.Protocol):
    """The consumers' AMQP connection: one channel, ``basic.qos``/``consume``/``cancel``/``ack``.

    Deliveries are the hot path of a worker, and a general client spends most of a no-op task's
    CPU turning their three frames into objects (about 50 us per delivery with aiormq, 8 us
    here): this parses ``basic.deliver``, its content header and body straight from the bytes
    received, and writes acks as packed frames. Other methods go through pamqp. Everything else
    the driver does (publishes with confirms, declares, the failed registry) uses aiormq.
    """

    def __init__(
        self, on_cancel: Callable[[str], None], on_closed: Callable[[BaseException | None], None]
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self._replies: deque[asyncio.Future[Any]] = deque()
        self._early: deque[Any] = deque()
        """Replies that came before anyone waited for them (``connection.start`` can arrive
        before ``open`` has registered its waiter: dropping it hung the handshake until the
        broker's 10 s handshake timeout)."""
        self._rpc_lock = asyncio.Lock()
        self._consumers: dict[str, Callable[[Msg], None]] = {}
        self._pending: Msg | None = None
        self._pending_size = 0
        self._chunks: list[bytes] = []
        self._on_cancel = on_cancel
        self._on_closed = on_closed
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._heartbeat = 0
        self._last_read = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        name: str,
        timeout: float,
        *,
        on_cancel: Callable[[str], None],
        on_closed: Callable[[BaseException | None], None],
        heartbeat_s: int = 0,
    ) -> ConsumerConnection:
        """``heartbeat_s``: the heartbeat to ask for (0: the server's, at most 60 s). RabbitMQ
        closes a connection it has not heard from for two heartbeats, which returns its unacked
        deliveries: a stopped process loses them within about twice this."""
        parts = urlsplit(url)
        tls = parts.scheme == "amqps"
        context = None
        if tls:
            query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
            context = ssl.create_default_context(cafile=query.get("cafile"))
        loop = asyncio.get_running_loop()
        host = parts.hostname or "localhost"
        port = parts.port or (5671 if tls else 5672)
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: cls(on_cancel, on_closed), host, port, ssl=context), timeout
        )
        try:
            await asyncio.wait_for(conn._handshake(parts, name, heartbeat_s), timeout)
        except BaseException:
            conn._abort()
            raise
        return conn

    async def _handshake(self, parts: Any, name: str, heartbeat_s: int) -> None:
        await self._expect()  # connection.start
        user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
        props: dict[str, Any] = {
            "connection_name": name,
            "product": "asynctasq",
            "capabilities": {"consumer_cancel_notify": True},
        }
        self._send(spec.Connection.StartOk(client_properties=props, response=f"\0{user}\0{password}"), 0)
        tune = await self._expect()
        if heartbeat_s > 0:
            self._heartbeat = heartbeat_s
        else:
            self._heartbeat = min(int(tune.heartbeat or 0), 60) if tune.heartbeat else 0
        self._send(spec.Connection.TuneOk(tune.channel_max, tune.frame_max, self._heartbeat), 0)
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        await self._call(spec.Connection.Open(virtual_host=vhost), 0)
        await self._call(spec.Channel.Open())
        if self._heartbeat:
            self._timer = self._loop.call_later(self._heartbeat / 2, self._beat)

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._transport.write(ProtocolHeader().marshal())

    def connection_lost(self, exc: Exception | None) -> None:
        self._shut(exc or ConsumerConnectionLost("the broker closed the consumer connection"))

    def eof_received(self) -> bool | None:
        # at once, not in connection_lost a loop iteration later: a process resumed after a
        # SIGSTOP must see its connection (and its leases) gone before its timers run
        self._shut(ConsumerConnectionLost("the broker closed the consumer connection"))
        return None

    def data_received(self, data: bytes) -> None:
        self._last_read = time.monotonic()
        buf = self._buf
        buf += data
        pos, size_all = 0, len(buf)
        while size_all - pos >= 8:
            kind, _, size = _FRAME_HEAD.unpack_from(buf, pos)
            end = pos + 7 + size
            if end >= size_all:
                break
            if kind == 1:
                if _METHOD.unpack_from(buf, pos + 7) == _DELIVER:
                    self._deliver(buf, pos + 11)
                else:
                    self._method(bytes(buf[pos : end + 1]))
            elif kind == 2:
                self._header(buf, pos + 7, end)
            elif kind == 3:
                self._body(bytes(buf[pos + 7 : end]))
            pos = end + 1
        del buf[:pos]

    # -- frames ----------------------------------------------------------------------------

    def _deliver(self, buf: bytearray, p: int) -> None:
        length = buf[p]
        consumer = buf[p + 1 : p + 1 + length].decode()
        p += 1 + length
        tag = _U64.unpack_from(buf, p)[0]
        self._pending = Msg(tag, consumer, bool(buf[p + 8] & 1), None, {}, b"")

    def _header(self, buf: bytearray, p: int, end: int) -> None:
        msg = self._pending
        if msg is None:
            return
        size = _U64.unpack_from(buf, p + 4)[0]
        flags = _U16.unpack_from(buf, p + 12)[0]
        p += 14
        for bit in (0x8000, 0x4000):  # content-type, content-encoding
            if flags & bit:
                p += 1 + buf[p]
        if flags & 0x2000:
            used, msg.headers = pamqp.decode.field_table(bytes(buf[p:end]))
            p += used
        p += bool(flags & 0x1000) + bool(flags & 0x0800)  # delivery-mode, priority
        for bit in (0x0400, 0x0200, 0x0100):  # correlation-id, reply-to, expiration
            if flags & bit:
                p += 1 + buf[p]
        if flags & 0x0080:
            msg.message_id = buf[p + 1 : p + 1 + buf[p]].decode()
        self._pending_size = size
        self._chunks = []
        if size == 0:
            self._arrived()

    def _body(self, chunk: bytes) -> None:
        if self._pending is None:
            return
        self._chunks.append(chunk)
        if sum(map(len, self._chunks)) >= self._pending_size:
            self._pending.body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            self._arrived()

    def _arrived(self) -> None:
        msg, self._pending = self._pending, None
        if msg is not None:
            callback = self._consumers.get(msg.consumer)
            if callback is not None:
                callback(msg)

    def _method(self, raw: bytes) -> None:
        _, _, frame = pamqp.frame.unmarshal(raw)
        if isinstance(frame, spec.Basic.Cancel):
            self._consumers.pop(frame.consumer_tag or "", None)
            self._on_cancel(frame.consumer_tag or "")
        elif isinstance(frame, (spec.Channel.Close, spec.Connection.Close)):
            if isinstance(frame, spec.Connection.Close):
                self._send(spec.Connection.CloseOk(), 0)
            self._abort(ConsumerConnectionLost(f"RabbitMQ closed the consumer channel: {frame.reply_text}"))
        elif self._replies:
            waiter = self._replies.popleft()
            if not waiter.done():
                waiter.set_result(frame)
        else:
            self._early.append(frame)

    # -- calls -----------------------------------------------------------------------------

    def _send(self, frame: Any, channel: int = _CHANNEL) -> None:
        if self._closed or self._transport is None:
            raise ConsumerConnectionLost("the consumer connection is closed")
        self._transport.write(pamqp.frame.marshal(frame, channel))

    async def _expect(self) -> Any:
        if self._early:
            return self._early.popleft()
        if self._closed:
            raise ConsumerConnectionLost("the consumer connection is closed")
        waiter: asyncio.Future[Any] = self._loop.create_future()
        self._replies.append(waiter)
        return await waiter

    async def _call(self, frame: Any, channel: int = _CHANNEL) -> Any:
        async with self._rpc_lock:
            self._send(frame, channel)
            return await self._expect()

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def qos(self, prefetch: int) -> None:
        await self._call(spec.Basic.Qos(prefetch_count=prefetch))

    async def consume(
        self, queue: str, tag: str, callback: Callable[[Msg], None], arguments: dict[str, Any]
    ) -> None:
        self._consumers[tag] = callback
        try:
            await self._call(spec.Basic.Consume(queue=queue, consumer_tag=tag, arguments=arguments))
        except BaseException:
            self._consumers.pop(tag, None)
            raise

    async def cancel(self, tag: str) -> None:
        """Stop a consumer; deliveries it received before the cancel-ok still arrive."""
        await self._call(spec.Basic.Cancel(consumer_tag=tag))
        self._consumers.pop(tag, None)

    def ack(self, tag: int, multiple: bool = False) -> None:
        if self._closed or self._transport is None:
            raise ConsumerConnectionLost("the consumer connection is closed")
        self._transport.write(_ACK.pack(1, _CHANNEL, 13, 60, 80, tag, int(multiple), 0xCE))

    def reject(self, tag: int) -> None:
        """``basic.reject`` with requeue: the delivery goes back to its queue counted (a quorum
        queue raises its ``x-delivery-count``; RabbitMQ 4.3 counts a reject, not a nack)."""
        if self._closed or self._transport is None:
            raise ConsumerConnectionLost("the consumer connection is closed")
        self._transport.write(_ACK.pack(1, _CHANNEL, 13, 60, 90, tag, 1, 0xCE))

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await asyncio.wait_for(self._call(spec.Connection.Close(200, "Normal shutdown"), 0), 2)
        except (Exception, asyncio.CancelledError):  # noqa: BLE001 - closing anyway
            pass
        self._abort()

    # -- life ------------------------------------------------------------------------------

    def _beat(self) -> None:
        if self._closed or self._transport is None:
            return
        if time.monotonic() - self._last_read > 2.5 * self._heartbeat:
            self._abort(ConsumerConnectionLost("RabbitMQ missed its heartbeats"))
            return
        self._transport.write(_HEARTBEAT)
        self._timer = self._loop.call_later(self._heartbeat / 2, self._beat)

    def _abort(self, exc: BaseException | None = None) -> None:
        transport = self._transport
        self._shut(exc)
        if transport is not None:
            transport.abort()

    def _shut(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        lost = exc or ConsumerConnectionLost("the consumer connection is closed")
        while self._replies:
            waiter = self._replies.popleft()
            if not waiter.done():
                waiter.set_exception(lost)
        self._consumers.clear()
        self._on_closed(exc)


__all__ = ["ConsumerConnection", "ConsumerConnectionLost", "Msg"]
