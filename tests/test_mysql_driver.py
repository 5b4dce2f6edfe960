"""MySQL/MariaDB-specific behaviour on the real server: DSNs, server checks, size limits against
max_allowed_packet, fencing, lock-wait retries, reconnects and migrations."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from asynctasq.config import Config
from asynctasq.core.driver_factory import DriverFactory
from asynctasq.drivers import mysql as mysql_module
from asynctasq.drivers._mysql_schema import SCHEMA_VERSION, TABLE_SUFFIXES
from asynctasq.drivers.base import Delivery, EnqueueItem
from asynctasq.drivers.mysql import (
    MySQLDriver,
    PacketTooLarge,
    check_server_version,
    parse_dsn,
    parse_version,
)
from asynctasq.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    DriverError,
    MessageTooLarge,
    SchemaError,
)
from tests.backends import check_port, mysql_backend, unavailable
from tests.backends.mysql_backend import DSN
from tests.conftest import wait_for

aiomysql = pytest.importorskip("aiomysql")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def table() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
async def make(table: str) -> AsyncIterator[Callable[..., Awaitable[MySQLDriver]]]:
    made: list[MySQLDriver] = []

    async def factory(**options: Any) -> MySQLDriver:
        driver = await mysql_backend.make_driver(table[1:], **options)
        made.append(driver)
        return driver

    try:
        check_port("MariaDB", mysql_backend.HOST, mysql_backend.PORT)
    except Exception as exc:  # noqa: BLE001 - ServiceUnavailable
        unavailable(str(exc))
    yield factory
    for driver in made:
        await driver.disconnect()
    await mysql_backend.cleanup(table[1:])


@pytest.fixture
async def driver(make: Callable[..., Awaitable[MySQLDriver]]) -> MySQLDriver:
    return await make()


async def admin_query(sql: str, args: Any = None) -> list[Any]:
    """One statement on a connection of its own (root on the test server)."""
    options = parse_dsn(DSN)
    conn = await aiomysql.connect(autocommit=True, **options)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())
    finally:
        conn.close()


async def count_rows(driver: MySQLDriver) -> int:
    return int((await admin_query(f"SELECT COUNT(*) FROM `{driver.table}`"))[0][0])


# -- configuration, no server needed ------------------------------------------------------


def test_dsn_percent_encoded_password_and_options() -> None:
    options = parse_dsn("mysql://app%40x:p%40ss%3Aw%2Frd@db.example:3307/my%20db?charset=latin1&ssl=true")
    assert options["user"] == "app@x"
    assert options["password"] == "p@ss:w/rd"
    assert (options["host"], options["port"], options["db"]) == ("db.example", 3307, "my db")
    assert options["charset"] == "latin1"
    assert options["ssl"].check_hostname is True
    unverified = parse_dsn("mariadb://u@h/db?ssl=1&ssl_verify=false")["ssl"]
    assert unverified.check_hostname is False
    assert "ssl" not in parse_dsn("mysql://u@h/db?ssl=false")
    assert parse_dsn("mysql://u@h/db")["charset"] == "utf8mb4"


@pytest.mark.parametrize(
    ("dsn", "needle"),
    [
        ("mysql://u:pw@h:3306", "names no database"),
        ("mysql://u:pw@h/db?sslmode=on", "unknown option(s) sslmode"),
        ("postgresql://u:pw@h/db", "must start with mysql://"),
        ("mysql://u:pw@h:99999/db", "invalid mysql DSN"),
        ("mysql://u:pw@h/db?ssl=maybe", "ssl in the mysql DSN must be true or false"),
    ],
)
def test_bad_dsn_is_refused_without_the_password(dsn: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        MySQLDriver(dsn)
    assert needle in str(info.value)
    assert "pw" not in str(info.value).replace("pwd", "")


def test_password_never_in_describe_or_repr() -> None:
    driver = MySQLDriver("mysql://app:s3cr%40t@db:3306/app", table="jobs")
    for text in (driver.describe(), repr(driver)):
        assert "s3cr" not in text and "app" in text and "jobs" in text


@pytest.mark.parametrize("bad", ["jobs; DROP TABLE x", "1abc", "a-b", "x" * 41, ""])
def test_table_name_must_be_an_identifier(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid mysql table"):
        MySQLDriver(DSN, table=bad)


@pytest.mark.parametrize(
    ("version", "ok"),
    [
        ("10.11.19-MariaDB-0+deb12u1", True),
        ("10.6.0-MariaDB", True),
        ("10.5.22-MariaDB-log", False),
        ("5.5.5-10.4.1-MariaDB", False),
        ("8.0.1", True),
        ("8.0.36-0ubuntu0.22.04.1", True),
        ("8.0.0", False),
        ("8.4.3-commercial", True),
        ("8.0.0-dmr", False),
        ("5.7.44-log", False),
    ],
)
def test_server_version_check(version: str, ok: bool) -> None:
    if ok:
        assert check_server_version(version) == parse_version(version)[0]
        return
    with pytest.raises(BrokerError) as info:
        check_server_version(version)
    text = str(info.value)
    assert "MySQL >= 8.0.1 or MariaDB >= 10.6" in text and "SKIP LOCKED" in text
    flavor, found = parse_version(version)
    assert f"{flavor} {'.'.join(map(str, found))}" in text


def test_factory_builds_it_from_config() -> None:
    config = Config(
        driver="mysql", mysql_dsn="mysql://u:pw@h:3306/db", mysql_table="jobs", mysql_max_pool_size=3
    )
    driver = DriverFactory.create_from_config(config)
    assert isinstance(driver, MySQLDriver)
    assert (driver.table, driver.max_pool_size) == ("jobs", 3)
    assert isinstance(DriverFactory.from_url("mariadb://u@h/db"), MySQLDriver)


# -- on the server -------------------------------------------------------------------------


async def test_connect_checks_the_server_and_reads_its_packet_limit(driver: MySQLDriver) -> None:
    [(version, packet)] = await admin_query("SELECT VERSION(), @@max_allowed_packet")
    assert driver.server_version == version
    assert driver.flavor == ("MariaDB" if "MariaDB" in version else "MySQL")
    assert driver.max_allowed_packet == packet


async def test_sessions_run_at_read_committed_in_utc(driver: MySQLDriver) -> None:
    variable = "tx_isolation" if driver.flavor == "MariaDB" else "transaction_isolation"
    try:
        rows = (await driver._query(f"SELECT @@SESSION.{variable}, @@SESSION.time_zone"))[0][1]
    except BrokerError:
        rows = (await driver._query("SELECT @@SESSION.transaction_isolation, @@SESSION.time_zone"))[0][1]
    assert rows[0] == ("READ-COMMITTED", "+00:00")


async def test_one_claim_index_serves_the_claim(driver: MySQLDriver) -> None:
    await driver.enqueue_many([EnqueueItem("q", b"x")] * 50)
    plan = await admin_query(
        f"EXPLAIN SELECT id FROM `{driver.table}` WHERE queue = 'q' AND due <= UTC_TIMESTAMP(6) "
        "ORDER BY due, id LIMIT 10 FOR UPDATE SKIP LOCKED"
    )
    assert [row[5] for row in plan] == ["claim"], plan
    assert "filesort" not in str(plan).lower()


async def test_large_binary_message_round_trips(driver: MySQLDriver) -> None:
    assert driver.max_allowed_packet is not None
    size = min(15 * 1024 * 1024, driver.max_allowed_packet - 64 * 1024)
    body = bytes(range(256)) * (size // 256)
    await driver.enqueue("big", body)
    [got] = await driver.dequeue(["big"], 1, wait=1)
    assert got.body == body
    assert len(await driver.ack([got])) == 1


async def test_over_max_message_bytes_is_refused_before_sending(
    make: Callable[..., Awaitable[MySQLDriver]],
) -> None:
    driver = await make(max_message_bytes=1000)
    with pytest.raises(MessageTooLarge) as info:
        await driver.enqueue_many([EnqueueItem("q", b"ok"), EnqueueItem("q", b"x" * 1001)])
    assert "1,001 bytes" in str(info.value)
    assert await count_rows(driver) == 0


async def test_over_max_allowed_packet_is_a_clear_error_that_loses_nothing(driver: MySQLDriver) -> None:
    assert driver.max_allowed_packet is not None
    too_big = b"\x00" * (driver.max_allowed_packet + 1)
    with pytest.raises(PacketTooLarge) as info:
        await driver.enqueue("q", too_big)
    assert isinstance(info.value, MessageTooLarge)
    assert "max_allowed_packet" in str(info.value) and f"{driver.max_allowed_packet:,}" in str(info.value)
    # within the packet by length, but escaping doubles zero bytes: still caught before sending
    almost = b"\x00" * (driver.max_allowed_packet // 2 + 4096)
    with pytest.raises(PacketTooLarge):
        await driver.enqueue("q", almost)
    await driver.enqueue("q", b"small")
    [got] = await driver.dequeue(["q"], 1, wait=1)
    with pytest.raises(PacketTooLarge):
        await driver.release(got, body=too_big)
    assert len(await driver.ack([got])) == 1, "the failed retry left the delivery held"
    assert await count_rows(driver) == 0


async def test_a_batch_over_one_packet_is_split_into_statements(driver: MySQLDriver) -> None:
    assert driver.max_allowed_packet is not None
    part = driver.max_allowed_packet // 3
    bodies = [bytes([i]) * part for i in range(1, 6)]
    ids = await driver.enqueue_many([EnqueueItem("q", b) for b in bodies])
    assert len(set(ids)) == 5
    got: list[Delivery] = []
    while len(got) < 5:
        got += await driver.dequeue(["q"], 5, wait=1)
    assert [d.body for d in got] == bodies
    assert [d.id for d in got] == ids


async def test_enqueue_many_returns_the_ids_in_order(driver: MySQLDriver) -> None:
    ids = await driver.enqueue_many([EnqueueItem("q", str(i).encode()) for i in range(2500)])
    assert len(ids) == 2500 and [int(i) for i in ids] == sorted(int(i) for i in ids)
    got = await driver.dequeue(["q"], 3, wait=0)
    assert [d.id for d in got] == ids[:3] and [d.body for d in got] == [b"0", b"1", b"2"]


async def test_bodies_with_quotes_percents_and_escapes_round_trip(driver: MySQLDriver) -> None:
    bodies = [b"100% %s %(x)s %%", b"'; DROP TABLE x; --", b"\\\x00\n\r\x1a\"'", bytes(range(256))]
    await driver.enqueue_many([EnqueueItem("q:1.x-y_", b) for b in bodies[:2]])
    await driver.enqueue("q:1.x-y_", bodies[2])
    await driver.enqueue("q:1.x-y_", bodies[3], delay=0.01)
    got: list[Delivery] = []
    while len(got) < 4:
        got += await driver.dequeue(["q:1.x-y_"], 4, wait=1)
    assert [d.body for d in got] == bodies
    await driver.complete(got, [("r%s", bodies[0])], 60)
    assert await driver.get_result("r%s", wait=0) == bodies[0]


async def test_tokens_differ_per_delivery_and_forged_ones_change_nothing(driver: MySQLDriver) -> None:
    await driver.enqueue_many([EnqueueItem("q", b"a"), EnqueueItem("q", b"b")])
    got = await driver.dequeue(["q"], 2, wait=1)
    assert len({d.token for d in got}) == 2
    forged = [
        Delivery(got[0].id, "q", b"", str(int(got[0].token) ^ 1), 1),
        Delivery(got[1].id, "q", b"", "not-a-token", 1),
        Delivery("garbage", "q", b"", got[0].token, 1),
    ]
    assert await driver.ack(forged) == []
    assert await driver.extend(forged, 60) == []
    assert await driver.release(forged[0]) is False
    assert await driver.fail(forged[0], "x") is False
    assert await count_rows(driver) == 2
    assert await driver.ack(got) == got


@pytest.mark.parametrize("returning", [True, False], ids=["mariadb-returning", "mysql-transaction"])
async def test_acks_and_commands_on_both_server_paths(driver: MySQLDriver, returning: bool) -> None:
    """MariaDB acks with DELETE ... RETURNING; MySQL has none and locks the rows first: both
    report exactly the deliveries still held (MariaDB runs the MySQL statements as well)."""
    driver._returning = returning
    ids = await driver.enqueue_many([EnqueueItem("q", str(i).encode()) for i in range(4)])
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)
    got = await driver.dequeue(["q"], 4, wait=1)
    assert [d.id for d in got] == ids and [d.body for d in got] == [b"0", b"1", b"2", b"3"]
    stale = Delivery(got[0].id, "q", b"", str(int(got[0].token) ^ 2), 1)
    assert await driver.ack([stale, got[1], got[2]]) == [got[1], got[2]]
    assert await driver.complete([got[0], got[1]], [("task-1", b"result")], 60) == [got[0]]
    assert await driver.get_result("task-1", wait=0) == b"result"
    await driver.send_command("w1", {"command": "shutdown"})
    await driver.send_command("w1", {"command": "stop-task", "task_id": "x"})
    assert await driver.receive_commands("w1") == [
        {"command": "shutdown"},
        {"command": "stop-task", "task_id": "x"},
    ]
    assert await driver.receive_commands("w1") == []
    assert await driver.ack([got[3]]) == [got[3]]


MARIADB_ONLY = ("RETURNING", "TX_ISOLATION", "CREATE OR REPLACE", "VALUES(")
"""Syntax MySQL 8 lacks (RETURNING), removed (tx_isolation) or deprecates (VALUES() in
ON DUPLICATE KEY UPDATE, 8.0.20)."""


@pytest.mark.parametrize(
    ("version", "returning"),
    [("8.0.36-0ubuntu0.22.04.1", False), ("8.4.3", False), ("10.11.6-MariaDB-0+deb12u1", True)],
)
async def test_a_mysql_server_gets_no_mariadb_only_statement(
    driver: MySQLDriver, version: str, returning: bool
) -> None:
    """Every statement the driver sends once it took a server for MySQL 8 (run here against
    MariaDB, which accepts the MySQL forms too): none uses MariaDB-only syntax, and no locking
    clause sits inside a UNION. With a MariaDB version string it does use RETURNING."""
    driver._use_server(version)
    assert driver._returning is returning
    sent: list[str] = []
    original = mysql_module._QuietCursor.execute

    async def recording(self: Any, query: str, args: Any = None) -> Any:
        sent.append(query.upper())
        return await original(self, query, args)

    mysql_module._QuietCursor.execute = recording  # type: ignore[method-assign]
    try:
        ids = await driver.enqueue_many([EnqueueItem(q, b"x") for q in ("a", "b", "b")])
        await driver.enqueue("a", b"later", delay=30)
        got = await driver.dequeue(["b", "a"], 3, wait=1)
        assert [d.queue for d in got] == ["b", "b", "a"] and sorted(d.id for d in got) == sorted(ids)
        assert await driver.extend(got, 30) == got
        assert await driver.complete([got[0]], [("r1", b"ok")], 60) == [got[0]]
        assert await driver.release(got[1], 0.0, b"again") is True
        assert await driver.fail(got[2], "boom") is True
        assert await driver.failed_requeue() == 1
        again = await driver.dequeue(["a", "b"], 5, wait=1)
        assert len(await driver.ack(again)) == 2
        await driver.send_command("w", {"command": "ping"})
        assert await driver.receive_commands("w") == [{"command": "ping"}]
        await driver.stats(["a", "b"])
        await driver.purge("a")
    finally:
        mysql_module._QuietCursor.execute = original  # type: ignore[method-assign]
    uses = [q for q in sent if any(bad in q for bad in MARIADB_ONLY)]
    if returning:
        assert any("RETURNING" in q for q in uses)
    else:
        assert uses == [], uses
    assert not [q for q in sent if "UNION" in q and "FOR UPDATE" in q]


async def test_give_back_and_retry_keep_the_delivery_count_right(driver: MySQLDriver) -> None:
    await driver.enqueue("q", b"v1")
    [first] = await driver.dequeue(["q"], 1, wait=1)
    assert await driver.release(first, body=b"v2% with %s percent") is True
    [second] = await driver.dequeue(["q"], 1, wait=1)
    assert (second.body, second.delivery_count) == (b"v2% with %s percent", 1)
    assert await driver.release(second) is True
    [third] = await driver.dequeue(["q"], 1, wait=1)
    assert third.delivery_count == 1 and third.id == first.id


async def test_cancelled_dequeue_gives_back_what_it_claimed(driver: MySQLDriver) -> None:
    await driver.enqueue("q", b"x")
    task = asyncio.ensure_future(driver.dequeue(["q"], 1, wait=5))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: not driver._background, timeout=5)
    [got] = await driver.dequeue(["q"], 1, wait=1)
    assert got.delivery_count == 1 and got.body == b"x"


async def test_a_disconnected_driver_says_so(make: Callable[..., Awaitable[MySQLDriver]]) -> None:
    driver = await make()
    await driver.disconnect()
    for call in (driver.enqueue("q", b"x"), driver.dequeue(["q"], 1, wait=0), driver.stats(["q"])):
        with pytest.raises(DriverError, match="disconnected: call connect"):
            await call
    await driver.connect()
    await driver.enqueue("q", b"x")
    assert len(await driver.dequeue(["q"], 1, wait=0)) == 1


async def test_idle_wait_costs_few_queries_and_still_sees_other_processes(
    make: Callable[..., Awaitable[MySQLDriver]], table: str
) -> None:
    """No NOTIFY: an idle consumer probes at its idle interval (a few read-only queries a
    second) and picks up a task from a producer it shares no process wake-ups with."""
    consumer = await make(idle_after_s=0.2)
    assert (await driver_queries(consumer, lambda: consumer.dequeue(["q"], 1, wait=0.5)))[0] == []
    got, idle_queries = await driver_queries(consumer, lambda: consumer.dequeue(["q"], 1, wait=2.0))
    assert got == []
    print(f"idle: {idle_queries} queries in 2 s")
    assert idle_queries <= 12, f"{idle_queries} queries in 2 s of idle waiting"
    elsewhere = MySQLDriver(DSN.replace("127.0.0.1", "localhost"), table=table)  # another wake scope
    assert elsewhere.wake_scope() != consumer.wake_scope()
    async with elsewhere:

        async def produce_later() -> None:
            await asyncio.sleep(0.3)
            await elsewhere.enqueue("q", b"from elsewhere")

        producing = asyncio.ensure_future(produce_later())
        started = time.monotonic()
        [delivery] = await consumer.dequeue(["q"], 1, wait=10)
        await producing
        assert delivery.body == b"from elsewhere"
        assert time.monotonic() - started < 0.3 + 1.0, "picked up within about one idle interval"


async def test_a_dequeue_that_does_not_wait_sees_rows_made_ready_elsewhere(
    make: Callable[..., Awaitable[MySQLDriver]],
) -> None:
    """The idle probe's answer is not the truth for ``wait=0``: after an empty claim, a row
    another driver enqueues, releases or lets expire is claimed by the next ``dequeue(wait=0)``."""
    consumer, other = await make(), await make()
    assert await consumer.dequeue(["q"], 1, wait=0) == []
    await other.enqueue("q", b"new")
    [got] = await consumer.dequeue(["q"], 1, wait=0)
    assert await consumer.dequeue(["q"], 1, wait=0) == []
    assert await consumer.release(got, 0.0) is True
    [again] = await consumer.dequeue(["q"], 1, wait=0)
    assert again.body == b"new" and again.delivery_count == 1
    await consumer.ack([again])
    await other.enqueue("q", b"leased")
    [held] = await other.dequeue(["q"], 1, wait=0)
    assert await consumer.dequeue(["q"], 1, wait=0) == []
    assert await other.extend([held], 0.05) == [held]
    await asyncio.sleep(0.2)  # the lease's own deadline
    [expired] = await consumer.dequeue(["q"], 1, wait=0)
    assert expired.body == b"leased" and expired.delivery_count == 2


async def driver_queries(driver: MySQLDriver, call: Callable[[], Awaitable[Any]]) -> tuple[Any, int]:
    """What ``call()`` returned, and how many round trips the driver made meanwhile."""
    count = 0
    original = driver._run

    async def counting(op: Any) -> Any:
        nonlocal count
        count += 1
        return await original(op)

    driver._run = counting  # type: ignore[method-assign]
    try:
        return await call(), count
    finally:
        del driver._run


async def test_lock_wait_timeout_is_retried_and_claims_nothing_twice(
    make: Callable[..., Awaitable[MySQLDriver]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ack that waits on a row another session holds meets 1205; the driver rolls back and
    tries again, and succeeds once the lock is gone."""
    monkeypatch.setattr(mysql_module, "LOCK_WAIT_TIMEOUT_S", 1)
    driver = await make()
    await driver.enqueue("q", b"x")
    [got] = await driver.dequeue(["q"], 1, wait=1)
    blocker = await aiomysql.connect(autocommit=False, **parse_dsn(DSN))
    try:
        async with blocker.cursor() as cur:
            await cur.execute(f"SELECT id FROM `{driver.table}` WHERE id = %s FOR UPDATE", (int(got.id),))
        started = time.monotonic()
        acking = asyncio.ensure_future(driver.ack([got]))
        await asyncio.sleep(1.6)  # past one lock wait timeout: the first try has failed
        assert not acking.done()
        await blocker.rollback()
        assert await asyncio.wait_for(acking, 10) == [got]
        assert time.monotonic() - started >= 1.0
    finally:
        blocker.close()
    assert await count_rows(driver) == 0


async def test_reconnects_after_the_server_drops_its_connections(
    driver: MySQLDriver, caplog: pytest.LogCaptureFixture
) -> None:
    """Idle connections killed (as by a server restart) are replaced; a connection killed in
    the middle of an ack is reconnected and the ack done again."""
    await driver.enqueue_many([EnqueueItem("q", b"one"), EnqueueItem("q", b"two")])
    got = await driver.dequeue(["q"], 2, wait=1)
    for conn in list(driver._pool._free):
        await admin_query(f"KILL CONNECTION {int(conn.thread_id())}")
    assert await driver.ack(got[:1]) == got[:1]
    blocker = await aiomysql.connect(autocommit=False, **parse_dsn(DSN))
    try:
        async with blocker.cursor() as cur:
            await cur.execute(f"SELECT id FROM `{driver.table}` WHERE id = %s FOR UPDATE", (int(got[1].id),))
        with caplog.at_level("WARNING", logger="asynctasq.drivers"):
            acking = asyncio.ensure_future(driver.ack(got[1:]))
            await wait_for(lambda: bool(driver._pool._used), timeout=5)
            [busy] = list(driver._pool._used)
            await admin_query(f"KILL CONNECTION {int(busy.thread_id())}")
            await wait_for(lambda: "reconnecting" in caplog.text, timeout=5)
            await blocker.rollback()
            assert await asyncio.wait_for(acking, 10) == got[1:]
        assert "is back" in caplog.text
    finally:
        blocker.close()
    assert await count_rows(driver) == 0


@pytest.mark.parametrize("call", ["connect", "enqueue", "migrate"])
async def test_unreachable_server_fails_at_once_without_the_password(call: str) -> None:
    """With the default timeouts: a server that was never reached is one BrokerUnavailable at
    once (the reconnect budget is for connections lost after one existed)."""
    driver = MySQLDriver("mysql://root:hunter2@127.0.0.1:1/test")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        if call == "connect":
            await driver.connect()
        elif call == "enqueue":
            await driver.enqueue("q", b"x")
        else:
            await driver.migrate()
    assert time.monotonic() - started < 3, "no reconnect loop before the first connection"
    text = str(info.value)
    assert "\n" not in text
    assert "MySQL at 127.0.0.1:1/test" in text and "--mysql-dsn" in text and "hunter2" not in text


async def test_wrong_password_and_a_percent_encoded_one(table: str) -> None:
    check_port("MariaDB", mysql_backend.HOST, mysql_backend.PORT)
    user, password = "atq_" + uuid.uuid4().hex[:8], "p@ss:w/rd%1"
    await admin_query(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
    await admin_query(f"CREATE USER '{user}'@'localhost' IDENTIFIED BY %s", (password,))
    try:
        await admin_query(f"GRANT ALL ON test.* TO '{user}'@'%%'", ())
        await admin_query(f"GRANT ALL ON test.* TO '{user}'@'localhost'")
        encoded = "p%40ss%3Aw%2Frd%251"
        good = MySQLDriver(f"mysql://{user}:{encoded}@127.0.0.1:3306/test", table=table)
        async with good:
            await good.enqueue("q", b"hello")
            assert [d.body for d in await good.dequeue(["q"], 1, wait=1)] == [b"hello"]
        await good.drop_tables()
        bad = MySQLDriver(f"mysql://{user}:wrong-{encoded}@127.0.0.1:3306/test", table=table)
        with pytest.raises(BrokerError) as info:
            await bad.connect()
        assert "refused access" in str(info.value) and "wrong-" not in str(info.value)
    finally:
        await admin_query(f"DROP USER IF EXISTS '{user}'@'%%'", ())
        await admin_query(f"DROP USER IF EXISTS '{user}'@'localhost'")


# -- migrations ----------------------------------------------------------------------------


async def tables_of(table: str) -> set[str]:
    rows = await admin_query(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = DATABASE() AND table_name LIKE %s",
        (table + "%",),
    )
    return {r[0] for r in rows}


async def test_migrate_steps_and_refuses_an_old_schema(table: str) -> None:
    check_port("MariaDB", mysql_backend.HOST, mysql_backend.PORT)
    driver = MySQLDriver(DSN, table=table)
    try:
        assert await driver.migrate(target=1) == [f"mysql {table}: 1 tasks and failed tables"]
        assert await tables_of(table) == {table, table + "_failed", table + "_schema_version"}
        with pytest.raises(SchemaError) as info:
            await driver.connect()
        assert "schema version 1" in str(info.value) and "asynctasq migrate --driver mysql" in str(info.value)
        steps = await driver.migrate()
        assert steps == [f"mysql {table}: 2 results, worker registry and commands tables"]
        assert await driver.migrate() == []
        assert await tables_of(table) == {table + s for s in TABLE_SUFFIXES}
        async with driver:
            await driver.enqueue("q", b"x")
        with pytest.raises(SchemaError, match="no mysql schema version 9"):
            await driver.migrate(target=9)
    finally:
        await driver.drop_tables()


async def test_concurrent_first_connects_migrate_once(table: str) -> None:
    check_port("MariaDB", mysql_backend.HOST, mysql_backend.PORT)
    drivers = [MySQLDriver(DSN, table=table, max_pool_size=1) for _ in range(4)]
    try:
        await asyncio.gather(*(d.connect() for d in drivers))
        rows = await admin_query(f"SELECT version FROM `{table}_schema_version` ORDER BY version")
        assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    finally:
        for d in drivers:
            await d.disconnect()
        await drivers[0].drop_tables()


async def test_newer_schema_is_refused(table: str) -> None:
    check_port("MariaDB", mysql_backend.HOST, mysql_backend.PORT)
    driver = MySQLDriver(DSN, table=table)
    try:
        await driver.migrate()
        await admin_query(
            f"INSERT INTO `{table}_schema_version` VALUES (%s, 'from the future', UTC_TIMESTAMP(6))",
            (SCHEMA_VERSION + 1,),
        )
        with pytest.raises(SchemaError, match="upgrade asynctasq"):
            await driver.connect()
    finally:
        await driver.drop_tables()


def test_cli_migrate(table: str) -> None:
    check_port("MariaDB", mysql_backend.HOST, mysql_backend.PORT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    command = [sys.executable, "-m", "asynctasq", "migrate", "--driver", "mysql", "--mysql-dsn", DSN]
    command += ["--mysql-table", table]
    try:
        first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        assert "1 tasks and failed tables" in first.stdout and "2 results" in first.stdout
        again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "up to date" in again.stdout
    finally:
        asyncio.run(MySQLDriver(DSN, table=table).drop_tables())


# -- a server restart ----------------------------------------------------------------------

START_MARIADB = ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"]


def mariadb_answers() -> bool:
    ping = subprocess.run(
        ["mariadb-admin", "-uroot", "-h127.0.0.1", "--connect-timeout=2", "ping"],
        capture_output=True,
        text=True,
    )
    return ping.returncode == 0


def bring_mariadb_back(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not mariadb_answers():
        subprocess.run(START_MARIADB, capture_output=True)
        if time.monotonic() > deadline:
            raise AssertionError("MariaDB did not come back: start it by hand (shared/services.md)")
        time.sleep(0.5)


async def test_work_waits_through_a_server_restart(driver: MySQLDriver) -> None:
    """The server goes away and comes back: an enqueue made during the outage waits for it
    (reconnecting with backoff) and lands; nothing is lost."""
    if os.geteuid() != 0 or not os.path.exists("/usr/sbin/mariadbd"):
        unavailable("restarting MariaDB needs root and /usr/sbin/mariadbd (the CI machine has both)")
    await driver.enqueue("q", b"before")
    try:
        subprocess.run(["mariadb-admin", "-uroot", "-h127.0.0.1", "shutdown"], check=True, timeout=60)
        await wait_for(lambda: not mariadb_answers(), timeout=30, interval=0.2)
        during = asyncio.ensure_future(driver.enqueue("q", b"during"))
        await asyncio.sleep(1.0)
        assert not during.done(), "the enqueue waits for the server"
        await asyncio.to_thread(bring_mariadb_back)
        await asyncio.wait_for(during, 60)
    finally:
        await asyncio.to_thread(bring_mariadb_back)
    got: list[Delivery] = []
    while len(got) < 2:
        got += await driver.dequeue(["q"], 2, wait=1)
    assert sorted(d.body for d in got) == [b"before", b"during"]
    assert len(await driver.ack(got)) == 2
