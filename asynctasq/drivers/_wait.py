"""Waiting for the first message or a wake-up, with a deadline; waking the waiters.

Every driver's blocking ``dequeue`` and ``get_result`` run the same loop (in
:meth:`BaseDriver._wait_for`): register a :class:`Waiter` under some keys, try, and if nothing
came, pause until woken, until the broker's own signal, or until the deadline. Registration
comes before the try, so a wake-up that lands between the try and the pause is never lost.

A :class:`WakeHub` is shared by every driver of one process that points at the same broker
namespace (``wake_hub(scope)``), so a producer and a worker in one process wake each other at
once, across threads and event loops (``dispatch_sync`` runs on a loop of its own). Brokers that
signal other processes (PostgreSQL NOTIFY) feed the same hub.

:class:`AdaptivePoll` is the poll interval of brokers that cannot push: short while work
arrives, backing off with jitter while idle.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class Waiter:
    """One blocked call; woken from any thread through its own loop. ``seen`` is the driver's
    to keep what it last saw of the broker during this wait (SQLite: ``data_version``)."""

    __slots__ = ("_fut", "loop", "seen", "woken")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.woken = False
        self.seen: object = None
        self._fut: asyncio.Future[None] | None = None

    def wake(self) -> None:
        """Wake the waiter (on its own loop's thread)."""
        self.woken = True
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def wake_threadsafe(self) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.wake()
            return
        try:
            self.loop.call_soon_threadsafe(self.wake)
        except RuntimeError:  # that loop is closed: its waiter went with it
            pass

    async def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return True at once when woken (also if woken before the
        call, since the last :meth:`clear`)."""
        if self.woken:
            return True
        if seconds <= 0:
            return False
        fut = self.loop.create_future()
        self._fut = fut
        timer = self.loop.call_later(seconds, _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._fut = None
        return self.woken

    def clear(self) -> bool:
        """Forget a wake-up; return whether there was one."""
        woken, self.woken = self.woken, False
        return woken


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class WakeHub:
    """Waiters by key (``q:<queue>``, ``r:<task id>``...); thread-safe."""

    ALL = "*"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = {}

    @contextmanager
    def watch(self, keys: Iterable[str]) -> Iterator[Waiter]:
        """Register a waiter of the running loop under ``keys`` for the ``with`` block."""
        waiter = Waiter(asyncio.get_running_loop())
        keys = list(keys)
        with self._lock:
            for key in keys:
                self._waiters.setdefault(key, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                for key in keys:
                    group = self._waiters.get(key)
                    if group is not None:
                        group.discard(waiter)
                        if not group:
                            del self._waiters[key]

    def wake(self, keys: Iterable[str]) -> None:
        """Wake every waiter registered under any of ``keys`` (``WakeHub.ALL``: every waiter)."""
        with self._lock:
            if not self._waiters:
                return
            found: set[Waiter] = set()
            for key in keys:
                if key == self.ALL:
                    for group in self._waiters.values():
                        found |= group
                    break
                members = self._waiters.get(key)
                if members:
                    found |= members
        for waiter in found:
            waiter.wake_threadsafe()

    def wake_all(self) -> None:
        self.wake([self.ALL])

    def __bool__(self) -> bool:
        return bool(self._waiters)


_hubs: dict[str, WakeHub] = {}
_hubs_lock = threading.Lock()


def wake_hub(scope: str) -> WakeHub:
    """The process-wide hub of ``scope`` (a broker namespace: a file, a DSN and table...)."""
    with _hubs_lock:
        hub = _hubs.get(scope)
        if hub is None:
            hub = _hubs[scope] = WakeHub()
        return hub


def queue_key(queue: str) -> str:
    return "q:" + queue


def result_key(task_id: str) -> str:
    return "r:" + task_id


class AdaptivePoll:
    """A poll interval that starts at ``first_s`` after activity and grows by ``factor`` (with
    +-``jitter`` spread, so idle workers do not poll in step) up to ``max_s`` while idle."""

    __slots__ = ("_current", "factor", "first_s", "jitter", "max_s")

    def __init__(self, first_s: float, max_s: float, factor: float = 1.5, jitter: float = 0.1) -> None:
        if first_s <= 0 or max_s < first_s or factor < 1:
            raise ValueError("need 0 < first_s <= max_s and factor >= 1")
        self.first_s = first_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = jitter
        self._current = first_s

    def reset(self) -> None:
        """Activity: poll soon again."""
        self._current = self.first_s

    def next(self) -> float:
        """The pause before the next poll; later calls return longer ones, up to ``max_s``."""
        current = self._current
        self._current = min(current * self.factor, self.max_s)
        if self.jitter:
            current *= 1 + random.uniform(-self.jitter, self.jitter)
        return current


__all__ = ["AdaptivePoll", "Waiter", "WakeHub", "queue_key", "result_key", "wake_hub"]
