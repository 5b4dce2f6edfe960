"""In-process driver with the same semantics as the brokers: for tests, examples and users' own
test suites. Drivers created with the same ``namespace`` share one store, so a producer and a
worker configured separately in one process see the same queues::

    driver = MemoryDriver()                     # namespace "default"
    async with driver:
        await driver.enqueue("default", b"...")
"""

from __future__ import annotations

import heapq
import itertools
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from asynctasq.constants import DEFAULT_LEASE_S
from asynctasq.drivers._wait import Waiter
from asynctasq.drivers.base import (
    BaseDriver,
    Delivery,
    EnqueueItem,
    FailedEntry,
    QueueStats,
    WorkerInfo,
    validate_queue_name,
)


@dataclass(slots=True)
class _Message:
    id: str
    queue: str
    body: bytes
    count: int = 0
    token: str = ""
    state: str = "ready"  # ready | delayed | leased
    due: float = 0.0  # delayed: visible at; leased: lease expiry (monotonic)
    ready_since: float = 0.0  # when it last became ready (monotonic)


@dataclass
class _Store:
    messages: dict[str, _Message] = field(default_factory=dict)
    ready: dict[str, deque[str]] = field(default_factory=dict)
    timers: list[tuple[float, int, str, str]] = field(default_factory=list)  # due, seq, id, token
    failed: dict[str, FailedEntry] = field(default_factory=dict)
    results: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    workers: dict[str, tuple[WorkerInfo, float]] = field(default_factory=dict)
    commands: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    compact_at: int = 0
    """Heap size at which stale timers are dropped: twice the live ones of the last compaction
    plus a slack, so stale entries stay bounded by the live ones, not by the backlog."""


_stores: dict[str, _Store] = {}
TIMER_SLACK = 1000
"""Stale timers tolerated beyond twice the stored messages before the heap is compacted."""


class MemoryDriver(BaseDriver):
    name = "memory"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"stats", "failed", "results", "workers", "control", "purge", "cancel", "fencing"}
    )
    shield_claims = False  # a claim never waits: it cannot be cancelled half-way

    def __init__(
        self,
        *,
        namespace: str = "default",
        lease_seconds: float = DEFAULT_LEASE_S,
        max_message_bytes: int | None = None,
    ) -> None:
        super().__init__(lease_seconds=lease_seconds, max_message_bytes=max_message_bytes)
        self.namespace = namespace
        self._s = _stores.setdefault(namespace, _Store())

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        """``memory://`` (namespace "default") or ``memory://NAME``."""
        namespace = url.partition("://")[2].strip("/")
        return {"namespace": namespace} if namespace else {}

    def describe(self) -> str:
        return f"memory:{self.namespace}"

    def wake_scope(self) -> str:
        return self.namespace

    @classmethod
    def reset(cls, namespace: str = "default") -> None:
        """Forget everything stored under ``namespace`` (for test isolation)."""
        _stores.pop(namespace, None)

    # -- internals -------------------------------------------------------------------------

    def _schedule(self, msg: _Message, due: float) -> None:
        msg.due = due
        timers = self._s.timers
        heapq.heappush(timers, (due, next(self._s.seq), msg.id, msg.token))
        if len(timers) > self._s.compact_at:
            self._compact_timers()

    def _compact_timers(self) -> None:
        """Drop the timers of acked, released or re-leased messages (a stale timer otherwise
        stays until its due time: a busy store would grow by one per claim and extend)."""
        messages = self._s.messages
        live = []
        for entry in self._s.timers:
            msg = messages.get(entry[2])
            if msg is not None and msg.token == entry[3] and msg.due == entry[0] and msg.state != "ready":
                live.append(entry)
        heapq.heapify(live)
        self._s.timers = live
        self._s.compact_at = 2 * len(live) + TIMER_SLACK

    def _make_ready(self, msg: _Message) -> None:
        msg.state = "ready"
        msg.ready_since = time.monotonic()
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

    async def _enqueue_many(self, items: Sequence[EnqueueItem]) -> list[str]:
        ids = []
        now = time.monotonic()
        for item in items:
            msg = _Message(uuid.uuid4().hex, item.queue, bytes(item.body))
            self._s.messages[msg.id] = msg
            if item.delay > 0:
                msg.state = "delayed"
                self._schedule(msg, now + item.delay)
            else:
                self._make_ready(msg)
            ids.append(msg.id)
        return ids

    async def _claim(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        now = time.monotonic()
        self._run_timers(now)
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
        return out

    async def _pause(self, waiter: Waiter, queues: Sequence[str], left: float) -> None:
        # every change to the store happens in this process and wakes the hub: no polling,
        # only the next delayed message or lease expiry bounds the wait
        next_due = self._run_timers(time.monotonic())
        if next_due is not None and queues:
            left = min(left, max(next_due - time.monotonic(), 0.0005))
        await waiter.sleep(left)

    async def _ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        done = []
        for d in deliveries:
            if self._held(d) is not None:
                del self._s.messages[d.id]
                done.append(d)
        return done

    async def _release(self, delivery: Delivery, delay: float, body: bytes | None) -> bool:
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
        return True

    async def _extend(self, deliveries: Sequence[Delivery], seconds: float) -> list[Delivery]:
        held = []
        for d in deliveries:
            msg = self._held(d)
            if msg is not None:
                self._schedule(msg, time.monotonic() + seconds)
                held.append(d)
        return held

    async def _fail(self, delivery: Delivery, error: str) -> bool:
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

    async def peek(self, queue: str, limit: int = 100) -> list[tuple[str, bytes]]:
        validate_queue_name(queue)
        self._run_timers(time.monotonic())
        waiting = [m for m in self._s.messages.values() if m.queue == queue and m.state != "leased"]
        waiting.sort(key=lambda m: (m.state != "ready", m.due))
        return [(m.id, m.body) for m in waiting[:limit]]

    async def oldest_waiting(self, queues: Sequence[str]) -> dict[str, float | None]:
        now = time.monotonic()
        self._run_timers(now)
        out: dict[str, float | None] = {q: None for q in queues}
        for msg in self._s.messages.values():
            if msg.state == "ready" and msg.queue in out:
                age = now - msg.ready_since
                current = out[msg.queue]
                out[msg.queue] = age if current is None else max(current, age)
        return out

    async def list_queues(self) -> list[str]:
        names = {m.queue for m in self._s.messages.values()} | {e["queue"] for e in self._s.failed.values()}
        return sorted(names)

    async def cancel(self, queue: str, message_id: str) -> bool:
        validate_queue_name(queue)
        self._run_timers(time.monotonic())  # an expired lease waits again
        msg = self._s.messages.get(message_id)
        if msg is None or msg.queue != queue or msg.state == "leased":
            return False
        del self._s.messages[message_id]  # its ready entry and timer are skipped as stale
        return True

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
        self.wake_queues({e["queue"] for e in entries})
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
        self.wake_results(task_id for task_id, _ in results)

    async def _read_result(self, task_id: str) -> bytes | None:
        hit = self._s.results.get(task_id)
        if hit is None:
            return None
        if hit[1] > time.monotonic():
            return hit[0]
        del self._s.results[task_id]
        return None

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
