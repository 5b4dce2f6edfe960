"""Several worker processes under one supervisor (``worker-pool -n 3``, ``worker --processes 3``).

The supervisor starts N ``python -m asynctasq worker`` children with the same arguments,
restarts a child that dies (a crash, SIGKILL, out of memory) after a short backoff, and passes
SIGTERM/SIGINT on to every child: the children stop gracefully and the supervisor exits 0 once
they have. A child that ends by itself with exit code 0 (burst, max tasks, idle time) is not
restarted; the supervisor returns when none is left.

Names: with a worker name (``--name X`` among the arguments, or ``ASYNCTASQ_NAME``), the
children are named ``X-1`` ... ``X-N`` (a restarted child keeps its number), so the worker
registry tells them apart.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from asynctasq.config import env_name

log = logging.getLogger("asynctasq.supervisor")

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
POLL_INTERVAL_S = 0.2
HEALTHY_AFTER_S = 30.0
"""A child that ran this long before dying starts again without backoff."""


NAME_FLAG = "--name"


def split_name(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """The value of ``--name`` in ``args`` (the last one given), and the other arguments."""
    name, rest = None, []
    items = iter(args)
    for arg in items:
        if arg == NAME_FLAG:
            name = next(items, None)
        elif arg.startswith(NAME_FLAG + "="):
            name = arg.partition("=")[2]
        else:
            rest.append(arg)
    return name, rest


class Supervisor:
    def __init__(
        self, worker_args: Sequence[str], processes: int, *, metrics_port: int | None = None
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        flag_name, self.worker_args = split_name(worker_args)
        self.name_variable = env_name("worker_name")
        self.name = flag_name or os.environ.get(self.name_variable) or None
        self.processes = processes
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.started_at: dict[int, float] = {}
        self.failures: dict[int, int] = {}
        self.restart_at: dict[int, float] = {}
        self.stopping = 0  # signals received
        self.metrics_port = metrics_port
        self.metrics: Any = None

    def _spawn(self, slot: int) -> None:
        env = dict(os.environ)
        if self.name:
            env[self.name_variable] = f"{self.name}-{slot}"
        child = subprocess.Popen([sys.executable, "-m", "asynctasq", "worker", *self.worker_args], env=env)
        self.children[slot] = child
        self.started_at[slot] = time.monotonic()
        log.info("worker process %d started (pid %d)", slot, child.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping += 1
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signum)

    def run(self) -> int:
        """Supervise until the children are done; the exit code for the supervisor."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        if self.metrics_port is not None:  # one endpoint for the pool, before any child starts
            from asynctasq.metrics import PoolMetrics

            self.metrics = PoolMetrics(self.metrics_port)
        try:
            for slot in range(1, self.processes + 1):
                self._spawn(slot)
            while self.children or self.restart_at:
                time.sleep(POLL_INTERVAL_S)
                now = time.monotonic()
                for slot, child in list(self.children.items()):
                    code = child.poll()
                    if code is None:
                        continue
                    del self.children[slot]
                    if self.metrics is not None:
                        self.metrics.child_exited(child.pid)
                    if self.stopping or code == 0:
                        log.info("worker process %d (pid %d) exited with %d", slot, child.pid, code)
                        continue
                    ran = now - self.started_at[slot]
                    self.failures[slot] = 0 if ran >= HEALTHY_AFTER_S else self.failures.get(slot, 0) + 1
                    delay = RESTART_BACKOFF_S[min(self.failures[slot], len(RESTART_BACKOFF_S) - 1)]
                    log.warning(
                        "worker process %d (pid %d) died with %d; restarting in %ss",
                        slot,
                        child.pid,
                        code,
                        delay,
                    )
                    self.restart_at[slot] = now + delay
                for slot, when in list(self.restart_at.items()):
                    if self.stopping:
                        del self.restart_at[slot]
                    elif when <= now:
                        del self.restart_at[slot]
                        self._spawn(slot)
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
