"""RQ's worker options, run as users run them (worker subprocesses on SQLite): config files and
their precedence, logging, exception handlers, worker classes, serializers, CLI conventions."""

from __future__ import annotations

import gzip
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from asynctasq import Config
from asynctasq.errors import ConfigError
from tests.test_cli import cli


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "ASYNCTASQ_SQLITE_PATH": str(tmp_path / "ops.db"),
        "ASYNCTASQ_TEST_MARKS": str(tmp_path / "marks"),
    }


def marks(env: dict[str, str]) -> list[str]:
    path = Path(env["ASYNCTASQ_TEST_MARKS"])
    return path.read_text().splitlines() if path.exists() else []


def dispatch(env: dict[str, str], task: str, *args: str) -> None:
    out = cli("dispatch", task, "--import", "tests.cli_tasks", *args, env=env)
    assert out.returncode == 0, out.stderr


# -- config files ------------------------------------------------------------------------------


def test_a_settings_module_configures_the_worker_and_flags_beat_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    settings = tmp_path / "settings.py"
    settings.write_text(
        textwrap.dedent(
            f"""
            import os  # a module's imports and lower-case names are not settings
            helper = "ignored"
            QUEUES = ["high", "low"]
            NAME = "from-file"
            IMPORT = ["tests.cli_tasks"]
            SQLITE_PATH = {env["ASYNCTASQ_SQLITE_PATH"]!r}
            DISABLE_TASK_DESCRIPTION_LOGGING = False
            """
        )
    )
    dispatch(env, "tests.cli_tasks.mark", "--args", '["on-low", 0]', "--queue", "low")
    dispatch(env, "tests.cli_tasks.mark", "--args", '["on-default", 0]')
    # the environment names another queue and worker: the file beats it
    file_env = {**env, "ASYNCTASQ_QUEUES": "default", "ASYNCTASQ_NAME": "from-env"}
    out = cli("worker", "-c", str(settings), "--burst", env=file_env)
    assert out.returncode == 0, out.stderr
    assert "worker from-file listening on high, low" in out.stderr
    assert marks(env) == ["on-low"]
    out = cli(
        "worker", "--config", str(settings), "--burst", "--queues", "default", "--name", "flag", env=file_env
    )
    assert out.returncode == 0, out.stderr
    assert "worker flag listening on default" in out.stderr  # flags beat the file
    assert marks(env) == ["on-low", "on-default"]


def test_rq_settings_module_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's settings.py: REDIS_URL alone means Redis; DICT_CONFIG and SENTRY_DSN are read."""
    (tmp_path / "rqsettings.py").write_text(
        textwrap.dedent(
            """
            REDIS_URL = 'redis://localhost:6379/1'
            QUEUES = ['high', 'default', 'low']
            SENTRY_DSN = 'https://public@sentry.example.com/1'
            NAME = 'worker-1024'
            DICT_CONFIG = {
                'version': 1,
                'disable_existing_loggers': False,
                'root': {'level': 'INFO'},
            }
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ASYNCTASQ_DRIVER", raising=False)
    config = Config(config_file="rqsettings")
    assert (config.driver, config.redis_url, config.queues) == (
        "redis",
        "redis://localhost:6379/1",
        ["high", "default", "low"],
    )
    assert (config.worker_name, config.sentry_dsn) == ("worker-1024", "https://public@sentry.example.com/1")
    assert config.dict_config is not None and config.dict_config["version"] == 1
    assert "public@" not in repr(config)
    monkeypatch.setenv("ASYNCTASQ_DRIVER", "postgres")  # the environment's driver is not overridden
    assert Config(config_file="rqsettings").driver == "postgres"
    (tmp_path / "hostport.py").write_text("REDIS_HOST = 'cache'\nREDIS_PORT = 6380\nREDIS_DB = 3\n")
    monkeypatch.delenv("ASYNCTASQ_DRIVER")
    config = Config(config_file=str(tmp_path / "hostport.py"))
    assert (config.driver, config.redis_url, config.redis_db) == ("redis", "redis://cache:6380", 3)


def test_toml_files_and_pyproject(tmp_path: Path) -> None:
    (tmp_path / "asynctasq.toml").write_text('queues = ["a", "b"]\nconcurrency = 7\n')
    assert Config(config_file=str(tmp_path / "asynctasq.toml"), _environ={}).queues == ["a", "b"]
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.asynctasq]\nconcurrency = 3\ndriver = "redis"\n'
    )
    config = Config(config_file=str(tmp_path / "pyproject.toml"), _environ={"ASYNCTASQ_CONCURRENCY": "9"})
    assert (config.concurrency, config.driver) == (3, "redis")  # the file beats the environment
    assert Config(config_file=str(tmp_path / "pyproject.toml"), concurrency=5).concurrency == 5


def test_bad_config_files_say_what_is_wrong(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "typo.toml").write_text("concurency = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'concurency'; did you mean 'concurrency'"):
        Config(config_file=str(tmp_path / "typo.toml"))
    (tmp_path / "badvalue.py").write_text("CONCURRENCY = 'many'\n")
    with pytest.raises(ConfigError, match=r"badvalue\.py: CONCURRENCY='many' is not a valid int"):
        Config(config_file=str(tmp_path / "badvalue.py"))
    with pytest.raises(ConfigError, match="does not exist"):
        Config(config_file=str(tmp_path / "missing.toml"))
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"no \[tool.asynctasq\] table"):
        Config(config_file=str(tmp_path / "pyproject.toml"))
    out = cli("worker", "-c", "no_such_settings_module", "--burst", env=env)
    assert out.returncode == 2 and "config module 'no_such_settings_module' not found" in out.stderr
    assert "Traceback" not in out.stderr


# -- logging -----------------------------------------------------------------------------------


def test_one_line_per_task_plain_json_and_off(env: dict[str, str]) -> None:
    dispatch(env, "tests.cli_tasks.add", "--args", "[1, 2]")
    dispatch(env, "tests.cli_tasks.explode", "--kwargs", '{"message": "boom"}')
    out = cli(
        "worker",
        "--burst",
        "--import",
        "tests.cli_tasks",
        "--log-format",
        "%(levelname)s|%(message)s",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("INFO|default: tests.cli_tasks.")]
    assert len(lines) == 2, out.stderr
    assert lines[0].startswith("INFO|default: tests.cli_tasks.add (") and " ok in " in lines[0]
    assert " failed in " in lines[1]
    dispatch(env, "tests.cli_tasks.add", "--args", "[3, 4]")
    out = cli("worker", "--burst", "--import", "tests.cli_tasks", "--json-logs", env=env)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stderr.splitlines()]
    [task_line] = [r for r in records if r.get("logger") == "asynctasq.tasks"]
    assert task_line["task"] == "tests.cli_tasks.add" and task_line["outcome"] == "ok"
    assert (
        task_line["queue"] == "default" and len(task_line["task_id"]) == 32 and task_line["duration_s"] >= 0
    )
    assert task_line["level"] == "INFO" and task_line["time"].endswith("Z")
    dispatch(env, "tests.cli_tasks.add", "--args", "[7, 8]")  # a field only a LogRecord has
    out = cli(
        "worker", "--burst", "--import", "tests.cli_tasks", "--log-format", "%(process)d:%(message)s", env=env
    )
    assert out.returncode == 0 and any(
        line.split(":", 1)[0].isdigit() and "tests.cli_tasks.add (" in line
        for line in out.stderr.splitlines()
    ), out.stderr
    dispatch(env, "tests.cli_tasks.add", "--args", "[5, 6]")
    out = cli(
        "worker", "--burst", "--import", "tests.cli_tasks", "--disable-task-description-logging", env=env
    )
    assert out.returncode == 0 and "add 5+6=11" in out.stdout
    assert "default: tests.cli_tasks.add" not in out.stderr


# -- extension points --------------------------------------------------------------------------


def test_exception_handlers_run_in_order_and_false_stops_the_chain(env: dict[str, str]) -> None:
    dispatch(env, "tests.cli_tasks.explode", "--kwargs", '{"message": "kaboom"}')
    out = cli(
        "worker", "--burst", "--import", "tests.cli_tasks",
        "--exception-handler", "tests.ops_helpers.first_handler",
        "--exception-handler", "tests.ops_helpers:stopping_handler",
        "--exception-handler", "tests.ops_helpers.never_handler",
        env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert marks(env) == [
        "first tests.cli_tasks.explode RuntimeError: kaboom attempt 1",
        "stopping default attempt 1",
    ]
    assert "failed on attempt 1/1" not in out.stderr  # the default handler is the chain's last link
    assert "default: tests.cli_tasks.explode" in out.stderr and " failed in " in out.stderr
    out = cli("failed", "list", env=env)
    assert "RuntimeError: kaboom" in out.stdout  # the failed registry got it all the same
    dispatch(env, "tests.cli_tasks.explode", "--kwargs", '{"message": "again"}')
    out = cli(
        "worker", "--burst", "--import", "tests.cli_tasks", "--disable-default-exception-handler", env=env
    )
    assert out.returncode == 0 and "failed on attempt" not in out.stderr
    out = cli("worker", "--burst", "--exception-handler", "tests.ops_helpers.nope", env=env)
    assert out.returncode != 0 and "has no 'nope'" in out.stderr and "Traceback" not in out.stderr


def test_worker_class_and_custom_serializer(env: dict[str, str]) -> None:
    serializer = ["--serializer", "tests.ops_helpers.ReversedJson"]
    dispatch(env, "tests.cli_tasks.add", "--args", "[20, 22]", *serializer)
    out = cli(
        "worker",
        "--burst",
        "--import",
        "tests.cli_tasks",
        "--worker-class",
        "tests.ops_helpers.NamedWorker",
        *serializer,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "add 20+22=42" in out.stdout and marks(env) == ["subclass NamedWorker starts"]
    out = cli("worker", "--burst", "--worker-class", "asynctasq.Config", env=env)
    assert out.returncode == 2 and "not a subclass of asynctasq.Worker" in out.stderr
    dispatch(env, "tests.cli_tasks.add", "--args", "[1, 1]", *serializer)
    out = cli("worker", "--burst", "--import", "tests.cli_tasks", env=env)  # the built-in readers cannot
    assert out.returncode == 0 and "cannot be decoded" in out.stderr


# -- CLI conventions ---------------------------------------------------------------------------


def test_version_log_level_case_and_rq_strategy_name(env: dict[str, str]) -> None:
    from importlib.metadata import version

    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"asynctasq {version('asynctasq')}"
    out = cli("worker", "--burst", "--log-level", "warning", "--dequeue-strategy", "default", env=env)
    assert out.returncode == 0, out.stderr
    assert "listening on" not in out.stderr  # INFO is below warning
    assert Config(dequeue_strategy="default").dequeue_strategy == "priority"


# -- error reporting ---------------------------------------------------------------------------


class _SentryServer:
    """A loopback HTTP server standing in for Sentry: it keeps the events it is sent."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.events: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                lines = body.split(b"\n")
                for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                    if json.loads(header).get("type") == "event":
                        outer.events.append(json.loads(payload))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_sentry_gets_each_final_failure_once_with_retries_as_breadcrumbs(env: dict[str, str]) -> None:
    pytest.importorskip("sentry_sdk")
    sentry = _SentryServer()
    try:
        out = cli(
            "dispatch",
            "tests.ops_helpers.always_fails",
            "--import",
            "tests.ops_helpers",
            "--args",
            '["the report"]',
            env=env,
        )
        assert out.returncode == 0, out.stderr
        dsn = f"http://publickey@127.0.0.1:{sentry.port}/1"
        out = cli("worker", "--max-tasks", "2", "--import", "tests.ops_helpers", "--sentry-dsn", dsn, env=env)
        assert out.returncode == 0, out.stderr
        assert "publickey" not in out.stderr
        [event] = sentry.events  # two attempts, one event: the final failure
        tags = event["tags"]
        assert tags["asynctasq.task"] == "tests.ops_helpers.always_fails" and tags["asynctasq.attempt"] in (
            2,
            "2",
        )
        assert tags["asynctasq.queue"] == "default" and len(tags["asynctasq.task_id"]) == 32
        [exc] = event["exception"]["values"]
        assert exc["type"] == "ValueError" and exc["value"] == "the report went wrong"
        crumbs = [b for b in event["breadcrumbs"]["values"] if b.get("category") == "asynctasq.retry"]
        assert len(crumbs) == 1 and "attempt 1/2 failed" in crumbs[0]["message"]
    finally:
        sentry.close()


def test_the_settings_module_in_the_configuration_doc_loads(tmp_path: Path) -> None:
    from tests.test_docs import python_block_after

    (tmp_path / "docsettings.py").write_text(python_block_after("configuration.md", "## Config files"))
    config = Config(config_file=str(tmp_path / "docsettings.py"), _environ={})
    assert (config.driver, config.queues, config.worker_name) == (
        "redis",
        ["high", "default", "low"],
        "worker-1024",
    )
    assert config.dict_config == {"version": 1, "root": {"level": "INFO"}}


# -- seeing and steering workers ---------------------------------------------------------------


async def _records(env: dict[str, str]) -> list[Any]:
    from asynctasq import Worker
    from asynctasq.drivers.sqlite import SQLiteDriver

    async with SQLiteDriver(env["ASYNCTASQ_SQLITE_PATH"]) as driver:
        return await Worker.all(driver)


async def _wait_record(env: dict[str, str], check: Any, timeout: float = 20) -> Any:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        records = await _records(env)
        if check(records):
            return records
        assert time.monotonic() < deadline, f"workers never matched: {records}"
        await asyncio.sleep(0.05)


def _start_worker(env: dict[str, str], *args: str) -> Any:
    import os
    import subprocess
    import sys

    from tests.test_cli import ROOT

    full = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")} | env
    return subprocess.Popen(
        [sys.executable, "-m", "asynctasq", "worker", "--import", "tests.cli_tasks", *args],
        cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


async def test_registry_from_python_suspend_resume_and_health(env: dict[str, str]) -> None:
    import signal

    from asynctasq import Worker
    from asynctasq.drivers.sqlite import SQLiteDriver

    proc = _start_worker(env, "--name", "w1", "--queues", "q", "--heartbeat-interval", "0.2")
    try:
        [idle] = await _wait_record(env, lambda rs: len(rs) == 1 and rs[0].state == "idle")
        assert (idle.name, idle.queues, idle.pid, idle.current_task_ids) == ("w1", ["q"], proc.pid, [])
        assert idle.birth_date is not None and idle.last_heartbeat is not None
        dispatch(env, "tests.cli_tasks.mark", "--args", '["slow", 1.0]', "--queue", "q")
        await _wait_record(env, lambda rs: rs and rs[0].state == "busy" and rs[0].current_task_ids)
        async with SQLiteDriver(env["ASYNCTASQ_SQLITE_PATH"]) as driver:
            assert await Worker.count(driver) == 1 and await Worker.count(driver, queue="q") == 1
            assert await Worker.all(driver, queue="other") == []
        out = cli("suspend", env=env)
        assert out.returncode == 0 and "suspend sent to 1 worker(s): w1" in out.stdout
        [suspended] = await _wait_record(env, lambda rs: rs and rs[0].state == "suspended")
        assert suspended.successful_task_count == 1 and marks(env) == ["slow"]  # the running one finished
        dispatch(env, "tests.cli_tasks.mark", "--args", '["after", 0]', "--queue", "q")
        beat = suspended.last_heartbeat
        await _wait_record(env, lambda rs: rs and rs[0].last_heartbeat > beat and rs[0].state == "suspended")
        assert marks(env) == ["slow"]  # a heartbeat later, still not taken
        out = cli("info", "--json", "--queues", "q", env=env)
        assert json.loads(out.stdout)["queues"]["q"]["ready"] == 1
        out = cli("resume", "--worker", "w1", env=env)
        assert out.returncode == 0 and "resume sent to 1 worker(s)" in out.stdout
        await _wait_record(env, lambda rs: marks(env) == ["slow", "after"])
        out = cli("health", "--worker", "w1", env=env)
        assert out.returncode == 0 and out.stdout.startswith("ok: w1"), out.stderr
        out = cli("health", "--worker", "nobody", env=env)
        assert out.returncode == 1 and "not registered" in out.stderr
        out = cli("resume", "--worker", "nobody", env=env)
        assert out.returncode == 1 and "no registered worker is named 'nobody'" in out.stderr
        out = cli("health", "--worker", "w1", "--max-age", "0.001", env=env)  # older than that
        assert out.returncode == 1 and "is stale: last heartbeat" in out.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        out = cli("health", "--worker", "w1", env=env)
        assert out.returncode == 1  # deregistered on the way out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_info_json_has_every_queue_with_its_real_counts(env: dict[str, str]) -> None:
    dispatch(env, "tests.cli_tasks.add", "--args", "[1, 1]", "--queue", "first")
    dispatch(env, "tests.cli_tasks.add", "--args", "[1, 2]", "--queue", "first")
    dispatch(env, "tests.cli_tasks.add", "--args", "[1, 3]", "--queue", "later", "--delay", "600")
    dispatch(env, "tests.cli_tasks.explode", "--kwargs", '{"message": "x"}', "--queue", "broken")
    out = cli("worker", "--burst", "--queues", "broken", env={**env, "ASYNCTASQ_IMPORT": "tests.cli_tasks"})
    assert out.returncode == 0, out.stderr
    out = cli("info", "--json", env=env)  # no --queues: every queue on the broker
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    oldest = doc["queues"]["first"].pop("oldest_waiting_s")
    assert isinstance(oldest, float) and 0 < oldest < 120  # the first of the two ready ones
    assert {q["oldest_waiting_s"] for name, q in doc["queues"].items() if name != "first"} == {None}
    for q in doc["queues"].values():
        q.pop("oldest_waiting_s", None)
    assert doc["queues"] == {
        "broken": {"ready": 0, "delayed": 0, "running": 0, "failed": 1},
        "first": {"ready": 2, "delayed": 0, "running": 0, "failed": 0},
        "later": {"ready": 0, "delayed": 1, "running": 0, "failed": 0},
    }
    assert doc["workers"] == [] and doc["notes"] == []
    out = cli("info", "--queues", "first", env=env)
    assert out.returncode == 0 and "first" in out.stdout and "later" not in out.stdout


def test_info_watch_redraws_in_a_terminal(env: dict[str, str]) -> None:
    import os
    import pty
    import select
    import signal
    import subprocess
    import sys
    import time

    from tests.test_cli import ROOT

    dispatch(env, "tests.cli_tasks.add", "--args", "[1, 1]", "--queue", "watched")
    master, slave = pty.openpty()
    full = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")} | env | {"COLUMNS": "120"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "asynctasq", "info", "--watch", "--interval", "0.2"],
        cwd=ROOT, env=full, stdin=slave, stdout=slave, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while seen.count(b"queues on") < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                seen += os.read(master, 65536)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert seen.count(b"queues on") >= 3, seen[-500:]
    assert b"\x1b[" in seen  # redrawn in place (cursor movement), not appended
    assert b"watched" in seen and b"Traceback" not in seen


def test_systemd_unit_runs_the_worker_with_the_given_options() -> None:
    out = cli("systemd-unit", "--import", "app.tasks", "--queues", "high,default")
    assert out.returncode == 0, out.stderr
    assert (
        "Type=notify" in out.stdout
        and "-m asynctasq worker --import app.tasks --queues high,default" in out.stdout
    )
    out = cli("systemd-unit", "--queues", "high", "--template")
    assert "--name %H-%i" in out.stdout and "asynctasq-worker@.service" in out.stdout


# -- metrics -----------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    """The samples of the endpoint, ``name{labels}`` -> value (empty while it is not up)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _wait_scrape(port: int, check: Any, timeout: float = 30) -> dict[str, float]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        samples = _scrape(port)
        if samples and check(samples):
            return samples
        assert time.monotonic() < deadline, f"metrics never matched: {samples}"
        time.sleep(0.1)


@pytest.mark.parametrize("processes", [1, 2])
def test_metrics_endpoint_counts_real_tasks(env: dict[str, str], processes: int) -> None:
    import signal

    pytest.importorskip("prometheus_client")
    for i in range(6):
        dispatch(env, "tests.cli_tasks.add", "--args", f"[{i}, 1]")
    dispatch(env, "tests.cli_tasks.explode", "--kwargs", '{"message": "m"}')
    dispatch(env, "tests.cli_tasks.add", "--args", "[9, 9]", "--delay", "600")
    port = _free_port()
    proc = _start_worker(env, "--metrics-port", str(port), "--processes", str(processes))
    try:
        ok = 'asynctasq_tasks_total{outcome="ok",queue="default",task="tests.cli_tasks.add"}'
        failed = 'asynctasq_tasks_total{outcome="failed",queue="default",task="tests.cli_tasks.explode"}'
        samples = _wait_scrape(port, lambda s: s.get(ok) == 6 and s.get(failed) == 1)
        count = 'asynctasq_task_duration_seconds_count{queue="default",task="tests.cli_tasks.add"}'
        assert samples[count] == 6
        depth = {k: f'asynctasq_queue_{k}{{queue="default"}}' for k in ("ready", "delayed", "failed")}
        samples = _wait_scrape(  # the next stats round after the tasks ran (every 5 s)
            port,
            lambda s: (s.get(depth["ready"]), s.get(depth["delayed"]), s.get(depth["failed"])) == (0, 1, 1),
        )
        assert samples['asynctasq_tasks_in_flight{queue="default"}'] == 0
        assert samples['asynctasq_queue_oldest_waiting_seconds{queue="default"}'] == 0  # none ready
        assert "asynctasq_leases_lost_total" in samples
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


# -- tracing -----------------------------------------------------------------------------------


async def test_dispatch_and_run_spans_are_linked_across_processes(
    env: dict[str, str], tmp_path: Path
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import asynctasq
    from asynctasq.task import close_producer
    from tests.cli_tasks import add, explode

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    previous = asynctasq.get_config()
    asynctasq.configure(driver="sqlite", sqlite_path=env["ASYNCTASQ_SQLITE_PATH"], otel=True)
    try:
        with trace.use_span(tracer.start_span("web request"), end_on_exit=True):
            from unittest import mock

            with mock.patch("opentelemetry.trace.get_tracer_provider", return_value=provider):
                import asynctasq.tracing as tracing

                tracing._tracer = None  # a tracer of this provider for the producer
                task_id = await add(2, 3).dispatch()
                [failing] = await asynctasq.dispatch_many([explode("traced")])
        await close_producer()
    finally:
        asynctasq.configure(previous)
        import asynctasq.tracing as tracing

        tracing._tracer = None
    sent = {
        s.attributes["messaging.message.id"]: s
        for s in exporter.get_finished_spans()
        if s.name == "send default"
    }
    assert set(sent) == {task_id, failing}
    send = sent[task_id]
    assert send.kind == trace.SpanKind.PRODUCER and send.attributes["messaging.system"] == "asynctasq"
    assert send.attributes["messaging.operation.type"] == "send"
    spans_file = tmp_path / "spans.json"
    out = cli(
        "worker", "--burst", "--otel", "--import", "tests.otel_setup",
        env={**env, "ASYNCTASQ_TEST_SPANS": str(spans_file)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    processed = {s["attributes"]["messaging.message.id"]: s for s in json.loads(spans_file.read_text())}
    run = processed[task_id]
    assert run["name"] == "process default" and run["kind"] == "CONSUMER"
    assert run["trace_id"] == send.context.trace_id  # one trace, from the web request to the run
    assert run["parent_span_id"] == send.context.span_id and run["links"] == [send.context.span_id]
    assert run["attributes"]["asynctasq.task.name"] == "tests.cli_tasks.add" and run["status"] == "UNSET"
    assert processed[failing]["status"] == "ERROR"
    assert processed[failing]["parent_span_id"] == sent[failing].context.span_id


def test_tracing_off_puts_no_trace_in_messages(env: dict[str, str]) -> None:
    from asynctasq import Config
    from asynctasq.task import Producer
    from tests.cli_tasks import add

    encoded = Producer([Config(_environ={})]).encode(add(1, 2))
    assert b"trace" not in encoded.item.body and b"traceparent" not in encoded.item.body


async def test_the_process_title_shows_the_workers_state(env: dict[str, str]) -> None:
    import signal

    pytest.importorskip("setproctitle")
    proc = _start_worker(env, "--name", "titled", "--queues", "q1,q2")
    try:
        path = Path(f"/proc/{proc.pid}/cmdline")

        def title() -> str:
            return path.read_bytes().replace(b"\0", b" ").decode().strip()

        await _wait_record(env, lambda rs: title() == "asynctasq worker titled [idle] q1,q2")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        proc.communicate()


def test_shell_completion_of_the_console_script() -> None:
    import os
    import subprocess
    import sys

    script = str(Path(sys.executable).parent / "asynctasq")  # the console script pip installed
    env = {
        **os.environ,
        "COMP_WORDS": "asynctasq fail",
        "COMP_CWORD": "1",
        "_ASYNCTASQ_COMPLETE": "complete_bash",
    }
    out = subprocess.run([script], env=env, capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["failed"], out.stderr


# -- the failed registry -----------------------------------------------------------------------


def test_failed_filters_show_and_requeue_with_attempts_from_one(env: dict[str, str]) -> None:
    dispatch(env, "tests.cli_tasks.explode", "--kwargs", '{"message": "first"}', "--queue", "a")
    dispatch(env, "tests.cli_tasks.explode", "--kwargs", '{"message": "second"}', "--queue", "b")
    out = cli(
        "dispatch",
        "tests.ops_helpers.always_fails",
        "--import",
        "tests.ops_helpers",
        "--args",
        '["x"]',
        "--queue",
        "a",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    twice = out.stdout.strip()
    out = cli(
        "worker",
        "--max-tasks",
        "4",
        "--queues",
        "a,b",
        "--import",
        "tests.cli_tasks",
        "--import",
        "tests.ops_helpers",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    out = cli("failed", "list", "--task", "tests.ops_helpers.always_fails", env=env)
    assert out.returncode == 0 and "1 failed task(s)" in out.stdout and twice in out.stdout
    out = cli("failed", "list", "--queue", "b", env=env)
    assert "1 failed task(s)" in out.stdout and "second" in out.stdout
    assert "0 failed task(s)" in cli("failed", "list", "--older-than", "3600", env=env).stdout
    assert "3 failed task(s)" in cli("failed", "list", "--newer-than", "3600", env=env).stdout
    out = cli("failed", "show", twice, env=env)
    assert out.returncode == 0, out.stderr
    assert f"id:        {twice}" in out.stdout and "attempt:   2 of 2" in out.stdout
    assert 'args:      ["x"]' in out.stdout and "ValueError: x went wrong" in out.stdout
    assert "Traceback" in out.stdout  # the whole error
    out = cli("failed", "show", "no-such-task", env=env)
    assert out.returncode == 1 and "no failed task 'no-such-task'" in out.stderr
    out = cli("failed", "requeue", "--task", "tests.ops_helpers.always_fails", env=env)
    assert out.returncode == 0 and "requeued 1 task(s)" in out.stdout
    # it runs again from attempt 1: one failure is a retry, not the end
    out = cli("worker", "--max-tasks", "1", "--queues", "a", "--import", "tests.ops_helpers", env=env)
    assert out.returncode == 0, out.stderr
    assert f"always_fails {twice} failed on attempt 1/2" in out.stderr and "retrying" in out.stderr
    out = cli("failed", "purge", "--queue", "b", env=env)
    assert "purged 1 task(s)" in out.stdout
    assert "1 failed task(s)" in cli("failed", "list", env=env).stdout  # only "first" is left
    out = cli("failed", "requeue", env=env)
    assert out.returncode == 2 and "--task" in out.stderr


async def test_maintenance_interval_runs_the_drivers_clean_up(env: dict[str, str]) -> None:
    import signal
    import sqlite3

    from asynctasq.drivers.sqlite import SQLiteDriver

    async with SQLiteDriver(env["ASYNCTASQ_SQLITE_PATH"]) as driver:
        await driver.store_results([("gone-soon", b"1")], ttl=0.05)

    def results() -> int:
        with sqlite3.connect(env["ASYNCTASQ_SQLITE_PATH"]) as raw:
            return int(raw.execute("SELECT count(*) FROM results").fetchone()[0])

    assert results() == 1
    proc = _start_worker(env, "--maintenance-interval", "0.2")
    try:
        await _wait_record(env, lambda rs: results() == 0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        proc.communicate()


def test_cancel_a_waiting_task_by_its_id(env: dict[str, str]) -> None:
    out = cli(
        "dispatch",
        "tests.cli_tasks.add",
        "--import",
        "tests.cli_tasks",
        "--args",
        "[1, 2]",
        "--delay",
        "600",
        "--queue",
        "later",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    delayed = out.stdout.strip()
    out = cli("dispatch", "tests.cli_tasks.add", "--import", "tests.cli_tasks", "--args", "[3, 4]", env=env)
    ready = out.stdout.strip()
    out = cli("cancel", delayed, env=env)
    assert out.returncode == 0 and f"cancelled {delayed} (it was waiting on later)" in out.stdout, out.stderr
    out = cli("cancel", delayed, env=env)
    assert out.returncode == 1 and "is not waiting on any queue" in out.stderr
    out = cli("cancel", ready, "--queues", "later", env=env)  # not on that queue
    assert out.returncode == 1
    out = cli("worker", "--burst", "--import", "tests.cli_tasks", env=env)
    assert "add 3+4=7" in out.stdout and "add 1+2" not in out.stdout
    doc = json.loads(cli("info", "--json", env=env).stdout)
    assert doc["queues"].get("later", {"delayed": 0})["delayed"] == 0


def test_rq_worker_arguments_url_and_short_flags(env: dict[str, str], tmp_path: Path) -> None:
    """`rq worker --url ... -b -P ... -w ...` with our names."""
    other = tmp_path / "by-url.db"
    url_env = {"ASYNCTASQ_TEST_MARKS": env["ASYNCTASQ_TEST_MARKS"]}
    out = cli(
        "dispatch",
        "tests.cli_tasks.mark",
        "--import",
        "tests.cli_tasks",
        "--args",
        '["via-url", 0]',
        "-u",
        f"sqlite:///{other}",
        env=url_env,
    )
    assert out.returncode == 0, out.stderr
    out = cli(
        "worker",
        "-u",
        f"sqlite:///{other}",
        "-b",
        "-P",
        ".",
        "--import",
        "tests.cli_tasks",
        "-w",
        "tests.ops_helpers.NamedWorker",
        "--max-jobs",
        "5",
        env=url_env,
    )
    assert out.returncode == 0, out.stderr
    assert marks(env) == ["subclass NamedWorker starts", "via-url"]
    assert f"sqlite:{other}" in out.stderr  # the URL chose the driver and its file
    config = Config(url="redis://:hunter2@cache:6380/2", _environ={"ASYNCTASQ_REDIS_URL": "redis://env"})
    assert (config.driver, config.redis_url) == ("redis", "redis://:hunter2@cache:6380/2")
    assert "hunter2" not in repr(config)
    assert Config(url="redis://cache", driver="sqlite", _environ={}).driver == "sqlite"  # explicit wins
    from_env = Config(
        _environ={"ASYNCTASQ_URL": "postgresql://app@db/app", "ASYNCTASQ_POSTGRES_DSN": "postgresql://x@y/z"}
    )
    assert (from_env.driver, from_env.postgres_dsn) == (
        "postgres",
        "postgresql://x@y/z",
    )  # a setting beats the URL
    with pytest.raises(ConfigError, match="has no driver scheme"):
        Config(url="http://example.com", _environ={})
