"""AWS SQS driver (aioboto3): long polls, batches of ten, the visibility timeout as the lease.

Layout: one SQS queue per asynctasq queue, named ``<prefix><queue>`` (the prefix is the last
path segment of ``queue_url_prefix``), and ``<prefix><queue>-failed`` as its failed registry,
unless the queue has a redrive policy, whose dead-letter queue then serves. A message body is
the task message in base64; message attributes carry our id (``atq.id``, stable across
retries), a delivery-count offset (``atq.n``) and, for delays over SQS's 900 s, the time the
message is due (``atq.due``).

- The lease is the visibility timeout (``VisibilityTimeout`` on receive, whole seconds rounded
  up), the token is the receipt handle, ``extend`` is ``ChangeMessageVisibilityBatch``; SQS caps
  a message's visibility at 12 hours from its receive, and ``extend`` says so past it.
- ``delivery_count`` is ``ApproximateReceiveCount`` plus ``atq.n``. SQS cannot lower a receive
  count, so a give-back re-publishes the message (send first, delete after) with ``atq.n``
  keeping the deliveries that were lost before it: a give-back costs no attempt. Give-backs
  asked for at the same moment (a stopping worker's running tasks) go in batches of ten.
- Delays: ``DelaySeconds`` up to 900 s; a longer one is sent with 900 s and ``atq.due``, and a
  receive before that time re-sends it with the rest of the delay (chained, never refused).
- Waiting: one long poll (``WaitTimeSeconds``, default 20) per queue runs in the background
  while a ``dequeue`` waits; what it brings is kept for the next ``dequeue`` (its lease ticks:
  a message about to expire is dropped and comes back by itself). An idle worker makes 3
  ``ReceiveMessage`` calls per queue per minute. ``dequeue(wait=0)`` short-polls.
- Round trips per task at steady state: 1/10 ``SendMessageBatch``, 1/10 ``ReceiveMessage``,
  1/10 ``DeleteMessageBatch`` (plus 1/10 ``ChangeMessageVisibilityBatch`` per heartbeat of a
  long task). Queue URLs are resolved once per process.
- Fencing: SQS does not refuse an outdated receipt handle for sure (AWS documents that a
  delete with one may succeed), and moto accepts any old handle, so ``fencing`` is not a
  capability. The driver refuses, on its own side, any ack/extend/release/fail of a delivery
  whose lease ran out by its local clock, or that it acked or gave back already. That clock
  never runs later than SQS's: a short poll's lease counts from before the request; a long
  poll's from its answer, with the visibility asked of SQS 2 s longer than the lease (SQS
  starts it when it hands the message out, and the answer may take that long to be read). A
  worker paused past its lease can thus still delete a copy that another worker holds only if
  SQS takes a stale handle within the moments around expiry: at-least-once, never lost.
- FIFO queues (names ending ``.fifo``): the message group and deduplication id of a dispatch
  (``TaskCall.broker_options``), else the driver's ``message_group_id`` and a deduplication id
  per send; retries and give-backs keep the group (read back on receive). No per-message delay
  there, so a delayed message is hidden by its first receive until due (``atq.n`` = -1 takes
  that receive back).
- No results, worker registry or remote commands (UnsupportedOperation).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

from asynctasq.constants import (
    DEFAULT_LEASE_S,
    DEFAULT_RECONNECT_TIMEOUT_S,
    DEFAULT_SQS_MAX_POOL_CONNECTIONS,
    DEFAULT_SQS_MESSAGE_GROUP_ID,
    DEFAULT_SQS_REGION,
    DEFAULT_SQS_WAIT_TIME_S,
    SQS_ATTRIBUTES_RESERVE_BYTES,
    SQS_FAILED_RETENTION_S,
    SQS_FAILED_SCAN_VISIBILITY_S,
    SQS_MAX_BATCH,
    SQS_MAX_DELAY_S,
    SQS_MAX_MESSAGE_BYTES,
    SQS_MAX_VISIBILITY_S,
    SQS_MAX_WAIT_S,
)
from asynctasq.drivers._reconnect import Reconnect, one_line
from asynctasq.drivers._wait import Waiter
from asynctasq.drivers.base import (
    BaseDriver,
    BrokerOptions,
    Delivery,
    EnqueueItem,
    FailedEntry,
    QueueStats,
)
from asynctasq.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    DriverNotAvailable,
    InvalidQueueName,
    UnsupportedOperation,
)
from asynctasq.utils.urls import redact_url

try:
    import aioboto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import (
        ClientError,
        HTTPClientError,
        NoCredentialsError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise DriverNotAvailable(f'the sqs driver needs {exc.name}: pip install "asynctasq[sqs]"') from None

log = logging.getLogger("asynctasq.drivers.sqs")
for _name in ("botocore", "aiobotocore", "boto3", "aioboto3"):
    # botocore's DEBUG output is every request's events, headers and signature, and a traceback
    # for each failed connection: a worker at --log-level DEBUG keeps to its own lines unless
    # the application set these loggers' levels itself
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.INFO)

_ID, _OFFSET, _DUE = "atq.id", "atq.n", "atq.due"
_ORIGIN, _ERROR, _FAILED_AT, _GROUP = "atq.queue", "atq.error", "atq.at", "atq.group"
_SQS_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,75}(\.fifo)?\Z")
_FIFO = ".fifo"
_FAILED_SUFFIX = "-failed"
_GROUP_ID_RE = re.compile(r"[!-~]{1,128}\Z")
_MISSING_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
_LONG_POLL_MARGIN_S = 2
"""Seconds a long poll's messages stay invisible beyond the lease: SQS starts their visibility
when it hands them out, somewhere in the poll, and the driver's own lease starts when the
answer is read; this covers the answer's way back (a loaded server, a busy event loop)."""
_RECEIVE_SLACK_S = 0.25
"""How long before the answer is read a long poll's messages are taken to have been received."""
_CONNECT_TIMEOUT_S = 3
_TRANSIENT_CODES = frozenset(
    {"ThrottlingException", "RequestThrottled", "Throttling", "ServiceUnavailable", "InternalError",
     "InternalFailure", "RequestTimeout"}
)  # fmt: skip
"""SQS's answers that mean "try again": retried with the reconnect policy, like a lost connection."""
_CREDENTIAL_CODES = frozenset(
    {"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException", "ExpiredToken",
     "InvalidAccessKeyId", "MissingAuthenticationToken"}
)  # fmt: skip
_ERROR_MAX_BYTES = 8192
_NOT_SQS_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters SQS refuses in a message attribute."""
_FAILED_SCAN_MAX = 100_000
_SYSTEM_ATTRIBUTES = ["ApproximateReceiveCount"]
_FIFO_SYSTEM_ATTRIBUTES = ["ApproximateReceiveCount", "MessageGroupId"]


@dataclass(slots=True)
class _Lease:
    url: str
    deadline: float
    """Monotonic end of the lease as this process counts it (never later than SQS's)."""
    received: float
    """Monotonic time of the receive, for SQS's 12-hour visibility cap."""
    group: str | None = None
    """The message group of a FIFO queue's message: its re-sends (retry, give-back) keep it."""


def _attr(value: str, data_type: str = "String") -> dict[str, str]:
    return {"DataType": data_type, "StringValue": value}


def _attr_value(msg: dict[str, Any], name: str) -> str | None:
    attr = msg.get("MessageAttributes", {}).get(name)
    return None if attr is None else str(attr.get("StringValue"))


def _decode_body(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):  # not one of ours: hand it over as it is
        return text.encode()


def _entry_size(entry: dict[str, Any]) -> int:
    size = len(entry["MessageBody"])
    for name, attr in entry.get("MessageAttributes", {}).items():
        size += len(name) + len(attr["DataType"]) + len(attr["StringValue"].encode())
    return size


def _chunks(items: Sequence[Any], size: int = SQS_MAX_BATCH) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _MissingQueue(BrokerError):
    pass


class _BadCredentials(BrokerError):
    pass


class _Transient(Exception):
    """SQS throttled the call or failed on its side: worth repeating (one line, no secret)."""


class SQSDriver(BaseDriver):
    """Arguments: ``region``, ``queue_url_prefix`` (``https://sqs.REGION.amazonaws.com/ACCOUNT/``,
    optionally followed by a queue name prefix), ``endpoint_url`` (moto, LocalStack),
    ``aws_access_key_id`` / ``aws_secret_access_key`` (default: the AWS credential chain),
    ``create_queues`` (create missing queues and failed queues on first use), ``message_group_id``
    (of the messages sent to FIFO queues, names ending ``.fifo``, whose dispatch names none),
    ``wait_time_seconds`` (long poll, 1-20), ``max_pool_connections``, ``reconnect_timeout``,
    plus ``lease_seconds`` and ``max_message_bytes`` (raw task-message bytes; base64 must fit
    SQS's 1 MiB)."""

    name = "sqs"
    signals_persist = True  # the long poll in flight stays out after a dequeue returns
    capabilities: ClassVar[frozenset[str]] = frozenset({"stats", "purge", "failed"})
    broker_options: ClassVar[frozenset[str]] = frozenset({"message_group_id", "deduplication_id"})
    default_max_message_bytes: ClassVar[int] = (SQS_MAX_MESSAGE_BYTES - SQS_ATTRIBUTES_RESERVE_BYTES) * 3 // 4

    def __init__(
        self,
        *,
        region: str = DEFAULT_SQS_REGION,
        queue_url_prefix: str | None = None,
        endpoint_url: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        create_queues: bool = False,
        message_group_id: str = DEFAULT_SQS_MESSAGE_GROUP_ID,
        wait_time_seconds: int = DEFAULT_SQS_WAIT_TIME_S,
        max_pool_connections: int = DEFAULT_SQS_MAX_POOL_CONNECTIONS,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT_S,
        lease_seconds: float = DEFAULT_LEASE_S,
        max_message_bytes: int | None = None,
    ) -> None:
        super().__init__(lease_seconds=lease_seconds, max_message_bytes=max_message_bytes)
        if not 1 <= int(wait_time_seconds) <= SQS_MAX_WAIT_S:
            raise ConfigError(f"wait_time_seconds must be 1-{SQS_MAX_WAIT_S} (SQS's long-poll range)")
        if self.lease_seconds > SQS_MAX_VISIBILITY_S:
            raise ConfigError(f"lease_seconds must be at most {SQS_MAX_VISIBILITY_S} (SQS's 12-hour cap)")
        largest = SQSDriver.default_max_message_bytes
        if self.max_message_bytes > largest:
            raise ConfigError(
                f"max_message_bytes must be at most {largest:,} with SQS: its 1 MiB limit holds the "
                "base64 body and the attributes"
            )
        self.region = region or DEFAULT_SQS_REGION
        self.queue_url_prefix = queue_url_prefix
        self.endpoint_url = endpoint_url
        self.create_queues = bool(create_queues)
        if not _GROUP_ID_RE.match(message_group_id):
            raise ConfigError("message_group_id must be 1-128 printable ASCII characters without spaces")
        self.message_group_id = message_group_id
        self.wait_time_seconds = int(wait_time_seconds)
        self.max_pool_connections = int(max_pool_connections)
        self._key_id = aws_access_key_id
        self._secret = aws_secret_access_key
        self._name_prefix, self._account = self._parse_prefix(queue_url_prefix)
        self._visibility = max(1, math.ceil(self.lease_seconds))
        self._reached = False
        """Whether SQS has answered this driver: until then a connection error is reported at
        once (an endpoint that was never reachable), after it the reconnect policy applies."""
        where = f"SQS at {redact_url(endpoint_url)}" if endpoint_url else f"SQS in {self.region}"
        self._reconnect = Reconnect(
            where,
            "check the network and --sqs-region / --sqs-endpoint-url",
            (HTTPClientError, BotoConnectionError, _Transient),
            timeout_s=reconnect_timeout,
            secret=aws_secret_access_key,
        )
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._urls: dict[str, str] = {}
        self._failed_urls: dict[str, str] = {}
        self._failed_origin: dict[str, str] = {}
        self._leases: dict[str, _Lease] = {}
        self._buffers: dict[str, deque[Delivery]] = {}
        self._polls: dict[str, asyncio.Task[None]] = {}
        self._poll_size = 1
        self._demand: dict[str, float] = {}
        self._give_backs: list[tuple[Delivery, asyncio.Future[bool]]] = []
        self._closing = False

    @staticmethod
    def _parse_prefix(prefix: str | None) -> tuple[str, str | None]:
        if not prefix:
            return "", None
        path = urlsplit(prefix).path.split("/")
        account = path[1] if len(path) > 1 and path[1].isdigit() else None
        return path[-1] if len(path) > 2 else "", account

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        """``sqs://[KEY_ID:SECRET@]REGION/?queue_url_prefix=...&endpoint_url=...&create_queues=1
        &wait_time_seconds=20``; every part optional (``sqs://`` is the default region and the
        AWS credential chain)."""
        parts = urlsplit(url)
        options: dict[str, Any] = {}
        if parts.hostname:
            options["region"] = parts.hostname
        if parts.username:
            options["aws_access_key_id"] = unquote(parts.username)
        if parts.password:
            options["aws_secret_access_key"] = unquote(parts.password)
        for key, values in parse_qs(parts.query).items():
            value = values[-1]
            if key in ("queue_url_prefix", "endpoint_url", "message_group_id"):
                options[key] = value
            elif key == "create_queues":
                options[key] = value.lower() in ("1", "true", "yes", "on")
            elif key in ("wait_time_seconds", "max_pool_connections"):
                options[key] = int(value)
            elif key in ("lease_seconds", "reconnect_timeout"):
                options[key] = float(value)
            else:
                raise ConfigError(
                    f"unknown sqs:// URL option {key!r}: use queue_url_prefix, endpoint_url, "
                    "create_queues, message_group_id, wait_time_seconds, max_pool_connections, lease_seconds"
                )
        return options

    def describe(self) -> str:
        where = redact_url(self.endpoint_url) if self.endpoint_url else self.region
        prefix = f" {self.queue_url_prefix}" if self.queue_url_prefix else ""
        return f"sqs:{where}{prefix}"

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._client is not None:
            return
        self._closing = False
        session = aioboto3.Session(
            aws_access_key_id=self._key_id,
            aws_secret_access_key=self._secret,
            region_name=self.region,
        )
        # one attempt per call: lost connections and throttling are retried by self._reconnect,
        # which resumes within RECONNECT_MAX_DELAY_S of the endpoint's return and gives up after
        # reconnect_timeout (botocore's own backoff would add up to seconds to both)
        config = BotoConfig(
            connect_timeout=_CONNECT_TIMEOUT_S,
            read_timeout=self.wait_time_seconds + 15,
            max_pool_connections=self.max_pool_connections,
            retries={"total_max_attempts": 1, "mode": "standard"},
        )
        stack = AsyncExitStack()
        self._client = await stack.enter_async_context(
            session.client("sqs", endpoint_url=self.endpoint_url, config=config)
        )
        self._stack = stack
        try:
            await self._probe()
        except BaseException:
            self._stack, self._client = None, None
            await stack.aclose()
            raise

    async def _probe(self) -> None:
        """One ``ListQueues`` call: an endpoint that cannot be reached, or credentials SQS does
        not know, fail ``connect()`` in one line (as a database driver's would), not the first
        dispatch after a minute of retries. Any other answer, AccessDenied included, shows SQS
        is there (the driver needs no ListQueues permission)."""
        try:
            params: dict[str, Any] = {"MaxResults": 1}
            if self._name_prefix:
                params["QueueNamePrefix"] = self._name_prefix
            await self._call("list_queues", **params)
        except (BrokerUnavailable, _BadCredentials):
            raise
        except BrokerError:
            pass  # SQS answered: not allowed to list queues, which the driver needs not
        self._reached = True

    async def disconnect(self) -> None:
        if self._client is None:
            return
        self._closing = True
        self.hub.wake_all()  # blocked dequeues find it closed
        await self._settle_background()  # give-backs in flight
        polls = list(self._polls.values())
        self._polls.clear()
        for poll in polls:
            poll.cancel()
        for poll in polls:
            with suppress(BaseException):
                await poll
        buffered = [d for q in self._buffers.values() for d in q]
        self._buffers.clear()
        if buffered:
            try:
                await self._give_back(buffered)
            except Exception as exc:  # noqa: BLE001 - they come back when their lease expires
                log.warning("could not give back %d prefetched message(s): %s", len(buffered), exc)
        stack, self._stack, self._client = self._stack, None, None
        self._leases.clear()
        if stack is not None:
            await stack.aclose()

    # -- calls -----------------------------------------------------------------------------

    def _require_client(self) -> Any:
        if self._client is None:
            raise BrokerError("the sqs driver is not connected: call `await driver.connect()` first")
        return self._client

    async def _call(self, op: str, *, retry: bool = True, **params: Any) -> dict[str, Any]:
        """One SQS call; with ``retry``, repeated through an outage by the reconnect policy (once
        SQS has answered this driver: an endpoint never reached fails at once)."""
        method: Callable[..., Awaitable[dict[str, Any]]] = getattr(self._require_client(), op)

        async def once() -> dict[str, Any]:
            try:
                return await method(**params)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
                if error.get("Code") in _TRANSIENT_CODES or status >= 500:
                    raise _Transient(f"{error.get('Code', status)}: {error.get('Message', '')}") from None
                raise

        try:
            try:
                result = await self._attempt(once, retry)
            except ClientError as exc:
                error = self._client_error(exc, op, params.get("QueueUrl"))
                if not isinstance(error, _MissingQueue) or "QueueUrl" not in params:
                    raise error from None
                if not self.create_queues:
                    self._forget_url(str(params["QueueUrl"]))
                    raise error from None
                # the queue went away (deleted, or a test server restarted): create it, retry once
                params["QueueUrl"] = await self._recreate(str(params["QueueUrl"]))
                result = await self._attempt(once, retry)
        except ClientError as exc:
            raise self._client_error(exc, op, params.get("QueueUrl")) from None
        except NoCredentialsError:
            raise _BadCredentials(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile "
                "(AWS_PROFILE), an instance role, or --aws-access-key-id/--aws-secret-access-key"
            ) from None
        self._reached = True
        return result

    async def _attempt(self, once: Callable[[], Awaitable[dict[str, Any]]], retry: bool) -> dict[str, Any]:
        if retry and self._reached:
            return await self._reconnect.run(once)
        try:
            return await once()
        except self._reconnect.retryable as exc:
            if self._reached:
                raise  # a background call: its caller tries again later
            raise self._reconnect.unavailable(exc) from None

    def _forget_url(self, url: str) -> None:
        for cache in (self._urls, self._failed_urls):
            for queue in [q for q, cached in cache.items() if cached == url]:
                del cache[queue]

    async def _recreate(self, url: str) -> str:
        name = url.rstrip("/").rsplit("/", 1)[-1]
        log.warning("SQS queue %s is gone; creating it again", name)
        result = await self._call("create_queue", QueueName=name, Attributes=self._queue_attributes(name))
        new_url = str(result["QueueUrl"])
        for cache in (self._urls, self._failed_urls):
            for queue in [q for q, cached in cache.items() if cached == url]:
                cache[queue] = new_url
        return new_url

    def _client_error(self, exc: ClientError, op: str, url: str | None) -> BrokerError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "?"))
        message = one_line(Exception(error.get("Message", "")), self._secret)
        if code in _MISSING_QUEUE_CODES:
            return _MissingQueue(
                f"SQS queue {url or '?'} does not exist: create it, or turn on --sqs-create-queues"
            )
        if code in _CREDENTIAL_CODES:
            return _BadCredentials(
                f"SQS does not accept the AWS credentials ({code}: {message}): check the access key "
                "and secret (or the profile, role or environment they come from)"
            )
        if code in ("AccessDenied", "AccessDeniedException"):
            return BrokerError(
                f"SQS refused {op} ({code}: {message}): check the credentials and that the IAM policy "
                "allows it (docs/drivers/sqs.md)"
            )
        return BrokerError(f"SQS {op} failed ({code}: {message})")

    # -- queue names and URLs --------------------------------------------------------------

    def _sqs_name(self, queue: str, suffix: str = "") -> str:
        """``<prefix><queue><suffix>``; a FIFO queue keeps ``.fifo`` last (``x-failed.fifo``)."""
        fifo = queue.endswith(_FIFO)
        base = queue[: -len(_FIFO)] if fifo else queue
        name = self._name_prefix + base + suffix + (_FIFO if fifo else "")
        if not _SQS_NAME_RE.match(name):
            raise InvalidQueueName(
                f"queue {queue!r} cannot be an SQS queue: SQS names ({name!r} with the prefix and any "
                f"{_FAILED_SUFFIX!r} suffix) take 1-80 letters, digits, - and _, and .fifo at the end"
            )
        return name

    @staticmethod
    def _queue_attributes(name: str, failed: bool = False) -> dict[str, str]:
        """What a queue the driver creates gets: 1 MiB messages; FIFO by name; 14 days for failed."""
        attrs = {"MaximumMessageSize": str(SQS_MAX_MESSAGE_BYTES)}
        if name.endswith(_FIFO):
            attrs["FifoQueue"] = "true"
        if failed:
            attrs["MessageRetentionPeriod"] = str(SQS_FAILED_RETENTION_S)
        return attrs

    async def _resolve(self, name: str, attributes: dict[str, str], account: str | None = None) -> str:
        params: dict[str, Any] = {"QueueName": name}
        owner = account or self._account
        if owner:
            params["QueueOwnerAWSAccountId"] = owner
        try:
            return str((await self._call("get_queue_url", **params))["QueueUrl"])
        except _MissingQueue:
            if not self.create_queues:
                raise _MissingQueue(
                    f"SQS queue {name!r} does not exist: create it (docs/drivers/sqs.md), or turn on "
                    "--sqs-create-queues / ASYNCTASQ_SQS_CREATE_QUEUES"
                ) from None
        return str((await self._call("create_queue", QueueName=name, Attributes=attributes))["QueueUrl"])

    async def _url(self, queue: str) -> str:
        url = self._urls.get(queue)
        if url is None:
            name = self._sqs_name(queue)
            self._sqs_name(queue, _FAILED_SUFFIX)  # refuse at once a name whose failed queue cannot exist
            url = self._urls[queue] = await self._resolve(name, self._queue_attributes(name))
        return url

    async def _failed_url(self, queue: str) -> str:
        url = self._failed_urls.get(queue)
        if url is None:
            main = await self._url(queue)
            attrs = await self._call("get_queue_attributes", QueueUrl=main, AttributeNames=["RedrivePolicy"])
            policy = attrs.get("Attributes", {}).get("RedrivePolicy")
            if policy:
                arn = str(json.loads(policy)["deadLetterTargetArn"]).split(":")
                url = await self._resolve(arn[-1], {}, arn[4] if len(arn) > 4 else None)
            else:
                name = self._sqs_name(queue, _FAILED_SUFFIX)
                url = await self._resolve(name, self._queue_attributes(name, failed=True))
            self._failed_urls[queue] = url
            self._failed_origin[url] = queue
        return url

    # -- messages --------------------------------------------------------------------------

    def _entry(
        self,
        index: int,
        msg_id: str,
        body: bytes,
        delay: float,
        offset: int = 0,
        extra: dict[str, str] | None = None,
        group: str | None = None,
    ) -> dict[str, Any]:
        attrs = {_ID: _attr(msg_id)}
        if offset > 0:
            attrs[_OFFSET] = _attr(str(offset), "Number")
        seconds = math.ceil(delay) if delay > 0 else 0
        if seconds > SQS_MAX_DELAY_S:
            attrs[_DUE] = _attr(f"{time.time() + delay:.3f}", "Number")
            seconds = SQS_MAX_DELAY_S
        for name, value in (extra or {}).items():
            attrs[name] = _attr(value)
        entry = {
            "Id": str(index),
            "MessageBody": base64.b64encode(body).decode("ascii"),
            "MessageAttributes": attrs,
            "DelaySeconds": seconds,
        }
        if group is not None:
            entry["MessageGroupId"] = group
        return entry

    def _fifo_entry(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A FIFO queue takes no per-message delay: the due time goes in ``atq.due`` and the
        first receive hides the message until then (one receive more: ``atq.n`` takes it back).
        A send without the dispatch's own deduplication id gets one of its own (a retry of the
        same request reuses it, so SQS stores it once)."""
        attrs = entry["MessageAttributes"]
        seconds = entry.pop("DelaySeconds")
        if seconds > 0 and _DUE not in attrs:
            attrs[_DUE] = _attr(f"{time.time() + seconds:.3f}", "Number")
        if _DUE in attrs:
            offset = int(attrs.get(_OFFSET, {}).get("StringValue", 0)) - 1
            attrs[_OFFSET] = _attr(str(offset), "Number")
        entry.setdefault("MessageGroupId", self.message_group_id)
        entry.setdefault("MessageDeduplicationId", uuid.uuid4().hex)
        return entry

    async def _send(self, url: str, entries: Sequence[dict[str, Any]]) -> None:
        """SendMessageBatch in tens (and under 1 MiB a batch), in order; raises if any entry failed."""
        fifo = url.endswith(_FIFO)
        if fifo:
            entries = [self._fifo_entry(e) for e in entries]
        batches: list[list[dict[str, Any]]] = []
        size = 0
        for entry in entries:
            entry_size = _entry_size(entry)
            if not batches or len(batches[-1]) >= SQS_MAX_BATCH or size + entry_size > SQS_MAX_MESSAGE_BYTES:
                batches.append([])
                size = 0
            batches[-1].append(entry)
            size += entry_size
        # one batch after the other: SQS keeps no order across concurrent sends, moto and FIFO
        # queues keep it within one sender, so a big enqueue_many is taken in the order given
        results = [await self._call("send_message_batch", QueueUrl=url, Entries=b) for b in batches]
        for result in results:
            failed = result.get("Failed") or []
            if failed:
                first = failed[0]
                raise BrokerError(
                    f"SQS refused {len(failed)} message(s) sent to {url} ({first.get('Code')}: "
                    f"{first.get('Message')}); the others were stored"
                )

    async def _delete(self, url: str, handles: Sequence[str]) -> set[str]:
        """DeleteMessageBatch in tens; the handles SQS took."""
        done: set[str] = set()

        async def one(batch: Sequence[str]) -> None:
            result = await self._call(
                "delete_message_batch",
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(batch)],
            )
            done.update(batch[int(ok["Id"])] for ok in result.get("Successful", []))

        await asyncio.gather(*(one(batch) for batch in _chunks(handles)))
        return done

    async def _change_visibility(self, url: str, handles: Sequence[str], seconds: Sequence[int]) -> set[str]:
        done: set[str] = set()

        async def one(start: int) -> None:
            batch = handles[start : start + SQS_MAX_BATCH]
            result = await self._call(
                "change_message_visibility_batch",
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": seconds[start + i]}
                    for i, h in enumerate(batch)
                ],
            )
            done.update(batch[int(ok["Id"])] for ok in result.get("Successful", []))
            for bad in result.get("Failed", []):  # acked meanwhile, or lost: the caller says which
                log.debug("SQS would not extend a lease (%s: %s)", bad.get("Code"), bad.get("Message"))

        await asyncio.gather(*(one(i) for i in range(0, len(handles), SQS_MAX_BATCH)))
        return done

    def _held(self, delivery: Delivery) -> _Lease | None:
        lease = self._leases.get(delivery.token)
        if lease is None:
            return None
        if lease.deadline <= time.monotonic():
            del self._leases[delivery.token]  # ran out: SQS may have handed it to someone else
            return None
        return lease

    def _forget_expired(self) -> None:
        if len(self._leases) > 10_000:
            now = time.monotonic()
            for token in [t for t, lease in self._leases.items() if lease.deadline <= now]:
                del self._leases[token]

    # -- contract --------------------------------------------------------------------------

    def check_options(self, queue: str, options: BrokerOptions) -> None:
        """``message_group_id`` and ``deduplication_id`` on FIFO queues only, each 1-128
        letters, digits and punctuation (SQS's rule for both)."""
        super().check_options(queue, options)
        if not queue.endswith(_FIFO):
            names = " and ".join(name for name, _ in options)
            raise UnsupportedOperation(
                f"{names} need an SQS FIFO queue (a name ending .fifo); {queue!r} is a standard "
                "queue: dispatch to a .fifo queue, or drop the option"
            )
        for name, value in options:
            if not _GROUP_ID_RE.match(value):
                raise ConfigError(
                    f"{name} {value[:140]!r} is not one SQS takes: use 1-128 letters, digits and "
                    "punctuation (!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~), no spaces"
                )

    async def _enqueue_many(self, items: Sequence[EnqueueItem]) -> list[str]:
        ids = [uuid.uuid4().hex for _ in items]
        by_queue: dict[str, list[dict[str, Any]]] = {}
        for i, (item, msg_id) in enumerate(zip(items, ids, strict=True)):
            entry = self._entry(i, msg_id, item.body, item.delay)
            for name, value in item.options:  # checked by enqueue: FIFO queues only
                entry["MessageGroupId" if name == "message_group_id" else "MessageDeduplicationId"] = value
            by_queue.setdefault(item.queue, []).append(entry)
        urls = await asyncio.gather(*(self._url(q) for q in by_queue))
        await asyncio.gather(
            *(self._send(url, entries) for url, entries in zip(urls, by_queue.values(), strict=True))
        )
        return ids

    async def _receive(
        self, queue: str, count: int, wait: int, *, background: bool = False
    ) -> tuple[list[Delivery], int]:
        """One ReceiveMessage; the deliveries (chained delays re-sent, not returned) and how
        many messages SQS handed over."""
        url = await self._url(queue)
        fifo = url.endswith(_FIFO)
        margin = _LONG_POLL_MARGIN_S if wait else 0
        visibility = min(SQS_MAX_VISIBILITY_S, self._visibility + margin)
        lease_s = min(self.lease_seconds, visibility - margin)  # SQS's 12-hour cap takes the margin
        sent = time.monotonic()
        result = await self._call(
            "receive_message",
            retry=not background,
            QueueUrl=url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=wait,
            VisibilityTimeout=visibility,
            MessageAttributeNames=["atq.*"],
            MessageSystemAttributeNames=_FIFO_SYSTEM_ATTRIBUTES if fifo else _SYSTEM_ATTRIBUTES,
        )
        arrived = time.monotonic()
        messages = result.get("Messages") or []
        # the local lease never outlasts SQS's visibility: a short poll's messages were received
        # after `sent`; a long poll's anywhere in it, their visibility longer by the margin
        received = max(sent, arrived - _RECEIVE_SLACK_S) if wait else sent
        deliveries: list[Delivery] = []
        chained: list[tuple[dict[str, Any], Delivery]] = []
        now = time.time()
        self._forget_expired()
        if messages and received + lease_s <= arrived + _RECEIVE_SLACK_S:
            log.warning(
                "an SQS answer came %.1fs after its request, past the lease (%ss): its %d message(s) "
                "come back when their visibility ends (counted as lost deliveries)",
                arrived - sent,
                self.lease_seconds,
                len(messages),
            )
            return [], len(messages)
        for msg in messages:
            system = msg.get("Attributes", {})
            count_seen = int(system.get("ApproximateReceiveCount", "1"))
            offset = int(_attr_value(msg, _OFFSET) or 0)
            handle = str(msg["ReceiptHandle"])
            delivery = Delivery(
                _attr_value(msg, _ID) or str(msg["MessageId"]),
                queue,
                _decode_body(str(msg.get("Body", ""))),
                handle,
                max(1, count_seen + offset),
            )
            self._leases[handle] = _Lease(url, received + lease_s, received, system.get("MessageGroupId"))
            due = _attr_value(msg, _DUE)
            if due is not None and float(due) - now > 0.5:
                chained.append((msg, delivery))
            else:
                deliveries.append(delivery)
        if chained:
            await self._chain(url, chained, now)
        return deliveries, len(messages)

    async def _chain(self, url: str, chained: Sequence[tuple[dict[str, Any], Delivery]], now: float) -> None:
        """Re-send long-delayed messages received early with the rest of their delay; on a FIFO
        queue, hide them until they are due instead (keeping their place in their group)."""
        if url.endswith(_FIFO):
            handles = [d.token for _, d in chained]
            hide = [
                min(SQS_MAX_VISIBILITY_S, math.ceil(float(_attr_value(m, _DUE) or now) - now))
                for m, _ in chained
            ]
            await self._change_visibility(url, handles, hide)
            for handle in handles:
                self._leases.pop(handle, None)
            return
        entries = []
        for i, (msg, d) in enumerate(chained):
            due = float(_attr_value(msg, _DUE) or now)
            entries.append(self._entry(i, d.id, d.body, due - now, d.delivery_count - 1))  # not FIFO
        await self._send(url, entries)
        handles = [d.token for _, d in chained]
        await self._delete(url, handles)
        for handle in handles:
            self._leases.pop(handle, None)

    def _take_buffered(self, queue: str, limit: int) -> list[Delivery]:
        buffer = self._buffers.get(queue)
        out: list[Delivery] = []
        margin = min(1.0, self.lease_seconds / 4)
        now = time.monotonic()
        while buffer and len(out) < limit:
            delivery = buffer.popleft()
            lease = self._leases.get(delivery.token)
            if lease is not None and lease.deadline - margin > now:
                out.append(delivery)
            else:  # about to expire: SQS hands it out again, counted
                self._leases.pop(delivery.token, None)
        return out

    async def _claim(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        if self._closing:
            raise BrokerError("the sqs driver was disconnected: call connect() again to use it")
        self._poll_size = min(limit, SQS_MAX_BATCH)
        out: list[Delivery] = []
        for queue in queues:
            out += self._take_buffered(queue, limit - len(out))
            if len(out) >= limit:
                break
            poll = self._polls.get(queue)
            if poll is not None:
                if not poll.done():
                    continue  # its long poll brings what arrives
                del self._polls[queue]
            while len(out) < limit:
                want = min(SQS_MAX_BATCH, limit - len(out))
                got, handed = await self._receive(queue, want, 0)
                out += got
                if handed < want:
                    break
        return out

    async def _pause(self, waiter: Waiter, queues: Sequence[str], left: float) -> None:
        now = time.monotonic()
        for queue in queues:
            self._demand[queue] = now
            poll = self._polls.get(queue)
            if poll is None or poll.done():
                self._polls[queue] = asyncio.get_running_loop().create_task(self._long_poll(queue))
        await waiter.sleep(left)

    async def _long_poll(self, queue: str) -> None:
        """Long polls of ``queue`` back to back while dequeues keep waiting on it and nothing
        is kept for them; ends after a poll that brought messages, failed, or that nobody
        waited through."""
        while True:
            started = time.monotonic()
            try:
                got, _ = await self._receive(queue, self._poll_size, self.wait_time_seconds, background=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next dequeue short-polls and reports it
                log.debug("long poll of %s failed: %s", queue, exc)
                self.wake_queues((queue,))
                return
            if got:
                self._buffers.setdefault(queue, deque()).extend(got)
                self.wake_queues((queue,))
                return
            if self._demand.get(queue, 0.0) <= started:
                return

    async def _ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        by_url: dict[str, list[Delivery]] = {}
        for d in deliveries:
            lease = self._held(d)
            if lease is not None:
                by_url.setdefault(lease.url, []).append(d)
        done: set[str] = set()
        for url, group in by_url.items():
            done |= await self._delete(url, [d.token for d in group])
        for token in done:
            self._leases.pop(token, None)
        return [d for d in deliveries if d.token in done]

    async def _extend(self, deliveries: Sequence[Delivery], seconds: float) -> list[Delivery]:
        """Extends ``deliveries``, and in the same calls the prefetched messages whose lease is
        half gone (a worker with no free slot extends what it holds, so these ride along)."""
        now = time.monotonic()
        wanted = [(d, seconds) for d in deliveries]
        for buffer in self._buffers.values():
            for d in buffer:
                lease = self._leases.get(d.token)
                if lease is not None and lease.deadline - now < self.lease_seconds / 2:
                    wanted.append((d, self.lease_seconds))
        by_url: dict[str, list[tuple[Delivery, int, float]]] = {}
        for d, asked_s in wanted:
            lease = self._held(d)
            if lease is None:
                continue
            room = SQS_MAX_VISIBILITY_S - (now - lease.received)
            if room < 1:
                log.error(
                    "message %s has been leased for 12 hours, SQS's cap: its lease cannot be extended "
                    "and it will be delivered again; split the task or keep it under 12 hours",
                    d.id,
                )
                continue
            by_url.setdefault(lease.url, []).append((d, int(min(max(1, math.ceil(asked_s)), room)), asked_s))
        kept: set[str] = set()
        for url, group in by_url.items():
            asked = time.monotonic()
            ok = await self._change_visibility(url, [d.token for d, _, _ in group], [s for _, s, _ in group])
            for d, s, asked_s in group:
                lease = self._leases.get(d.token)
                if d.token in ok and lease is not None:
                    lease.deadline = asked + min(asked_s, s)
                    kept.add(d.token)
                else:
                    self._leases.pop(d.token, None)
        return [d for d in deliveries if d.token in kept]

    async def _release(self, delivery: Delivery, delay: float, body: bytes | None) -> bool:
        lease = self._held(delivery)
        if lease is None:
            return False
        if body is None and delay == 0:
            return await self._give_back_soon(delivery)
        if body is None:  # give-back: re-publish uncounted, keeping the deliveries lost before
            entry = self._entry(
                0, delivery.id, delivery.body, delay, delivery.delivery_count - 1, group=lease.group
            )
        else:
            entry = self._entry(0, delivery.id, body, delay, group=lease.group)
        await self._send(lease.url, [entry])
        await self._delete(lease.url, [delivery.token])  # only after the send was confirmed
        self._leases.pop(delivery.token, None)
        return True

    async def _unlease(self, deliveries: Sequence[Delivery]) -> None:
        """What a cancelled dequeue had leased: given back in batches (2 calls per 10)."""
        try:
            await self._give_back(deliveries)
        except (BrokerError, OSError) as exc:  # their leases expire instead
            log.warning("could not give back %d message(s) of a cancelled dequeue: %s", len(deliveries), exc)

    async def _give_back_soon(self, delivery: Delivery) -> bool:
        """A give-back, sent with the others asked for at the same moment: a worker stopping
        gives back each of its running tasks from that task, all at once, so they go in
        batches (2 calls per 10 messages instead of 2 each), one loop turn later."""
        done = asyncio.get_running_loop().create_future()
        self._give_backs.append((delivery, done))
        if len(self._give_backs) == 1:
            self._in_background(self._flush_give_backs())
        result: bool = await done
        return result

    async def _flush_give_backs(self) -> None:
        await asyncio.sleep(0)  # the give-backs of this moment join the batch
        batch, self._give_backs = self._give_backs, []
        try:
            given = await self._give_back([d for d, _ in batch])
        except BaseException as exc:
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for d, done in batch:
            if not done.done():
                done.set_result(d.token in given)

    async def _give_back(self, deliveries: Sequence[Delivery]) -> set[str]:
        """Give back many at once: re-publish uncounted, then delete; the tokens given back."""
        by_url: dict[str, list[tuple[Delivery, _Lease]]] = {}
        for d in deliveries:
            lease = self._held(d)
            if lease is not None:
                by_url.setdefault(lease.url, []).append((d, lease))
        for url, held in by_url.items():
            group = [d for d, _ in held]
            await self._send(
                url,
                [
                    self._entry(i, d.id, d.body, 0, d.delivery_count - 1, group=lease.group)
                    for i, (d, lease) in enumerate(held)
                ],
            )
            await self._delete(url, [d.token for d in group])
            for d in group:
                self._leases.pop(d.token, None)
        return {d.token for held in by_url.values() for d, _ in held}

    async def _fail(self, delivery: Delivery, error: str) -> bool:
        lease = self._held(delivery)
        if lease is None:
            return False
        failed_url = await self._failed_url(delivery.queue)
        error = _NOT_SQS_TEXT.sub("?", error.encode()[-_ERROR_MAX_BYTES:].decode(errors="ignore"))
        entry = self._entry(
            0,
            delivery.id,
            delivery.body,
            0,
            extra={
                _ORIGIN: delivery.queue,
                _ERROR: error or "-",
                _FAILED_AT: f"{time.time():.3f}",
                **({_GROUP: lease.group} if lease.group else {}),
            },
        )
        entry["MessageGroupId"] = delivery.id  # a FIFO failed queue: no order to keep, none blocks another
        await self._send(failed_url, [entry])
        await self._delete(lease.url, [delivery.token])
        self._leases.pop(delivery.token, None)
        return True

    # -- optional: stats, purge, failed registry -------------------------------------------

    async def _counts(self, url: str) -> tuple[int, int, int]:
        result = await self._call(
            "get_queue_attributes",
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesDelayed",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        )
        attrs = result.get("Attributes", {})
        return (
            int(attrs.get("ApproximateNumberOfMessages", 0)),
            int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
            int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
        )

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        """From SQS's approximate counts (exact on moto, within a minute or so on AWS)."""

        async def one(queue: str) -> QueueStats:
            ready, delayed, leased = await self._counts(await self._url(queue))
            failed = 0
            try:
                failed = sum(await self._counts(await self._failed_url(queue)))
            except _MissingQueue:  # no failed queue yet (and none may be created): nothing failed
                pass
            return QueueStats(ready=ready, delayed=delayed, leased=leased, failed=failed)

        results = await asyncio.gather(*(one(q) for q in queues))
        return dict(zip(queues, results, strict=True))

    async def purge(self, queue: str) -> int:
        """``PurgeQueue``: SQS allows one a minute per queue and may take that long to finish;
        returns the approximate count before it."""
        url = await self._url(queue)
        count = sum(await self._counts(url))
        await self._call("purge_queue", QueueUrl=url)
        for d in self._buffers.pop(queue, deque()):
            self._leases.pop(d.token, None)
        return count

    async def _failed_queue_urls(self, queue: str | None) -> list[str]:
        if queue is not None:
            return [await self._failed_url(queue)]
        result = await self._call("list_queues", QueueNamePrefix=self._name_prefix, MaxResults=1000)
        urls = []
        for url in result.get("QueueUrls", []):
            name = url.rstrip("/").rsplit("/", 1)[-1]
            fifo = name.endswith(_FIFO)
            base = name[: -len(_FIFO)] if fifo else name
            if base.endswith(_FAILED_SUFFIX):
                urls.append(url)
                origin = base[len(self._name_prefix) : -len(_FAILED_SUFFIX)] + (_FIFO if fifo else "")
                self._failed_origin.setdefault(url, origin)
        return list(dict.fromkeys(urls + list(self._failed_urls.values())))

    async def _scan(self, url: str, limit: int) -> list[tuple[FailedEntry, str, str | None]]:
        """Receive up to ``limit`` failed messages (hidden for a while: put them back after):
        each entry, its receipt handle and the message group it had (FIFO)."""
        found: list[tuple[FailedEntry, str, str | None]] = []
        while len(found) < limit:
            want = min(SQS_MAX_BATCH, limit - len(found))
            result = await self._call(
                "receive_message",
                QueueUrl=url,
                MaxNumberOfMessages=want,
                WaitTimeSeconds=0,
                VisibilityTimeout=SQS_FAILED_SCAN_VISIBILITY_S,
                MessageAttributeNames=["atq.*"],
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            )
            messages = result.get("Messages") or []
            for msg in messages:
                origin = _attr_value(msg, _ORIGIN) or self._failed_origin.get(url, "")
                error = _attr_value(msg, _ERROR) or "moved to this dead-letter queue by SQS's redrive policy"
                at = _attr_value(msg, _FAILED_AT)
                sent_ms = float(msg.get("Attributes", {}).get("SentTimestamp", 0))
                entry = FailedEntry(
                    id=_attr_value(msg, _ID) or str(msg["MessageId"]),
                    queue=origin,
                    body=_decode_body(str(msg.get("Body", ""))),
                    error=error,
                    failed_at=float(at) if at else sent_ms / 1000,
                )
                found.append((entry, str(msg["ReceiptHandle"]), _attr_value(msg, _GROUP)))
            if len(messages) < want:
                break
        return found

    async def _unhide(self, url: str, handles: Sequence[str]) -> None:
        if handles:
            await self._change_visibility(url, handles, [0] * len(handles))

    async def failed_list(self, queue: str | None = None, limit: int = 100) -> list[FailedEntry]:
        """Reads the failed queues by receiving their messages and making them visible again at
        once: two listings running at the same moment may each see part."""
        entries: list[FailedEntry] = []
        for url in await self._failed_queue_urls(queue):
            found = await self._scan(url, limit)
            await self._unhide(url, [h for _, h, _ in found])
            entries += [e for e, _, _ in found if queue is None or e["queue"] == queue]
        return sorted(entries, key=lambda e: e["failed_at"])[:limit]

    async def _failed_apply(self, ids: Iterable[str] | None, queue: str | None, requeue: bool) -> int:
        wanted = None if ids is None else set(ids)
        total = 0
        for url in await self._failed_queue_urls(queue):
            found = await self._scan(url, _FAILED_SCAN_MAX)
            hit = [
                (e, h, g)
                for e, h, g in found
                if (wanted is None or e["id"] in wanted) and (queue is None or e["queue"] == queue)
            ]
            hit_handles = {h for _, h, _ in hit}
            await self._unhide(url, [h for _, h, _ in found if h not in hit_handles])
            if requeue:
                by_queue: dict[str, list[FailedEntry]] = {}
                groups = {e["id"]: g for e, _, g in hit if g}
                for e, _, _ in hit:
                    by_queue.setdefault(e["queue"], []).append(e)
                for origin, group in by_queue.items():
                    await self._send(
                        await self._url(origin),
                        [
                            self._entry(i, e["id"], e["body"], 0, group=groups.get(e["id"]))
                            for i, e in enumerate(group)
                        ],
                    )
                self.wake_queues(by_queue)
            total += len(await self._delete(url, [h for _, h, _ in hit]))
        return total

    async def failed_requeue(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        return await self._failed_apply(ids, queue, requeue=True)

    async def failed_purge(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        return await self._failed_apply(ids, queue, requeue=False)


__all__ = ["SQSDriver"]
