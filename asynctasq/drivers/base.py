"""The driver contract: a driver moves opaque message bodies between producers and workers.

A driver knows nothing of tasks, retries or serializers; the worker does that bookkeeping.
What every driver must give:

- ``enqueue`` / ``enqueue_many``: durable when they return; ``delay`` hides a message for that
  many seconds.
- ``dequeue(queues, limit, wait)``: up to ``limit`` messages, taken from ``queues`` in the
  order given (the first queue is drained first), waiting up to ``wait`` seconds for the first
  one without a fixed sleep loop where the broker can wake us. Each message comes back leased
  for ``lease_seconds``: no other consumer sees it until it is acked, released, failed, or the
  lease expires. A lease expires back onto its queue by itself, with ``delivery_count`` raised.
- Every delivery has a fresh ``token``. ``ack``, ``release``, ``extend`` and ``fail`` act only
  while the token is still the message's current one; otherwise they change nothing and say so
  (``False``, or a smaller count). A worker that lost its lease can never touch the new
  holder's work. (A lease that expired but that nobody has claimed again may still be acked
  or extended: no one else holds it. Drivers may refuse that too.)
- ``release(delivery, delay, body=None)`` is one atomic step. Without ``body`` it gives the
  message back uncounted (its delivery count goes back down by one); with ``body`` it
  replaces the stored message (a retry) and resets the delivery count to zero.
- ``fail(delivery, error)`` moves the message to the failed registry (dead letter).

``delivery_count`` is the number of deliveries since the message was last written, so
``delivery_count - 1`` is how many earlier deliveries were lost (a worker died holding them).
The worker adds that to the attempt number carried in the message.

Optional capabilities raise :class:`UnsupportedOperation` unless a driver lists them in
``capabilities`` and overrides them: ``stats``, ``failed`` (list/requeue/purge), ``results``,
``workers`` (registry), ``control`` (remote commands), ``purge``.

A new driver subclasses :class:`BaseDriver`, passes ``tests/drivers/`` against its real
broker, and gets one line in :mod:`asynctasq.core.driver_factory`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypedDict

from asynctasq.errors import InvalidQueueName, UnsupportedOperation

if TYPE_CHECKING:
    from asynctasq.config import Config

DEFAULT_LEASE_S = 30.0
QUEUE_NAME_MAX_LEN = 80
_QUEUE_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,%d}\Z" % QUEUE_NAME_MAX_LEN)
_valid_queue_names: set[str] = set()


def validate_queue_name(name: str) -> str:
    """Return ``name`` if it is a valid queue name, else raise :class:`InvalidQueueName`."""
    if name in _valid_queue_names:
        return name
    if not isinstance(name, str) or not _QUEUE_NAME_RE.match(name):
        raise InvalidQueueName(
            f"invalid queue name {name!r}: use 1-{QUEUE_NAME_MAX_LEN} characters from "
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


class EnqueueItem(NamedTuple):
    queue: str
    body: bytes
    delay: float = 0.0


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


class BaseDriver(ABC):
    """Abstract broker connection; see the module docstring for the contract."""

    name: ClassVar[str] = "base"
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, *, lease_seconds: float = DEFAULT_LEASE_S) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.lease_seconds = float(lease_seconds)

    @classmethod
    def from_config(cls, config: Config) -> BaseDriver:
        """Build the driver from the ``<name>_*`` settings of ``config``."""
        raise NotImplementedError(f"{cls.__name__}.from_config")

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:  # noqa: B027 - optional hook
        """Open connections; idempotent."""

    async def disconnect(self) -> None:  # noqa: B027 - optional hook
        """Close connections; idempotent."""

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

    # -- required --------------------------------------------------------------------------

    @abstractmethod
    async def enqueue(self, queue: str, body: bytes, delay: float = 0.0) -> str:
        """Store one message; return the driver's id for it."""

    async def enqueue_many(self, items: Sequence[EnqueueItem]) -> list[str]:
        """Store many messages, in one round trip where the broker allows."""
        return [await self.enqueue(i.queue, i.body, i.delay) for i in items]

    @abstractmethod
    async def dequeue(self, queues: Sequence[str], limit: int, wait: float) -> list[Delivery]:
        """Lease up to ``limit`` messages from ``queues`` in that order; wait up to ``wait`` s."""

    @abstractmethod
    async def ack(self, deliveries: Sequence[Delivery]) -> int:
        """Delete finished messages; return how many were still held (stale ones are skipped)."""

    @abstractmethod
    async def release(self, delivery: Delivery, delay: float = 0.0, body: bytes | None = None) -> bool:
        """Make the message visible again after ``delay``; with ``body``, as a retry."""

    @abstractmethod
    async def extend(self, deliveries: Sequence[Delivery], seconds: float | None = None) -> int:
        """Push the leases' expiry to now + ``seconds``; return how many were still held."""

    @abstractmethod
    async def fail(self, delivery: Delivery, error: str) -> bool:
        """Move the message to the failed registry with ``error``."""

    # -- optional --------------------------------------------------------------------------

    def supports(self, capability: str) -> bool:
        return capability in self.capabilities

    def _unsupported(self, what: str) -> UnsupportedOperation:
        return UnsupportedOperation(f"the {self.name} driver does not support {what}")

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        raise self._unsupported("queue stats")

    async def purge(self, queue: str) -> int:
        """Delete every ready, delayed and leased message of ``queue``."""
        raise self._unsupported("purging queues")

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
