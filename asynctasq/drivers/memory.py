"""In-process driver with the same semantics as the brokers: for tests, examples and users' own
test suites. Drivers created with the same ``namespace`` share one store, so a producer and a
worker configured separately in one process see the same queues::

    driver = MemoryDriver()                     # namespace "default"
    async with driver:
        await driver.enqueue("default", b"...")
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from asynctasq.drivers.base import (
    DEFAULT_LEASE_S,
    BaseDriver,
    Delivery,
    EnqueueItem,
    FailedEntry,
    QueueStats,
    WorkerInfo,
    validate_queue_name,
)

if TYPE_CHECKING:
    from asynctasq.config import Config


@dataclass(slots=True)
class _Message:
    id: str
    queue: str
    body: bytes
    count: int = 0
    token: str = ""
    state: str = "ready"  # ready | delayed | leased
    due: float = 0.0  # delayed: visible at; leased: lease expiry (monotonic)


@dataclass
class _Store:
    messages: dict[str, _Message] = field(default_factory=dict)
    ready: dict[str, deque[str]] = field(default_factory=dict)
    timers: list[tuple[float, int, str, str]] = field(default_factory=list)  # due, seq, id, token
    failed: dict[str, FailedEntry] = field(default_factory=dict)
    results: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    workers: dict[str, tuple[WorkerInfo, float]] = field(default_factory=dict)
    commands: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    waiters: set[asyncio.Future[None]] = field(default_factory=set)
    seq: itertools.count[int] = field(default_factory=itertools.count)

    def wake(self) -> None:
        for fut in list(self.waiters):
            if not fut.done():
                fut.get_loop().call_soon_threadsafe(_resolve, fut)
        self.waiters.clear()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_stores: dict[str, _Store] = {}


class MemoryDriver(BaseDriver):
    name = "memory"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"stats", "failed", "results", "workers", "control", "purge"}
    )

    def __init__(self, *, namespace: str = "default", lease_seconds: float = DEFAULT_LEASE_S) -> None:
        super().__init__(lease_seconds=lease_seconds)
        self.namespace = namespace
        self._s = _stores.setdefault(namespace, _Store())

    @classmethod
    def from_config(cls, config: Config) -> MemoryDriver:
        return cls(lease_seconds=config.lease_seconds)

    def describe(self) -> str:
        return f"memory:{self.namespace}"

    @classmethod
    def reset(cls, namespace: str = "default") -> None:
        """Forget everything stored under ``namespace`` (for test isolation)."""
        _stores.pop(namespace, None)

    # -- internals -------------------------------------------------------------------------

    def _schedule(self, msg: _Message, due: float) -> None:
        msg.due = due
        heapq.heappush(self._s.timers, (due, next(self._s.seq), msg.id, msg.token))

    def _make_ready(self, msg: _Message) -> None:
        msg.state = "ready"
        msg.token = ""
        self._s.ready.setdefault(msg.queue, deque()).append(msg.id)

    def _run_timers(self, now: float) -> float | None:
        """Promote due delayed messages and expired leases; return the next due time."""
        timers = self._s.timers
        while timers and timers[0][0] <= now:
            due, _, msg_id, token = heapq.heappop(timers)
            msg = self._s.messages.get(msg_id)
            if msg is None or msg.token != token or msg.due != due or msg.state == "ready":
                continue  # stale timer: acked, released, extended or re-leased since
            self._make_ready(msg)
        return timers[0][0] if timers else None

    def _held(self, d: Delivery) -> _Message | None:
        msg = self._s.messages.get(d.id)
        if msg is None or msg.state != "leased" or msg.token != d.token:
            return None
        if msg.due <= time.monotonic():
            self._run_timers(time.monotonic())  # expired: it belongs to the queue again
            return None
        return msg

    # -- contract --------------------------------------------------------------------------

    async def enqueue(self, queue: str, body: bytes, delay: float = 0.0) -> str:
        return (await self.enqueue_many([EnqueueItem(queue, body, delay)]))[0]

    async def enqueue_many(self, items: Sequence[EnqueueItem]) -> list[str]:
        ids = []
        now = time.monotonic()
        for item in items:
            validate_queue_name(item.queue)
            msg = _Message(uuid.uuid4().hex, item.queue, bytes(item.body))
            self._s.messages[msg.id] = msg
            if item.delay > 0:
                msg.state = "delayed"
                self._schedule(msg, now + item.delay)
            else:
                self._make_ready(msg)
            ids.append(msg.id)
        self._s.wake()
        return ids

    async def dequeue(self, queues: Sequence[str], limit: int, wait: float) -> list[Delivery]:
        for q in queues:
            validate_queue_name(q)
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            now = time.monotonic()
            next_due = self._run_timers(now)
            out: list[Delivery] = []
            for q in queues:
                ids = self._s.ready.get(q)
                while ids and len(out) < limit:
                    msg = self._s.messages.get(ids.popleft())
                    if msg is None or msg.state != "ready":
                        continue
                    msg.state = "leased"
                    msg.count += 1
                    msg.token = uuid.uuid4().hex
                    self._schedule(msg, now + self.lease_seconds)
                    out.append(Delivery(msg.id, msg.queue, msg.body, msg.token, msg.count))
                if len(out) >= limit:
                    break
            if out or now >= deadline or limit <= 0:
                return out
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._s.waiters.add(fut)
            timeout = deadline - now if next_due is None else min(deadline, next_due) - now
            try:
                await asyncio.wait_for(fut, max(timeout, 0.0))
            except TimeoutError:
                pass
            finally:
                self._s.waiters.discard(fut)

    async def ack(self, deliveries: Sequence[Delivery]) -> int:
        done = 0
        for d in deliveries:
            if self._held(d) is not None:
                del self._s.messages[d.id]
                done += 1
        return done

    async def release(self, delivery: Delivery, delay: float = 0.0, body: bytes | None = None) -> bool:
        msg = self._held(delivery)
        if msg is None:
            return False
        if body is None:
            msg.count = max(msg.count - 1, 0)
        else:
            msg.body = bytes(body)
            msg.count = 0
        if delay > 0:
            msg.state = "delayed"
            msg.token = ""
            self._schedule(msg, time.monotonic() + delay)
        else:
            self._make_ready(msg)
        self._s.wake()
        return True

    async def extend(self, deliveries: Sequence[Delivery], seconds: float | None = None) -> int:
        seconds = self.lease_seconds if seconds is None else seconds
        held = 0
        for d in deliveries:
            msg = self._held(d)
            if msg is not None:
                self._schedule(msg, time.monotonic() + seconds)
                held += 1
        return held

    async def fail(self, delivery: Delivery, error: str) -> bool:
        msg = self._held(delivery)
        if msg is None:
            return False
        del self._s.messages[msg.id]
        self._s.failed[msg.id] = FailedEntry(
            id=msg.id, queue=msg.queue, body=msg.body, error=error, failed_at=time.time()
        )
        return True

    # -- optional --------------------------------------------------------------------------

    async def stats(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        self._run_timers(time.monotonic())
        out = {q: QueueStats(ready=0, delayed=0, leased=0, failed=0) for q in queues}
        for msg in self._s.messages.values():
            if msg.queue in out:
                out[msg.queue][msg.state] += 1  # type: ignore[literal-required]
        for entry in self._s.failed.values():
            if entry["queue"] in out:
                out[entry["queue"]]["failed"] += 1
        return out

    async def purge(self, queue: str) -> int:
        doomed = [m.id for m in self._s.messages.values() if m.queue == queue]
        for msg_id in doomed:
            del self._s.messages[msg_id]
        self._s.ready.pop(queue, None)
        return len(doomed)

    def _failed_matching(self, ids: Iterable[str] | None, queue: str | None) -> list[FailedEntry]:
        wanted = None if ids is None else set(ids)
        return [
            e
            for e in self._s.failed.values()
            if (wanted is None or e["id"] in wanted) and (queue is None or e["queue"] == queue)
        ]

    async def failed_list(self, queue: str | None = None, limit: int = 100) -> list[FailedEntry]:
        return sorted(self._failed_matching(None, queue), key=lambda e: e["failed_at"])[:limit]

    async def failed_requeue(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        entries = self._failed_matching(ids, queue)
        for e in entries:
            del self._s.failed[e["id"]]
            msg = _Message(e["id"], e["queue"], e["body"])
            self._s.messages[msg.id] = msg
            self._make_ready(msg)
        self._s.wake()
        return len(entries)

    async def failed_purge(self, ids: Iterable[str] | None = None, queue: str | None = None) -> int:
        entries = self._failed_matching(ids, queue)
        for e in entries:
            del self._s.failed[e["id"]]
        return len(entries)

    async def store_results(self, results: Sequence[tuple[str, bytes]], ttl: float) -> None:
        expires = time.monotonic() + ttl
        for task_id, payload in results:
            self._s.results[task_id] = (payload, expires)
        self._s.wake()

    async def get_result(self, task_id: str, wait: float) -> bytes | None:
        deadline = time.monotonic() + wait
        while True:
            hit = self._s.results.get(task_id)
            now = time.monotonic()
            if hit is not None:
                if hit[1] > now:
                    return hit[0]
                del self._s.results[task_id]
            if now >= deadline:
                return None
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._s.waiters.add(fut)
            try:
                await asyncio.wait_for(fut, deadline - now)
            except TimeoutError:
                pass
            finally:
                self._s.waiters.discard(fut)

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        self._s.workers[info["name"]] = (info, time.monotonic() + ttl)

    async def deregister_worker(self, name: str) -> None:
        self._s.workers.pop(name, None)
        self._s.commands.pop(name, None)

    async def list_workers(self) -> list[WorkerInfo]:
        now = time.monotonic()
        for name in [n for n, (_, exp) in self._s.workers.items() if exp <= now]:
            del self._s.workers[name]
        return [info for info, _ in self._s.workers.values()]

    async def send_command(self, worker: str, command: dict[str, Any]) -> None:
        self._s.commands.setdefault(worker, []).append(dict(command))

    async def receive_commands(self, worker: str) -> list[dict[str, Any]]:
        return self._s.commands.pop(worker, [])
