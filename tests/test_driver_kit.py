"""The driver kit's own pieces: wake-ups, adaptive polls, the reconnect policy, the driver table
and the factory's mapping from settings and URLs to constructor keywords."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

import asynctasq
from asynctasq.config import Config
from asynctasq.core.driver_factory import DriverFactory, driver_options
from asynctasq.drivers import DRIVER_NAMES, DRIVERS, SCHEMES
from asynctasq.drivers._reconnect import Reconnect
from asynctasq.drivers._wait import AdaptivePoll, WakeHub, wake_hub
from asynctasq.drivers.base import CAPABILITIES, BaseDriver, Delivery, EnqueueItem
from asynctasq.drivers.memory import MemoryDriver
from asynctasq.drivers.sqlite import SQLiteDriver
from asynctasq.errors import BrokerUnavailable, ConfigError, InvalidQueueName


async def test_a_waiter_wakes_from_its_own_loop_and_from_another_thread() -> None:
    hub = WakeHub()
    with hub.watch(["q:a"]) as waiter:
        asyncio.get_running_loop().call_later(0.05, hub.wake, ["q:a"])
        started = time.monotonic()
        assert await waiter.sleep(10) is True
        assert time.monotonic() - started < 2
        assert waiter.clear() is True and waiter.clear() is False

        thread = threading.Thread(target=lambda: (time.sleep(0.05), hub.wake(["q:a"])))
        thread.start()
        assert await waiter.sleep(10) is True
        await asyncio.to_thread(thread.join)
        waiter.clear()
        hub.wake(["q:other"])  # another key wakes nobody here
        assert await waiter.sleep(0.05) is False
    assert not hub, "a waiter unregisters when its block ends"


async def test_a_wake_before_the_sleep_is_not_lost() -> None:
    hub = WakeHub()
    with hub.watch(["r:1", "q:x"]) as waiter:
        hub.wake_all()
        started = time.monotonic()
        assert await waiter.sleep(10) is True
        assert time.monotonic() - started < 0.5


def test_hubs_are_shared_per_scope() -> None:
    assert wake_hub("sqlite:/tmp/a.db") is wake_hub("sqlite:/tmp/a.db")
    assert wake_hub("sqlite:/tmp/a.db") is not wake_hub("sqlite:/tmp/b.db")
    a, b = MemoryDriver(namespace="kit-share"), MemoryDriver(namespace="kit-share")
    assert a.hub is b.hub and a.hub is not MemoryDriver(namespace="kit-other").hub


def test_adaptive_poll_backs_off_with_jitter_and_resets() -> None:
    poll = AdaptivePoll(0.01, 0.1, factor=2.0, jitter=0.1)
    pauses = [poll.next() for _ in range(8)]
    assert 0.009 <= pauses[0] <= 0.011
    assert all(0.0 < p <= 0.11 for p in pauses)
    assert pauses[-1] >= 0.09, "it reaches the cap while idle"
    poll.reset()
    assert poll.next() <= 0.011
    with pytest.raises(ValueError):
        AdaptivePoll(0.2, 0.1)


async def test_reconnect_retries_logs_once_per_outage_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    failures = iter([ConnectionResetError("reset"), ConnectionRefusedError("refused"), None])
    lost: list[BaseException] = []

    async def op() -> str:
        exc = next(failures)
        if exc is not None:
            raise exc
        return "done"

    policy = Reconnect("Broker at 10.0.0.1:1", "start it", (OSError,), timeout_s=5, on_lost=lost.append)
    with caplog.at_level(logging.WARNING, logger="asynctasq.drivers"):
        assert await policy.run(op) == "done"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages  # lost ..., back after ...
    assert messages[0].startswith("lost Broker at 10.0.0.1:1 (reset)") and "is back after" in messages[1]
    assert len(lost) == 2 and not policy.down
    assert all(r.exc_info is None for r in caplog.records), "no tracebacks"


async def test_reconnect_gives_up_with_one_clear_error_and_masks_secrets() -> None:
    async def op() -> None:
        raise ConnectionRefusedError("password s3cret refused")

    policy = Reconnect(
        "Broker at db:5432", "start it or fix --x-url", (OSError,), timeout_s=0.2, secret="s3cret"
    )
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        await policy.run(op)
    assert time.monotonic() - started < 2
    assert str(info.value) == "cannot reach Broker at db:5432 (password *** refused): start it or fix --x-url"

    async def other() -> None:
        raise KeyError("not a connection problem")

    with pytest.raises(KeyError):  # only the retryable errors are retried
        await policy.run(other)


def test_the_driver_table_is_the_one_list_of_drivers() -> None:
    assert DRIVER_NAMES == tuple(DRIVERS) == next(s for s in Config.settings() if s.name == "driver").choices
    assert set(SCHEMES) >= {"sqlite", "memory", "redis", "rediss", "postgresql", "mysql", "sqs", "amqp"}
    for spec in DRIVERS.values():
        assert spec.target.startswith(f"asynctasq.drivers.{spec.name}:")


def test_ci_makes_sure_of_every_service_the_driver_table_names() -> None:
    from pathlib import Path

    script = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    ensured = {line.split()[1] for line in script.splitlines() if line.startswith("ensure ")}
    needed = {spec.service for spec in DRIVERS.values() if spec.service}
    assert needed <= ensured, f".ci/run does not start {needed - ensured}"


def test_settings_map_to_constructor_keywords() -> None:
    config = Config(
        driver="postgres",
        postgres_dsn="postgresql://app@db/app",
        postgres_schema="jobs",
        lease_seconds=12,
        max_message_bytes=2048,
        redis_url="redis://elsewhere:6379",
    )
    options = driver_options(config)
    assert options["dsn"] == "postgresql://app@db/app" and options["schema"] == "jobs"
    assert options["lease_seconds"] == 12 and options["max_message_bytes"] == 2048
    assert "url" not in options, "another driver's settings are not passed"
    assert driver_options(Config(driver="sqlite", sqlite_path="x.db")) == {
        "path": "x.db",
        "lease_seconds": 30.0,
    }
    sqs = driver_options(Config(driver="sqs", aws_access_key_id="AKIA", sqs_region="eu-west-1"))
    assert sqs["aws_access_key_id"] == "AKIA" and sqs["region"] == "eu-west-1"


async def test_drivers_from_urls(tmp_path: object) -> None:
    memory = DriverFactory.from_url("memory://kit-url", lease_seconds=5)
    assert isinstance(memory, MemoryDriver) and memory.namespace == "kit-url" and memory.lease_seconds == 5
    sqlite = DriverFactory.from_url(f"sqlite:///{tmp_path}/jobs.db")
    assert isinstance(sqlite, SQLiteDriver) and sqlite.path == f"/{tmp_path}/jobs.db".replace("//", "/")
    assert DriverFactory.from_url("sqlite://").path == ":memory:"  # type: ignore[attr-defined]
    redis = DriverFactory.from_url("redis://:pw@127.0.0.1:6379/2")
    assert type(redis).__name__ == "RedisDriver" and "pw" not in repr(redis)
    with pytest.raises(ConfigError, match=r"no driver for URL 'ftp://u:\*\*\*@host/'"):
        DriverFactory.from_url("ftp://u:secret@host/")
    driver = await asynctasq.connect("memory://kit-connect")
    try:
        await driver.enqueue("default", b"x")
        assert len(await driver.dequeue(["default"], 1, wait=0)) == 1
    finally:
        await driver.disconnect()


class _Minimal(BaseDriver):
    """A driver with only the required hooks: the optional capabilities must be refused."""

    name = "minimal"

    async def _enqueue_many(self, items: object) -> list[str]:
        return []

    async def _claim(self, queues: object, limit: int) -> list[Delivery]:
        return []

    async def _ack(self, deliveries: object) -> list[Delivery]:
        return []

    async def _extend(self, deliveries: object, seconds: float) -> list[Delivery]:
        return []

    async def _release(self, delivery: Delivery, delay: float, body: bytes | None) -> bool:
        return False

    async def _fail(self, delivery: Delivery, error: str) -> bool:
        return False


async def test_the_base_validates_before_any_hook_runs() -> None:
    driver = _Minimal(max_message_bytes=10)
    assert not driver.fencing and driver.capabilities <= CAPABILITIES
    with pytest.raises(InvalidQueueName, match="an empty name"):
        await driver.enqueue("", b"x")
    with pytest.raises(InvalidQueueName):
        await driver.enqueue_many([EnqueueItem("ok", b"x"), EnqueueItem("no way", b"x")])
    assert await driver.enqueue_many([]) == []
    assert await driver.dequeue(["a"], 0, wait=5) == []
    started = time.monotonic()
    assert await driver.dequeue(["a"], 1, wait=0.1) == []
    assert time.monotonic() - started >= 0.09
    for refused in (driver.stats(["a"]), driver.get_result("t", 0), driver.migrate(), driver.list_workers()):
        with pytest.raises(
            asynctasq.errors.UnsupportedOperation, match="the minimal driver does not support"
        ):
            await refused

    class Bad(_Minimal):
        capabilities = frozenset({"teleport"})

    with pytest.raises(TypeError, match="teleport"):
        Bad()


async def test_the_memory_driver_forgets_the_timers_of_finished_messages() -> None:
    driver = MemoryDriver(namespace="kit-timers")
    try:
        for _ in range(10):
            await driver.enqueue_many([EnqueueItem("q", b"x")] * 1000)
            while got := await driver.dequeue(["q"], 10, wait=0):
                await driver.extend(got, 30)
                assert len(await driver.ack(got)) == len(got)
        # 10,000 claims and 10,000 extends each left a timer behind before they were dropped
        assert len(driver._s.timers) <= 2 * len(driver._s.messages) + 1000
    finally:
        MemoryDriver.reset("kit-timers")
