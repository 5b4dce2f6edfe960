"""The command line, run as users run it: in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "asynctasq", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=full_env,
    )


@pytest.fixture
def db(tmp_path: Path) -> dict[str, str]:
    return {"ASYNCTASQ_SQLITE_PATH": str(tmp_path / "cli.db")}


def test_dispatch_then_burst_worker_then_failed_registry(db: dict[str, str]) -> None:
    out = cli("dispatch", "tests.cli_tasks.add", "--args", "[2, 3]", "--import", "tests.cli_tasks", env=db)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip()) == 32
    out = cli(
        "enqueue",
        "tests.cli_tasks.explode",
        "--kwargs",
        '{"message": "kaboom"}',
        "--import",
        "tests.cli_tasks",
        env=db,
    )
    assert out.returncode == 0, out.stderr
    out = cli("worker", "--burst", "--import", "tests.cli_tasks", env=db)
    assert out.returncode == 0, out.stderr
    assert "add 2+3=5" in out.stdout
    assert "no more work, burst finished" in out.stderr
    out = cli("failed", "list", env=db)
    assert (
        out.returncode == 0
        and "tests.cli_tasks.explode" in out.stdout
        and "RuntimeError: kaboom" in out.stdout
    )
    assert "1 failed task(s)" in out.stdout
    out = cli("failed", "requeue", "--all", env=db)
    assert out.stdout.strip() == "requeued 1 task(s)"
    out = cli("info", env=db)
    assert out.returncode == 0 and "default" in out.stdout
    out = cli("failed", "purge", "--all", env=db)
    assert out.returncode == 0
    out = cli("worker", "--burst", "--import", "tests.cli_tasks", env=db)
    assert out.returncode == 0
    assert "1 failed task(s)" in cli("failed", "list", env=db).stdout


def test_queues_as_arguments_and_max_tasks(db: dict[str, str]) -> None:
    for queue in ("high", "low", "low"):
        out = cli(
            "dispatch",
            "tests.cli_tasks.add",
            "--args",
            "[1, 1]",
            "-q",
            queue,
            "--import",
            "tests.cli_tasks",
            env=db,
        )
        assert out.returncode == 0, out.stderr
    out = cli("worker", "high", "low", "--max-tasks", "2", "--import", "tests.cli_tasks", env=db)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("add 1+1=2") == 2
    assert "max tasks (2) reached" in out.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["worker", "--bogus"], "No such option: --bogus"),
        (["worker", "--concurrency", "many"], "--concurrency"),
        (["worker", "--dequeue-strategy", "sideways"], "dequeue_strategy='sideways' is not one of"),
        (["worker", "--import", "no.such.module"], "cannot import 'no.such.module'"),
        (["worker", "--queues", "bad queue;drop"], "invalid queue name"),
        (["dispatch", "billing.charge"], "unknown task 'billing.charge'"),
        (["dispatch", "tests.cli_tasks.add", "--args", "{", "--import", "tests.cli_tasks"], "JSON"),
        (["dispatch", "tests.cli_tasks.add", "--queue", "", "--import", "tests.cli_tasks"], "an empty name"),
        (
            ["dispatch", "tests.cli_tasks.add", "-q", "a b", "--import", "tests.cli_tasks"],
            "invalid queue name",
        ),
        (["worker", "--driver", "redis", "--redis-url", "redis://:sekret@127.0.0.1:1"], "127.0.0.1:1"),
    ],
)
def test_bad_input_is_one_clear_line(db: dict[str, str], args: list[str], expected: str) -> None:
    out = cli(*args, env=db)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in out.stderr and "sekret" not in out.stderr


def test_environment_configures_the_worker(tmp_path: Path) -> None:
    env = {
        "ASYNCTASQ_SQLITE_PATH": str(tmp_path / "env.db"),
        "ASYNCTASQ_IMPORT": "tests.cli_tasks",
        "ASYNCTASQ_BURST": "1",
        "ASYNCTASQ_QUEUES": "envq",
    }
    out = cli("dispatch", "tests.cli_tasks.add", "--args", "[4, 4]", "--queue", "envq", env=env)
    assert out.returncode == 0, out.stderr
    out = cli("worker", env=env)
    assert out.returncode == 0, out.stderr
    assert "add 4+4=8" in out.stdout and "envq" in out.stderr
    assert (tmp_path / "env.db").exists()


def test_help_reads_well() -> None:
    out = cli("worker", "--help")
    assert out.returncode == 0
    for flag in (
        "--queues",
        "--concurrency",
        "--burst",
        "--max-tasks",
        "--max-idle-time",
        "--dequeue-strategy",
        "--name",
        "--import",
        "--path",
        "--shutdown-timeout",
        "--log-level",
        "--sqlite-path",
        "ASYNCTASQ_SQLITE_PATH",
    ):
        assert flag in out.stdout, flag


def test_worker_app_option_runs_tasks_in_the_flask_app_context(tmp_path: Path) -> None:
    pytest.importorskip("flask")
    db = tmp_path / "app.db"
    code = (
        "from tests.flask_app import create_app, greeting_sync, tasks; "
        "app = create_app(); ctx = app.app_context(); ctx.push(); "
        "print(tasks.dispatch_sync(greeting_sync('cli')))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    env["TEST_ASYNCTASQ_DB"] = str(db)
    made = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    out = cli("worker", "--app", "tests.flask_app:create_app", "--burst", env={"TEST_ASYNCTASQ_DB": str(db)})
    assert out.returncode == 0, out.stderr
    assert "1 succeeded, 0 failed" in out.stderr
    out = cli(
        "worker", "--app", "tests.flask_app:nothing_here", "--burst", env={"TEST_ASYNCTASQ_DB": str(db)}
    )
    assert out.returncode == 2 and out.stderr.startswith("error: ")


async def test_info_shutdown_and_stop_task_reach_a_running_worker(tmp_path: Path) -> None:
    from tests.conftest import wait_for

    env = {"ASYNCTASQ_SQLITE_PATH": str(tmp_path / "ctl.db"), "ASYNCTASQ_HEARTBEAT_INTERVAL": "0.2"}
    marks = tmp_path / "marks.txt"
    out = cli(
        "dispatch", "tests.cli_tasks.mark", "--args", '["long", 60]', "--import", "tests.cli_tasks", env=env
    )
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.strip()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    full_env.update(env, ASYNCTASQ_TEST_MARKS=str(marks))
    with open(tmp_path / "worker.log", "w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "asynctasq", "worker", "--name", "ctl-1", "--import", "tests.cli_tasks"],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=log,
        )
    try:
        await wait_for(lambda: task_id in cli("info", env=env).stdout, timeout=30, interval=0.2)
        listed = cli("info", env=env).stdout
        assert "ctl-1" in listed and "busy" in listed
        out = cli("stop-task", task_id, env=env)
        assert out.returncode == 0 and "stop sent to ctl-1" in out.stdout
        await wait_for(lambda: "stopped" in cli("failed", "list", env=env).stdout, timeout=30, interval=0.2)
        assert cli("stop-task", "no-such-task", env=env).returncode == 1
        out = cli("shutdown", "ctl-1", env=env)
        assert out.returncode == 0
        assert worker.wait(30) == 0, (tmp_path / "worker.log").read_text()
        assert "ctl-1" not in cli("info", env=env).stdout
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert not marks.exists(), "the stopped task must not have finished"


@pytest.mark.parametrize("driver", ["memory", "sqlite"])
def test_migrate_on_a_driver_without_migrations_says_so_and_exits_zero(
    db: dict[str, str], driver: str
) -> None:
    out = cli("migrate", "--driver", driver, env=db)
    assert out.returncode == 0, out.stderr
    assert f"the {driver} driver does not support schema migrations" in out.stdout


def test_worker_hooks_from_flags_and_environment(db: dict[str, str]) -> None:
    assert (
        cli(
            "dispatch", "tests.cli_tasks.add", "--args", "[1, 2]", "--import", "tests.cli_tasks", env=db
        ).returncode
        == 0
    )
    env = {**db, "ASYNCTASQ_ON_SHUTDOWN": "tests.cli_tasks:announce_stop"}
    out = cli(
        "worker",
        "--burst",
        "--name",
        "hooked",
        "--import",
        "tests.cli_tasks",
        "--on-startup",
        "tests.cli_tasks:announce_start",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["hook: hooked starting", "add 1+2=3", "hook: hooked stopped after 1"]
    out = cli("worker", "--burst", "--on-startup", "announce_start", env=db)
    assert out.returncode != 0 and "use module:name or module.name" in out.stderr
