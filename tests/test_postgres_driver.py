"""PostgreSQL driver specifics: migrations, identifiers, the LISTEN connection, batch claims."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from asynctasq.config import Config
from asynctasq.core.driver_factory import DriverFactory
from asynctasq.drivers.base import EnqueueItem
from asynctasq.errors import ConfigError, DriverError, InvalidQueueName
from tests.backends import ServiceUnavailable, check_port, unavailable
from tests.conftest import wait_for

asyncpg = pytest.importorskip("asyncpg")
from asynctasq.drivers.postgres import SCHEMA_VERSION, PostgresDriver  # noqa: E402
from tests.backends.postgres_backend import DSN, HOST, PORT  # noqa: E402

MakePg = Callable[..., Awaitable[PostgresDriver]]


@pytest.fixture
async def admin() -> AsyncIterator[Any]:
    try:
        check_port("PostgreSQL", HOST, PORT)
        conn = await asyncpg.connect(DSN, timeout=5)
    except (ServiceUnavailable, OSError) as exc:
        unavailable(str(exc))
        raise
    yield conn
    await conn.close()


@pytest.fixture
async def schema(admin: Any) -> AsyncIterator[str]:
    name = "tpg" + uuid.uuid4().hex[:10]
    yield name
    await admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
async def make(schema: str) -> AsyncIterator[MakePg]:
    made: list[PostgresDriver] = []

    async def make(connect: bool = True, **options: Any) -> PostgresDriver:
        options.setdefault("max_pool_size", 3)
        driver = PostgresDriver(dsn=DSN, schema=schema, **options)
        made.append(driver)
        if connect:
            await driver.connect()
        return driver

    yield make
    for driver in made:
        await driver.disconnect()


async def version_rows(admin: Any, schema: str) -> list[int]:
    rows = await admin.fetch(f'SELECT version FROM "{schema}"."asynctasq_tasks_schema_version" ORDER BY 1')
    return [r[0] for r in rows]


# -- migrations ----------------------------------------------------------------------------------


async def test_connect_creates_a_missing_schema(make: MakePg, admin: Any, schema: str) -> None:
    await make()
    assert await version_rows(admin, schema) == list(range(1, SCHEMA_VERSION + 1))
    # a second driver finds the work done and creates nothing
    driver = await make()
    assert await driver.migrate() == []


async def test_old_schema_is_refused_until_migrated(make: MakePg, admin: Any, schema: str) -> None:
    old = await make(connect=False)
    assert await old.migrate(target=1) == ["1: tasks and failed tables"]
    await admin.execute(
        f"""INSERT INTO "{schema}".asynctasq_tasks (queue, visible_at, body) VALUES ('kept', now(), 'x')"""
    )
    with pytest.raises(
        DriverError, match=r"schema version 1, .*python -m asynctasq migrate --driver postgres"
    ):
        await make()
    assert await version_rows(admin, schema) == [1], "connect must never upgrade by itself"
    applied = await old.migrate()
    assert applied == [f"{v}: {d}" for v, d in _descriptions() if v > 1]
    driver = await make()
    [kept] = await driver.dequeue(["kept"], 10, wait=0)
    assert kept.body == b"x"
    assert len(await driver.ack([kept])) == 1


def _descriptions() -> list[tuple[int, str]]:
    from asynctasq.drivers._postgres_schema import MIGRATIONS

    return [(v, d) for v, d, _ in MIGRATIONS]


async def test_newer_schema_is_refused(make: MakePg, admin: Any, schema: str) -> None:
    await make()
    await admin.execute(
        f"""INSERT INTO "{schema}".asynctasq_tasks_schema_version (version, description)
            VALUES ({SCHEMA_VERSION + 1}, 'from the future')"""
    )
    with pytest.raises(DriverError, match="newer than this asynctasq knows"):
        await make()


async def test_foreign_table_is_not_taken_over(make: MakePg, admin: Any, schema: str) -> None:
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    await admin.execute(f'CREATE TABLE "{schema}".asynctasq_tasks (x int)')
    with pytest.raises(DriverError, match="not made by asynctasq"):
        await make()


async def test_concurrent_first_connects_create_the_schema_once(
    make: MakePg, admin: Any, schema: str
) -> None:
    drivers = await asyncio.gather(*(make() for _ in range(4)))
    assert len(drivers) == 4
    assert await version_rows(admin, schema) == list(range(1, SCHEMA_VERSION + 1))


# -- identifiers, queue names, configuration -----------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("schema", 'x"; DROP TABLE users; --'),
        ("schema", "has space"),
        ("schema", "1starts_with_digit"),
        ("schema", ""),
        ("table", "a-b"),
        ("table", "t" * 41),
        ("table", "tasks;"),
        ("schema", "s" * 64),
    ],
)
def test_bad_identifiers_are_refused(setting: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid postgres {setting}"):
        options: dict[str, Any] = {setting: value}
        PostgresDriver(**options)


def test_from_config_validates_and_redacts() -> None:
    with pytest.raises(ConfigError, match="invalid postgres table"):
        DriverFactory.create_from_config(Config(driver="postgres", postgres_table="x y"))
    config = Config(
        driver="postgres",
        postgres_dsn="postgresql://app:s3cret@db.example:5432/app",
        postgres_schema="jobs",
        postgres_table="tasks",
        postgres_min_pool_size=2,
        postgres_max_pool_size=5,
        lease_seconds=12,
    )
    driver = DriverFactory.create_from_config(config)
    assert isinstance(driver, PostgresDriver)
    assert (driver.schema, driver.table, driver.min_pool_size, driver.max_pool_size) == (
        "jobs",
        "tasks",
        2,
        5,
    )
    assert driver.lease_seconds == 12
    assert "s3cret" not in driver.describe() and "app:***@db.example" in driver.describe()


async def test_unreachable_server_is_one_clear_line() -> None:
    driver = PostgresDriver(dsn="postgresql://app:s3cret@127.0.0.1:1/app")
    with pytest.raises(DriverError) as info:
        await driver.connect()
    message = str(info.value)
    assert message.startswith("cannot reach PostgreSQL at postgresql://app:***@127.0.0.1:1/app")
    assert "s3cret" not in message and "\n" not in message
    with pytest.raises(DriverError, match="not connected"):
        await driver.enqueue("q", b"x")


async def test_queue_name_with_sql_is_refused(make: MakePg, admin: Any, schema: str) -> None:
    driver = await make()
    await driver.enqueue("safe", b"1")
    for bad in ["x'; DELETE FROM asynctasq_tasks; --", "q) OR (1=1", 'a"b']:
        with pytest.raises(InvalidQueueName):
            await driver.enqueue(bad, b"x")
        with pytest.raises(InvalidQueueName):
            await driver.dequeue(["safe", bad], 10, wait=0)
        with pytest.raises(InvalidQueueName):
            await driver.enqueue_many([EnqueueItem("safe", b"x"), EnqueueItem(bad, b"y")])
        with pytest.raises(InvalidQueueName):
            await driver.purge(bad)
    assert await admin.fetchval(f'SELECT count(*) FROM "{schema}".asynctasq_tasks') == 1


# -- claims --------------------------------------------------------------------------------------


async def test_multi_queue_claim_fills_from_later_queues_in_order(make: MakePg) -> None:
    driver = await make()
    await driver.enqueue_many([EnqueueItem("low", f"l{i}".encode()) for i in range(4)])
    await driver.enqueue_many([EnqueueItem("high", f"h{i}".encode()) for i in range(3)])
    await driver.enqueue("mid", b"delayed", delay=60)
    got = await driver.dequeue(["high", "mid", "low"], 5, wait=0)
    assert [d.body for d in got] == [b"h0", b"h1", b"h2", b"l0", b"l1"]
    assert [d.queue for d in got] == ["high"] * 3 + ["low"] * 2
    assert len(await driver.ack(got)) == 5


async def test_batch_claims_of_two_drivers_never_overlap(make: MakePg) -> None:
    a, b = await make(), await make()
    n = 3000
    await a.enqueue_many([EnqueueItem("q1" if i % 3 else "q2", str(i).encode()) for i in range(n)])
    seen: dict[str, list[bytes]] = {"a": [], "b": []}
    tokens: set[tuple[str, str]] = set()

    async def consume(name: str, driver: PostgresDriver) -> None:
        while True:
            got = await driver.dequeue(["q1", "q2"], 50, wait=0)
            if not got:
                return
            assert all(d.delivery_count == 1 for d in got)
            tokens.update((d.id, d.token) for d in got)
            seen[name].extend(d.body for d in got)
            assert len(await driver.ack(got)) == len(got)

    await asyncio.gather(consume("a", a), consume("b", b))
    everything = seen["a"] + seen["b"]
    assert len(everything) == n and len(set(everything)) == n
    assert seen["a"] and seen["b"], "both drivers should have claimed batches"
    assert len(tokens) == n


async def test_stale_ack_of_a_reclaimed_batch_changes_nothing(make: MakePg) -> None:
    a, b = await make(lease_seconds=0.3), await make(lease_seconds=30)
    await a.enqueue_many([EnqueueItem("q", str(i).encode()) for i in range(5)])
    first = await a.dequeue(["q"], 5, wait=0)
    assert len(first) == 5
    again: list[Any] = []

    async def reclaimed() -> bool:
        again.extend(await b.dequeue(["q"], 5 - len(again), wait=0))
        return len(again) == 5

    await wait_for(reclaimed, timeout=10)
    assert sorted(d.delivery_count for d in again) == [2] * 5
    assert len(await a.ack(first)) == 0
    assert len(await a.extend(first, 60)) == 0
    assert len(await b.ack(again)) == 5


# -- the LISTEN connection -----------------------------------------------------------------------


async def test_lost_listen_connection_is_reopened(make: MakePg, admin: Any) -> None:
    consumer = await make(poll_interval_s=60)  # only a notification can wake it in time
    producer = await make()
    assert await consumer.dequeue(["q"], 1, wait=0.05) == []
    old_pid = consumer._listener.get_server_pid()
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)

    def reopened() -> bool:
        return consumer._listening() and consumer._listener.get_server_pid() != old_pid

    await wait_for(reopened, timeout=10)
    listening = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE 'LISTEN%'",
        consumer._listener.get_server_pid(),
    )
    assert listening == 1

    async def produce_later() -> None:
        await asyncio.sleep(0.2)
        await producer.enqueue("q", b"after-reconnect")

    producing = asyncio.create_task(produce_later())
    started = time.monotonic()
    got = await consumer.dequeue(["q"], 1, wait=20)
    await producing
    assert [d.body for d in got] == [b"after-reconnect"]
    assert time.monotonic() - started < 5
    await consumer.ack(got)


async def test_waiting_dequeue_survives_listener_loss(make: MakePg, admin: Any) -> None:
    consumer = await make(poll_interval_s=60)
    producer = await make()
    assert await consumer.dequeue(["q"], 1, wait=0.05) == []
    old_pid = consumer._listener.get_server_pid()
    waiting = asyncio.create_task(consumer.dequeue(["q"], 1, wait=20))
    await asyncio.sleep(0.1)  # let it block; the listener dies under it
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)
    await wait_for(lambda: consumer._listening() and consumer._listener.get_server_pid() != old_pid)
    await producer.enqueue("q", b"x")
    got = await asyncio.wait_for(waiting, 5)
    assert [d.body for d in got] == [b"x"]
    await consumer.ack(got)


async def test_idle_dequeue_wakes_within_milliseconds(make: MakePg) -> None:
    consumer, producer = await make(poll_interval_s=60), await make()
    await consumer.dequeue(["q"], 1, wait=0.01)  # opens the listener
    latencies = []
    for _ in range(20):
        waiting = asyncio.create_task(consumer.dequeue(["q"], 1, wait=10))
        await asyncio.sleep(0.01)
        sent = time.monotonic()
        await producer.enqueue("q", b"x")
        got = await waiting
        latencies.append(time.monotonic() - sent)
        await consumer.ack(got)
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.05, latencies


# -- retention -----------------------------------------------------------------------------------


async def test_retention_sweeps_old_failed_entries_and_expired_results(
    make: MakePg, admin: Any, schema: str
) -> None:
    driver = await make(failed_retention_s=0.2)
    await driver.enqueue("q", b"doomed")
    [d] = await driver.dequeue(["q"], 1, wait=0)
    assert await driver.fail(d, "boom")
    await driver.store_results([("r1", b"x")], ttl=0.1)
    assert len(await driver.failed_list("q")) == 1

    async def swept() -> bool:
        await driver.sweep()
        failed = await admin.fetchval(f'SELECT count(*) FROM "{schema}".asynctasq_tasks_failed')
        results = await admin.fetchval(f'SELECT count(*) FROM "{schema}".asynctasq_tasks_results')
        return bool(failed == 0 and results == 0)

    await wait_for(swept, timeout=5, interval=0.1)


async def test_async_commit_of_claims_does_not_leak_into_the_session(make: MakePg) -> None:
    driver = await make(max_pool_size=1, min_pool_size=1)  # every statement on one connection
    await driver.enqueue_many([EnqueueItem("q", b"1"), EnqueueItem("q", b"2")])
    got = await driver.dequeue(["q"], 2, wait=0)
    assert len(await driver.extend(got, 30)) == 2
    assert len(await driver.ack(got)) == 2
    assert driver._pool is not None
    assert await driver._pool.fetchval("SHOW synchronous_commit") == "on"


async def test_pool_connections_lost_are_replaced(make: MakePg, admin: Any) -> None:
    driver = await make(min_pool_size=2, max_pool_size=2)
    await driver.enqueue("q", b"before")
    pool = driver._p
    first, second = await pool.acquire(), await pool.acquire()  # both pool connections
    pids = [first.get_server_pid(), second.get_server_pid()]
    await pool.release(first)
    await pool.release(second)
    killed = await admin.fetchval(
        "SELECT count(*) FROM unnest($1::int[]) p WHERE pg_terminate_backend(p)", pids
    )
    assert killed == 2
    outcomes: list[str] = []

    async def recovered() -> bool:
        try:
            got = await driver.dequeue(["q"], 1, wait=0)
        except DriverError as exc:  # at most the statement that found its connection dead
            outcomes.append(str(exc))
            return False
        if got:
            assert len(await driver.ack(got)) == 1
        return bool(got)

    await wait_for(recovered, timeout=10)
    assert len(outcomes) <= 2, outcomes
