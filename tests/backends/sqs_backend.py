"""The SQS backend: moto's standalone server (``moto[server]``), started once per test session
in a subprocess on a free loopback port; each namespace is a queue name prefix of its own.

The driver talks to it through ``endpoint_url`` with its real aioboto3 client, the code path a
user runs against AWS. Set ``ASYNCTASQ_TEST_SQS_ENDPOINT`` to use a server of your own.

The restart hook of the chaos and security suites (``restartable_broker``) does not restart
moto, which keeps its queues in memory only (a restart would lose every message, for reasons
that are not the driver's): it puts a TCP relay of its own between the drivers and moto and
takes that down, so the endpoint refuses connections and the open ones are cut, as when SQS
cannot be reached, then brings it back on the same port with moto's state intact.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.backends import ServiceUnavailable

ROOT = Path(__file__).resolve().parent.parent.parent
REGION = "us-east-1"
ACCOUNT = "123456789012"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
NO_FALLBACK_POLL: dict[str, Any] = {}
"""The driver has no fallback poll: its long poll is the broker's own signal."""

_lock = threading.Lock()
_server: subprocess.Popen[bytes] | None = None
_endpoint: str | None = os.environ.get("ASYNCTASQ_TEST_SQS_ENDPOINT")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceUnavailable(f"moto_server exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceUnavailable(f"moto_server did not listen on 127.0.0.1:{port} within {timeout}s")


def serve_moto(port: int) -> None:
    """Run moto's server on ``port`` (``python -m tests.backends.sqs_backend PORT``), with two
    fixes to moto 5.2.5 that make it behave as SQS does, not differently.

    Thread safety: moto's server runs each request in a thread of its own, and neither its
    receive nor its delete holds the queue's lock. A receive checks that a message is visible,
    then marks it received, with nothing to stop another thread doing the same in between (the
    delayed storm of the chaos suite saw one message received three times within 34 ms, by
    two workers). A delete builds the queue's list of messages anew without the deleted one
    and stores it: two deletes at once put back each other's message (acked, then delivered
    again with receive count 2 when its visibility ran out: 81 of 5,000 in one storm), and a
    send meanwhile is lost. SQS hands a message to one receiver per visibility timeout and
    keeps what it acknowledged; here each scan of a receive and each delete holds the queue's
    lock (the wait between the scans of a long poll does not).

    Speed: moto checks each message it hands out against
    the queue's retention period by computing every queue attribute, three counts over all
    the queue's messages among them, so a receive costs O(backlog) per message and a backlog
    of thousands takes seconds per ReceiveMessage (the chaos suite's 2,000 and 5,000 tasks
    took minutes). The check reads the retention period directly here, and the SQS models
    read the clock with ``time.time()`` rather than through ``datetime`` (the same Unix time,
    ten times cheaper, and read once per message per scan)."""
    from copy import deepcopy

    import moto.sqs.models as models
    from moto.server import main
    from moto.sqs.exceptions import ReceiptHandleIsInvalid
    from moto.sqs.models import Message, Queue, SQSBackend

    slow_unix_time = models.unix_time

    def unix_time(dt: Any = None) -> float:
        return time.time() if dt is None else float(slow_unix_time(dt))

    def unix_time_millis(dt: Any = None) -> float:
        return unix_time(dt) * 1000.0

    models.unix_time, models.unix_time_millis = unix_time, unix_time_millis

    # the three counts, which every send computes too (it reads one attribute of them all)
    def delayed(self: Queue) -> int:
        now = time.time() * 1000
        return sum(1 for m in self._messages if now < m.delayed_until)

    def not_visible(self: Queue) -> int:
        now = time.time() * 1000
        return sum(1 for m in self._messages if now <= m.visible_at)

    def ready(self: Queue) -> int:
        now = time.time() * 1000
        return sum(1 for m in self._messages if now > m.visible_at and now >= m.delayed_until)

    Queue.approximate_number_of_messages_delayed = property(delayed)  # type: ignore[assignment]
    Queue.approximate_number_of_messages_not_visible = property(not_visible)  # type: ignore[assignment]
    Queue.approximate_number_of_messages = property(ready)  # type: ignore[assignment]

    def retained(self: SQSBackend, queue_name: str, message: Message) -> bool:
        period = int(self.get_queue(queue_name).message_retention_period)
        return bool(period + message.sent_timestamp / 1000 > unix_time())

    SQSBackend.is_message_valid_based_on_retention_period = retained  # type: ignore[method-assign]

    def receive_message(
        self: SQSBackend,
        queue_name: str,
        count: int,
        wait_seconds_timeout: int,
        visibility_timeout: int,
        message_attribute_names: list[str] | None = None,
    ) -> list[Message]:
        # moto 5.2.5's own loop, with each scan under the queue's lock
        names = message_attribute_names or []
        queue = self.get_queue(queue_name)
        result: list[Message] = []
        polling_end = unix_time() + wait_seconds_timeout
        while True:
            with queue._messages_lock:
                pending_groups = deepcopy(queue.pending_message_groups)
                to_dlq: list[Message] = []
                for message in queue.messages:
                    if not message.visible:
                        continue
                    if message in queue.pending_messages:  # visible again: its consumer timed out
                        queue.pending_messages.remove(message)
                        pending_groups = deepcopy(queue.pending_message_groups)
                    if message.group_id and queue.fifo_queue and message.group_id in pending_groups:
                        continue
                    policy = queue.redrive_policy
                    if (
                        queue.dead_letter_queue is not None
                        and policy
                        and message.approximate_receive_count >= policy["maxReceiveCount"]
                    ):
                        to_dlq.append(message)
                        continue
                    queue.pending_messages.add(message)
                    message.mark_received(visibility_timeout=visibility_timeout)
                    copy = deepcopy(message)
                    models._filter_message_attributes(copy, names)
                    if not self.is_message_valid_based_on_retention_period(queue_name, message):
                        break
                    result.append(copy)
                    if len(result) >= count:
                        break
                for message in to_dlq:
                    queue._messages.remove(message)
                    queue.dead_letter_queue.add_message(message)  # type: ignore[union-attr]
            if result or wait_seconds_timeout == 0 or unix_time() > polling_end:
                return result
            queue.wait_for_messages(1)

    SQSBackend.receive_message = receive_message  # type: ignore[method-assign]

    def delete_message(self: Queue, receipt_handle: str) -> None:
        with self._messages_lock:
            if receipt_handle in self.deleted_messages:
                return  # deleted already: SQS takes it again
            doomed = {id(m): m for m in self._messages if m.had_receipt_handle(receipt_handle)}
            if not doomed:
                raise ReceiptHandleIsInvalid()
            for message in doomed.values():
                self.pending_messages.discard(message)
                self.deleted_messages.update(message.all_receipt_handles)
            self._messages = [m for m in self._messages if id(m) not in doomed]

    Queue.delete_message = delete_message  # type: ignore[method-assign]
    main(["-H", "127.0.0.1", "-p", str(port)])


def start_moto(port: int) -> subprocess.Popen[bytes]:
    """A moto server subprocess on ``port`` (caller stops it)."""
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        raise ServiceUnavailable(f'moto is not installed ({exc}): pip install "moto[server]"') from exc
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.backends.sqs_backend", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, proc)
    except ServiceUnavailable:
        proc.kill()
        raise
    return proc


def _stop() -> None:
    if _server is not None and _server.poll() is None:
        _server.terminate()
        try:
            _server.wait(10)
        except subprocess.TimeoutExpired:
            _server.kill()


def endpoint() -> str:
    """The session's moto server, started on first use."""
    global _server, _endpoint
    with _lock:
        if _endpoint is None:
            port = free_port()
            _server = start_moto(port)
            atexit.register(_stop)
            _endpoint = f"http://127.0.0.1:{port}"
        return _endpoint


def options(namespace: str) -> dict[str, Any]:
    url = endpoint()
    return {
        "region": REGION,
        "endpoint_url": url,
        "queue_url_prefix": f"{url}/{ACCOUNT}/{namespace}-",
        "create_queues": True,
        **CREDENTIALS,
    }


async def make_driver(namespace: str, **extra: Any) -> Any:
    try:
        from asynctasq.drivers.sqs import SQSDriver
    except ImportError as exc:
        raise ServiceUnavailable(f"aioboto3 is not installed: {exc}") from exc
    driver = SQSDriver(**{**options(namespace), **extra})
    await driver.connect()
    return driver


async def cleanup(namespace: str) -> None:
    """Delete every queue of ``namespace``."""
    import aioboto3

    session = aioboto3.Session(region_name=REGION, **CREDENTIALS)
    async with session.client("sqs", endpoint_url=endpoint()) as client:
        found = await client.list_queues(QueueNamePrefix=f"{namespace}-", MaxResults=1000)
        for url in found.get("QueueUrls", []):
            await client.delete_queue(QueueUrl=url)


def driver_config(namespace: str) -> dict[str, Any]:
    opts = options(namespace)
    return {
        "driver": "sqs",
        "sqs_region": opts["region"],
        "sqs_endpoint_url": opts["endpoint_url"],
        "sqs_queue_url_prefix": opts["queue_url_prefix"],
        "sqs_create_queues": True,
        **CREDENTIALS,
    }


def count_calls(driver: Any) -> Counter[str]:
    """A counter of the SQS API calls ``driver`` makes from now on, by operation name (an
    event hook on its aiobotocore client: every request the broker would bill)."""
    calls: Counter[str] = Counter()

    def before_call(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    driver._client.meta.events.register("before-call.sqs", before_call)
    return calls


def unreachable_config(secret: str) -> dict[str, Any]:
    """No SQS endpoint listens on the port; ``secret`` is the AWS secret key."""
    url = f"http://127.0.0.1:{free_port()}"
    return {
        "driver": "sqs",
        "sqs_region": REGION,
        "sqs_endpoint_url": url,
        "sqs_queue_url_prefix": f"{url}/{ACCOUNT}/",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": secret,
    }


if __name__ == "__main__":
    serve_moto(int(sys.argv[1]))


# -- hooks of the chaos and security suites (tests/test_chaos.py, tests/test_security.py) ----


class Relay:
    """A TCP relay on a loopback port of its own to the session's moto server, in a thread with
    its own event loop (so a test's blocking moments do not stall the workers' traffic).
    ``stop()`` closes the port and cuts every open connection; ``start()`` listens again.
    ``answer_delay_s`` holds back what moto sends (a slow way back from the server)."""

    def __init__(self, target_port: int, answer_delay_s: float = 0.0) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.answer_delay_s = answer_delay_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sqs-relay", daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float = 0.0
    ) -> None:
        """Copy ``reader`` to ``writer``, each chunk ``delay_s`` after it came (not one after the
        other: an answer in several chunks is late by ``delay_s`` as a whole)."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, data = await chunks.get()
                if not data:
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(data)
                await writer.drain()

        forwarding = asyncio.ensure_future(forward())
        try:
            while data := await reader.read(65536):
                chunks.put_nowait((loop.time() + delay_s, data))
            chunks.put_nowait((0.0, b""))
            await forwarding
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            forwarding.cancel()
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer, self.answer_delay_s)
            )
        finally:
            self._open -= {writer, up_writer}

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._client, "127.0.0.1", self.port, reuse_address=True
            )

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            for writer in list(self._open):
                writer.transport.abort()  # the clients see a reset, as when SQS goes away
            await server.wait_closed()

    async def _in_thread(self, make: Any) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(make(), self._loop))

    async def start(self) -> None:
        await self._in_thread(self._listen)

    async def stop(self) -> None:
        await self._in_thread(self._close)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


RESUME_BOUND_S = 45.0
"""A long poll that was in flight through the relay when it stopped can hang until botocore's
read timeout (the long poll plus 15 s) before the worker reconnects; usually work resumes in
0.1-0.5 s (docs/reliability.md). CI once saw more than 10 s under load."""


@contextlib.asynccontextmanager
async def restartable_broker(namespace: str) -> AsyncIterator[Any]:
    """The session's moto server behind a :class:`Relay` the test stops and starts; the AWS
    secret key is the suite's SECRET (moto takes any), so it must never show."""
    from urllib.parse import urlsplit

    from tests.chaos_brokers import SECRET, Restartable

    target = urlsplit(endpoint()).port
    if target is None:
        raise ServiceUnavailable(f"the SQS test endpoint {endpoint()} names no port")
    relay = Relay(target)
    try:
        await relay.start()
        url = relay.url
        prefix = f"{url}/{ACCOUNT}/{namespace}-"
        keys = {"aws_access_key_id": "testing", "aws_secret_access_key": SECRET}

        async def make(**options: Any) -> Any:
            from asynctasq.drivers.sqs import SQSDriver

            driver = SQSDriver(
                region=REGION, endpoint_url=url, queue_url_prefix=prefix, create_queues=True, **keys,
                **options,
            )  # fmt: skip
            await driver.connect()
            return driver

        config = {
            "driver": "sqs",
            "sqs_region": REGION,
            "sqs_endpoint_url": url,
            "sqs_queue_url_prefix": prefix,
            "sqs_create_queues": True,
            **keys,
        }
        yield Restartable(config, make, relay.stop, relay.start, SECRET, "reconnect_timeout")
    finally:
        await asyncio.to_thread(relay.close)
        await cleanup(namespace)
