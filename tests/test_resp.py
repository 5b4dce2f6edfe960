"""The RESP client: packing and parsing without a server, the rest against real servers (the
shared Redis, and tiny asyncio servers that misbehave on purpose)."""

from __future__ import annotations

import asyncio
import gc
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

pytest.importorskip("hiredis")

from asynctasq.drivers._resp import (
    AuthFailed,
    ConnectionLost,
    HandshakeError,
    Loading,
    NoScript,
    ReadOnly,
    ReplyError,
    ReplyTimeout,
    RespClient,
    RespProtocol,
    pack,
    pack_head,
    parse_url,
    reply_error,
)
from tests.backends import ServiceUnavailable, unavailable
from tests.backends.redis_backend import REDIS_URL, check_redis
from tests.conftest import wait_for

# -- packing ---------------------------------------------------------------------------------


def test_pack_writes_resp_arrays_of_bulk_strings() -> None:
    assert pack(("SET", "k", b"v\r\n")) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n"
    assert (
        pack(("X", 12, 1.5, True, "é"))
        == b"*5\r\n$1\r\nX\r\n$2\r\n12\r\n$3\r\n1.5\r\n$1\r\n1\r\n$2\r\n\xc3\xa9\r\n"
    )
    assert pack(()) == b"*0\r\n"


def test_a_cached_head_packs_like_the_whole_command() -> None:
    head = pack_head(("EVALSHA", "abc", 2, "k1", "k2"))
    assert pack((b"a1", 7), *head) == pack(("EVALSHA", "abc", 2, "k1", "k2", b"a1", 7))


def test_pack_refuses_what_redis_cannot_take() -> None:
    with pytest.raises(TypeError, match="cannot send a dict"):
        pack(("SET", {"a": 1}))
    with pytest.raises(TypeError, match="NoneType"):
        pack(("GET", None))


def test_error_replies_map_to_their_classes() -> None:
    cases = {
        "NOSCRIPT No matching script": NoScript,
        "READONLY You can't write against a read only replica.": ReadOnly,
        "LOADING Redis is loading the dataset in memory": Loading,
        "WRONGPASS invalid username-password pair": AuthFailed,
        "NOAUTH Authentication required.": AuthFailed,
        "WRONGTYPE Operation against a key holding the wrong kind of value": ReplyError,
    }
    for text, cls in cases.items():
        error = reply_error(text)
        assert type(error) is cls and str(error) == text
    assert reply_error("ERR unknown command").code == "ERR"


def test_parse_url_reads_every_part() -> None:
    ep = parse_url("redis://user:p%40ss@cache.local:6380/4")
    assert (ep.host, ep.port, ep.username, ep.password, ep.db, ep.ssl) == (
        "cache.local",
        6380,
        "user",
        "p@ss",
        4,
        None,
    )
    assert "p@ss" not in repr(ep) and ep.address == "cache.local:6380"
    ep = parse_url("redis://:pw@h/1", password="other", db=2)
    assert (ep.password, ep.db, ep.port) == ("other", 2, 6379)
    tls = parse_url("rediss://h?ssl_cert_reqs=none").ssl
    assert tls is not None and tls.verify_mode == ssl.CERT_NONE and not tls.check_hostname
    strict = parse_url("rediss://h").ssl
    assert strict is not None and strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    sock = parse_url("unix:///run/redis.sock?db=3")
    assert (sock.path, sock.db, sock.address) == ("/run/redis.sock", 3, "/run/redis.sock")
    for bad in ("http://h", "redis://h/x", "unix://", "rediss://h?ssl_cert_reqs=maybe"):
        with pytest.raises(ValueError):
            parse_url(bad)


# -- parsing, with a transport that records what is written ----------------------------------


class _Transport(asyncio.Transport):
    def __init__(self, proto: RespProtocol) -> None:
        super().__init__()
        self.proto = proto
        self.writes: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True
        self.proto.connection_lost(None)

    def close(self) -> None:
        self.abort()


def _proto() -> tuple[RespProtocol, _Transport]:
    proto = RespProtocol()
    transport = _Transport(proto)
    proto.connection_made(transport)
    return proto, transport


async def test_replies_resolve_requests_in_order_even_split_across_reads() -> None:
    proto, transport = _proto()
    one = proto.send(pack(("GET", "a")), 0, 10)
    batch = proto.send(pack(("INCR", "n")) + pack(("LRANGE", "l", 0, -1)) + pack(("BAD",)), 3, 10)
    last = proto.send(pack(("PING",)), 0, 10)
    await asyncio.sleep(0)  # the write goes out on the next loop iteration
    assert len(transport.writes) == 1, "commands of one loop iteration leave in one write"
    assert transport.writes[0].startswith(pack(("GET", "a")))
    stream = b"$3\r\nabc\r\n:7\r\n*2\r\n$1\r\nx\r\n$-1\r\n-ERR unknown command 'BAD'\r\n+PONG\r\n"
    for i in range(0, len(stream), 5):  # replies arrive cut at arbitrary places
        proto.data_received(stream[i : i + 5])
    assert await one == b"abc"
    replies = await batch
    assert replies[:2] == [7, [b"x", None]] and "unknown command" in str(replies[2])
    assert await last == b"PONG"
    assert not proto.pending


async def test_connection_loss_fails_every_pending_request_and_nothing_is_left_unretrieved() -> None:
    loop = asyncio.get_running_loop()
    reports: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    try:
        proto, _ = _proto()
        single = proto.send(pack(("GET", "a")), 0, 10)
        batch = proto.send(pack(("GET", "a")) * 3, 3, 10)
        proto.data_received(b"$1\r\nx\r\n:1\r\n")  # one reply of the batch came
        proto.connection_lost(ConnectionResetError("reset by peer"))
        assert await single == b"x"
        with pytest.raises(ConnectionLost, match="reset by peer"):
            await batch
        with pytest.raises(ConnectionLost):
            proto.send(pack(("PING",)), 0, 10)
        del single, batch
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert reports == []


async def test_a_reply_nobody_asked_for_drops_the_connection() -> None:
    proto, transport = _proto()
    proto.data_received(b"+OK\r\n")
    assert transport.aborted and isinstance(proto.lost, ConnectionLost)


async def test_garbage_drops_the_connection_and_fails_the_request() -> None:
    proto, transport = _proto()
    fut = proto.send(pack(("PING",)), 0, 10)
    proto.data_received(b"?what\r\n")
    assert transport.aborted
    with pytest.raises(ConnectionLost, match="not RESP"):
        await fut


# -- against servers -------------------------------------------------------------------------


@pytest.fixture
def redis_available() -> None:
    try:
        check_redis()
    except ServiceUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture
async def client(redis_available: None) -> AsyncIterator[RespClient]:
    c = RespClient(parse_url(REDIS_URL), timeout=5)
    yield c
    c.close()


async def test_concurrent_callers_on_one_connection_get_their_own_replies(client: RespClient) -> None:
    key = "{resp-test:" + uuid.uuid4().hex + "}"
    try:

        async def incr() -> int:
            value: int = await client.execute(pack(("INCR", key)))
            return value

        values = await asyncio.gather(*(incr() for _ in range(500)))
        assert values == list(range(1, 501)), "replies must come back in the order of the requests"
        assert len(client.opened) == 1
        replies = await client.execute_many([pack(("GET", key)), pack(("HGET", key, "f")), pack(("PING",))])
        assert replies[0] == b"500" and isinstance(replies[1], ReplyError) and replies[2] == b"PONG"
        assert replies[1].code == "WRONGTYPE"
        assert await client.execute_many([]) == []
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            await client.execute(pack(("LPUSH", key, "x")))
    finally:
        await client.execute(pack(("DEL", key)))


async def test_blocking_commands_use_their_own_connections(client: RespClient) -> None:
    key = "{resp-test:" + uuid.uuid4().hex + "}"
    waiting = asyncio.create_task(client.blocking(pack(("BLPOP", key, 5)), 5))
    await wait_for(lambda: len(client.opened) == 1, timeout=5)
    assert await client.execute(pack(("RPUSH", key, "v"))) == 1
    assert await waiting == [key.encode(), b"v"]
    assert len(client.opened) == 2  # the shared one and the blocking one, kept for reuse
    again = asyncio.create_task(client.blocking(pack(("BLPOP", key, 5)), 5))
    await asyncio.sleep(0.05)
    again.cancel()
    with pytest.raises(asyncio.CancelledError):
        await again
    assert await client.execute(pack(("PING",))) == b"PONG"


async def _server(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]) -> asyncio.Server:
    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_a_dead_peer_times_out_instead_of_hanging() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)  # takes the command, never answers
        await reader.read()  # until the client hangs up
        writer.close()

    server = await _server(silent)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(parse_url(f"redis://127.0.0.1:{port}"), timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(ReplyTimeout, match="no reply"):
            await client.execute(pack(("PING",)))
        assert 0.25 < time.monotonic() - started < 3
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_a_peer_that_hangs_up_fails_the_pending_batch() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        writer.write(b"+OK\r\n")  # one of three replies, then gone
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await _server(hang_up)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(parse_url(f"redis://127.0.0.1:{port}"), timeout=5)
    try:
        with pytest.raises(ConnectionLost):
            await client.execute_many([pack(("SET", "a", 1)), pack(("GET", "a")), pack(("PING",))])
        with pytest.raises(ConnectionLost, match="error connecting"):
            await RespClient(parse_url("redis://127.0.0.1:1"), timeout=1).execute(pack(("PING",)))
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_tls_to_a_server_without_tls_is_a_handshake_error(redis_available: None) -> None:
    ep = parse_url(REDIS_URL.replace("redis://", "rediss://", 1) + "?ssl_cert_reqs=none")
    client = RespClient(ep, timeout=1)
    with pytest.raises(HandshakeError, match="TLS") as info:
        await client.main()
    assert ep.address in str(info.value)
    client.close()


async def test_auth_and_select_errors_in_the_handshake(redis_available: None) -> None:
    client = RespClient(parse_url(REDIS_URL, password="not-set-on-this-server"), timeout=3)
    with pytest.raises(AuthFailed) as auth:
        await client.main()
    assert "not-set-on-this-server" not in str(auth.value)
    client = RespClient(parse_url(REDIS_URL, db=9999), timeout=3)
    with pytest.raises(ReplyError, match="DB index") as select:
        await client.main()
    assert not isinstance(select.value, AuthFailed)
    client = RespClient(parse_url(REDIS_URL, db=1), timeout=3)
    try:
        proto = await client.main()
        assert proto.lost is None
        assert await client.execute(pack(("PING",))) == b"PONG"
    finally:
        client.close()


async def test_close_fails_calls_blocked_on_the_client(client: RespClient) -> None:
    key = "{resp-test:" + uuid.uuid4().hex + "}"
    waiting = asyncio.create_task(client.blocking(pack(("BLPOP", key, 5)), 5))
    await wait_for(lambda: len(client.opened) == 1, timeout=5)
    started = time.monotonic()
    client.close()
    with pytest.raises(ConnectionLost):
        await waiting
    assert time.monotonic() - started < 1


async def test_the_reply_of_a_cancelled_request_reaches_its_orphan_callback() -> None:
    """A claim whose caller was cancelled still gets its reply, to give back what it leased,
    even when the reply is read before the cancelled caller runs again (the race CI found)."""
    from asynctasq.drivers._resp import RespProtocol, pack

    class Transport:
        def write(self, data: bytes) -> None:
            pass

        def abort(self) -> None:
            pass

    proto = RespProtocol()
    proto.connection_made(Transport())  # type: ignore[arg-type]
    adopted: list[object] = []
    cancelled = proto.send(pack(("GET", "claim")), 0, 5.0, adopted.append)
    plain = proto.send(pack(("GET", "other")), 0, 5.0)
    cancelled.cancel()
    proto.data_received(b"$6\r\nleased\r\n$5\r\nvalue\r\n")
    assert adopted == [b"leased"]
    assert plain.result() == b"value"
    if proto.watchdog is not None:
        proto.watchdog.cancel()
