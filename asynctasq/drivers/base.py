"""The driver contract: a driver moves opaque message bodies between producers and workers.

A driver knows nothing of tasks, retries or serializers; the worker does that bookkeeping, and
:class:`BaseDriver` does the rest of what every driver shares (validating queue names and
message sizes, the blocking wait loop, in-process wake-ups, skipping empty batches). A
backend implements small hooks (``_enqueue_many``, ``_claim``, ``_ack``...), and the public
methods below are the contract the worker and users rely on:

- ``enqueue`` / ``enqueue_many``: durable when they return; ``delay`` hides a message for that
  many seconds. A message over ``max_message_bytes`` raises :class:`MessageTooLarge` before
  anything reaches the broker, and so does a broker option (``EnqueueItem.options``, from
  ``TaskCall.broker_options``) the driver does not list in ``broker_options``
  (:class:`UnsupportedOperation`): an option is honoured or refused, never dropped.
- ``dequeue(queues, limit, wait)``: up to ``limit`` messages, taken from ``queues`` in the
  order given (the first queue is drained first), waiting up to ``wait`` seconds for the first
  one without a fixed sleep loop where the broker can wake us. Each message comes back leased
  for ``lease_seconds``: no other consumer sees it until it is acked, released, failed, or the
  lease expires. An expired lease comes back by itself, with ``delivery_count`` raised.
- ``ack`` / ``complete`` / ``extend`` act on a batch and return the deliveries that were still
  held (the others changed nothing: fencing). ``complete`` stores results first, then acks, in
  one round trip where the broker allows, so a crash in between can repeat a task but never
  lose the result of one that succeeded.
- ``release(delivery, delay, body=None)``: without ``body`` a give-back, which costs no attempt
  (the delivery count goes back down, or the driver re-publishes the message uncounted); with
  ``body``, a retry that replaces the stored message and resets its delivery count. Atomic
  where the broker allows; where it does not (SQS, RabbitMQ) the new message is published and
  confirmed first and the old one deleted after: a crash in between duplicates, never loses.
- ``fail(delivery, error)`` moves the message to the failed registry (dead letter).

Fencing: every delivery carries a ``token``; a driver with the ``fencing`` capability has the
broker itself refuse ``ack``/``release``/``extend``/``fail`` with a token that is no longer
current (the worker that lost its lease can never touch the new holder's work). A lease that
expired but that nobody has claimed again may still be acked or extended (no one else holds
it); drivers may refuse that too. A driver without ``fencing`` (SQS on moto, where an old
receipt handle still deletes) documents what it guarantees instead: at-least-once delivery, and
a late ack that may delete a redelivered copy, which then ran or runs at least once.

``delivery_count`` is the number of deliveries since the message was last written: the
broker's own count where it keeps one (a SQL column, SQS ``ApproximateReceiveCount``, a
quorum queue's ``x-delivery-count``). ``delivery_count - 1`` is how many earlier deliveries
were lost (a worker died holding them); the worker adds that to the attempt in the message.

Optional capabilities (``capabilities``): ``stats``, ``purge``, ``failed`` (list, requeue,
purge), ``results``, ``workers`` (registry), ``control`` (remote commands), ``migrations``
(``migrate()``), and the property ``fencing``. A driver that lacks one raises
:class:`UnsupportedOperation` with a message naming it; callers probe with ``supports()``.

A new driver subclasses :class:`BaseDriver` in ``drivers/<name>.py``, adds its row to the
table in :mod:`asynctasq.drivers`, and passes ``tests/drivers/`` against its real broker
(docs/driver-contract.md walks through the memory driver as the example).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, NamedTuple, TypedDict, TypeVar

from asynctasq.constants import DEFAULT_LEASE_S, DEFAULT_MAX_MESSAGE_BYTES
from asynctasq.drivers._wait import WakeHub, queue_key, result_key, wake_hub
from asynctasq.errors import AsyncTasQError, InvalidQueueName, MessageTooLarge, UnsupportedOperation

T = TypeVar("T")
log = logging.getLogger("asynctasq.drivers")

QUEUE_NAME_MAX_LEN = 80
_QUEUE_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,%d}\Z" % QUEUE_NAME_MAX_LEN)
_valid_queue_names: set[str] = set()

CAPABILITIES = frozenset(
    {"stats", "purge", "cancel", "failed", "results", "workers", "control", "migrations", "fencing"}
)
"""Every optional capability a driver may list."""


def validate_queue_name(name: str) -> str:
    """Return ``name`` if it is a valid queue name, else raise :class:`InvalidQueueName`."""
    if name in _valid_queue_names:
        return name
    if not isinstance(name, str) or not _QUEUE_NAME_RE.match(name):
        shown = "an empty name" if name == "" else repr(name)
        raise InvalidQueueName(
            f"invalid queue name {shown}: use 1-{QUEUE_NAME_MAX_LEN} characters from "
            "letters, digits and _ . : -"
        )
    if len(_valid_queue_names) < 10_000:
        _valid_queue_names.add(name)
    return name


@dataclass(slots=True, eq=False)
class Delivery:
    """One leased message handed to a consumer."""

    id: str
    """The driver's id for the message, stable across its deliveries."""
    queue: str
    body: bytes
    token: str
    """The lease token of this delivery; ack/release/extend/fail check it (fencing)."""
    delivery_count: int
    """Deliveries since the message was last written: 1 on the first."""


BrokerOptions = tuple[tuple[str, str], ...]
"""Per-message broker options, ``(name, value)`` pairs sorted by name (hashable, immutable)."""
BROKER_OPTIONS = frozenset({"message_group_id", "deduplication_id"})
"""Every per-message option some driver honours (SQS FIFO queues: both)."""


class EnqueueItem(NamedTuple):
    queue: str
    body: bytes
    delay: float = 0.0
    options: BrokerOptions = ()
    """Broker options of this message (``TaskCall.broker_options``); a driver refuses any it
    does not list in ``BaseDriver.broker_options``."""


class QueueStats(TypedDict):
    ready: int
    delayed: int
    leased: int
    failed: int


class FailedEntry(TypedDict):
    id: str
    queue: str
    body: bytes
    error: str
    failed_at: float


class WorkerInfo(TypedDict, total=False):
    name: str
    hostname: str
    pid: int
    queues: list[str]
    state: str
    current_tasks: list[str]
    successful: int
    failed: int
    working_time_s: float
    started_at: float
    last_heartbeat: float


def still_held(deliveries: Sequence[Delivery], held: Iterable[tuple[str, str]]) -> list[Delivery]:
    """The ``deliveries`` whose ``(id, token)`` is in ``held`` (what a batch statement returned)."""
    pairs = set(held)
    return [d for d in deliveries if (d.id, d.token) in pairs]


class BaseDriver(ABC):
    """Abstract broker connection; see the module docstring for the contract.

    Arguments (every driver): ``lease_seconds`` (lease of a dequeued message; the worker extends
    it while the task runs), ``max_message_bytes`` (largest message accepted; default the
    driver's ``default_max_message_bytes``).
    """

    name: ClassVar[str] = "base"
    capabilities: ClassVar[frozenset[str]] = frozenset()
    default_max_message_bytes: ClassVar[int] = DEFAULT_MAX_MESSAGE_BYTES
    """The driver's own limit; the broker's where it is lower than ours."""
    broker_options: ClassVar[frozenset[str]] = frozenset()
    """The per-message options (``EnqueueItem.options``) this driver honours; an item with any
    other is refused with :class:`UnsupportedOperation` before anything reaches the broker."""
    signals_persist: ClassVar[bool] = False
    """True when the broker keeps a wake-up until a waiter takes it (Redis wake lists, an SQS
    long poll, a consumer's buffer), so a wait need not repeat the claim it follows; False
    when wake-ups come through the in-process hub, which keeps none."""
    shield_claims: ClassVar[bool] = True
    """True: ``_claim`` runs in a task of its own, to its end even when the caller of
    ``dequeue`` is cancelled meanwhile, and what it leased is given back (safe for any client
    library, at the cost of a task and a loop iteration per claim). False: the driver's
    ``_claim`` runs in the caller's task and gives back by itself what it leased when it is
    cancelled (``_unlease_soon``), as the memory, SQLite and Redis drivers do."""

    def __init__(
        self, *, lease_seconds: float = DEFAULT_LEASE_S, max_message_bytes: int | None = None
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if max_message_bytes is not None and max_message_bytes < 1:
            raise ValueError("max_message_bytes must be at least 1")
        unknown = self.capabilities - CAPABILITIES
        if unknown:
            raise TypeError(f"{type(self).__name__} lists unknown capabilities: {', '.join(sorted(unknown))}")
        self.lease_seconds = float(lease_seconds)
        self.max_message_bytes = int(max_message_bytes or self.default_max_message_bytes)
        self._hub: WakeHub | None = None
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        """Constructor keywords for a URL of this driver's schemes (``asynctasq.connect(url)``);
        only drivers whose table row has no ``url_keyword`` override it."""
        raise NotImplementedError(f"{cls.__name__} takes no URL")

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:  # noqa: B027 - optional hook
        """Open connections; idempotent."""

    async def disconnect(self) -> None:  # noqa: B027 - optional hook
        """Close connections; idempotent. Blocked calls of this driver return."""

    async def __aenter__(self) -> BaseDriver:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    def describe(self) -> str:
        """Where this driver points, safe to log (no passwords)."""
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    # -- wake-ups within this process ------------------------------------------------------

    def wake_scope(self) -> str | None:
        """The broker namespace this driver shares with other drivers of the process (a file,
        a DSN and table...), so they wake each other at once; None: no in-process wake-ups."""
        return None

    @property
    def hub(self) -> WakeHub:
        hub = self._hub
        if hub is None:
            scope = self.wake_scope()
            hub = self._hub = wake_hub(f"{self.name}:{scope}") if scope is not None else WakeHub()
        return hub

    def wake_queues(self, queues: Iterable[str]) -> None:
        """Wake this process's consumers blocked on ``queues`` (after an enqueue, a release...)."""
        hub = self.hub
        if hub:
            hub.wake([queue_key(q) for q in queues])

    def wake_results(self, task_ids: Iterable[str]) -> None:
        hub = self.hub
        if hub:
            hub.wake([result_key(t) for t in task_ids])

    # -- required: public template methods ------------------------------------------------

    def check_message(self, body: bytes) -> None:
        """Raise :class:`MessageTooLarge` when ``body`` is over ``max_message_bytes``."""
        if len(body) > self.max_message_bytes:
            raise MessageTooLarge(len(body), self.max_message_bytes, self.name)

    def check_options(self, queue: str, options: BrokerOptions) -> None:
        """Raise unless this driver honours every one of ``options`` for ``queue``; a driver
        that takes some overrides it to check their values too."""
        unknown = sorted({name for name, _ in options} - self.broker_options)
        if unknown:
            raise UnsupportedOperation(
                f"the {self.name} driver does not support the broker option(s) {', '.join(unknown)} "
                "(SQS FIFO queues take message_group_id and deduplication_id): drop them from the dispatch"
            )

    async def enqueue(
        self, queue: str, body: bytes, delay: float = 0.0, *, options: BrokerOptions = ()
    ) -> str:
        """Store one message; return the driver's id for it."""
        if queue not in _valid_queue_names:
            validate_queue_name(queue)
        if len(body) > self.max_message_bytes:
            self.check_message(body)
        if options:
            self.check_options(queue, options)
        msg_id = await self._enqueue(EnqueueItem(queue, body, float(delay) if delay > 0 else 0.0, options))
        hub = self._hub if self._hub is not None else self.hub
        if hub:
            hub.wake([queue_key(queue)])
        return msg_id

    async def enqueue_many(self, items: Sequence[EnqueueItem]) -> list[str]:
        """Store many messages, in one round trip where the broker allows; ids in order."""
        if not items:
            return []
        negative = False
        limit = self.max_message_bytes
        for item in items:
            validate_queue_name(item.queue)
            if len(item.body) > limit:
                self.check_message(item.body)
            if item.options:
                self.check_options(item.queue, item.options)
            negative = negative or item.delay < 0
        checked = [i._replace(delay=max(i.delay, 0.0)) for i in items] if negative else items
        ids = await self._enqueue_many(checked)
        if self.hub:
            self.wake_queues({i.queue for i in checked})
        return ids

    async def dequeue(self, queues: Sequence[str], limit: int, wait: float) -> list[Delivery]:
        """Lease up to ``limit`` messages from ``queues`` in that order; wait up to ``wait`` s."""
        if len(queues) == 1:
            names = [validate_queue_name(queues[0])]
        else:
            names = list(dict.fromkeys(validate_queue_name(q) for q in queues))
        if limit <= 0 or not names:
            return []
        claim = self._claim_or_give_back if self.shield_claims else self._claim
        got = await claim(names, limit)
        if got or wait <= 0:
            return got  # the busy path: no waiter to register
        return await self._wait_for(
            lambda: claim(names, limit),
            [queue_key(q) for q in names],
            names,
            wait,
            empty=got,
        )

    async def _claim_or_give_back(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        """``_claim``, run to its end even when the caller is cancelled meanwhile (a claim cut
        short could hold messages until their leases expire); what it leased for a caller who
        is gone is given back uncounted."""
        claim = asyncio.ensure_future(self._claim(queues, limit))
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            self._in_background(self._give_back_claimed(claim))
            raise

    async def _give_back_claimed(self, claim: asyncio.Future[list[Delivery]]) -> None:
        try:
            deliveries = await claim
        except (AsyncTasQError, OSError, asyncio.CancelledError):
            return
        if deliveries:
            await self._unlease_and_wake(deliveries)

    async def _unlease_and_wake(self, deliveries: Sequence[Delivery]) -> None:
        await self._unlease(deliveries)
        self.wake_queues({d.queue for d in deliveries})

    def _unlease_soon(self, deliveries: Sequence[Delivery]) -> None:
        """Give back, uncounted and in the background, what a claim leased for a caller that
        was cancelled (for drivers whose ``_claim`` runs unshielded)."""
        if deliveries:
            self._in_background(self._unlease_and_wake(list(deliveries)))

    async def _unlease(self, deliveries: Sequence[Delivery]) -> None:
        """Give back deliveries nobody got, uncounted; override with one batch statement."""
        for delivery in deliveries:
            try:
                await self._release(delivery, 0.0, None)
            except (AsyncTasQError, OSError) as exc:  # its lease expires instead
                log.warning("could not give back message %s of a cancelled dequeue: %s", delivery.id, exc)

    def _in_background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _settle_background(self) -> None:
        """Wait for background work (give-backs); drivers call it first in ``disconnect()``."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """Delete finished messages; return those that were still held (stale ones are skipped)."""
        if not deliveries:
            return []
        return await self._ack(deliveries)

    async def complete(
        self,
        deliveries: Sequence[Delivery],
        results: Sequence[tuple[str, bytes]] = (),
        results_ttl: float = 0.0,
    ) -> list[Delivery]:
        """Store ``results`` (task id, encoded result) for ``results_ttl`` seconds, then ack
        ``deliveries``; return the deliveries that were still held."""
        if not (results and results_ttl > 0 and self.supports("results")):
            return await self.ack(deliveries)
        if not deliveries:
            await self.store_results(results, results_ttl)
            return []
        return await self._complete(deliveries, results, results_ttl)

    async def extend(self, deliveries: Sequence[Delivery], seconds: float | None = None) -> list[Delivery]:
        """Push the leases' expiry to now + ``seconds``; return the deliveries still held."""
        if not deliveries:
            return []
        return await self._extend(deliveries, self.lease_seconds if seconds is None else float(seconds))

    async def release(self, delivery: Delivery, delay: float = 0.0, body: bytes | None = None) -> bool:
        """Make the message visible again after ``delay``; with ``body``, as a retry."""
        if body is not None:
            self.check_message(body)
        released = await self._release(delivery, max(float(delay), 0.0), body)
        if released:
            self.wake_queues((delivery.queue,))
        return released

    async def fail(self, delivery: Delivery, error: str) -> bool:
        """Move the message to the failed registry with ``error``."""
        return await self._fail(delivery, str(error))

    # -- required: backend hooks -----------------------------------------------------------

    async def _enqueue(self, item: EnqueueItem) -> str:
        """One validated message; override when one is cheaper than a batch of one."""
        return (await self._enqueue_many([item]))[0]

    @abstractmethod
    async def _enqueue_many(self, items: Sequence[EnqueueItem]) -> list[str]:
        """Validated, non-empty ``items``; ids in order."""

    @abstractmethod
    async def _claim(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        """Lease what is ready now, without waiting (valid, distinct queues; ``limit`` > 0)."""

    @abstractmethod
    async def _ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]: ...

    async def _complete(
        self, deliveries: Sequence[Delivery], results: Sequence[tuple[str, bytes]], results_ttl: float
    ) -> list[Delivery]:
        """Results first, then the ack; override to do both in one round trip."""
        await self.store_results(results, results_ttl)
        return await self.ack(deliveries)

    @abstractmethod
    async def _extend(self, deliveries: Sequence[Delivery], seconds: float) -> list[Delivery]: ...

    @abstractmethod
    async def _release(self, delivery: Delivery, delay: float, body: bytes | None) -> bool: ...

    @abstractmethod
    async def _fail(self, delivery: Delivery, error: str) -> bool: ...

    # -- the wait loop ---------------------------------------------------------------------

    async def _wait_for(
        self,
        attempt: Callable[[], Awaitable[T]],
        keys: Sequence[str],
        queues: Sequence[str],
        wait: float,
        *,
        empty: T | None = None,
    ) -> T:
        """Run ``attempt`` until it returns something truthy or ``wait`` seconds pass, pausing
        in :meth:`_pause` in between (the hub's waiter is registered under ``keys`` before any
        attempt, so no wake-up is lost). Returns the last result.

        ``empty`` is what an attempt the caller just made returned: on a driver whose broker
        keeps its wake-up signal (``signals_persist``), the wait then starts with a pause, not
        with the same attempt again (on SQS that would be one more paid call)."""
        deadline = time.monotonic() + wait
        with self.hub.watch(keys) as waiter:
            found = empty
            skip = empty is not None and self.signals_persist
            while True:
                if not skip:
                    waiter.clear()
                    found = await attempt()
                    if found:
                        return found
                skip = False
                left = deadline - time.monotonic()
                if left <= 0.0005:
                    return found  # type: ignore[return-value]
                await self._pause(waiter, queues, left)

    async def _pause(self, waiter: Any, queues: Sequence[str], left: float) -> None:
        """Wait until work may be there: woken (``waiter.sleep``), a broker signal, the next
        delayed message or lease falling due, or a fallback poll; at most ``left`` seconds.
        ``queues`` is empty while waiting for a result. The default waits for in-process
        wake-ups only: a driver whose broker can change from elsewhere must override it."""
        await waiter.sleep(left)

    # -- optional --------------------------------------------------------------------------

    def supports(self, capability: str) -> bool:
        return capability in self.capabilities

    @property
    def fencing(self) -> bool:
        """Whether the broker itself refuses a stale lease token (see the module docstring)."""
        return "fencing" in self.capabilities

    def _unsupported(self, what: str) -> UnsupportedOperation:
        return UnsupportedOperation(f"the {self.name} driver does not support {what}")

    async def migrate(self, target: int | None = None) -> list[str]:
        """Create or upgrade the broker's schema up to ``target`` (default: latest); return
        the steps applied."""
        raise self._unsupported("schema migrations (it has no schema to migrate)")

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        raise self._unsupported("queue stats")

    async def peek(self, queue: str, limit: int = 100) -> list[tuple[str, bytes]]:
        """Up to ``limit`` messages of ``queue`` still waiting (ready, then delayed), as
        ``(message id, body)``, without leasing them: for finding a task by its id
        (``asynctasq cancel TASK_ID``). Drivers with the ``cancel`` capability have it."""
        raise self._unsupported("looking at waiting messages")

    async def maintain(self) -> None:  # noqa: B027 - optional hook
        """Clean-up the broker does not do by itself (expired results, failed entries past
        their retention); workers call it every ``--maintenance-interval`` seconds. Leases
        need none: an expired one is simply claimable again."""

    async def oldest_waiting(self, queues: Sequence[str]) -> dict[str, float | None]:
        """Seconds the longest-waiting ready message of each queue has been ready (None: none
        is ready), for ``asynctasq info``; ``UnsupportedOperation`` where the broker cannot say."""
        raise self._unsupported("the age of the oldest waiting message")

    async def list_queues(self) -> list[str]:
        """The broker's queues, sorted (for ``asynctasq info``): those holding a message or a
        failed entry (Redis: every queue used under the prefix); ``UnsupportedOperation``
        where the broker cannot list them."""
        raise self._unsupported("listing the broker's queues")

    async def purge(self, queue: str) -> int:
        """Delete every ready, delayed and leased message of ``queue``."""
        raise self._unsupported("purging queues")

    async def cancel(self, queue: str, message_id: str) -> bool:
        """Delete message ``message_id`` (the id ``enqueue`` returned) of ``queue`` if it is still
        waiting, ready or delayed (a message whose lease expired waits again); False when it is
        leased to a consumer, already done or unknown. The ``cancel`` capability."""
        raise self._unsupported("cancelling a waiting message")

    async def failed_list(self, queue: str | None = None, limit: int = 100) -> list[FailedEntry]:
        raise self._unsupported("the failed registry")

    async def failed_requeue(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        """Put failed messages back on their queue (all, or by ``ids`` / ``queue``)."""
        raise self._unsupported("the failed registry")

    async def failed_purge(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        raise self._unsupported("the failed registry")

    async def store_results(self, results: Sequence[tuple[str, bytes]], ttl: float) -> None:
        """Keep each (task id, encoded result) for ``ttl`` seconds."""
        raise self._unsupported("results")

    async def get_result(self, task_id: str, wait: float) -> bytes | None:
        """The stored result of ``task_id``, waiting up to ``wait`` s for it; None if absent."""
        if not self.supports("results"):
            raise self._unsupported("results")
        if wait <= 0:
            return await self._read_result(task_id)
        return await self._wait_for(lambda: self._read_result(task_id), [result_key(task_id)], (), wait)

    async def _read_result(self, task_id: str) -> bytes | None:
        raise self._unsupported("results")

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        raise self._unsupported("the worker registry")

    async def deregister_worker(self, name: str) -> None:
        raise self._unsupported("the worker registry")

    async def list_workers(self) -> list[WorkerInfo]:
        raise self._unsupported("the worker registry")

    async def send_command(self, worker: str, command: dict[str, Any]) -> None:
        """Queue a command (``{"command": "shutdown"}``, ...) for the worker named ``worker``."""
        raise self._unsupported("remote commands")

    async def receive_commands(self, worker: str) -> list[dict[str, Any]]:
        """Take the commands queued for ``worker`` since the last call."""
        raise self._unsupported("remote commands")
