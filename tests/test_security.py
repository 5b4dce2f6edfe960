"""Bad input and security on every driver (tests.backends.BACKENDS): hostile messages on the
worker side, bad names and sizes on the producer and CLI side, an unreachable broker, passwords
that never show, and HMAC signing (asynctasq.signing)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

import asynctasq
from asynctasq import Worker, task
from asynctasq.config import Config
from asynctasq.drivers.base import BaseDriver, EnqueueItem
from asynctasq.errors import ConfigError, InvalidQueueName, MessageTooLarge
from asynctasq.message import Envelope
from asynctasq.serializers import get_serializer
from asynctasq.signing import SignatureError, Signer
from tests.backends import (
    BACKENDS,
    RELIABILITY_BACKENDS,
    RELIABILITY_PENDING,
    backend_module,
    unreachable_config,
)
from tests.chaos_brokers import SECRET
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
KEY = "k" * 8 + "-current-signing-key-0123456789abcdef"
OLD_KEY = "o" * 8 + "-previous-signing-key-0123456789abcdef"
OTHER_KEY = "x" * 8 + "-somebody-elses-key-0123456789abcdef"

ran: list[str] = []
attempts: dict[str, int] = {}


@task
async def sec_echo(key: str) -> str:
    ran.append(key)
    return key


@task(max_attempts=3, retry_after=0.01)
async def sec_flaky(key: str) -> str:
    attempts[key] = attempts.get(key, 0) + 1
    if attempts[key] == 1:
        raise ValueError("first attempt fails")
    ran.append(key)
    return key


class _Evil:
    """Unpickling it would create a file: the worker must never unpickle it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


@contextlib.asynccontextmanager
async def worker_on(driver: BaseDriver, queue: str, **options: Any) -> AsyncIterator[Worker]:
    worker = Worker(driver, queues=[queue], install_signal_handlers=False, **options)
    runner = asyncio.create_task(worker.start())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(runner, 30)


def envelope(task_name: str, queue: str, *args: Any, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "id": os.urandom(16).hex(), "task": task_name, "args": list(args), "kwargs": {},
            "queue": queue, "attempt": 1, "max_attempts": 3, **fields}  # fmt: skip


# -- worker side -------------------------------------------------------------------------------


async def test_hostile_messages_fail_with_a_reason_and_nothing_runs(
    driver: BaseDriver, queue: str, tmp_path: Path
) -> None:
    pwned = tmp_path / "pwned"
    valid = msgpack.packb(envelope(sec_echo.name, queue, "x"))
    hostile = {
        b"\x00\xffgarbage\x13\x37": "SerializationError",
        valid[: len(valid) // 2]: "SerializationError",
        msgpack.packb(envelope(sec_echo.name, queue, "x", v=99)): "newer than this worker",
        msgpack.packb(envelope("nope.never_registered", queue)): "unknown task 'nope.never_registered'",
        msgpack.packb(envelope("os.system", queue, f"touch {pwned}")): "unknown task 'os.system'",
        msgpack.packb(
            envelope("subprocess.run", queue, ["touch", str(pwned)])
        ): "unknown task 'subprocess.run'",
        pickle.dumps(_Evil(str(pwned))): "pickled message refused",
        msgpack.packb(envelope(sec_echo.name, queue, args="abc")): "malformed",
        b"": "",  # an empty body is refused at enqueue or fails at the worker
    }
    accepted = {}
    for body, reason in hostile.items():
        try:
            await driver.enqueue(queue, body)
        except (ValueError, MessageTooLarge) as exc:
            assert body == b"", f"refused at enqueue: {body!r} ({exc})"
            continue
        accepted[body] = reason
    await sec_echo(f"{queue}-after").on_queue(queue).dispatch(driver)
    async with worker_on(driver, queue) as worker:
        await wait_for(lambda: worker.failed == len(accepted) and worker.succeeded == 1, timeout=30)
    assert f"{queue}-after" in ran, "the worker went on after the hostile messages"
    assert not pwned.exists(), "a hostile message executed something"
    if driver.supports("failed"):
        errors = {e["body"]: e["error"] for e in await driver.failed_list(queue, limit=100)}
        assert set(errors) == set(accepted)
        for body, reason in accepted.items():
            assert reason in errors[body], (body, errors[body])


async def test_signed_messages_run_and_the_rest_fail_closed(driver: BaseDriver, queue: str) -> None:
    """Producers sign with the key; a worker with it (and an old key for rotation) runs signed
    messages, retries stay signed, and unsigned, foreign-key or altered messages never run."""
    serializer = get_serializer("msgpack")
    signed = Signer(KEY)

    def body(key: str, signer: Signer | None) -> bytes:
        return Envelope(sec_echo.name, [key], {}, queue).encode(serializer, signer)

    tampered = bytearray(body(f"{queue}-tampered", signed))
    tampered[-3] ^= 0x01
    asynctasq.configure(driver="memory", signing_key=KEY)
    try:
        await sec_echo(f"{queue}-signed").on_queue(queue).dispatch(driver)
        await sec_flaky(f"{queue}-retried").on_queue(queue).dispatch(driver)
    finally:
        asynctasq.configure(driver="memory")
    bad = [body(f"{queue}-unsigned", None), body(f"{queue}-foreign", Signer(OTHER_KEY)), bytes(tampered)]
    await driver.enqueue_many(
        [EnqueueItem(queue, body(f"{queue}-old-key", Signer(OLD_KEY))), *(EnqueueItem(queue, b) for b in bad)]
    )
    async with worker_on(driver, queue, signing_key=KEY, signing_old_keys=[OLD_KEY]) as worker:
        await wait_for(lambda: worker.succeeded == 3 and worker.failed == 3, timeout=30)
    assert {f"{queue}-signed", f"{queue}-retried", f"{queue}-old-key"} <= set(ran)
    assert not {f"{queue}-unsigned", f"{queue}-foreign", f"{queue}-tampered"} & set(ran)
    assert attempts[f"{queue}-retried"] == 2, "the retried message was signed by the worker"
    if driver.supports("failed"):
        errors = {e["body"]: e["error"] for e in await driver.failed_list(queue)}
        assert set(errors) == set(bad)
        assert "unsigned message refused" in errors[bad[0]]
        assert "bad signature" in errors[bad[1]] and "bad signature" in errors[bad[2]]


def test_a_signer_verifies_before_anything_is_decoded() -> None:
    signer = Signer(KEY, [OLD_KEY])
    payload = pickle.dumps(_Evil("/nonexistent/never"))
    assert signer.verify(signer.sign(payload)) == payload
    assert Signer(OLD_KEY).sign(payload) != signer.sign(payload)
    assert signer.verify(Signer(OLD_KEY).sign(payload)) == payload
    for refused in (payload, Signer(OTHER_KEY).sign(payload), signer.sign(payload)[:-1], b""):
        with pytest.raises(SignatureError):
            signer.verify(refused)
    assert KEY not in repr(signer) and OLD_KEY not in repr(signer)


def test_a_misconfigured_signing_key_is_a_clear_error_at_start_up() -> None:
    with pytest.raises(ConfigError, match="at least 32"):
        Config(signing_key="too-short")
    with pytest.raises(ConfigError, match="signing_old_keys is set but signing_key is not"):
        Config(signing_old_keys=[OLD_KEY])
    with pytest.raises(ConfigError, match=r"signing_old_keys .* at least 32"):
        Config(signing_key=KEY, signing_old_keys=["short"])
    with pytest.raises(ConfigError, match="at least 32"):
        Config(_environ={"ASYNCTASQ_SIGNING_KEY": "short"})
    config = Config(signing_key=KEY, signing_old_keys=[OLD_KEY])
    assert KEY not in repr(config) and OLD_KEY not in repr(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    env |= {"ASYNCTASQ_SIGNING_KEY": "short", "ASYNCTASQ_DRIVER": "memory"}
    proc = subprocess.run(
        [sys.executable, "-m", "asynctasq", "worker", "--burst"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "at least 32" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- producer and CLI side ---------------------------------------------------------------------

BAD_NAMES = [
    "",
    "a'b",
    'a"b',
    "a;b",
    "q'; DROP TABLE asynctasq_tasks; --",
    "x" * 1000,
    "a b",
    "ü",
    "a\nb",
    "{q}",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
async def test_bad_queue_names_are_refused_before_the_broker(
    driver: BaseDriver, queue: str, name: str
) -> None:
    with pytest.raises(InvalidQueueName):
        await driver.enqueue(name, b"x")
    with pytest.raises(InvalidQueueName):
        await driver.enqueue_many([EnqueueItem(queue, b"fine"), EnqueueItem(name, b"x")])
    with pytest.raises(InvalidQueueName):
        await sec_echo("x").on_queue(name).dispatch(driver)
    with pytest.raises(InvalidQueueName):
        await driver.dequeue([name], 1, wait=0)
    assert await driver.dequeue([queue], 10, wait=0) == [], "half a batch reached the broker"


def test_the_cli_refuses_bad_queue_names_in_one_line() -> None:
    for name in ["", "a;b", "q'; DROP TABLE asynctasq_tasks; --", "x" * 1000]:
        for args in (
            ["dispatch", "tests.cli_tasks.mark", "--import", "tests.cli_tasks", "--queue", name],
            ["worker", "--burst", "--queues", f"ok,{name}" if name else ","],
        ):
            proc = run_cli({"driver": "memory"}, *args, timeout=60)
            assert proc.returncode != 0, (args, proc.stdout)
            assert "Traceback" not in proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error:"), (
                proc.stderr
            )


@pytest.mark.parametrize("name", ['a"b', "a;b", "x'; DROP SCHEMA public CASCADE; --", "", "x" * 1000])
def test_bad_table_names_and_prefixes_are_refused(name: str) -> None:
    from asynctasq.drivers.postgres import PostgresDriver
    from asynctasq.drivers.redis import RedisDriver

    with pytest.raises(ConfigError):
        PostgresDriver(schema=name)
    with pytest.raises(ConfigError):
        PostgresDriver(table=name)
    if name and " " not in name and not any(c in name for c in "{}\n"):
        return  # any other text is a valid Redis key prefix: it is never parsed
    with pytest.raises(ConfigError):
        RedisDriver(prefix=name)


async def test_an_oversized_payload_names_the_limit(driver_factory: Any, queue: str) -> None:
    driver = await driver_factory(max_message_bytes=2048)
    with pytest.raises(MessageTooLarge, match="limit of 2,048 bytes"):
        await sec_echo("y" * 4096).on_queue(queue).dispatch(driver)
    with pytest.raises(MessageTooLarge, match="limit of 2,048 bytes"):
        await driver.enqueue_many([EnqueueItem(queue, b"small"), EnqueueItem(queue, b"z" * 4096)])
    assert await driver.dequeue([queue], 10, wait=0) == [], "half a batch reached the broker"
    await sec_echo("y" * 1000).on_queue(queue).dispatch(driver)  # under the limit: accepted whole
    [got] = await driver.dequeue([queue], 10, wait=5)
    assert Envelope.decode(got.body).args == ["y" * 1000]
    await driver.ack([got])


def run_cli(
    settings: dict[str, Any], *args: str, timeout: float = 90, marks: Path | None = None
) -> subprocess.CompletedProcess[str]:
    from tests.test_chaos import env_of

    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    env |= env_of(settings)
    if marks is not None:
        env["ASYNCTASQ_TEST_MARKS"] = str(marks)
    return subprocess.run(
        [sys.executable, "-m", "asynctasq", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_drivers_pending_the_reliability_suite_are_named_with_what_is_missing() -> None:
    assert set(RELIABILITY_PENDING) <= set(BACKENDS)
    assert all(len(reason) > 20 for reason in RELIABILITY_PENDING.values())
    assert {"memory", "sqlite", "redis", "postgres"} <= set(RELIABILITY_BACKENDS)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", RELIABILITY_BACKENDS)
async def test_an_unreachable_broker_is_one_clear_line_and_a_failure(backend: str) -> None:
    settings = unreachable_config(backend, SECRET)
    if settings is None:
        assert backend == "memory", f"{backend}: give its backend an unreachable_config(secret)"
        pytest.skip("the memory driver has no broker that could be unreachable")
    for args in (
        ["worker", "--burst", "--log-level", "DEBUG"],
        ["dispatch", "tests.cli_tasks.mark", "--import", "tests.cli_tasks", "--args", '["x", 0]'],
        ["info"],
    ):
        proc = await asyncio.to_thread(run_cli, settings, *args)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, (args, output)
        assert "Traceback" not in output, output
        assert SECRET not in output, "a password reached the output"
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, output


@pytest.mark.parametrize("backend", RELIABILITY_BACKENDS)
async def test_passwords_never_show_on_start_up_info_and_failure(
    backend: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On a broker with a password (the private servers of the restart hooks): a worker's
    start-up at DEBUG, ``info``, the driver's repr and describe(), and a failing call."""
    module = backend_module(backend)
    if not hasattr(module, "restartable_broker"):
        assert backend in ("memory", "sqlite"), f"{backend}: give its backend a restartable_broker"
        pytest.skip(f"{backend} takes no password")
    caplog.set_level(logging.DEBUG)
    async with module.restartable_broker(namespace) as broker:
        quick = {broker.reconnect_timeout_option: 2.0} if broker.reconnect_timeout_option else {}
        driver = await broker.make_driver(**quick)
        try:
            assert SECRET not in repr(driver) and SECRET not in driver.describe()
            assert SECRET not in repr(Config(**broker.config))
            await sec_echo("x").dispatch(driver)
            started = await asyncio.to_thread(
                run_cli,
                broker.config,
                "worker",
                "--burst",
                "--log-level",
                "DEBUG",
                "--import",
                "tests.test_security",
            )
            info = await asyncio.to_thread(run_cli, broker.config, "info")
            assert started.returncode == 0 and info.returncode == 0, started.stderr + info.stderr
            for out in (started.stdout + started.stderr, info.stdout + info.stderr):
                assert SECRET not in out, out
            await broker.stop()
            try:
                with pytest.raises(Exception) as failure:
                    await asyncio.wait_for(driver.enqueue("default", b"x"), 30)
            finally:
                await broker.start()
            assert SECRET not in str(failure.value) and SECRET not in repr(failure.value)
        finally:
            await driver.disconnect()
    for record in caplog.records:
        assert SECRET not in record.getMessage(), record.getMessage()


async def test_signing_from_the_environment_across_processes(namespace: str, tmp_path: Path) -> None:
    """ASYNCTASQ_SIGNING_KEY end to end: `dispatch` signs, a `worker` with the key runs it, a
    worker with another key refuses it into the failed registry (sqlite: driver-independent)."""
    from tests.backends import cleanup, driver_config, make_driver

    settings = driver_config("sqlite", namespace)
    marks = tmp_path / "marks.txt"

    def cli(key: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli({**settings, "signing_key": key}, *args, "--import", "tests.cli_tasks", marks=marks)

    dispatch = ["dispatch", "tests.cli_tasks.mark", "--args"]
    assert cli(KEY, *dispatch, '["good", 0]').returncode == 0
    assert cli(KEY, *dispatch, '["refused", 0]').returncode == 0
    first = cli(KEY, "worker", "--burst", "--max-tasks", "1")
    assert first.returncode == 0, first.stderr
    second = cli(OTHER_KEY, "worker", "--burst")
    assert second.returncode == 0, second.stderr
    assert marks.read_text().split() == ["good"]
    assert KEY not in first.stderr + second.stderr and OTHER_KEY not in second.stderr
    driver = await make_driver("sqlite", namespace)
    try:
        [entry] = await driver.failed_list()
        assert "bad signature" in entry["error"]
    finally:
        await driver.disconnect()
        await cleanup("sqlite", namespace)
