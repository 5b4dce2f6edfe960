"""Our side of the workloads of shared/BENCHMARKS.md, for any driver.

    python benchmarks/harness.py --driver sqlite --workload noop --n 20000
    ASYNCTASQ_REDIS_URL=redis://127.0.0.1:6379 python benchmarks/harness.py --driver redis --workload all

Driver settings come from ASYNCTASQ_* variables (as for any producer and worker). The worker
runs in its own process (uvloop when installed) with results off (--results-ttl 0), as the
peers run without result backends; rates are timed inside that process, from the first task's
start to the last task's end. Prints a human line per workload, and with --json one JSON object
per line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


async def _work(queue: str, n: int, concurrency: int, announce: bool, driver_name: str | None = None) -> None:
    import bench_tasks  # noqa: F401 - registers the workload tasks

    from asynctasq.config import Config
    from asynctasq.core.driver_factory import DriverFactory
    from asynctasq.core.worker import Worker

    config = Config(driver=driver_name) if driver_name else Config()
    driver = DriverFactory.create_from_config(config)
    await driver.connect()
    try:
        worker = Worker(
            driver,
            queues=[queue],
            concurrency=concurrency,
            max_tasks=n,
            results_ttl=0,
            install_signal_handlers=False,
            metrics_port=int(os.environ["ASYNCTASQ_BENCH_METRICS_PORT"])
            if os.environ.get("ASYNCTASQ_BENCH_METRICS_PORT")
            else None,
        )
        if announce:
            print("ready", flush=True)
        await worker.start()
    finally:
        await driver.disconnect()


def _timings() -> dict[str, Any]:
    import bench_tasks

    with open(f"/proc/{os.getpid()}/status") as f:
        hwm_kb = next((int(line.split()[1]) for line in f if line.startswith("VmHWM")), 0)
    out: dict[str, Any] = dict(bench_tasks.stats)
    out["latencies"] = list(bench_tasks.latencies)
    out["vmhwm_kb"] = hwm_kb
    out["rss_kb"] = dict(bench_tasks.rss_kb)
    bench_tasks.rss_kb.clear()
    bench_tasks.stats.update(first=0.0, last=0.0, count=0)
    bench_tasks.latencies.clear()
    return out


def _worker_main(args: argparse.Namespace) -> None:
    """Child: run one worker until it took --n tasks, then print the timings as JSON."""
    from asynctasq.utils.loop import run

    log_file = os.environ.get("ASYNCTASQ_BENCH_TASK_LOG")
    if log_file:  # the CLI's logging, one INFO line per task, into this file
        from asynctasq.config import Config
        from asynctasq.utils.logs import setup_logging

        sys.stderr = open(log_file, "a")  # noqa: SIM115 - the child's stderr until it exits
        setup_logging(Config())

    run(_work(args.queue, args.n, args.concurrency, announce=True))
    print(json.dumps(_timings()), flush=True)


def _in_process(driver: str) -> bool:
    return driver == "memory"  # its queues live in one process


def _start_worker(driver: str, queue: str, n: int, concurrency: int) -> subprocess.Popen[str]:
    env = dict(os.environ, ASYNCTASQ_DRIVER=driver)
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "_worker",
            "--queue",
            queue,
            "--n",
            str(n),
            "--concurrency",
            str(concurrency),
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise SystemExit(f"the worker did not start (said {line!r})")
    return proc


def _finish_worker(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"the worker failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


async def _produce(driver_name: str, queue: str, calls: Any, bulk: bool) -> float:
    import asynctasq
    from asynctasq.task import close_producer

    asynctasq.configure(driver=driver_name)
    started = time.perf_counter()
    if bulk:
        batch: list[Any] = []
        for call in calls:
            batch.append(call.on_queue(queue))
            if len(batch) == 500:
                await asynctasq.dispatch_many(batch)
                batch = []
        if batch:
            await asynctasq.dispatch_many(batch)
    else:
        for call in calls:
            await call.on_queue(queue).dispatch()
    elapsed = time.perf_counter() - started
    await close_producer()
    return elapsed


async def _purge(driver_name: str, queue: str) -> None:
    from asynctasq.config import Config
    from asynctasq.core.driver_factory import DriverFactory

    driver = DriverFactory.create_from_config(Config(driver=driver_name))
    await driver.connect()
    try:
        if driver.supports("purge"):
            await driver.purge(queue)
    finally:
        await driver.disconnect()


def _run_async(coro: Any) -> Any:
    from asynctasq.utils.loop import run

    return run(coro)


def _drain(driver: str, queue: str, n: int, concurrency: int) -> dict[str, Any]:
    if _in_process(driver):
        _run_async(_work(queue, n, concurrency, announce=False, driver_name=driver))
        return _timings()
    return _finish_worker(_start_worker(driver, queue, n, concurrency), timeout=600)


def noop(driver: str, n: int, concurrency: int) -> dict[str, Any]:
    import bench_tasks

    queue = "bench-" + uuid.uuid4().hex[:8]
    single = _run_async(_produce(driver, queue, (bench_tasks.noop() for _ in range(n)), bulk=False))
    res = _drain(driver, queue, n, concurrency)
    drain = res["count"] / max(res["last"] - res["first"], 1e-9)
    bulk_queue = queue + "-bulk"
    bulk = _run_async(_produce(driver, bulk_queue, (bench_tasks.noop() for _ in range(n)), bulk=True))
    _run_async(_purge(driver, bulk_queue))
    return {
        "workload": "noop",
        "driver": driver,
        "n": n,
        "concurrency": concurrency,
        "drain_per_s": round(drain),
        "enqueue_single_per_s": round(n / single),
        "enqueue_bulk_per_s": round(n / bulk),
        "worker_vmhwm_mb": round(res["vmhwm_kb"] / 1024, 1),
    }


def io(driver: str, n: int, concurrency: int) -> dict[str, Any]:
    import bench_tasks

    queue = "bench-" + uuid.uuid4().hex[:8]
    _run_async(_produce(driver, queue, (bench_tasks.io(0.01) for _ in range(n)), bulk=True))
    res = _drain(driver, queue, n, concurrency)
    actual = res["last"] - res["first"]
    ideal = n * 0.01 / concurrency
    return {
        "workload": "io",
        "driver": driver,
        "n": n,
        "concurrency": concurrency,
        "seconds": round(actual, 3),
        "ideal_s": ideal,
        "efficiency": round(ideal / actual, 3),
    }


def latency(driver: str, n: int, concurrency: int, rate: float = 200.0) -> dict[str, Any]:
    import bench_tasks

    queue = "bench-" + uuid.uuid4().hex[:8]
    proc = None if _in_process(driver) else _start_worker(driver, queue, n, concurrency)
    time.sleep(0.5)  # let the worker settle into its idle wait

    async def paced() -> None:
        import asynctasq
        from asynctasq.task import close_producer

        asynctasq.configure(driver=driver)
        from asynctasq.task import producer_driver

        await producer_driver()  # connect (and import the driver) before the clock starts
        start = time.perf_counter()
        for i in range(n):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await bench_tasks.latency(time.time()).on_queue(queue).dispatch()
        await close_producer()

    async def both() -> None:
        worker = asyncio.create_task(_work(queue, n, concurrency, announce=False, driver_name=driver))
        await asyncio.sleep(0.5)
        await paced()
        await worker

    if proc is None:
        _run_async(both())
        res = _timings()
    else:
        _run_async(paced())
        res = _finish_worker(proc, timeout=600)
    lat = sorted(x * 1000 for x in res["latencies"])
    return {
        "workload": "latency",
        "driver": driver,
        "n": n,
        "rate_per_s": rate,
        "p50_ms": round(statistics.median(lat), 2),
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2),
        "max_ms": round(lat[-1], 2),
    }


def memory(driver: str, n: int, concurrency: int) -> dict[str, Any]:
    """RSS of the worker after 10k tasks and after ``n``: flat means no per-task leak."""
    import bench_tasks

    queue = "bench-" + uuid.uuid4().hex[:8]
    checkpoints = [10_000, n]
    _run_async(_produce(driver, queue, (bench_tasks.memory(checkpoints) for _ in range(n)), bulk=True))
    res = _drain(driver, queue, n, concurrency)
    rss = {int(k): v for k, v in res["rss_kb"].items()}
    return {
        "workload": "memory",
        "driver": driver,
        "n": n,
        "rss_mb_after_10k": round(rss.get(10_000, 0) / 1024, 1),
        f"rss_mb_after_{n // 1000}k": round(rss.get(n, 0) / 1024, 1),
        "worker_vmhwm_mb": round(res["vmhwm_kb"] / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", default="run", choices=["run", "_worker"])
    parser.add_argument("--driver", default=os.environ.get("ASYNCTASQ_DRIVER", "sqlite"))
    parser.add_argument("--workload", default="noop", choices=["noop", "io", "latency", "memory", "all"])
    parser.add_argument(
        "--n", type=int, default=None, help="tasks (default: 20000 noop, 5000 io, 2000 latency)"
    )
    parser.add_argument("--concurrency", type=int, default=None, help="default: 10 (io: 100)")
    parser.add_argument("--queue", default="bench")
    parser.add_argument("--json", action="store_true", help="print one JSON object per workload")
    args = parser.parse_args()
    if args.command == "_worker":
        _worker_main(args)
        return
    workloads = ["noop", "io", "latency"] if args.workload == "all" else [args.workload]
    for workload in workloads:
        if workload == "noop":
            res = noop(args.driver, args.n or 20000, args.concurrency or 10)
        elif workload == "memory":
            res = memory(args.driver, args.n or 100_000, args.concurrency or 10)
        elif workload == "io":
            res = io(args.driver, args.n or 5000, args.concurrency or 100)
        else:
            res = latency(args.driver, args.n or 2000, args.concurrency or 10)
        if args.json:
            print(json.dumps(res), flush=True)
        else:
            print("  ".join(f"{k}={v}" for k, v in res.items()), flush=True)


if __name__ == "__main__":
    main()
