"""Redis-only behaviour: restarts, bad input, bounded storage, key layout, config and errors
(the driver contract itself is tests/drivers; the RESP client is tests/test_resp.py)."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from asynctasq.config import Config
from asynctasq.core.driver_factory import DriverFactory
from asynctasq.drivers.base import Delivery, EnqueueItem
from asynctasq.errors import BrokerError, BrokerUnavailable, ConfigError, DriverError
from tests.backends import ServiceUnavailable, unavailable
from tests.backends.redis_backend import REDIS_URL, check_redis, cleanup
from tests.conftest import wait_for

redis_asyncio = pytest.importorskip("redis.asyncio")
from redis.crc import key_slot  # noqa: E402

from asynctasq.drivers.redis import RedisDriver  # noqa: E402


@pytest.fixture
def prefix() -> Iterator[str]:
    try:
        check_redis()
    except ServiceUnavailable as exc:
        unavailable(str(exc))
    yield "tr" + uuid.uuid4().hex[:10]  # the raw fixture deletes its keys


@pytest.fixture
async def raw(prefix: str) -> AsyncIterator[Any]:
    """A plain redis-py client on the shared server; deletes the test's keys afterwards."""
    client = redis_asyncio.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()
    await cleanup(prefix)


@pytest.fixture
async def driver(prefix: str, raw: Any) -> AsyncIterator[RedisDriver]:
    d = RedisDriver(url=REDIS_URL, prefix=prefix, lease_seconds=5)
    await d.connect()
    yield d
    await d.disconnect()


async def _keys(raw: Any, prefix: str) -> list[str]:
    return sorted([k.decode() async for k in raw.scan_iter(match=f"{{{prefix}[:}}]*", count=1000)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- bad input -------------------------------------------------------------------------------


async def test_value_pushed_by_hand_is_delivered_and_can_fail(
    driver: RedisDriver, raw: Any, prefix: str
) -> None:
    await raw.rpush(f"{{{prefix}:q}}:ready", b"not an asynctasq message")
    await driver.enqueue("q", b"real")
    got = await driver.dequeue(["q"], 10, wait=1)
    assert [d.body for d in got] == [b"not an asynctasq message", b"real"]
    assert got[0].delivery_count == 1 and got[0].token
    assert await driver.fail(got[0], "SerializationError: not an asynctasq message") is True
    assert await driver.ack(got[1:]) == got[1:]
    [entry] = await driver.failed_list("q")
    assert entry["body"] == b"not an asynctasq message"
    assert await driver.failed_purge(queue="q") == 1


async def test_wrong_type_in_queue_key_is_set_aside(driver: RedisDriver, raw: Any, prefix: str) -> None:
    await raw.set(f"{{{prefix}:q}}:ready", b"oops")
    await raw.set(f"{{{prefix}:q}}:wake", b"oops")
    assert await driver.dequeue(["q"], 5, wait=0.2) == []
    await driver.enqueue("q", b"after")
    got = await driver.dequeue(["q"], 5, wait=1)
    assert [d.body for d in got] == [b"after"]
    await driver.ack(got)
    keys = await _keys(raw, prefix)
    assert any(":ready:corrupt:" in k for k in keys), keys


async def test_wrong_type_before_enqueue_does_not_break_enqueue(
    driver: RedisDriver, raw: Any, prefix: str
) -> None:
    await raw.hset(f"{{{prefix}:q}}:ready", "a", "b")
    await driver.enqueue("q", b"fine")
    assert [d.body for d in await driver.dequeue(["q"], 5, wait=1)] == [b"fine"]


# -- storage and keys ------------------------------------------------------------------------


async def test_finished_tasks_leave_nothing_behind(driver: RedisDriver, raw: Any, prefix: str) -> None:
    await driver.enqueue_many([EnqueueItem("q", b"%d" % i) for i in range(50)])
    await driver.enqueue("q", b"later", delay=0.2)
    done = 0
    retried = False
    deadline = time.monotonic() + 10
    while done < 51 and time.monotonic() < deadline:
        got = await driver.dequeue(["q"], 20, wait=1)
        if not retried and got:
            retried = await driver.release(got[0], 0.05, body=b"retry")
            got = got[1:]
        done += len(await driver.ack(got))
    assert done == 51
    assert await driver.dequeue(["q"], 1, wait=0) == []
    keys = await _keys(raw, prefix)
    # only the queue registry and the (at most one element) wake-up list remain
    assert set(keys) <= {f"{{{prefix}:q}}:wake", f"{{{prefix}}}:queues"}, keys
    assert await raw.llen(f"{{{prefix}:q}}:wake") <= 1


async def test_keys_of_a_queue_share_one_cluster_slot(driver: RedisDriver, raw: Any, prefix: str) -> None:
    await driver.enqueue("q", b"1")
    await driver.enqueue("q", b"2", delay=30)
    [d] = await driver.dequeue(["q"], 1, wait=1)
    await driver.fail(d, "x")
    await driver.enqueue("q", b"3")
    keys = [k for k in await _keys(raw, prefix) if k.startswith(f"{{{prefix}:q}}")]
    assert len(keys) >= 6
    assert len({key_slot(k.encode()) for k in keys}) == 1


async def test_prefixes_isolate_apps(driver: RedisDriver, prefix: str) -> None:
    other = RedisDriver(url=REDIS_URL, prefix=prefix + "-other")
    await other.connect()
    try:
        await other.enqueue("q", b"theirs")
        assert await driver.dequeue(["q"], 5, wait=0.1) == []
        assert len(await other.dequeue(["q"], 5, wait=1)) == 1
    finally:
        await other.disconnect()
        await cleanup(prefix + "-other")


# -- timing behaviour that a poll loop would fail ---------------------------------------------


async def test_idle_consumer_wakes_at_once(driver: RedisDriver, prefix: str) -> None:
    producer = RedisDriver(url=REDIS_URL, prefix=prefix)
    await producer.connect()
    try:
        waiting = asyncio.create_task(driver.dequeue(["a", "b"], 1, wait=10))
        await asyncio.sleep(0.2)  # let it block on the wake-up lists
        sent = time.monotonic()
        await producer.enqueue("b", b"go")
        got = await waiting
        assert [d.body for d in got] == [b"go"]
        assert time.monotonic() - sent < 0.5
    finally:
        await producer.disconnect()


async def test_blocked_consumer_recovers_an_expired_lease(prefix: str, raw: Any) -> None:
    a = RedisDriver(url=REDIS_URL, prefix=prefix, lease_seconds=0.5)
    b = RedisDriver(url=REDIS_URL, prefix=prefix, lease_seconds=0.5)
    await a.connect()
    await b.connect()
    try:
        await a.enqueue("q", b"job")
        [lost] = await a.dequeue(["q"], 1, wait=1)
        started = time.monotonic()
        [again] = await b.dequeue(["q"], 1, wait=10)
        assert again.id == lost.id and again.delivery_count == 2
        assert 0.3 < time.monotonic() - started < 3
        assert await a.ack([lost]) == []
        assert await b.ack([again]) == [again]
    finally:
        await a.disconnect()
        await b.disconnect()


async def test_delayed_messages_are_promoted_once_among_many_consumers(prefix: str, raw: Any) -> None:
    consumers = [RedisDriver(url=REDIS_URL, prefix=prefix) for _ in range(5)]
    for c in consumers:
        await c.connect()
    try:
        n = 300
        await consumers[0].enqueue_many([EnqueueItem("q", b"%d" % i, 0.3) for i in range(n)])
        got: list[Delivery] = []

        async def consume(c: RedisDriver) -> None:
            deadline = time.monotonic() + 10
            while len(got) < n and time.monotonic() < deadline:
                batch = await c.dequeue(["q"], 7, wait=0.5)
                got.extend(batch)
                await c.ack(batch)

        await asyncio.gather(*(consume(c) for c in consumers))
        assert sorted(int(d.body) for d in got) == list(range(n))
        assert len({d.id for d in got}) == n
        assert all(d.delivery_count == 1 for d in got)
    finally:
        for c in consumers:
            await c.disconnect()


async def test_many_readers_see_one_result(driver: RedisDriver, prefix: str) -> None:
    readers = [asyncio.create_task(driver.get_result("t1", wait=5)) for _ in range(4)]
    await asyncio.sleep(0.1)
    await driver.store_results([("t1", b"value")], ttl=30)
    assert await asyncio.gather(*readers) == [b"value"] * 4


# -- configuration and errors ----------------------------------------------------------------


def test_the_factory_builds_it_from_the_redis_settings() -> None:
    config = Config(
        driver="redis",
        redis_url="rediss://user:pw@example.com:6380/2?ssl_cert_reqs=none",
        redis_db=3,
        redis_prefix="app1",
        redis_max_connections=7,
        lease_seconds=12,
        _environ={},
    )
    driver = DriverFactory.create_from_config(config)
    assert isinstance(driver, RedisDriver)
    assert driver.prefix == "app1" and driver.lease_seconds == 12
    assert "pw" not in driver.describe() and "example.com:6380" in driver.describe()
    ep = driver._client.endpoint
    assert ep.db == 3 and ep.ssl is not None and ep.password == "pw" and ep.username == "user"
    assert driver._client.max_blocking == 7
    assert "pw" not in repr(driver)
    assert driver.fencing and driver.max_message_bytes > 0
    assert RedisDriver(max_message_bytes=1000).max_message_bytes == 1000


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        RedisDriver(url="http://localhost:6379")
    with pytest.raises(ConfigError):
        RedisDriver(prefix="a{b}")


def test_describe_never_shows_the_password() -> None:
    driver = RedisDriver(url="redis://:hunter2@localhost:6379/0", password="s3cret")
    assert "hunter2" not in driver.describe() and "s3cret" not in driver.describe()


async def test_unreachable_redis_is_one_clear_line() -> None:
    port = _free_port()
    driver = RedisDriver(url=f"redis://:hunter2@127.0.0.1:{port}/0", reconnect_timeout=0.5)
    with pytest.raises(BrokerUnavailable) as info:
        await driver.connect()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "hunter2" not in message
    assert "\n" not in message and "ASYNCTASQ_REDIS_URL" in message


async def test_use_before_connect_says_so() -> None:
    with pytest.raises(DriverError, match="connect"):
        await RedisDriver().enqueue("q", b"x")


# -- a Redis restart in the middle of a run ---------------------------------------------------


class _PrivateRedis:
    """A redis-server of our own on a free port, persisting to a temp dir (AOF)."""

    def __init__(self, *extra: str, tls: tuple[str, str] | None = None) -> None:
        self.extra = list(extra)
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="asynctasq-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports = ["--port", str(self.port)]
        if tls is not None:  # TLS only: (certificate file, key file)
            self.ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", tls[0],
                          "--tls-key-file", tls[1], "--tls-auth-clients", "no"]  # fmt: skip

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", *self.ports, "--bind", "127.0.0.1", "--dir", self.dir,
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
             *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("the private redis-server did not start")

    def kill(self) -> None:
        """SIGKILL (also when stopped): its sockets close with nothing flushed."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test stopped it
            self.proc.send_signal(signal.SIGTERM)  # a clean shutdown flushes the AOF
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def private_redis() -> Iterator[_PrivateRedis]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed, so the restart test cannot start its own")
    server = _PrivateRedis()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


async def test_a_redis_restart_mid_run_loses_nothing(private_redis: _PrivateRedis) -> None:
    url = f"redis://127.0.0.1:{private_redis.port}/0"
    producer = RedisDriver(url=url, prefix="restart", reconnect_timeout=30)
    consumer = RedisDriver(url=url, prefix="restart", reconnect_timeout=30, lease_seconds=2)
    await producer.connect()
    await consumer.connect()
    n = 400
    seen: list[bytes] = []
    try:

        async def produce() -> None:
            for i in range(n):
                await producer.enqueue("q", b"%d" % i)
                if i % 50 == 0:
                    await asyncio.sleep(0.01)

        async def consume() -> None:
            deadline = time.monotonic() + 60
            while len(set(seen)) < n and time.monotonic() < deadline:
                got = await consumer.dequeue(["q"], 10, wait=0.2)
                await consumer.ack(got)
                seen.extend(d.body for d in got)

        producing = asyncio.create_task(produce())
        consuming = asyncio.create_task(consume())
        while len(seen) < n // 4:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(private_redis.stop)
        await asyncio.sleep(0.3)  # the clients now see refused connections and back off
        await asyncio.to_thread(private_redis.start)
        await asyncio.wait_for(asyncio.gather(producing, consuming), 90)
    finally:
        await producer.disconnect()
        await consumer.disconnect()
    assert sorted(set(seen), key=int) == [b"%d" % i for i in range(n)]
    duplicates = len(seen) - n
    print(f"restart: {n} tasks, {duplicates} delivered twice (acks lost in the restart)")
    assert duplicates <= 20


async def test_an_outage_longer_than_reconnect_timeout_is_a_clear_error(private_redis: _PrivateRedis) -> None:
    driver = RedisDriver(
        url=f"redis://127.0.0.1:{private_redis.port}/0", prefix="outage", reconnect_timeout=0.5
    )
    await driver.connect()
    try:
        await driver.enqueue("q", b"before")
        await asyncio.to_thread(private_redis.stop)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as info:
            await driver.dequeue(["q"], 1, wait=0)
        assert 0.4 < time.monotonic() - started < 5
        assert f"127.0.0.1:{private_redis.port}" in str(info.value) and "\n" not in str(info.value)
        await asyncio.to_thread(private_redis.start)
        [back] = await driver.dequeue(["q"], 1, wait=1)  # the AOF kept it; the driver reconnects
        assert back.body == b"before"
    finally:
        await driver.disconnect()


async def test_big_batches_stay_under_luas_stack_limit(driver: RedisDriver) -> None:
    n = 12_000
    await driver.enqueue_many([EnqueueItem("q", b"%d" % i) for i in range(n)])
    got = await driver.dequeue(["q"], n + 10, wait=1)
    assert [int(d.body) for d in got] == list(range(n))
    assert len(await driver.extend(got, 30)) == n
    assert len(await driver.ack(got)) == n
    assert (await driver.stats(["q"]))["q"] == {"ready": 0, "delayed": 0, "leased": 0, "failed": 0}


async def test_password_from_url_or_setting_and_a_wrong_one() -> None:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed, so this test cannot start its own")
    server = _PrivateRedis("--requirepass", "s3cr3t")
    try:
        server.start()
        for driver in (
            RedisDriver(url=f"redis://:s3cr3t@127.0.0.1:{server.port}/2", prefix="auth"),
            RedisDriver(url=f"redis://127.0.0.1:{server.port}", password="s3cr3t", db=2, prefix="auth"),
        ):
            await driver.connect()
            await driver.enqueue("q", b"x")
            [d] = await driver.dequeue(["q"], 1, wait=1)
            assert await driver.ack([d]) == [d]
            await driver.disconnect()
        wrong = RedisDriver(url=f"redis://:n0pe@127.0.0.1:{server.port}")
        with pytest.raises(BrokerError) as info:
            await wrong.connect()
        assert "n0pe" not in str(info.value) and "password" in str(info.value)
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


# -- the multiplexed connection ---------------------------------------------------------------


async def test_concurrent_callers_get_their_own_replies(driver: RedisDriver) -> None:
    async def one(i: int) -> bytes:
        queue = f"q{i % 7}"
        await driver.enqueue(queue, b"%d" % i)
        [d] = await driver.dequeue([queue], 1, wait=2)
        assert await driver.ack([d]) == [d]
        return d.body

    bodies = await asyncio.gather(*(one(i) for i in range(300)))
    assert sorted(int(b) for b in bodies) == list(range(300))


async def test_a_cancelled_blocking_wait_leaves_the_driver_working(driver: RedisDriver) -> None:
    waiting = asyncio.create_task(driver.dequeue(["q"], 1, wait=10))
    await asyncio.sleep(0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    cancelled_get = asyncio.create_task(driver.get_result("nothing", wait=10))
    await asyncio.sleep(0.05)
    cancelled_get.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled_get
    await driver.enqueue("q", b"still fine")
    got = await driver.dequeue(["q"], 1, wait=2)
    assert [d.body for d in got] == [b"still fine"]
    assert await driver.ack(got) == got


async def test_disconnect_ends_a_blocked_wait(prefix: str, raw: Any) -> None:
    driver = RedisDriver(url=REDIS_URL, prefix=prefix)
    await driver.connect()
    waiting = asyncio.create_task(driver.dequeue(["q"], 1, wait=30))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await driver.disconnect()
    with pytest.raises(DriverError, match="not connected"):
        await waiting
    assert time.monotonic() - started < 2


async def test_commands_cut_off_by_a_restart_leave_no_unretrieved_future(
    private_redis: _PrivateRedis,
) -> None:
    """A producer pipelining several commands when the connection drops must not make asyncio
    log "Future exception was never retrieved" (seen after a Redis restart)."""
    loop = asyncio.get_running_loop()
    reports: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    producer = RedisDriver(
        url=f"redis://127.0.0.1:{private_redis.port}/0", prefix="cut", reconnect_timeout=30
    )
    await producer.connect()
    assert private_redis.proc is not None
    try:
        os.kill(private_redis.proc.pid, signal.SIGSTOP)  # it takes the commands but never answers
        items = [EnqueueItem(q, b"x") for q in ("a", "b", "c")]  # 3 scripts + SADD in one write
        sending = asyncio.create_task(producer.enqueue_many(items))
        main = producer._client._main
        assert main is not None
        await wait_for(lambda: len(main.pending) == 1 and not main.outgoing, timeout=5)
        await asyncio.to_thread(private_redis.kill)
        await asyncio.to_thread(private_redis.start)
        assert len(await asyncio.wait_for(sending, 30)) == 3  # retried on the new connection
        got = await producer.dequeue(["a", "b", "c"], 10, wait=1)
        assert sorted(d.queue for d in got) == ["a", "b", "c"]
        del sending
        gc.collect()
        await asyncio.sleep(0.05)
    finally:
        loop.set_exception_handler(previous)
        await producer.disconnect()
    assert [c.get("message") for c in reports] == []


async def test_scripts_come_back_after_the_server_forgets_them(private_redis: _PrivateRedis) -> None:
    url = f"redis://127.0.0.1:{private_redis.port}/0"
    driver = RedisDriver(url=url, prefix="noscript")
    raw = redis_asyncio.Redis.from_url(url)
    await driver.connect()
    try:
        await driver.enqueue("q", b"1")
        await raw.script_flush()
        await driver.enqueue_many([EnqueueItem("q", b"2"), EnqueueItem("r", b"3")])  # a batch
        await raw.script_flush()
        got = await driver.dequeue(["q", "r"], 10, wait=1)  # a single command
        assert [d.body for d in got] == [b"1", b"2", b"3"]
        await raw.script_flush()
        assert await driver.ack(got) == got
    finally:
        await raw.aclose()
        await driver.disconnect()


# -- batches, results, errors ----------------------------------------------------------------


async def test_ack_and_extend_over_several_queues_return_what_was_still_held(prefix: str, raw: Any) -> None:
    a = RedisDriver(url=REDIS_URL, prefix=prefix, lease_seconds=0.3)
    b = RedisDriver(url=REDIS_URL, prefix=prefix, lease_seconds=30)
    await a.connect()
    await b.connect()
    try:
        await a.enqueue_many([EnqueueItem(q, q.encode()) for q in ("q1", "q2", "q1", "q2")])
        first = await a.dequeue(["q1", "q2"], 4, wait=1)
        assert [d.body for d in first] == [b"q1", b"q1", b"q2", b"q2"]
        # once the leases lapse, b's claim on q1 takes the q1 messages over; nobody claims q2
        taken: list[Delivery] = []
        deadline = time.monotonic() + 5
        while len(taken) < 2 and time.monotonic() < deadline:
            taken += await b.dequeue(["q1"], 2 - len(taken), wait=1)
        assert sorted(d.id for d in taken) == sorted(d.id for d in first[:2])
        held = await a.extend(first, 30)
        assert held == first[2:], "the q2 leases lapsed but nobody took them: still a's"
        assert await a.ack(first) == first[2:]
        assert await b.ack(taken) == taken
    finally:
        await a.disconnect()
        await b.disconnect()


async def test_complete_writes_results_and_acks_in_one_write(driver: RedisDriver) -> None:
    await driver.enqueue_many([EnqueueItem("q", b"1"), EnqueueItem("q", b"2")])
    got = await driver.dequeue(["q"], 2, wait=1)
    main = driver._client._main
    assert main is not None and main.transport is not None
    writes: list[int] = []
    transport = main.transport
    real_write = transport.write

    def counting(data: Any) -> None:
        writes.append(len(data))
        real_write(data)

    transport.write = counting  # type: ignore[method-assign]
    try:
        held = await driver.complete(got, [("t-1", b"r1"), ("t-2", b"r2")], results_ttl=30)
    finally:
        transport.write = real_write  # type: ignore[method-assign]
    assert held == got and len(writes) == 1
    assert await driver.get_result("t-1", wait=0) == b"r1"
    assert await driver.get_result("t-2", wait=0) == b"r2"
    # a stale delivery's result is still kept (stored first), the ack changes nothing
    assert await driver.complete(got[:1], [("t-3", b"r3")], results_ttl=30) == []
    assert await driver.get_result("t-3", wait=0) == b"r3"


async def test_an_error_reply_is_a_broker_error_that_says_what_to_check(
    driver: RedisDriver, raw: Any, prefix: str
) -> None:
    await raw.hset(f"{{{prefix}:result:t}}", "a", "b")
    with pytest.raises(BrokerError, match="WRONGTYPE") as info:
        await driver.get_result("t", wait=0)
    assert prefix in str(info.value)
    await driver.enqueue("q", b"still fine")
    assert len(await driver.dequeue(["q"], 1, wait=1)) == 1


async def test_a_database_out_of_range_is_a_broker_error(prefix: str) -> None:
    driver = RedisDriver(url=REDIS_URL, db=9999, prefix=prefix)
    with pytest.raises(BrokerError, match="redis-db"):
        await driver.connect()


def _certificate(directory: str) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        unavailable("openssl is not installed, so the TLS test cannot make a certificate")
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_with_a_private_ca_without_verification_and_a_refused_certificate() -> None:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed, so the TLS test cannot start its own")
    certs = tempfile.mkdtemp(prefix="asynctasq-tls-")
    cert, key = _certificate(certs)
    server = _PrivateRedis(tls=(cert, key))
    try:
        server.start()
        base = f"rediss://localhost:{server.port}/0"
        for url in (f"{base}?ssl_ca_certs={cert}", f"{base}?ssl_cert_reqs=none"):
            driver = RedisDriver(url=url, prefix="tls")
            await driver.connect()
            try:
                await driver.enqueue("q", b"secret")
                [d] = await driver.dequeue(["q"], 1, wait=1)
                assert d.body == b"secret" and await driver.ack([d]) == [d]
            finally:
                await driver.disconnect()
        with pytest.raises(BrokerError, match="ssl_cert_reqs=none") as info:
            await RedisDriver(url=base, prefix="tls").connect()  # self-signed: not trusted
        assert "\n" not in str(info.value)
        with pytest.raises((BrokerError, BrokerUnavailable)):
            await RedisDriver(
                url=f"redis://localhost:{server.port}/0", prefix="tls", socket_timeout=1
            ).connect()
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
        shutil.rmtree(certs, ignore_errors=True)


async def test_a_server_turned_replica_is_waited_out_on_a_new_connection(
    private_redis: _PrivateRedis,
) -> None:
    url = f"redis://127.0.0.1:{private_redis.port}/0"
    driver = RedisDriver(url=url, prefix="readonly", reconnect_timeout=30)
    raw = redis_asyncio.Redis.from_url(url)
    await driver.connect()
    try:
        first = driver._client._main
        await raw.replicaof("127.0.0.1", str(_free_port()))  # a replica of nobody: writes refused
        sending = asyncio.create_task(driver.enqueue("q", b"kept"))
        await wait_for(lambda: driver._reconnect.down, timeout=5)
        await raw.replicaof("NO", "ONE")  # promoted back, as after a failover
        await asyncio.wait_for(sending, 10)
        assert driver._client._main is not first, "READONLY drops the connection to look again"
        [d] = await driver.dequeue(["q"], 1, wait=1)
        assert d.body == b"kept"
    finally:
        await raw.aclose()
        await driver.disconnect()
