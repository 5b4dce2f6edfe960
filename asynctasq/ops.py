"""What the operations commands show and send: ``asynctasq info`` (a snapshot of the broker's
queues and workers, as a table, JSON or a live view), ``suspend`` / ``resume`` broadcasts, and
the ``systemd-unit`` text."""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from asynctasq.core.worker import Worker, WorkerRecord
from asynctasq.drivers.base import BaseDriver, QueueStats
from asynctasq.errors import UnsupportedOperation


@dataclass
class Snapshot:
    """Queue counts and workers at ``taken_at``; ``notes`` say what the driver cannot show."""

    driver: str
    queues: dict[str, QueueStats]
    workers: list[WorkerRecord] | None
    notes: list[str] = field(default_factory=list)
    taken_at: float = field(default_factory=time.time)
    oldest: dict[str, float | None] = field(default_factory=dict)
    """Seconds the longest-waiting ready task of each queue has waited (where the driver says)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "driver": self.driver,
            "taken_at": self.taken_at,
            "queues": {
                name: {
                    "ready": s["ready"],
                    "delayed": s["delayed"],
                    "running": s["leased"],
                    "failed": s["failed"],
                    "oldest_waiting_s": self.oldest.get(name),
                }
                for name, s in self.queues.items()
            },
            "workers": None
            if self.workers is None
            else [
                {
                    "name": w.name,
                    "hostname": w.hostname,
                    "pid": w.pid,
                    "queues": w.queues,
                    "state": w.state,
                    "current_task_ids": w.current_task_ids,
                    "birth_date": w.birth_date.isoformat() if w.birth_date else None,
                    "last_heartbeat": w.last_heartbeat.isoformat() if w.last_heartbeat else None,
                    "successful_task_count": w.successful_task_count,
                    "failed_task_count": w.failed_task_count,
                    "total_working_time": w.total_working_time,
                }
                for w in self.workers
            ],
            "notes": self.notes,
        }


async def snapshot(driver: BaseDriver, only: list[str] | None = None) -> Snapshot:
    """Every queue on the broker (or ``only`` those), their counts, and the workers."""
    notes: list[str] = []
    names = only
    if names is None:
        try:
            names = await driver.list_queues()
        except UnsupportedOperation as exc:
            notes.append(f"{exc}: give --queues")
            names = []
    queues: dict[str, QueueStats] = {}
    if names:
        try:
            queues = await driver.stats(names)
        except UnsupportedOperation as exc:
            notes.append(str(exc))
    oldest: dict[str, float | None] = {}
    if queues:
        try:
            oldest = await driver.oldest_waiting(list(queues))
        except UnsupportedOperation:
            pass  # the column shows "-"
    workers: list[WorkerRecord] | None
    try:
        workers = await Worker.all(driver)
    except UnsupportedOperation as exc:
        workers = None
        notes.append(str(exc))
    return Snapshot(driver.describe(), queues, workers, notes, oldest=oldest)


def tables(snap: Snapshot) -> Any:
    """The snapshot as rich renderables: the queues table, the workers table, the notes."""
    from rich.console import Group
    from rich.table import Table

    parts: list[Any] = []
    q = Table(title=f"queues on {snap.driver}", title_justify="left")
    for column in ("queue", "ready", "delayed", "running", "failed", "oldest waiting"):
        q.add_column(column, justify="left" if column == "queue" else "right")
    for name, s in snap.queues.items():
        age = _age(snap.oldest.get(name))
        q.add_row(name, str(s["ready"]), str(s["delayed"]), str(s["leased"]), str(s["failed"]), age)
    parts.append(q)
    if snap.workers is not None:
        w = Table(title=f"{len(snap.workers)} worker(s)", title_justify="left")
        for column in ("name", "state", "queues", "pid", "host", "ok", "failed", "current", "seen"):
            w.add_column(column)
        for r in snap.workers:
            seen = f"{snap.taken_at - r.last_heartbeat.timestamp():.0f}s ago" if r.last_heartbeat else "?"
            w.add_row(
                r.name,
                r.state,
                ",".join(r.queues),
                str(r.pid),
                r.hostname,
                str(r.successful_task_count),
                str(r.failed_task_count),
                ",".join(r.current_task_ids) or "-",
                seen,
            )
        parts.append(w)
    parts += [f"note: {n}" for n in snap.notes]
    return Group(*parts)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render(snap: Snapshot) -> None:
    from rich.console import Console

    Console(width=max(Console().width, 100)).print(tables(snap))


async def watch(driver: BaseDriver, only: list[str] | None, interval: float) -> None:
    """Redraw the snapshot in place every ``interval`` seconds until cancelled (Ctrl-C)."""
    from rich.live import Live

    with Live(tables(await snapshot(driver, only)), auto_refresh=False, transient=False) as live:
        while True:
            await asyncio.sleep(interval)
            live.update(tables(await snapshot(driver, only)), refresh=True)


async def broadcast(driver: BaseDriver, command: dict[str, Any], worker: str | None = None) -> list[str]:
    """Send ``command`` to every registered worker (or the one named); the names it went to."""
    names = [r.name for r in await Worker.all(driver) if worker is None or r.name == worker]
    for name in names:
        await driver.send_command(name, command)
    return names


_UNIT = """\
# Generated by `asynctasq systemd-unit{shown}`. Copy to /etc/systemd/system/{file}, then
#   systemctl daemon-reload && systemctl enable --now {enable}
[Unit]
Description=asynctasq worker{description}
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
WorkingDirectory={cwd}
ExecStart={exec_start}
# SIGTERM to the worker only; running tasks get --shutdown-timeout to finish
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=45
# the worker pets the watchdog as it renews leases
WatchdogSec=60
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def systemd_unit(worker_args: list[str], *, template: bool = False, cwd: str | None = None) -> str:
    """A ``Type=notify`` unit running ``python -m asynctasq worker`` with ``worker_args``; as
    an ``@`` template, each instance's worker is named ``%H-%i`` (host, instance)."""
    import os

    args = list(worker_args)
    if template and "--name" not in args:
        args += ["--name", "%H-%i"]
    command = [sys.executable, "-m", "asynctasq", "worker", *args]
    shown = (" " + shlex.join(worker_args) if worker_args else "") + (" --template" if template else "")
    return _UNIT.format(
        shown=shown,
        file="asynctasq-worker@.service" if template else "asynctasq-worker.service",
        enable="asynctasq-worker@1 asynctasq-worker@2" if template else "asynctasq-worker",
        description=" %i" if template else "",
        cwd=cwd or os.getcwd(),
        exec_start=shlex.join(command).replace("'%H-%i'", "%H-%i"),
    )


__all__ = ["Snapshot", "broadcast", "render", "snapshot", "systemd_unit", "tables", "watch"]


# -- the failed registry, filtered (failed list / show / requeue / purge) -------------------------

FAILED_SCAN_LIMIT = 100_000
"""Most failed entries read to filter by task name or age (the driver filters by queue)."""


@dataclass
class FailedTask:
    """A failed-registry entry with its decoded message (``envelope`` None: undecodable)."""

    entry: Any
    envelope: Any

    @property
    def task_id(self) -> str | None:
        return None if self.envelope is None else str(self.envelope.id)

    @property
    def task(self) -> str | None:
        return None if self.envelope is None else str(self.envelope.task)


async def failed_tasks(
    driver: BaseDriver,
    *,
    queue: str | None = None,
    task: str | None = None,
    older_than: float | None = None,
    newer_than: float | None = None,
    ids: list[str] | None = None,
    limit: int = FAILED_SCAN_LIMIT,
) -> list[FailedTask]:
    """Failed entries matching every filter given: ``ids`` are entry or task ids, ages in
    seconds since the failure."""
    from asynctasq.message import Envelope
    from asynctasq.signing import strip_signature

    now = time.time()
    filtered = task is not None or older_than is not None or newer_than is not None or bool(ids)
    scan = FAILED_SCAN_LIMIT if filtered else limit
    out = []
    for entry in await driver.failed_list(queue, scan):
        try:
            envelope: Any = Envelope.decode(strip_signature(entry["body"]), accept_pickle=False)
        except Exception:  # noqa: BLE001 - an undecodable entry is listed as such
            envelope = None
        found = FailedTask(entry, envelope)
        age = now - float(entry["failed_at"])
        if task is not None and found.task != task:
            continue
        if older_than is not None and age < older_than:
            continue
        if newer_than is not None and age > newer_than:
            continue
        if ids and entry["id"] not in ids and found.task_id not in ids:
            continue
        out.append(found)
        if len(out) >= limit:
            break
    return out


async def requeue_failed(driver: BaseDriver, found: list[FailedTask], serializer: Any, signer: Any) -> int:
    """Put ``found`` back on their queues as new runs: the same task id, attempts from 1. An
    entry that cannot be decoded (or re-signed) goes back as it is, through the driver."""
    from asynctasq.drivers.base import EnqueueItem

    fresh, raw = [], []
    for f in found:
        if f.envelope is None:
            raw.append(f.entry["id"])
            continue
        f.envelope.attempt = 1
        fresh.append((f.entry["id"], EnqueueItem(f.entry["queue"], f.envelope.encode(serializer, signer))))
    if fresh:  # enqueue first, then drop the entries: a crash in between duplicates, never loses
        await driver.enqueue_many([item for _, item in fresh])
        await driver.failed_purge([entry_id for entry_id, _ in fresh])
    moved = len(fresh)
    if raw:
        moved += await driver.failed_requeue(raw)
    return moved


CANCEL_SCAN_LIMIT = 100_000
"""Most waiting messages per queue that ``cancel`` reads to find a task id."""


async def cancel_task(driver: BaseDriver, task_id: str, queues: list[str] | None = None) -> str | None:
    """Remove the waiting task ``task_id`` (what dispatch returned) from the first of ``queues``
    (default: every queue on the broker) that holds it; the queue it was on, or None."""
    from asynctasq.message import Envelope
    from asynctasq.signing import strip_signature

    for queue in queues if queues is not None else await driver.list_queues():
        for message_id, body in await driver.peek(queue, CANCEL_SCAN_LIMIT):
            try:
                env = Envelope.decode(strip_signature(body), accept_pickle=False)
            except Exception:  # noqa: BLE001 - an undecodable message is not the one
                continue
            if env.id == task_id:
                return queue if await driver.cancel(queue, message_id) else None
    return None
