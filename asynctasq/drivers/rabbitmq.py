"""RabbitMQ driver: consumers with per-consumer prefetch, publisher confirms, TTL delay queues.

::

    driver = RabbitMQDriver(url="amqp://guest:guest@localhost:5672/", prefix="myapp")
    async with driver:
        await driver.enqueue("default", b"...")

Layout under prefix ``p`` (``/`` never appears in a queue name, so nothing collides):

- ``p/q/<queue>``  the work queue of ``<queue>``: durable, quorum by default (classic as an
  option), persistent messages; it dead-letters into ``p/failed`` when the broker gives up on a
  message (a quorum delivery limit).
- ``p/failed``  the failed registry of the namespace (the original queue, the error and the
  time travel in headers).
- ``p/deliver``  a topic exchange binding every work queue under ``*.*...*.<queue>``.
- ``p/delay/<queue>/<i>``  an exchange and a queue per level ``i`` of the queue's delay ladder:
  the queue holds each message for exactly ``2**i`` ms (queue TTL, so it expires strictly in
  order) and dead-letters into the exchange of level ``i - 1``; levels are declared from 0 up, so
  ``stats`` and ``purge`` find them with passive declares. A delayed message's routing key spells its
  delay in binary, ``<bit 31>.<bit 30>...<bit 0>.<queue>``; each exchange sends it into its
  level's queue when its bit is 1 and on to the next level when it is 0, and the last one into
  ``p/deliver``. Nothing polls, nothing is held unacked in a worker, and a delay costs one hop
  per set bit (delays keep their 8 most significant bits: within 0.4%). Delays over
  ``2**32`` ms (49 days) carry their due time and go round the ladder again.

A message's id is its ``message_id``; the header ``x-asynctasq-count`` carries the deliveries it
had before it was last re-published (a give-back re-publishes it uncounted), added to the
quorum queue's own ``x-delivery-count`` (classic queues only tell ``redelivered``).

A driver holds two connections: aiormq's, with a channel with publisher confirms for every
publish and one for declares, and :class:`ConsumerConnection` for the consumers and their acks
(it parses deliveries itself: the worker's hot path). ``dequeue`` starts a consumer
(``basic.consume``) on each queue it names, once, with a prefetch that grows to the worker's
free slots plus what it holds; deliveries are buffered from the consumer callback and handed
out in queue order, and a blocked ``dequeue`` sleeps until one arrives. A lease is the unacked
delivery, its token the connection's epoch and the delivery tag: after a reconnect no old
token matches, so a stale ack never reaches the broker (whose channel would refuse it anyway).
A lease not extended for ``lease_seconds`` is put back by the driver itself (``basic.reject``
with requeue: counted, one frame). A process that cannot do even that (SIGSTOP) loses its
consumer connection to the heartbeat (``lease_seconds / 2``), and the broker requeues its
deliveries. Deliveries pushed into a consumer's buffer that nobody takes within
``prefetch_hold_s`` go back (re-published uncounted) and that consumer stops until the next
``dequeue``.
Round trips: enqueue and enqueue_many 1 (publishes pipelined, confirms awaited together), ack
none (one ``basic.ack`` frame per batch where the tags allow, with ``multiple``), dequeue none
while deliveries stream in, release and fail 1 (publish-confirm, then the ack frame).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from asynctasq.constants import (
    DEFAULT_LEASE_S,
    DEFAULT_RABBITMQ_CONNECT_TIMEOUT_S,
    DEFAULT_RABBITMQ_MAX_MESSAGE_BYTES,
    DEFAULT_RABBITMQ_PREFETCH_HOLD_S,
    DEFAULT_RABBITMQ_PREFIX,
    DEFAULT_RABBITMQ_QUEUE_TYPE,
    DEFAULT_RABBITMQ_URL,
    DEFAULT_RECONNECT_TIMEOUT_S,
    RABBITMQ_FAILED_DELIVERY_LIMIT,
    RABBITMQ_GIVE_BACK_TIMEOUT_S,
    RABBITMQ_SETTLE_S,
)
from asynctasq.drivers._amqp import ConsumerConnection, Msg
from asynctasq.drivers._reconnect import Reconnect, log, one_line
from asynctasq.drivers._wait import Waiter, queue_key
from asynctasq.drivers.base import (
    BaseDriver,
    Delivery,
    EnqueueItem,
    FailedEntry,
    QueueStats,
    validate_queue_name,
)
from asynctasq.errors import BrokerError, DriverNotAvailable, SchemaError
from asynctasq.utils.urls import redact_url

try:
    import aiormq
    import aiormq.exceptions as amqp_errors
    from aiormq.abc import DeliveredMessage
    from pamqp import commands as spec

    from asynctasq.drivers._amqp import ConsumerConnection, Msg
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise DriverNotAvailable('the rabbitmq driver needs aio-pika: pip install "asynctasq[rabbitmq]"') from exc

for _name in ("aiormq.connection", "aiormq.channel"):
    # aiormq logs every failed connect and a traceback per lost connection; the driver logs
    # one line per outage itself (drivers/_reconnect.py). A level set by the user is kept.
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.CRITICAL)

QUEUE_TYPES = ("auto", "quorum", "classic")
DELAY_LEVELS = 32
"""Levels of the delay ladder: delays up to 2**32 ms in one pass."""
DELAY_BITS_KEPT = 8
COUNT_HEADER = "x-asynctasq-count"
DUE_HEADER = "x-asynctasq-due"
QUEUE_HEADER = "x-asynctasq-queue"
ERROR_HEADER = "x-asynctasq-error"
FAILED_AT_HEADER = "x-asynctasq-failed-at"
PERSISTENT = 2
_RETRYABLE: tuple[type[BaseException], ...] = (
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    amqp_errors.AMQPConnectionError,
    amqp_errors.ChannelInvalidStateError,
    amqp_errors.ChannelClosed,
)
_REFUSED = (amqp_errors.ProbableAuthenticationError, amqp_errors.AuthenticationError)
_epochs = itertools.count(1)
_instances = itertools.count(1)


def delay_bits(delay_s: float) -> int:
    """The delay in ms that the ladder applies for ``delay_s``: at least 1 ms, rounded up to
    its ``DELAY_BITS_KEPT`` most significant bits, at most ``2**DELAY_LEVELS - 1``."""
    ms = max(math.ceil(delay_s * 1000), 1)
    shift = max(ms.bit_length() - DELAY_BITS_KEPT, 0)
    ms = -(-ms >> shift) << shift
    return min(ms, (1 << DELAY_LEVELS) - 1)


def delay_routing_key(ms: int, queue: str) -> str:
    bits = ".".join("1" if ms >> i & 1 else "0" for i in range(DELAY_LEVELS - 1, -1, -1))
    return f"{bits}.{queue}"


def _from_aiormq(message: DeliveredMessage) -> Msg:
    props = message.header.properties
    return Msg(
        int(getattr(message.delivery, "delivery_tag", 0) or 0),
        str(getattr(message.delivery, "consumer_tag", "") or ""),
        bool(getattr(message.delivery, "redelivered", False)),
        props.message_id,
        dict(props.headers or {}),
        bytes(message.body),
    )


@dataclass(slots=True)
class _Consumer:
    queue: str
    tag: str
    prefetch: int
    buffer: deque[Msg] = field(default_factory=deque)
    expected: int = 0
    """Ready messages the broker reported when the consumer started, not yet arrived."""
    settle_until: float = 0.0
    since: float = 0.0
    """When the buffer was last drawn from or last became non-empty."""


@dataclass(slots=True)
class _Lease:
    delivery: Delivery
    tag: int
    deadline: float
    headers: dict[str, Any]
    consumer: str


class RabbitMQDriver(BaseDriver):
    """Arguments: ``url`` (``amqp://`` or ``amqps://``), ``prefix`` (of every queue and exchange
    name), ``queue_type`` (``auto``: quorum queues, the default; ``quorum``; ``classic``),
    ``prefetch`` (fixed per-consumer prefetch; default: follow the worker's free slots),
    ``consumer_timeout_s`` (the ``x-consumer-timeout`` consumer argument, honoured by RabbitMQ
    3.12 and later; older servers take the ``consumer_timeout`` server setting),
    ``prefetch_hold_s`` (how long prefetched deliveries nobody asks for stay in this driver before
    they go back), ``connect_timeout_s``, ``reconnect_timeout_s``, ``lease_seconds`` (also sets
    the consumer connection's heartbeat to half of it, so that the broker takes back a stopped
    process's deliveries about when their leases end), ``max_message_bytes``."""

    name = "rabbitmq"
    capabilities: ClassVar[frozenset[str]] = frozenset({"stats", "purge", "failed", "fencing"})
    default_max_message_bytes = DEFAULT_RABBITMQ_MAX_MESSAGE_BYTES

    def __init__(
        self,
        *,
        url: str = DEFAULT_RABBITMQ_URL,
        prefix: str = DEFAULT_RABBITMQ_PREFIX,
        queue_type: str = DEFAULT_RABBITMQ_QUEUE_TYPE,
        prefetch: int | None = None,
        consumer_timeout_s: float | None = None,
        prefetch_hold_s: float = DEFAULT_RABBITMQ_PREFETCH_HOLD_S,
        connect_timeout_s: float = DEFAULT_RABBITMQ_CONNECT_TIMEOUT_S,
        reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S,
        lease_seconds: float = DEFAULT_LEASE_S,
        max_message_bytes: int | None = None,
    ) -> None:
        super().__init__(lease_seconds=lease_seconds, max_message_bytes=max_message_bytes)
        scheme = urlsplit(url).scheme
        if scheme not in ("amqp", "amqps"):
            raise ValueError(f"a RabbitMQ URL starts with amqp:// or amqps://, not {redact_url(url)!r}")
        if queue_type not in QUEUE_TYPES:
            raise ValueError(f"queue_type must be one of {', '.join(QUEUE_TYPES)}, not {queue_type!r}")
        validate_queue_name(prefix)
        if prefetch is not None and prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self.url = url
        self.prefix = prefix
        self.queue_type = queue_type
        self.prefetch = prefetch
        self.consumer_timeout_s = consumer_timeout_s
        self.prefetch_hold_s = prefetch_hold_s
        self.heartbeat_s = max(1, math.ceil(lease_seconds / 2))
        """Of the consumer connection: RabbitMQ drops it after about two missed heartbeats."""
        self.connect_timeout_s = connect_timeout_s
        parts = urlsplit(url)
        self._where = f"RabbitMQ at {redact_url(url)}"
        self._reconnect = Reconnect(
            self._where,
            "start RabbitMQ there or point --rabbitmq-url at a running server",
            _RETRYABLE,
            timeout_s=reconnect_timeout_s,
            secret=parts.password,
            on_lost=self._lost,
        )
        self._conn: aiormq.abc.AbstractConnection | None = None
        self._pub: aiormq.abc.AbstractChannel | None = None
        self._sub: ConsumerConnection | None = None
        """Consumers and acks: a connection of its own with a parser for the delivery path."""
        self._adm: aiormq.abc.AbstractChannel | None = None
        """Declares: a refused one closes this channel only, not the consumers' or publisher's."""
        self._open_lock = asyncio.Lock()
        self._ladder_lock = asyncio.Lock()
        self._subscribe_lock = asyncio.Lock()
        self._epoch = 0
        self._type = "quorum"
        self._declared: set[str] = set()
        self._levels: dict[str, int] = {}
        """The highest level of each queue's delay ladder declared on this connection."""
        self._consumers: dict[str, _Consumer] = {}
        self._leases: dict[str, _Lease] = {}
        self._unacked: set[int] = set()
        """Delivery tags of the consumer channel not yet acked: buffered, leased, on their way."""
        self._lease_timer: asyncio.TimerHandle | None = None
        self._lease_timer_at = 0.0
        """When (``time.monotonic``) the lease timer fires: a shortened lease re-arms it."""
        self._hold_timer: asyncio.TimerHandle | None = None
        self._arrived = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._probing = 0
        self._closed = False
        self.connection_name = f"asynctasq {prefix} pid {os.getpid()} #{next(_instances)}"
        """Shown by ``rabbitmqctl list_connections client_properties`` and the management UI."""
        self.queues_seen: set[str] = set()
        """Every work queue this driver declared (AMQP cannot list queues)."""

    def describe(self) -> str:
        return f"rabbitmq:{redact_url(self.url)} prefix={self.prefix}"

    # -- names -----------------------------------------------------------------------------

    def _q(self, queue: str) -> str:
        return f"{self.prefix}/q/{queue}"

    @property
    def _failed_q(self) -> str:
        return f"{self.prefix}/failed"

    @property
    def _deliver_x(self) -> str:
        return f"{self.prefix}/deliver"

    def _level(self, queue: str, i: int) -> str:
        return f"{self.prefix}/delay/{queue}/{i}"

    def _queue_args(self, delivery_limit: int | None = None, **extra: Any) -> dict[str, Any]:
        args: dict[str, Any] = {"x-queue-type": self._type}
        if self._type == "quorum":
            args["x-dead-letter-strategy"] = "at-least-once"
            args["x-overflow"] = "reject-publish"
            if delivery_limit is not None:
                args["x-delivery-limit"] = delivery_limit
        args.update(extra)
        return args

    # -- connection ------------------------------------------------------------------------

    async def connect(self) -> None:
        """One attempt: a broker that cannot be reached at start-up is a clear error at once
        (later operations reconnect with backoff)."""
        self._closed = False
        try:
            await self._ensure()
        except _RETRYABLE as exc:
            await self._drop()
            raise self._reconnect.unavailable(exc) from None

    async def _ensure(self) -> aiormq.abc.AbstractChannel:
        """The publishing channel of a live connection, opening one first if needed."""
        pub = self._pub
        if pub is not None and not pub.is_closed and self._sub is not None and not self._sub.is_closed:
            return pub
        async with self._open_lock:
            if (
                self._pub is not None
                and not self._pub.is_closed
                and self._sub is not None
                and not self._sub.is_closed
            ):
                return self._pub
            await self._drop()
            try:
                conn = aiormq.Connection(
                    self.url, client_properties={"connection_name": self.connection_name}
                )
                await asyncio.wait_for(conn.connect(), self.connect_timeout_s)
            except _REFUSED as exc:
                raise BrokerError(
                    f"{self._where} refused the credentials ({one_line(exc, self._reconnect.secret)}): "
                    "check the user and password in --rabbitmq-url"
                ) from None
            self._conn = conn
            self._pub = await conn.channel(publisher_confirms=True, on_return_raises=True)
            self._epoch = next(_epochs)
            epoch = self._epoch
            self._sub = await ConsumerConnection.open(
                self.url,
                f"{self.connection_name} consumer",
                self.connect_timeout_s,
                on_cancel=self._on_cancel,
                on_closed=lambda exc: self._closed_with(epoch, exc),
                heartbeat_s=self.heartbeat_s,
            )
            self._type = self._pick_type(conn)
            for closable in (conn, self._pub):
                closable.closing.add_done_callback(lambda f: self._on_closed(epoch, f))
            await self._declare_base()
            return self._pub

    def _pick_type(self, conn: aiormq.abc.AbstractConnection) -> str:
        if self.queue_type != "auto":
            return self.queue_type
        version = conn.server_properties.get("version", b"")
        text = version.decode() if isinstance(version, bytes) else str(version)
        try:
            major, minor = (int(p) for p in text.split(".")[:2])
        except ValueError:
            return "quorum"
        return "quorum" if (major, minor) >= (3, 10) else "classic"

    async def _admin(self) -> aiormq.abc.AbstractChannel:
        adm = self._adm
        if adm is None or adm.is_closed:
            conn = self._conn
            if conn is None or conn.is_closed:
                await self._ensure()
                conn = self._conn
                assert conn is not None
            adm = self._adm = await conn.channel(publisher_confirms=False)
        return adm

    async def _declare_base(self) -> None:
        ch = await self._admin()
        await ch.exchange_declare(self._deliver_x, exchange_type="topic", durable=True)
        try:
            await ch.queue_declare(
                self._failed_q, durable=True, arguments=self._queue_args(RABBITMQ_FAILED_DELIVERY_LIMIT)
            )
        except amqp_errors.ChannelPreconditionFailed as exc:
            # a failed queue made by the driver's first version, without the limit: keep it
            ch = await self._admin()
            try:
                await ch.queue_declare(self._failed_q, durable=True, arguments=self._queue_args())
            except amqp_errors.ChannelPreconditionFailed:
                raise self._inequivalent(self._failed_q, exc) from None

    def _inequivalent(self, name: str, exc: BaseException) -> SchemaError:
        return SchemaError(
            f"RabbitMQ refused to declare {name!r} ({one_line(exc)}): it exists with other "
            "arguments (another queue type?); set --rabbitmq-queue-type to match it, use a new "
            "--rabbitmq-prefix, or delete it"
        )

    def _on_closed(self, epoch: int, fut: asyncio.Future[Any]) -> None:
        self._closed_with(epoch, None if fut.cancelled() else fut.exception())

    def _closed_with(self, epoch: int, exc: BaseException | None) -> None:
        if exc is not None and "acknowledgement timed out" in str(exc):
            log.error(
                "RabbitMQ closed the consumer channel: a task ran past the broker's consumer "
                "timeout; raise consumer_timeout in rabbitmq.conf above your longest task "
                "(or set --rabbitmq-consumer-timeout-s on RabbitMQ 3.12+)"
            )
        if epoch == self._epoch:
            self._forget()
            self.hub.wake_all()
            self._arrived.set()

    def _forget(self) -> None:
        """Drop every per-connection state: leases, buffers and consumers die with the channel."""
        self._epoch = 0
        self._leases.clear()
        self._unacked.clear()
        self._consumers.clear()
        self._declared.clear()
        self._levels.clear()
        for timer in (self._lease_timer, self._hold_timer):
            if timer is not None:
                timer.cancel()
        self._lease_timer = self._hold_timer = None

    async def _drop(self) -> None:
        conn, self._conn, self._pub, self._adm = self._conn, None, None, None
        sub, self._sub = self._sub, None
        self._forget()
        if sub is not None:
            await sub.close()
        if conn is not None and not conn.is_closed:
            try:
                await asyncio.wait_for(conn.close(), 2)
            except Exception:  # noqa: BLE001 - it is gone either way
                pass

    async def _lost(self, exc: BaseException) -> None:
        await self._drop()

    async def disconnect(self) -> None:
        self._closed = True
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        try:
            if self._sub is not None and not self._sub.is_closed:
                await self._settle_moves(RABBITMQ_GIVE_BACK_TIMEOUT_S)
                await asyncio.wait_for(self._give_back_buffered(), RABBITMQ_GIVE_BACK_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - closing returns them to the queue anyway
            log.warning(
                "could not give back prefetched messages (%s); the broker requeues them", one_line(exc)
            )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._drop()
        self.hub.wake_all()

    async def _settle_moves(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the give-backs and re-delays this driver has started."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def _give_back_quietly(self, consumers: list[_Consumer]) -> None:
        try:
            await self._give_back(consumers)
        except Exception as exc:  # noqa: BLE001 - unacked, they come back with the channel
            log.warning(
                "could not give back prefetched messages (%s); the broker requeues them",
                one_line(exc, self._reconnect.secret),
            )

    async def _give_back_buffered(self) -> None:
        consumers = list(self._consumers.values())
        self._consumers.clear()
        await self._give_back(consumers)

    async def _give_back(self, consumers: list[_Consumer]) -> None:
        """Stop ``consumers`` (no longer in ``_consumers``) and re-publish what they prefetched
        but never handed out, uncounted (closing the channel would requeue them counted)."""
        sub = self._sub
        if sub is None or sub.is_closed:
            return
        epoch = self._epoch
        for consumer in consumers:
            await sub.cancel(consumer.tag)
        for _ in range(3):  # deliveries that came before the cancel-ok run their callbacks
            await asyncio.sleep(0)
        buffered = [(c.queue, m) for c in consumers for m in c.buffer]
        for c in consumers:
            c.buffer.clear()
        if not buffered:
            return
        await asyncio.gather(
            *(
                self._publish(
                    queue,
                    m.body,
                    m.message_id or uuid.uuid4().hex,
                    {**_clean(m.headers), COUNT_HEADER: self._count(m) - 1},
                )
                for queue, m in buffered
            )
        )
        if epoch == self._epoch and not sub.is_closed:
            await self._ack_tags(sub, [m.tag for _, m in buffered])

    # -- publishing ------------------------------------------------------------------------

    async def _declare_queue(self, queue: str) -> None:
        if queue in self._declared:
            return
        ch = await self._admin()
        # no x-delivery-limit: the worker's own attempt count (x-delivery-count plus ours) sends a
        # poison message to the failed registry first; RabbitMQ 4.x's default limit of 20 only
        # backs it up, dead-lettering into the same failed queue
        args = self._queue_args(
            None, **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": self._failed_q}
        )
        try:
            await ch.queue_declare(self._q(queue), durable=True, arguments=args)
        except amqp_errors.ChannelPreconditionFailed as exc:
            raise self._inequivalent(self._q(queue), exc) from None
        await ch.queue_bind(self._q(queue), self._deliver_x, routing_key="*." * DELAY_LEVELS + queue)
        self._declared.add(queue)
        self.queues_seen.add(queue)

    async def _declare_levels(self, queue: str, top: int) -> None:
        """Declare the delay ladder of ``queue`` up to level ``top`` (always from level 0 up:
        ``stats`` and ``purge`` stop at the first level missing)."""
        async with self._ladder_lock:  # concurrent publishes of one batch declare it once
            if top > self._levels.get(queue, -1):
                await self._declare_levels_locked(queue, top)

    async def _declare_levels_locked(self, queue: str, top: int) -> None:
        ch = await self._admin()
        for i in range(self._levels.get(queue, -1) + 1, top + 1):
            name = self._level(queue, i)
            below = self._level(queue, i - 1) if i else self._deliver_x
            await ch.exchange_declare(name, exchange_type="topic", durable=True)
            level: dict[str, Any] = {"x-message-ttl": 1 << i, "x-dead-letter-exchange": below}
            args = self._queue_args(None, **level)
            try:
                await ch.queue_declare(name, durable=True, arguments=args)
            except amqp_errors.ChannelPreconditionFailed as exc:
                raise self._inequivalent(name, exc) from None
            pad = "*." * (DELAY_LEVELS - 1 - i)
            await ch.queue_bind(name, name, routing_key=pad + "1.#")
            await ch.exchange_bind(below, name, routing_key=pad + "0.#")
            self._levels[queue] = i

    async def _publish(
        self,
        queue: str,
        body: bytes,
        msg_id: str,
        headers: dict[str, Any],
        delay: float = 0.0,
        *,
        routing: tuple[str, str] | None = None,
    ) -> None:
        """Publish one persistent message and wait for its confirm. ``queue`` is the work queue
        (by its short name), or ``routing`` gives (exchange, routing key) outright."""
        pub = self._pub
        if pub is None or pub.is_closed:
            pub = await self._ensure()
        if delay * 1000 >= 1 << DELAY_LEVELS:
            headers = {**headers, DUE_HEADER: int(time.time() * 1000 + delay * 1000)}
        props = spec.Basic.Properties(delivery_mode=PERSISTENT, message_id=msg_id, headers=headers)
        for attempt in (1, 2):
            if routing is not None:
                exchange, key = routing
            elif delay > 0:
                ms = delay_bits(delay)
                top = ms.bit_length() - 1
                if top > self._levels.get(queue, -1):
                    await self._declare_levels(queue, top)
                exchange, key = self._level(queue, top), delay_routing_key(ms, queue)
            else:
                exchange, key = "", self._q(queue)
            try:
                confirm = await pub.basic_publish(
                    body, exchange=exchange, routing_key=key, properties=props, mandatory=True
                )
            except amqp_errors.PublishError:
                if attempt == 2 or routing is not None:
                    raise BrokerError(
                        f"RabbitMQ could not route a message to {key!r} even after declaring its "
                        "queue again: check the broker's policies and permissions"
                    ) from None
                # someone deleted the queue or the ladder under us: declare them again
                self._declared.discard(queue)
                self._levels.pop(queue, None)
                await self._declare_queue(queue)
                continue
            except amqp_errors.DeliveryError:
                raise BrokerError(
                    f"RabbitMQ refused a message for {key!r} (publish nacked: a queue limit, a full "
                    "disk, or a quorum queue that cannot accept writes); it was not stored"
                ) from None
            if not isinstance(confirm, spec.Basic.Ack):
                raise BrokerError(
                    f"RabbitMQ refused a message for {key!r} (publish nacked: a queue limit or a "
                    "full disk); it was not stored"
                )
            return

    async def _enqueue_many(self, items: Sequence[EnqueueItem]) -> list[str]:
        ids = [uuid.uuid4().hex for _ in items]

        async def op() -> None:
            await self._ensure()
            tops: dict[str, int] = {}
            for i in items:
                top = delay_bits(i.delay).bit_length() - 1 if i.delay > 0 else -1
                tops[i.queue] = max(tops.get(i.queue, -1), top)
            for queue, top in tops.items():
                await self._declare_queue(queue)
                if top > self._levels.get(queue, -1):
                    await self._declare_levels(queue, top)
            await asyncio.gather(
                *(
                    self._publish(i.queue, i.body, msg_id, {}, i.delay)
                    for i, msg_id in zip(items, ids, strict=True)
                )
            )

        await self._reconnect.run(op)
        return ids

    # -- consuming -------------------------------------------------------------------------

    async def dequeue(self, queues: Sequence[str], limit: int, wait: float) -> list[Delivery]:
        if wait > 0:
            return await super().dequeue(queues, limit, wait)
        # no wait: ask the broker whether messages are on their way before answering "none"
        self._probing += 1
        try:
            return await super().dequeue(queues, limit, wait)
        finally:
            self._probing -= 1

    async def _claim(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        if self._probing or not self._consuming(queues, limit):
            await self._reconnect.run(lambda: self._subscribe(queues, limit))
        await self._settle(queues)
        out: list[Delivery] = []
        now = time.monotonic()
        for q in queues:
            consumer = self._consumers.get(q)
            if consumer is None:
                continue
            if consumer.buffer:
                consumer.since = now
            while consumer.buffer and len(out) < limit:
                out.append(self._lease(consumer.buffer.popleft(), q, now))
            if len(out) >= limit:
                break
        if out:
            self._arm_leases()
        return out

    def _held(self) -> dict[str, int]:
        """Leases held per consumer tag."""
        held: dict[str, int] = {}
        for lease in self._leases.values():
            held[lease.consumer] = held.get(lease.consumer, 0) + 1
        return held

    def _consuming(self, queues: Sequence[str], limit: int) -> bool:
        """Whether every queue already has a consumer with room for its leases plus ``limit``
        more, on an open channel."""
        sub = self._sub
        if sub is None or sub.is_closed:
            return False
        held = self._held()
        for q in queues:
            consumer = self._consumers.get(q)
            if consumer is None:
                return False
            if not self.prefetch and consumer.prefetch < held.get(consumer.tag, 0) + limit:
                return False
        return True

    async def _subscribe(self, queues: Sequence[str], limit: int) -> None:
        """Start a consumer on each of ``queues`` that has none, with a prefetch that lets the
        broker send ``limit`` more than we hold; grow it (a new consumer) when too small. One at a
        time: a claim whose caller was cancelled runs on, and two interleaved subscribes made two
        consumers of one queue (the second's ``basic.qos`` between the first's qos and consume),
        the first one unreferenced, its deliveries out of everyone's reach."""
        async with self._subscribe_lock:
            await self._subscribe_locked(queues, limit)

    async def _subscribe_locked(self, queues: Sequence[str], limit: int) -> None:
        await self._ensure()
        sub = self._sub
        assert sub is not None
        held = self._held()
        for q in queues:
            consumer = self._consumers.get(q)
            mine = held.get(consumer.tag, 0) if consumer is not None else 0
            want = self.prefetch or mine + limit
            if consumer is not None and (self.prefetch or consumer.prefetch >= want):
                if self._probing and not consumer.buffer:
                    await self._probe(consumer)
                continue
            await self._declare_queue(q)
            # rounded up to a power of two: the slack keeps deliveries streaming while acks are
            # on their way (exact prefetch cost a third of the drain rate); what the worker does
            # not take within prefetch_hold_s goes back
            prefetch = self.prefetch or 1 << (want - 1).bit_length()
            await sub.qos(prefetch)
            ok = await (await self._admin()).queue_declare(self._q(q), passive=True)
            tag = f"asynctasq.{uuid.uuid4().hex[:12]}"
            new = _Consumer(q, tag, prefetch)
            if consumer is not None and self._consumers.get(q) is consumer:
                # (one retired meanwhile by _check_held is _give_back's to empty and cancel)
                new.buffer = consumer.buffer
                await sub.cancel(consumer.tag)
            room = prefetch - len(new.buffer)
            new.expected = max(min(int(ok.message_count or 0), room), 0)
            new.settle_until = new.since = time.monotonic() + RABBITMQ_SETTLE_S
            self._consumers[q] = new
            await sub.consume(self._q(q), tag, self._on_message(new, self._epoch), self._consume_args)

    @property
    def _consume_args(self) -> dict[str, Any]:
        if self.consumer_timeout_s is None:
            return {}
        return {"x-consumer-timeout": int(self.consumer_timeout_s * 1000)}

    def _on_cancel(self, tag: str) -> None:
        """The broker cancelled one of our consumers (its queue was deleted; RabbitMQ 4.3 does it
        on a consumer timeout): its deliveries are no longer ours, and the next dequeue starts a
        new consumer."""
        gone = next((c for c in self._consumers.values() if c.tag == tag), None)
        if gone is None:
            return
        del self._consumers[gone.queue]
        self._declared.discard(gone.queue)
        dropped = [t for t, lease in self._leases.items() if lease.consumer == tag]
        for token in dropped:
            self._unacked.discard(self._leases.pop(token).tag)
        for message in gone.buffer:
            self._unacked.discard(message.tag)
        gone.buffer.clear()
        log.warning(
            "RabbitMQ cancelled the consumer of %s (queue deleted, or a task held past the consumer "
            "timeout); %d task(s) lose their lease and come back; consuming again",
            gone.queue,
            len(dropped),
        )
        self.hub.wake([queue_key(gone.queue)])

    async def _probe(self, consumer: _Consumer) -> None:
        ok = await (await self._admin()).queue_declare(self._q(consumer.queue), passive=True)
        if ok.message_count:
            consumer.expected = int(ok.message_count)
            consumer.settle_until = time.monotonic() + RABBITMQ_SETTLE_S

    async def _settle(self, queues: Sequence[str]) -> None:
        """Right after a consumer starts, wait (briefly) for the messages the broker said were
        ready, so a first dequeue sees the queues in their order rather than in arrival order."""
        while True:
            pending = [
                c.settle_until for q in queues if (c := self._consumers.get(q)) is not None and c.expected > 0
            ]
            left = (max(pending) if pending else 0.0) - time.monotonic()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                for q in queues:
                    if (c := self._consumers.get(q)) is not None:
                        c.expected = 0
                return

    def _on_message(self, consumer: _Consumer, epoch: int) -> Callable[[Msg], None]:
        def arrived(message: Msg) -> None:
            if epoch != self._epoch:
                return  # a connection we have dropped: the broker requeues it
            self._unacked.add(message.tag)
            due = message.headers.get(DUE_HEADER)
            if isinstance(due, int) and due - time.time() * 1000 > 1000:
                self._spawn(self._redelay(message, consumer.queue, due))
                return
            if not consumer.buffer:
                consumer.since = max(consumer.since, time.monotonic())
            consumer.buffer.append(message)
            if consumer.expected:
                consumer.expected -= 1
            if self._hold_timer is None and self.prefetch_hold_s > 0:
                loop = asyncio.get_running_loop()
                self._hold_timer = loop.call_later(self.prefetch_hold_s, self._check_held)
            self._arrived.set()
            self.hub.wake([queue_key(consumer.queue)])

        return arrived

    def _check_held(self) -> None:
        """Stop the consumers whose prefetched deliveries nobody asked for in
        ``prefetch_hold_s``, and give those back: a driver that stopped asking (a busy or
        suspended worker, a producer that dequeued once) must not keep them from the others."""
        self._hold_timer = None
        now = time.monotonic()
        stale = [c for c in self._consumers.values() if c.buffer and now - c.since >= self.prefetch_hold_s]
        for c in stale:
            del self._consumers[c.queue]
        if stale:
            self._spawn(self._give_back_quietly(stale))
        waiting = [c.since for c in self._consumers.values() if c.buffer]
        if waiting:
            loop = asyncio.get_running_loop()
            self._hold_timer = loop.call_later(
                max(min(waiting) + self.prefetch_hold_s - now, 0.01), self._check_held
            )

    async def _pause(self, waiter: Waiter, queues: Sequence[str], left: float) -> None:
        # deliveries are pushed: the consumer callback wakes the waiter; nothing to poll
        await waiter.sleep(left)

    def _count(self, message: Msg) -> int:
        headers = message.headers
        carried = _int(headers.get(COUNT_HEADER))
        broker = headers.get("x-delivery-count")
        if broker is not None:
            return carried + _int(broker) + 1
        return carried + (2 if message.redelivered else 1)

    def _lease(self, message: Msg, queue: str, now: float) -> Delivery:
        tag = message.tag
        token = f"{self._epoch}:{tag}"
        msg_id = message.message_id or f"rmq-{token}"
        delivery = Delivery(msg_id, queue, message.body, token, self._count(message))
        self._leases[token] = _Lease(
            delivery, tag, now + self.lease_seconds, message.headers, message.consumer
        )
        return delivery

    def _take(self, delivery: Delivery) -> _Lease | None:
        """Remove and return the lease of ``delivery`` if it is still ours and current."""
        lease = self._leases.get(delivery.token)
        if lease is None or lease.delivery.id != delivery.id:
            return None
        if lease.deadline <= time.monotonic():
            self._expire()
            return None
        return self._leases.pop(delivery.token)

    # -- leases ----------------------------------------------------------------------------

    def _arm_leases(self) -> None:
        if not self._leases:
            return
        first = min(lease.deadline for lease in self._leases.values())
        timer = self._lease_timer
        if timer is not None and self._lease_timer_at <= first + 0.01:
            return
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._lease_timer_at = first
        self._lease_timer = loop.call_later(max(first - time.monotonic(), 0.0), self._expire)

    def _expire(self) -> None:
        """Put back every lease past its deadline, counted (it was delivered): a
        ``basic.reject`` with requeue, one frame, nothing to duplicate. On a connection the
        broker already dropped (this process was stopped), the frame goes nowhere and the broker
        has requeued the delivery itself."""
        self._lease_timer = None
        now = time.monotonic()
        sub = self._sub
        for token in [t for t, lease in self._leases.items() if lease.deadline <= now]:
            lease = self._leases.pop(token)
            log.warning(
                "lease of %s on %s expired after %ss without an extend; it goes back to the queue",
                lease.delivery.id,
                lease.delivery.queue,
                self.lease_seconds,
            )
            self._unacked.discard(lease.tag)
            if sub is not None and not sub.is_closed:
                try:
                    sub.reject(lease.tag)
                except ConnectionError:
                    pass  # the broker requeues it with the channel
        self._arm_leases()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _redelay(self, message: Msg, queue: str, due: int) -> None:
        """A delay longer than the ladder: send it round again until its due time."""
        headers = {**_clean(message.headers), DUE_HEADER: due}
        msg_id = message.message_id or uuid.uuid4().hex
        try:
            await self._publish(queue, message.body, msg_id, headers, (due - time.time() * 1000) / 1000)
            sub = self._sub
            if sub is not None:
                await self._ack_tags(sub, [message.tag])
        except Exception as exc:  # noqa: BLE001 - unacked, it comes back with the channel
            log.warning("could not re-delay a long-delayed message (%s); it comes back", one_line(exc))

    async def _republish_then_ack(
        self,
        lease: _Lease,
        body: bytes,
        carried: int,
        delay: float,
        routing: tuple[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> bool:
        """Publish the replacement and wait for its confirm, then ack the old delivery: a crash in
        between duplicates the message, never loses it."""
        epoch = self._epoch
        sub = self._sub
        if sub is None or lease.delivery.token.split(":")[0] != str(epoch):
            return False
        headers = {**_clean(lease.headers), COUNT_HEADER: carried, **(extra or {})}
        try:
            await self._publish(
                lease.delivery.queue, body, lease.delivery.id, headers, delay, routing=routing
            )
            if epoch != self._epoch or sub.is_closed:
                return False  # the old delivery went back with its channel: now there are two
            await self._ack_tags(sub, [lease.tag])
        except _RETRYABLE as exc:
            log.warning(
                "lost %s while moving %s (%s); the broker redelivers it",
                self._where,
                lease.delivery.id,
                one_line(exc, self._reconnect.secret),
            )
            await self._drop()
            return False
        return True

    # -- acks ------------------------------------------------------------------------------

    async def _ack_tags(self, sub: ConsumerConnection, tags: Iterable[int]) -> None:
        """Ack ``tags``: one frame with ``multiple`` when they are every unacked tag up to the
        highest, else one frame each. Acks have no reply: the frames are queued for the writer,
        not waited for (a connection lost before they leave redelivers those tasks)."""
        batch = sorted(set(tags))
        if not batch:
            return
        top = batch[-1]
        unacked = self._unacked
        if len(batch) > 1 and sum(1 for t in unacked if t <= top) == len(batch):
            unacked.difference_update(batch)
            sub.ack(top, multiple=True)
            return
        unacked.difference_update(batch)
        for tag in batch:
            sub.ack(tag)

    async def _ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        sub = self._sub
        taken = [(d, lease) for d in deliveries if (lease := self._take(d)) is not None]
        if not taken or sub is None:
            return []
        try:
            await self._ack_tags(sub, [lease.tag for _, lease in taken])
        except _RETRYABLE as exc:
            log.warning("lost %s while acking (%s); those tasks come back", self._where, one_line(exc))
            await self._drop()
            return []
        return [d for d, _ in taken]

    async def _extend(self, deliveries: Sequence[Delivery], seconds: float) -> list[Delivery]:
        # the broker keeps an unacked delivery while its channel lives: only our deadline moves
        now = time.monotonic()
        held = []
        for d in deliveries:
            lease = self._leases.get(d.token)
            if lease is not None and lease.delivery.id == d.id and lease.deadline > now:
                lease.deadline = now + seconds
                held.append(d)
        if held:
            self._arm_leases()
        return held

    async def _release(self, delivery: Delivery, delay: float, body: bytes | None) -> bool:
        lease = self._take(delivery)
        if lease is None:
            return False
        if body is None:
            return await self._republish_then_ack(
                lease, lease.delivery.body, delivery.delivery_count - 1, delay
            )
        return await self._republish_then_ack(lease, body, 0, delay)

    async def _fail(self, delivery: Delivery, error: str) -> bool:
        lease = self._take(delivery)
        if lease is None:
            return False
        extra = {QUEUE_HEADER: delivery.queue, ERROR_HEADER: error, FAILED_AT_HEADER: time.time()}
        return await self._republish_then_ack(
            lease, lease.delivery.body, 0, 0.0, routing=("", self._failed_q), extra=extra
        )

    # -- stats and purge -------------------------------------------------------------------

    async def _peek(self, names: Sequence[str]) -> list[int | None]:
        """Ready messages of each queue of ``names`` by passive declares (None: no such queue),
        on a channel of its own (a passive declare of a missing queue closes its channel)."""
        conn = self._conn
        assert conn is not None
        out: list[int | None] = []
        ch = await conn.channel(publisher_confirms=False)
        try:
            for name in names:
                try:
                    ok = await ch.queue_declare(name, passive=True)
                except amqp_errors.ChannelNotFoundEntity:
                    out.append(None)
                    ch = await conn.channel(publisher_confirms=False)
                    continue
                out.append(int(ok.message_count or 0))
        finally:
            if not ch.is_closed:
                await ch.close()
        return out

    async def _ladder(self, queue: str, act: Callable[[list[str]], Any]) -> int:
        """Sum ``act`` over the declared levels of ``queue``'s delay ladder, found by passive
        declares 8 at a time (levels are declared from 0 up, so the first missing one ends it)."""
        total = 0
        for start in range(0, DELAY_LEVELS, 8):
            names = [self._level(queue, i) for i in range(start, min(start + 8, DELAY_LEVELS))]
            counts = await self._peek(names)
            present = [n for n, c in zip(names, counts, strict=True) if c is not None]
            total += await act(present)
            if len(present) < len(names):
                break
        return total

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        """``ready``: the work queue's ready messages (a passive declare) plus those this
        driver prefetched and has not handed out; ``delayed``: the messages in the queue's delay
        ladder; ``leased``: this driver's own leases (AMQP tells nobody how many deliveries other
        connections hold unacked: the management API does); ``failed``: the entries of the
        namespace's failed queue from ``queue``, counted by reading it."""
        for q in queues:
            validate_queue_name(q)

        async def op() -> dict[str, QueueStats]:
            await self._ensure()
            await self._settle_moves(RABBITMQ_GIVE_BACK_TIMEOUT_S)
            out: dict[str, QueueStats] = {}
            for q in queues:
                [ready] = await self._peek([self._q(q)])

                async def count(names: list[str]) -> int:
                    return sum(c or 0 for c in await self._peek(names))

                delayed = await self._ladder(q, count)
                consumer = self._consumers.get(q)
                buffered = len(consumer.buffer) if consumer is not None else 0
                leased = sum(1 for lease in self._leases.values() if lease.delivery.queue == q)
                out[q] = QueueStats(ready=(ready or 0) + buffered, delayed=delayed, leased=leased, failed=0)
            failed = await self._failed_counts()
            for q in queues:
                out[q]["failed"] = failed.get(q, 0)
            return out

        result: dict[str, QueueStats] = await self._reconnect.run(op)
        return result

    async def _failed_counts(self) -> dict[str, int]:
        [total] = await self._peek([self._failed_q])
        counts: dict[str, int] = {}
        if not total:
            return counts

        def visit(entry: FailedEntry) -> str:
            counts[entry["queue"]] = counts.get(entry["queue"], 0) + 1
            return "keep"

        await self._scan_failed(visit, direct=True)
        return counts

    async def purge(self, queue: str) -> int:
        """``queue.purge`` of the work queue and of each level of its delay ladder, and drop
        what this driver prefetched from it. Deliveries leased by workers are kept (AMQP purges
        only ready messages): they are acked or come back."""
        validate_queue_name(queue)

        async def op() -> int:
            await self._ensure()
            await self._settle_moves(RABBITMQ_GIVE_BACK_TIMEOUT_S)
            ch = await self._admin()

            async def purge_all(names: list[str]) -> int:
                n = 0
                for name in names:
                    ok = await ch.queue_purge(name)
                    n += int(ok.message_count or 0)
                return n

            present = [self._q(queue)] if (await self._peek([self._q(queue)]))[0] is not None else []
            purged = await purge_all(present) + await self._ladder(queue, purge_all)
            consumer = self._consumers.get(queue)
            sub = self._sub
            if consumer is not None and consumer.buffer and sub is not None:
                tags = [m.tag for m in consumer.buffer]
                consumer.buffer.clear()
                await self._ack_tags(sub, tags)
                purged += len(tags)
            return purged

        result: int = await self._reconnect.run(op)
        return result

    # -- the failed registry ---------------------------------------------------------------

    async def _scan_failed(
        self, visit: Callable[[FailedEntry], str], limit: int | None = None, *, direct: bool = False
    ) -> int:
        """Read the failed queue on a channel of its own; ``visit`` says for each entry
        ``keep``, ``drop`` (acked) or ``requeue`` (re-published to its queue, then acked).
        Entries kept go back with a ``basic.nack`` (RabbitMQ 4.3 does not count a nack as a
        delivery; older servers do, hence the failed queue's high delivery limit). Returns how
        many were dropped or requeued. ``direct``: already inside a reconnecting operation."""

        async def op() -> int:
            await self._ensure()
            conn = self._conn
            assert conn is not None
            ch = await conn.channel(publisher_confirms=False)
            changed = 0
            seen = 0
            kept = 0
            try:
                while limit is None or seen < limit:
                    msg = await ch.basic_get(self._failed_q, no_ack=False)
                    if not isinstance(msg.delivery, spec.Basic.GetOk):
                        break
                    seen += 1
                    got = _from_aiormq(msg)
                    entry = self._entry(got)
                    action = visit(entry)
                    tag = got.tag
                    if action == "requeue":
                        await self._declare_queue(entry["queue"])
                        headers = _clean(got.headers)
                        for key in (ERROR_HEADER, FAILED_AT_HEADER, QUEUE_HEADER):
                            headers.pop(key, None)
                        headers[COUNT_HEADER] = 0
                        await self._publish(entry["queue"], got.body, entry["id"], headers)
                    if action in ("requeue", "drop"):
                        await ch.basic_ack(tag)
                        changed += 1
                    else:
                        kept = tag
                if kept:  # every tag up to it not acked above is one we keep
                    await ch.basic_nack(kept, multiple=True, requeue=True)
            finally:
                await ch.close()
            return changed

        if direct:
            return await op()
        changed: int = await self._reconnect.run(op)
        return changed

    def _entry(self, message: Msg) -> FailedEntry:
        headers = message.headers
        queue = headers.get(QUEUE_HEADER)
        error = headers.get(ERROR_HEADER)
        failed_at = headers.get(FAILED_AT_HEADER)
        if queue is None:  # dead-lettered by the broker itself (a quorum delivery limit)
            deaths = headers.get("x-death")
            death = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
            queue = _text(death.get("queue")).split("/q/", 1)[-1]
            error = f"dead-lettered by RabbitMQ ({_text(death.get('reason')) or 'unknown reason'})"
            failed_at = time.time()
        return FailedEntry(
            id=message.message_id or "",
            queue=_text(queue),
            body=message.body,
            error=_text(error),
            failed_at=float(failed_at) if isinstance(failed_at, (int, float)) else 0.0,
        )

    async def failed_list(self, queue: str | None = None, limit: int = 100) -> list[FailedEntry]:
        found: list[FailedEntry] = []

        def visit(entry: FailedEntry) -> str:
            if (queue is None or entry["queue"] == queue) and len(found) < limit:
                found.append(entry)
            return "keep"

        await self._scan_failed(visit)
        return sorted(found, key=lambda e: e["failed_at"])

    async def failed_requeue(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        wanted = None if ids is None else set(ids)
        return await self._scan_failed(lambda e: "requeue" if _matches(e, wanted, queue) else "keep")

    async def failed_purge(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        wanted = None if ids is None else set(ids)
        return await self._scan_failed(lambda e: "drop" if _matches(e, wanted, queue) else "keep")

    # -- maintenance (tests and operators) -------------------------------------------------

    async def delete_everything(self, queues: Iterable[str] = ()) -> None:
        """Delete the namespace's failed queue, deliver exchange, delay ladder and the work
        queues of ``queues`` (AMQP cannot list queues: name them), on a connection of its own."""
        conn = aiormq.Connection(self.url, client_properties={"connection_name": self.connection_name})
        await asyncio.wait_for(conn.connect(), self.connect_timeout_s)
        try:
            ch = await conn.channel(publisher_confirms=False)
            for q in queues:
                await ch.queue_delete(self._q(q))
                for i in range(DELAY_LEVELS):
                    await ch.queue_delete(self._level(q, i))
                    await ch.exchange_delete(self._level(q, i))
            await ch.queue_delete(self._failed_q)
            await ch.exchange_delete(self._deliver_x)
        finally:
            await conn.close()


_BROKER_HEADERS = (
    DUE_HEADER,
    "x-delivery-count",
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
)


def _clean(headers: dict[str, Any]) -> dict[str, Any]:
    """``headers`` without what the broker (or the ladder) added: for a re-publish."""
    out = dict(headers)
    for key in _BROKER_HEADERS:
        out.pop(key, None)
    return out


def _int(value: Any) -> int:
    """A header's integer (AMQP tables carry several integer and float widths)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _matches(entry: FailedEntry, ids: set[str] | None, queue: str | None) -> bool:
    return (ids is None or entry["id"] in ids) and (queue is None or entry["queue"] == queue)


__all__ = ["RabbitMQDriver", "delay_bits", "delay_routing_key"]
