"""worker-pool: several workers under a supervisor that restarts the one that dies."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from asynctasq.core.supervisor import split_name
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


async def test_a_killed_worker_process_is_restarted_and_sigterm_stops_all(tmp_path: Path) -> None:
    log_path = tmp_path / "pool.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    env["ASYNCTASQ_SQLITE_PATH"] = str(tmp_path / "pool.db")
    with open(log_path, "w") as log:
        pool = subprocess.Popen(
            [sys.executable, "-m", "asynctasq", "worker-pool", "-n", "2", "--import", "tests.cli_tasks"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )

    def started() -> list[int]:
        return [int(p) for p in re.findall(r"started \(pid (\d+)\)", log_path.read_text())]

    try:
        await wait_for(lambda: len(started()) == 2 and "listening" in log_path.read_text(), timeout=30)
        victim = started()[0]
        os.kill(victim, signal.SIGKILL)
        await wait_for(lambda: len(started()) == 3, timeout=30)
        assert "died with -9; restarting" in log_path.read_text()
    finally:
        pool.send_signal(signal.SIGTERM)
        code = pool.wait(30)
    assert code == 0, log_path.read_text()
    for pid in started()[1:]:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )


@pytest.mark.parametrize("how", ["flag", "environment"])
async def test_children_are_named_after_the_worker_name(tmp_path: Path, how: str) -> None:
    log_path = tmp_path / "pool.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    env["ASYNCTASQ_SQLITE_PATH"] = str(tmp_path / "pool.db")
    command = [sys.executable, "-m", "asynctasq", "worker", "--processes", "3", "--import", "tests.cli_tasks"]
    if how == "flag":
        command += ["--name", "mail"]
    else:
        env["ASYNCTASQ_NAME"] = "mail"
    with open(log_path, "w") as log:
        pool = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)

    def names() -> set[str]:
        return set(re.findall(r"worker (\S+) listening", log_path.read_text()))

    try:
        await wait_for(lambda: len(names()) == 3, timeout=30)
    finally:
        pool.send_signal(signal.SIGTERM)
        code = pool.wait(30)
    assert code == 0, log_path.read_text()
    assert names() == {"mail-1", "mail-2", "mail-3"}


def test_split_name_takes_the_flag_out_of_the_child_arguments() -> None:
    assert split_name(["--name", "x", "--concurrency", "3"]) == ("x", ["--concurrency", "3"])
    assert split_name(["--name=y", "-q", "a"]) == ("y", ["-q", "a"])
    assert split_name(["--burst"]) == (None, ["--burst"])
