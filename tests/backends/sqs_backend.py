"""The SQS backend: moto's standalone server (``moto[server]``), started once per test session
in a subprocess on a free loopback port; each namespace is a queue name prefix of its own.

The driver talks to it through ``endpoint_url`` with its real aioboto3 client, the code path a
user runs against AWS. Set ``ASYNCTASQ_TEST_SQS_ENDPOINT`` to use a server of your own.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

from tests.backends import ServiceUnavailable

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


def start_moto(port: int) -> subprocess.Popen[bytes]:
    """A moto server subprocess on ``port`` (caller stops it)."""
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        raise ServiceUnavailable(f'moto is not installed ({exc}): pip install "moto[server]"') from exc
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
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
