"""One reconnect-with-backoff policy for every driver.

A driver wraps each broker operation in ``await self._reconnect.run(op)``. When ``op`` raises
one of the driver's *retryable* errors (a lost or refused connection), the call waits with
jittered exponential backoff (``RECONNECT_FIRST_DELAY_S`` doubling to
``RECONNECT_MAX_DELAY_S``, so work resumes within that long of the broker's return) and tries
again, for up to ``timeout_s``; then it raises :class:`BrokerUnavailable` with a message that
says where the broker was expected and what to do. An outage is logged once, when it starts,
and once when it ends, however many operations were waiting through it: no tracebacks.

Every operation a driver passes here must be safe to repeat (at-least-once: a repeated enqueue
may duplicate a message, never lose one).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from asynctasq.constants import (
    DEFAULT_RECONNECT_TIMEOUT_S,
    RECONNECT_FIRST_DELAY_S,
    RECONNECT_MAX_DELAY_S,
)
from asynctasq.errors import BrokerUnavailable

T = TypeVar("T")
log = logging.getLogger("asynctasq.drivers")


def one_line(exc: BaseException, secret: str | None = None) -> str:
    """The first line of ``exc``'s message (its type name when empty), ``secret`` masked."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if secret:
        text = text.replace(secret, "***")
    return text


class Reconnect:
    """Arguments: ``where`` (the broker, safe to log: ``"Redis at 127.0.0.1:6379"``), ``hint``
    (what to do when it stays away: ``"start Redis there or point --redis-url at a running
    server"``), ``retryable`` (the exception classes of a lost connection), ``timeout_s``,
    ``secret`` (a password to mask in messages), ``on_lost`` (called once per failed try, to drop
    a broken connection or pool)."""

    def __init__(
        self,
        where: str,
        hint: str,
        retryable: tuple[type[BaseException], ...],
        *,
        timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S,
        secret: str | None = None,
        on_lost: Callable[[BaseException], Awaitable[None] | None] | None = None,
    ) -> None:
        self.where = where
        self.hint = hint
        self.retryable = retryable
        self.timeout_s = timeout_s
        self.secret = secret
        self.on_lost = on_lost
        self._outage_since: float | None = None

    @property
    def down(self) -> bool:
        """True while an outage is going on (some operation is retrying)."""
        return self._outage_since is not None

    def unavailable(self, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(f"cannot reach {self.where} ({one_line(exc, self.secret)}): {self.hint}")

    async def run(
        self,
        op: Callable[[], Awaitable[T]],
        *,
        timeout_s: float | None = None,
        failed: BaseException | None = None,
    ) -> T:
        """``op()``, retried with backoff while it raises a retryable error. ``failed``: the
        retryable error of a first try the caller made itself (a driver's hot path tries once
        without this wrapper and comes here only when that try lost the connection)."""
        budget = self.timeout_s if timeout_s is None else timeout_s
        deadline: float | None = None
        delay = RECONNECT_FIRST_DELAY_S
        exc = failed
        while True:
            if exc is None:
                try:
                    result = await op()
                except self.retryable as lost:
                    exc = lost
                else:
                    if self._outage_since is not None:
                        since, self._outage_since = self._outage_since, None
                        log.warning("%s is back after %.1fs", self.where, time.monotonic() - since)
                    return result
            now = time.monotonic()
            if deadline is None:
                deadline = now + budget
            if self._outage_since is None:
                self._outage_since = now
                log.warning("lost %s (%s); reconnecting", self.where, one_line(exc, self.secret))
            if self.on_lost is not None:
                maybe = self.on_lost(exc)
                if maybe is not None:
                    await maybe
            if now >= deadline:
                raise self.unavailable(exc) from None
            exc = None
            await asyncio.sleep(min(delay * (0.5 + random.random()), max(deadline - now, 0.0)))
            delay = min(delay * 2, RECONNECT_MAX_DELAY_S)


__all__ = ["Reconnect", "one_line"]
