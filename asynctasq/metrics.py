"""Prometheus metrics of a worker (``--metrics-port``, the ``metrics`` extra: prometheus-client).

One worker process serves ``http://HOST:PORT/metrics`` itself. A worker pool
(``worker --processes N``) serves one endpoint from its supervisor in prometheus-client's
multiprocess mode: the children write their samples to files in a directory of the
supervisor's, which aggregates them per scrape (counters and histograms summed, gauges as
noted below), and forgets a child that exited.

Per-task samples are recorded in batches at each ack flush, with the per-task log lines, so a
metric costs a worker no lock or label lookup per task on the hot path.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter as Tally
from collections.abc import Iterable, Sequence
from typing import Any

from asynctasq.errors import ConfigError
from asynctasq.utils.logs import TaskLine

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set by a pool's supervisor for its children (prometheus-client reads it at import)."""

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

METRICS = {
    "asynctasq_tasks_total": "counter {queue, task, outcome}: tasks finished; outcome is ok, retried, "
    "failed, lost or given back",
    "asynctasq_task_duration_seconds": "histogram {queue, task}: run time of each task",
    "asynctasq_tasks_in_flight": "gauge {queue}: tasks running now (a pool: summed over its workers)",
    "asynctasq_queue_ready": "gauge {queue}: tasks waiting to run (the driver's stats)",
    "asynctasq_queue_delayed": "gauge {queue}: tasks delayed or waiting for a retry",
    "asynctasq_queue_running": "gauge {queue}: leased tasks, on every worker",
    "asynctasq_queue_failed": "gauge {queue}: entries in the failed registry",
    "asynctasq_queue_oldest_waiting_seconds": "gauge {queue}: how long the longest-waiting ready task "
    "has waited (0 when none; drivers with oldest_waiting)",
    "asynctasq_lease_extensions_total": "counter: leases extended (heartbeats of running tasks)",
    "asynctasq_leases_lost_total": "counter: tasks whose lease went to another worker",
}
"""Every metric, with its type, labels and meaning (docs/operations.md has the full story)."""


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError(
            "metrics_port is set but prometheus-client is not installed: pip install 'asynctasq[metrics]'"
        ) from None
    return prometheus_client


class WorkerMetrics:
    """The worker's metric objects (one set per process: prometheus-client's registry is global)."""

    def __init__(self) -> None:
        pc = _client()
        self.tasks = pc.Counter(
            "asynctasq_tasks", METRICS["asynctasq_tasks_total"], ["queue", "task", "outcome"]
        )
        self.duration = pc.Histogram(
            "asynctasq_task_duration_seconds",
            METRICS["asynctasq_task_duration_seconds"],
            ["queue", "task"],
            buckets=DURATION_BUCKETS,
        )
        self.in_flight = pc.Gauge(
            "asynctasq_tasks_in_flight",
            METRICS["asynctasq_tasks_in_flight"],
            ["queue"],
            multiprocess_mode="livesum",
        )
        self.depth = {
            kind: pc.Gauge(
                f"asynctasq_queue_{kind}",
                METRICS[f"asynctasq_queue_{kind}"],
                ["queue"],
                multiprocess_mode="livemax",
            )
            for kind in ("ready", "delayed", "running", "failed")
        }
        self.oldest = pc.Gauge(
            "asynctasq_queue_oldest_waiting_seconds",
            METRICS["asynctasq_queue_oldest_waiting_seconds"],
            ["queue"],
            multiprocess_mode="livemax",
        )
        self.extensions = pc.Counter(
            "asynctasq_lease_extensions", METRICS["asynctasq_lease_extensions_total"]
        )
        self.lost = pc.Counter("asynctasq_leases_lost", METRICS["asynctasq_leases_lost_total"])

    def record(self, lines: Sequence[TaskLine]) -> None:
        counts = Tally((queue, task, outcome) for _, queue, task, _, outcome, _ in lines)
        for (queue, task, outcome), n in counts.items():
            self.tasks.labels(queue, task, outcome).inc(n)
        observed: dict[tuple[str, str], Any] = {}
        for _, queue, task, _, _, took in lines:
            child = observed.get((queue, task))
            if child is None:
                child = observed[(queue, task)] = self.duration.labels(queue, task)
            child.observe(took)

    def running(self, queues: Iterable[str], by_queue: dict[str, int]) -> None:
        for queue in queues:
            self.in_flight.labels(queue).set(by_queue.get(queue, 0))

    def oldest_waiting(self, ages: dict[str, float | None]) -> None:
        for queue, age in ages.items():
            self.oldest.labels(queue).set(age or 0.0)

    def queue_stats(self, stats: dict[str, Any]) -> None:
        for queue, s in stats.items():
            self.depth["ready"].labels(queue).set(s["ready"])
            self.depth["delayed"].labels(queue).set(s["delayed"])
            self.depth["running"].labels(queue).set(s["leased"])
            self.depth["failed"].labels(queue).set(s["failed"])


_metrics: WorkerMetrics | None = None


def worker_metrics() -> WorkerMetrics:
    global _metrics
    if _metrics is None:
        _metrics = WorkerMetrics()
    return _metrics


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve this process's metrics, unless it is a pool's child (its supervisor serves)."""
    if os.environ.get(MULTIPROC_ENV):
        return
    try:
        _client().start_http_server(port, addr)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on port {port}: {exc}") from None


class PoolMetrics:
    """A supervisor's side of multiprocess mode: the directory its children write to, and the
    one endpoint that sums them."""

    def __init__(self, port: int, addr: str = "0.0.0.0") -> None:
        self.directory = tempfile.mkdtemp(prefix="asynctasq-metrics-")
        os.environ[MULTIPROC_ENV] = self.directory  # before prometheus_client is imported here
        pc = _client()
        from prometheus_client import multiprocess

        self._multiprocess: Any = multiprocess
        registry = pc.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        try:
            pc.start_http_server(port, addr, registry=registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on port {port}: {exc}") from None

    def child_exited(self, pid: int) -> None:
        self._multiprocess.mark_process_dead(pid, self.directory)


__all__ = ["METRICS", "MULTIPROC_ENV", "PoolMetrics", "WorkerMetrics", "serve", "worker_metrics"]
