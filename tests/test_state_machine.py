"""A hypothesis state machine per driver (tests.backends.BACKENDS) against a model of the queue.

Random sequences of enqueue, dequeue by two competing consumers, ack, release with and without
a new body, fail, extend, lease expiry (a lease cut to 50 ms by ``extend``, then waited out),
and a late ack with a stale token. After every step the model and the broker agree: nothing is
lost, nothing is held by two consumers at once, a delivery count is what the contract says
(1 after a write, +1 after an expired lease, unchanged after a give-back), a stale token is
refused where the driver declares fencing, and the counts of ``stats`` match. At the end every
live message is drained and accounted for. ``ASYNCTASQ_STATE_MACHINE_EXAMPLES`` sets the number
of runs per driver (default 12). A backend whose consumers prefetch (RabbitMQ) may keep a ready
message from the other consumer for its ``HANDOVER_S``; the model waits that long for it, and
for the counts to agree, never longer.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from asynctasq.drivers.base import BaseDriver, Delivery, EnqueueItem
from tests.backends import (
    RELIABILITY_BACKENDS,
    cleanup,
    handover_s,
    make_driver,
    stats_count_own_leases,
)

T = TypeVar("T")
EXAMPLES = int(os.environ.get("ASYNCTASQ_STATE_MACHINE_EXAMPLES", "12"))
SHORT_LEASE_S = 0.05
EXPIRY_WAIT_S = 0.25
ANY_INDEX = st.integers(0, 1 << 16)
"""Picks among the model's messages draw from a fixed range: on a broker whose choice of what to
deliver varies with timing (RabbitMQ's prefetch), a replayed run may hold a different number of
messages, and a ``sampled_from`` of another length is an inconsistent draw to hypothesis."""


@dataclass
class Message:
    body: bytes
    state: str = "ready"  # ready | held | expired | done | failed
    next_count: int = 1  # the delivery_count its next delivery must carry
    delivery: Delivery | None = None
    holder: int | None = None


class QueueModel(RuleBasedStateMachine):
    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.namespace = "sm" + uuid.uuid4().hex[:10]
        self.queue = "q-" + uuid.uuid4().hex[:6]
        self.consumers: list[BaseDriver] = [
            self.run(make_driver(self.backend, self.namespace)) for _ in range(2)
        ]
        self.messages: dict[bytes, Message] = {}  # by current body (bodies are unique)
        self.stale: list[tuple[int, Delivery]] = []  # deliveries whose lease went to someone else
        self.serial = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    @property
    def fencing(self) -> bool:
        return self.consumers[0].fencing

    def in_state(self, *states: str) -> list[Message]:
        return [m for m in self.messages.values() if m.state in states]

    def _pick(self, data: st.DataObject, *states: str) -> Message:
        candidates = sorted(self.in_state(*states), key=lambda m: m.body)
        return candidates[data.draw(ANY_INDEX) % len(candidates)]

    # -- rules -------------------------------------------------------------------------------

    @rule(n=st.integers(1, 3))
    def enqueue(self, n: int) -> None:
        bodies = []
        for _ in range(n):
            self.serial += 1
            bodies.append(f"m{self.serial}".encode())
        self.run(self.consumers[0].enqueue_many([EnqueueItem(self.queue, b) for b in bodies]))
        for body in bodies:
            self.messages[body] = Message(body)

    @rule(consumer=st.integers(0, 1), limit=st.integers(1, 4))
    def dequeue(self, consumer: int, limit: int) -> None:
        fresh = len(self.in_state("ready"))
        driver = self.consumers[consumer]
        got = self.run(driver.dequeue([self.queue], limit, wait=0))
        deadline = time.monotonic() + handover_s(self.backend) + 1.0 if handover_s(self.backend) else 0.0
        while len(got) < min(limit, fresh) and time.monotonic() < deadline:
            # prefetched by the other consumer, which gives it back within HANDOVER_S
            got += self.run(driver.dequeue([self.queue], limit - len(got), wait=0.05))
        assert len(got) <= limit
        assert len(got) >= min(limit, fresh), f"{fresh} ready, asked {limit}, got {len(got)}"
        for d in got:
            msg = self.messages.get(d.body)
            assert msg is not None, f"a message nobody sent, or an old body after a retry: {d.body!r}"
            assert msg.state in ("ready", "expired"), f"{d.body!r} delivered while {msg.state}"
            assert d.delivery_count == msg.next_count, (d.body, d.delivery_count, msg.next_count)
            if msg.state == "expired" and msg.delivery is not None and msg.holder is not None:
                self.stale.append((msg.holder, msg.delivery))
            msg.state, msg.delivery, msg.holder = "held", d, consumer

    @precondition(lambda self: self.in_state("held"))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        msg = self._pick(data, "held")
        assert msg.delivery is not None and msg.holder is not None
        assert self.run(self.consumers[msg.holder].ack([msg.delivery])) == [msg.delivery]
        msg.state = "done"

    @precondition(lambda self: self.in_state("held"))
    @rule(data=st.data(), new_body=st.booleans())
    def release(self, data: st.DataObject, new_body: bool) -> None:
        msg = self._pick(data, "held")
        d, holder = msg.delivery, msg.holder
        assert d is not None and holder is not None
        if new_body:
            self.serial += 1
            body = f"{msg.body.decode()}-r{self.serial}".encode()
            assert self.run(self.consumers[holder].release(d, 0.0, body)) is True
            del self.messages[msg.body]
            msg.body, msg.next_count = body, 1
            self.messages[body] = msg
        else:
            assert self.run(self.consumers[holder].release(d, 0.0)) is True
            msg.next_count = d.delivery_count  # a give-back costs no attempt
        msg.state = "ready"
        self.stale.append((holder, d))

    @precondition(lambda self: self.in_state("held"))
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        msg = self._pick(data, "held")
        assert msg.delivery is not None and msg.holder is not None
        assert self.run(self.consumers[msg.holder].fail(msg.delivery, "boom")) is True
        msg.state = "failed"

    @precondition(lambda self: self.in_state("held"))
    @rule(data=st.data())
    def extend(self, data: st.DataObject) -> None:
        msg = self._pick(data, "held")
        assert msg.delivery is not None and msg.holder is not None
        assert self.run(self.consumers[msg.holder].extend([msg.delivery], 30.0)) == [msg.delivery]

    @precondition(lambda self: self.in_state("held"))
    @rule(data=st.data())
    def let_the_lease_expire(self, data: st.DataObject) -> None:
        msg = self._pick(data, "held")
        assert msg.delivery is not None and msg.holder is not None
        kept = self.run(self.consumers[msg.holder].extend([msg.delivery], SHORT_LEASE_S))
        assert kept == [msg.delivery]
        deadline = time.monotonic() + EXPIRY_WAIT_S
        self.run(asyncio.sleep(max(deadline - time.monotonic(), 0)))  # the lease's own deadline
        msg.state = "expired"
        msg.next_count = msg.delivery.delivery_count + 1

    @precondition(lambda self: self.in_state("expired"))
    @rule(data=st.data())
    def ack_an_expired_unclaimed_lease(self, data: st.DataObject) -> None:
        """Nobody else holds it: a driver may accept the ack or refuse it, and the model follows."""
        msg = self._pick(data, "expired")
        assert msg.delivery is not None and msg.holder is not None
        kept = self.run(self.consumers[msg.holder].ack([msg.delivery]))
        assert kept in ([], [msg.delivery])
        if kept:
            msg.state = "done"

    @precondition(lambda self: self.stale and self.fencing)
    @rule(data=st.data(), action=st.sampled_from(["ack", "extend", "release", "fail"]))
    def a_stale_token_is_refused(self, data: st.DataObject, action: str) -> None:
        holder, d = self.stale[data.draw(ANY_INDEX) % len(self.stale)]
        driver = self.consumers[holder]
        if action == "ack":
            assert self.run(driver.ack([d])) == []
        elif action == "extend":
            assert self.run(driver.extend([d], 30.0)) == []
        elif action == "release":
            assert self.run(driver.release(d, 0.0)) is False
        else:
            assert self.run(driver.fail(d, "late")) is False

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def counts_agree(self) -> None:
        driver = self.consumers[0]
        if not driver.supports("stats"):
            return  # nothing to compare: the drain in teardown still accounts for every message
        live = len(self.in_state("ready", "held", "expired"))
        deadline = time.monotonic() + handover_s(self.backend) + 1.0 if handover_s(self.backend) else 0.0
        while True:
            stats = self.run(driver.stats([self.queue]))[self.queue]
            if stats_count_own_leases(self.backend):
                others = self.consumers[1:]
                stats["leased"] += sum(self.run(d.stats([self.queue]))[self.queue]["leased"] for d in others)
            total = stats["ready"] + stats["delayed"] + stats["leased"]
            if total == live or time.monotonic() >= deadline:
                break
            self.run(asyncio.sleep(0.05))  # a prefetched message on its way back (HANDOVER_S)
        assert total == live, (stats, live)
        assert stats["leased"] >= len(self.in_state("held")), (stats, "held")
        assert stats["failed"] == len(self.in_state("failed")), (stats, "failed")

    def teardown(self) -> None:
        try:
            self._drain_and_account()
        finally:
            for driver in self.consumers:
                self.run(driver.disconnect())
            self.run(cleanup(self.backend, self.namespace))
            self.loop.close()

    def _drain_and_account(self) -> None:
        """Nothing lost: every live message comes out once more, every failed one is listed."""
        for msg in self.in_state("held"):
            assert msg.delivery is not None and msg.holder is not None
            assert self.run(self.consumers[msg.holder].ack([msg.delivery])) == [msg.delivery]
            msg.state = "done"
        expected = {m.body for m in self.in_state("ready", "expired")}
        seen: set[bytes] = set()
        deadline = time.monotonic() + 2  # short: hypothesis replays failing runs while it shrinks
        while seen != expected and time.monotonic() < deadline:
            got = self.run(self.consumers[0].dequeue([self.queue], 50, wait=0.05))
            assert all(d.body not in seen for d in got), "delivered twice while held"
            seen |= {d.body for d in got}
            if got:
                self.run(self.consumers[0].ack(got))
        assert seen == expected, f"lost: {expected - seen}, unexpected: {seen - expected}"
        assert self.run(self.consumers[0].dequeue([self.queue], 10, wait=0)) == []
        if self.consumers[0].supports("failed"):
            failed = self.run(self.consumers[0].failed_list(self.queue, limit=1000))
            assert sorted(e["body"] for e in failed) == sorted(m.body for m in self.in_state("failed"))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", RELIABILITY_BACKENDS)
def test_the_driver_behaves_like_the_model(backend: str) -> None:
    machine = type(f"QueueModel_{backend}", (QueueModel,), {"backend": backend})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
