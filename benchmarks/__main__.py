"""One command for the whole comparison:

    python -m benchmarks run --drivers redis,postgres,mysql,sqs,rabbitmq,sqlite --peers all --reps 3

For each driver it runs that broker's comparison (benchmarks/<broker>_compare.py: our driver and
the peers that use the same broker, each in its own virtualenv, interleaved with the order
rotated each repetition; sqs_bench.py for SQS on moto; the harness alone for SQLite), under the
benchmark lock. Every measured sample lands in ``<out>/results.json`` with the versions of
everything measured, and ``<out>/results.md`` gets the tables of medians with min-max.
``--peers none`` measures our drivers only; ``--install`` first creates the peers'
virtualenvs (benchmarks/peers/README.md lists the same pins). Benchmarks print figures and
never assert on time.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOCK = "/tmp/asynctasq-bench.lock"
DRIVERS = ("redis", "postgres", "mysql", "sqs", "rabbitmq", "sqlite")

COMPARISONS = {  # driver -> (script, our systems, extra arguments)
    "redis": ("redis_compare.py", ["asynctasq"], []),
    "postgres": ("postgres_compare.py", ["asynctasq"], []),
    "mysql": ("mysql_compare.py", ["mysql", "postgres"], ["--no-idle"]),
    "rabbitmq": ("rabbitmq_compare.py", ["asynctasq"], []),
}

PEER_VENVS = {  # virtualenv -> pip requirements (the pins of benchmarks/peers/README.md)
    "arq": ["arq==0.28.0", "uvloop"],
    "saq": ["saq[redis]==0.26.4", "hiredis", "typing_extensions", "uvloop"],
    "taskiq": ["taskiq==0.13.0", "taskiq-redis==1.2.4", "hiredis", "uvloop"],
    "streaq": ["streaq==7.2.0", "uvloop"],
    "dramatiq": ["dramatiq[redis]==2.2.1", "hiredis", "uvloop"],
    "pgqueuer": ["pgqueuer==1.6.0", "asyncpg", "uvloop"],
    "procrastinate": ["procrastinate[psycopg]==3.10.0", "uvloop"],
    "dramatiq-rabbit": ["dramatiq[rabbitmq]==2.2.1", "uvloop"],
    "celery-rabbit": ["celery==5.5.3", "uvloop"],
    "taskiq-rabbit": ["taskiq==0.13.0", "taskiq-aio-pika", "uvloop"],
}


@contextmanager
def _lock() -> Iterator[None]:
    """The benchmark lock, so that no other benchmark shares the machine's two cores."""
    with open(LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _install_peers() -> None:
    for name, requirements in PEER_VENVS.items():
        venv = os.path.join(HERE, ".venvs", name)
        if os.path.exists(os.path.join(venv, "bin", "python")):
            continue
        print(f"installing {name} into {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", *requirements], check=True)


def _versions() -> dict[str, Any]:
    from importlib.metadata import version

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "asynctasq": version("asynctasq"),
        "peers": {},
    }
    for name in PEER_VENVS:
        pip = os.path.join(HERE, ".venvs", name, "bin", "pip")
        if not os.path.exists(pip):
            continue
        listed = subprocess.run([pip, "list", "--format", "json"], capture_output=True, text=True)
        if listed.returncode == 0:
            wanted = {r.split("[")[0].split("==")[0].lower() for r in PEER_VENVS[name]}
            out["peers"][name] = {
                p["name"]: p["version"] for p in json.loads(listed.stdout) if p["name"].lower() in wanted
            }
    return out


def _run_comparison(driver: str, reps: int, peers: bool, samples_file: str) -> str:
    script, ours, extra = COMPARISONS[driver]
    cmd = [sys.executable, os.path.join(HERE, script), "--reps", str(reps), *extra]
    if not peers:
        cmd += ["--systems", ",".join(ours)]
    env = dict(os.environ, ASYNCTASQ_BENCH_SAMPLES=samples_file, ASYNCTASQ_BENCH_DRIVER=driver)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return f"{driver}: the comparison failed ({proc.returncode}):\n" + "\n".join(
            proc.stderr.splitlines()[-8:]
        )
    return proc.stdout


def _run_harness(driver: str, reps: int, samples_file: str) -> str:
    """Our side only (SQLite: no peer shares its broker here), the harness's workloads."""
    lines = []
    for rep in range(reps):
        for workload in ("noop", "io", "latency"):
            cmd = [
                sys.executable,
                os.path.join(HERE, "harness.py"),
                "--driver",
                driver,
                "--workload",
                workload,
                "--json",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
            for res in results:
                _append(
                    samples_file,
                    {"driver": driver, "system": "asynctasq", "workload": workload, "rep": rep, **res},
                )
                lines.append(f"rep {rep + 1} {workload} {res}")
    return "\n".join(lines)


def _run_sqs(samples_file: str) -> str:
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "sqs_bench.py"), "--idle-seconds", "20"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    _append(
        samples_file, {"driver": "sqs", "system": "asynctasq", "workload": "sqs_bench", "report": proc.stdout}
    )
    return proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr


def _append(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


KEYS = (  # (workload, field, header, digits)
    ("noop", "drain_per_s", "noop drain/s", 0),
    ("noop", "enqueue_single_per_s", "enqueue single/s", 0),
    ("noop", "enqueue_bulk_per_s", "enqueue bulk/s", 0),
    ("io", "efficiency", "io efficiency", 2),
    ("latency", "p50_ms", "p50 ms", 2),
    ("latency", "p99_ms", "p99 ms", 2),
)


def _cell(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def markdown(samples: list[dict[str, Any]], versions: dict[str, Any]) -> str:
    out = [f"# Benchmarks, {time.strftime('%Y-%m-%d %H:%M')}", ""]
    out.append(f"Python {versions['python']} on {versions['machine']}; asynctasq {versions['asynctasq']}.")
    out.append("Median of the repetitions (min-max); systems interleaved, order rotated each repetition.")
    for driver in DRIVERS:
        rows = [s for s in samples if s.get("driver") == driver and "system" in s]
        if not rows:
            continue
        out += ["", f"## {driver}", ""]
        reports = [s["report"] for s in rows if "report" in s]
        if reports:
            out += ["```text", reports[-1].strip(), "```"]
            continue
        out.append("| system | " + " | ".join(h for _, _, h, _ in KEYS) + " |")
        out.append("| --- |" + " --- |" * len(KEYS))
        for system in dict.fromkeys(s["system"] for s in rows):
            cells = []
            for workload, key, _, digits in KEYS:
                values = [
                    float(s[key])
                    for s in rows
                    if s["system"] == system and s.get("workload") == workload and s.get(key) is not None
                ]
                cells.append(_cell(values, digits))
            out.append(f"| {system} | " + " | ".join(cells) + " |")
    peers = versions.get("peers") or {}
    if peers:
        out += ["", "## Versions", ""]
        out += [
            f"- {venv}: " + ", ".join(f"{k} {v}" for k, v in pkgs.items()) for venv, pkgs in peers.items()
        ]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--drivers", default=",".join(DRIVERS))
    parser.add_argument("--peers", default="all", choices=["all", "none"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--install", action="store_true", help="create the peers' virtualenvs first")
    args = parser.parse_args()
    drivers = [d for d in args.drivers.split(",") if d]
    unknown = set(drivers) - set(DRIVERS)
    if unknown:
        raise SystemExit(f"unknown driver(s) {', '.join(sorted(unknown))}: choose from {', '.join(DRIVERS)}")
    if args.install and args.peers == "all":
        _install_peers()
    os.makedirs(args.out, exist_ok=True)
    with tempfile.NamedTemporaryFile(prefix="asynctasq-bench-", suffix=".jsonl", delete=False) as f:
        samples_file = f.name
    with _lock():
        for driver in drivers:
            print(f"== {driver}", flush=True)
            if driver in COMPARISONS:
                print(_run_comparison(driver, args.reps, args.peers == "all", samples_file), flush=True)
            elif driver == "sqs":
                print(_run_sqs(samples_file), flush=True)
            else:
                print(_run_harness(driver, args.reps, samples_file), flush=True)
    samples = []
    if os.path.exists(samples_file):
        with open(samples_file) as f:
            samples = [json.loads(line) for line in f if line.strip()]
        os.unlink(samples_file)
    versions = _versions()
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"versions": versions, "samples": samples}, f, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown(samples, versions))
    print(f"wrote {args.out}/results.json and results.md")


if __name__ == "__main__":
    main()
