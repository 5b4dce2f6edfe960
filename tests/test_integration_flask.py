"""The Flask extension with real apps, real SQLite brokers and real workers."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("flask")

import click
import click.testing
from flask import Flask

import asynctasq
from asynctasq.config import Config
from asynctasq.core.driver_factory import DriverFactory
from asynctasq.core.worker import Worker
from asynctasq.drivers.base import EnqueueItem
from asynctasq.drivers.sqlite import SQLiteDriver
from asynctasq.errors import ConfigError, TaskDefinitionError, TaskFailed
from asynctasq.integrations import EXTENSION_KEY, AppSettings, load_app_worker
from tests import flaskrq_app as flaskrq
from tests.conftest import wait_for
from tests.flask_app import (
    CONFIG_ENV,
    DB_ENV,
    TEARDOWNS,
    create_app,
    fails,
    greeting,
    greeting_sync,
    own_g,
    slow,
    started,
    tasks,
    waits,
)
from tests.flaskrq_app import CONFIG_ENV as FLASKRQ_CONFIG_ENV
from tests.flaskrq_app import broken, send_password_reset, tq, update_stats
from tests.flaskrq_brokers import (
    Broker,
    app_cli,
    broker_fixture,  # noqa: F401 - the broker fixture
    clean_env,
    ran_in_the_app,
    reference_example,
    result_on,
    seed_cli,
)
from tests.flaskrq_brokers import ready as ready_on

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def make_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Flask]]:
    """create_app() on a fresh database; the apps' producer connections close afterwards."""
    monkeypatch.setenv(DB_ENV, str(tmp_path / "app.db"))
    TEARDOWNS.clear()
    started.clear()
    made: list[Flask] = []

    def make(**config: object) -> Flask:
        made.append(create_app(**config))
        return made[-1]

    yield make
    for app in made:
        with app.app_context():
            tasks.close()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


def settings(app: Flask) -> AppSettings:
    state = app.extensions[EXTENSION_KEY]
    assert isinstance(state.settings, AppSettings)
    return state.settings


def make_worker(app: Flask, queues: list[str] | None = None, **options: object) -> Worker:
    options.setdefault("burst", True)
    with app.app_context():
        return tasks.make_worker(queues, install_signal_handlers=False, **options)


async def work(worker: Worker) -> Worker:
    async with worker.driver:
        await worker.start()
    return worker


async def result_of(app: Flask, task_id: str, queue: str = "default") -> object:
    driver = DriverFactory.create_from_config(settings(app).config_for(queue))
    async with driver:
        return await asynctasq.result(task_id, timeout=5, driver=driver)


async def ready(app: Flask, queue: str, connection_queue: str | None = None) -> int:
    driver = DriverFactory.create_from_config(settings(app).config_for(connection_queue or queue))
    async with driver:
        return (await driver.stats([queue]))[queue]["ready"]


def teardowns(label: str) -> list[str | None]:
    return [exc for seen, exc in TEARDOWNS if seen == label]


# -- settings -------------------------------------------------------------------------------


def test_settings_from_app_config(tmp_path: Path) -> None:
    app = create_app(ASYNCTASQ_CONCURRENCY=7, ASYNCTASQ_SQLITE_PATH=str(tmp_path / "x.db"))
    s = settings(app)
    assert s.queues == ["default", "email", "priority"]  # "default" always there, first
    assert s.config.concurrency == 7
    assert s.config.sqlite_path == str(tmp_path / "x.db")
    assert s.config.queues == s.queues
    assert len(s.connections) == 1
    listed = create_app(ASYNCTASQ_QUEUES="high,default,low")
    assert settings(listed).queues == ["high", "default", "low"]  # where the app put it


def test_unknown_key_names_the_closest_valid_one() -> None:
    with pytest.raises(ConfigError, match="ASYNCTASQ_REDIS_URL"):
        create_app(ASYNCTASQ_REDIS_ULR="redis://x")
    with pytest.raises(ConfigError, match="ASYNCTASQ_QUEUE_CONNECTIONS"):
        create_app(ASYNCTASQ_QUEUE_CONECTIONS={})
    with pytest.raises(ConfigError, match="concurrency"):
        create_app(ASYNCTASQ_CONCURRENCY=0)


def test_queue_connections(tmp_path: Path) -> None:
    mail = str(tmp_path / "mail.db")
    app = create_app(
        ASYNCTASQ_QUEUES=["priority", "email", "email-priority", "audit"],
        ASYNCTASQ_QUEUE_CONNECTIONS={
            "email": mail,  # a string: the app driver's connection setting (sqlite_path)
            "email-priority": "email",  # another queue's name: share its connection
            "audit": {"ASYNCTASQ_SQLITE_PATH": mail, "lease_seconds": 5},  # a dict of settings
            "priority": None,  # the app's connection
        },
    )
    s = settings(app)
    assert s.config_for("priority") is s.config
    assert s.config_for("email").sqlite_path == mail
    assert s.config_for("email-priority") is s.config_for("email")
    assert s.config_for("audit").sqlite_path == mail and s.config_for("audit").lease_seconds == 5
    assert len(s.connections) == 3
    worker_config = s.worker_config(["email-priority", "default"])
    assert worker_config.sqlite_path == mail  # the first listed queue's connection
    assert worker_config.queues == ["email-priority", "default"]


@pytest.mark.parametrize(
    ("connections", "message"),
    [
        ({"email": "priority", "priority": "email"}, "refer to each other"),
        ({"email": "email"}, "refer to each other"),
        ({"email": 5}, "must be a dict of settings"),
        ({"email": {"sqlite_pth": "x.db"}}, "did you mean 'sqlite_path'"),
        (["email"], "must be a dict"),
    ],
)
def test_bad_queue_connections(connections: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_app(ASYNCTASQ_QUEUE_CONNECTIONS=connections)


def test_the_connection_key(tmp_path: Path) -> None:
    s = settings(flaskrq.create_app(ASYNCTASQ_CONNECTION=f"sqlite:///{tmp_path / 'a.db'}"))
    assert (s.config.driver, s.config.sqlite_path) == ("sqlite", str(tmp_path / "a.db"))
    s = settings(
        flaskrq.create_app(ASYNCTASQ_CONNECTION="postgresql://app@db/app", ASYNCTASQ_DRIVER="postgres")
    )
    assert (s.config.driver, s.config.postgres_dsn) == ("postgres", "postgresql://app@db/app")
    s = settings(flaskrq.create_app(ASYNCTASQ_CONNECTION="plain.db"))  # not a URL: the driver's setting
    assert s.config.sqlite_path == "plain.db"
    s = settings(
        flaskrq.create_app(
            ASYNCTASQ_QUEUES=["email"], ASYNCTASQ_QUEUE_CONNECTIONS={"email": "redis://mail:6379/2"}
        )
    )
    assert (s.config_for("email").driver, s.config_for("email").redis_url) == ("redis", "redis://mail:6379/2")
    with pytest.raises(ConfigError, match="is a redis URL but ASYNCTASQ_DRIVER is 'sqlite'"):
        flaskrq.create_app(ASYNCTASQ_CONNECTION="redis://x", ASYNCTASQ_DRIVER="sqlite")
    with pytest.raises(ConfigError, match="ASYNCTASQ_CONNECTION or ASYNCTASQ_SQLITE_PATH, not both"):
        create_app(ASYNCTASQ_CONNECTION="sqlite:///b.db")  # this create_app sets ASYNCTASQ_SQLITE_PATH
    with pytest.raises(ConfigError, match="must be a URL or a path"):
        flaskrq.create_app(ASYNCTASQ_CONNECTION=["redis://x"])
    with pytest.raises(ConfigError, match="memory driver cannot be set up from a URL"):
        flaskrq.create_app(
            ASYNCTASQ_QUEUES=["email"], ASYNCTASQ_QUEUE_CONNECTIONS={"email": "memory://other"}
        )


def test_a_string_needs_a_driver_with_a_connection_url() -> None:
    with pytest.raises(ConfigError, match="memory driver has no connection URL"):
        create_app(ASYNCTASQ_DRIVER="memory", ASYNCTASQ_QUEUE_CONNECTIONS={"email": "x"})


def test_unconfigured_queues_are_refused(app: Flask) -> None:
    with app.app_context(), pytest.raises(ConfigError, match="add it to ASYNCTASQ_QUEUES"):
        tasks.dispatch_sync(greeting("x").on_queue("emial"))
    with pytest.raises(ConfigError, match="'emial' is not configured"):
        make_worker(app, ["email", "emial"])


def test_methods_need_an_app() -> None:
    with pytest.raises(RuntimeError, match="no app"):
        tasks.dispatch_sync(greeting("x"))


# -- producing and running --------------------------------------------------------------------


def test_sync_view_dispatches_and_the_task_runs_in_the_app_context(app: Flask) -> None:
    response = app.test_client().post("/greet/view")  # a sync view: no event loop of its own
    assert response.status_code == 200, response.text
    task_id = response.json["id"]  # type: ignore[index]
    with app.app_context():
        more = tasks.dispatch_many_sync([greeting("batch-1"), greeting("batch-2").on_queue("email")])
    worker = asyncio.run(work(make_worker(app, ["email", "default"])))
    assert worker.succeeded == 3
    assert asyncio.run(result_of(app, task_id, "email")) == "hello from flask"
    assert asyncio.run(result_of(app, more[1], "email")) == "hello from flask"
    assert teardowns("view") == [None]
    assert teardowns("batch-1") == [None]


async def test_every_task_gets_its_own_app_context(app: Flask) -> None:
    with app.app_context():
        ids = await tasks.dispatch_many([own_g(n) for n in range(6)])
    worker = await work(make_worker(app, concurrency=6))
    assert worker.succeeded == 6
    assert [await result_of(app, task_id) for task_id in ids] == list(range(6))
    for n in range(6):
        assert teardowns(f"own-{n}") == [None]  # one context per task, torn down once


async def test_sync_tasks_run_in_the_app_context_too(app: Flask) -> None:
    with app.app_context():
        task_id = await tasks.dispatch(greeting_sync("thread"))
    await work(make_worker(app))
    value = await result_of(app, task_id)
    assert isinstance(value, str) and value.startswith("hello from flask in ")
    assert not value.endswith("MainThread")
    assert teardowns("thread") == [None]


async def test_torn_down_on_error_and_on_timeout(app: Flask) -> None:
    with app.app_context():
        failing = await tasks.dispatch(fails("error"))
        late = await tasks.dispatch(slow("timeout"))
    worker = await work(make_worker(app))
    assert worker.failed == 2
    for task_id in (failing, late):
        with pytest.raises(TaskFailed):
            await result_of(app, task_id)
    assert teardowns("error") == ["ValueError"]
    assert teardowns("timeout") == ["TaskTimeout"]


@pytest.mark.parametrize("how", ["stop-task", "shutdown"])
async def test_torn_down_on_cancel(app: Flask, how: str) -> None:
    with app.app_context():
        task_id = await tasks.dispatch(waits("cancel"))
    worker = make_worker(app, burst=False)
    running = asyncio.create_task(work(worker))
    try:
        await wait_for(started.is_set)
        if how == "stop-task":
            assert worker.stop_task(task_id)
        else:
            worker.stop(force=True)
        await wait_for(lambda: teardowns("cancel") == ["CancelledError"])
    finally:
        worker.stop(force=True)
        await running
    if how == "stop-task":
        with pytest.raises(TaskFailed, match="stopped"):
            await result_of(app, task_id)
    else:
        assert await ready(app, "default") == 1  # given back


async def test_each_queue_goes_to_its_connection(
    make_app: Callable[..., Flask], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(ASYNCTASQ_QUEUE_CONNECTIONS={"email": str(tmp_path / "mail.db"), "priority": "email"})
    batches: list[tuple[str, list[str]]] = []
    enqueue_many = SQLiteDriver.enqueue_many

    async def recorded(driver: SQLiteDriver, items: list[EnqueueItem]) -> list[str]:
        batches.append((Path(driver.path).name, [item.queue for item in items]))
        return await enqueue_many(driver, items)

    monkeypatch.setattr(SQLiteDriver, "enqueue_many", recorded)
    with app.app_context():
        ids = await tasks.dispatch_many(
            [greeting("d"), greeting("e").on_queue("email"), greeting("p").on_queue("priority")]
        )
    assert batches == [("app.db", ["default"]), ("mail.db", ["email", "priority"])]  # one per connection
    assert await ready(app, "default") == 1
    assert await ready(app, "email") == 1
    assert await ready(app, "priority") == 1
    assert await ready(app, "default", connection_queue="email") == 0  # not on mail.db
    assert await ready(app, "email", connection_queue="default") == 0  # not on app.db
    worker = await work(make_worker(app, ["priority", "default"]))  # on mail.db: "priority"'s
    assert worker.succeeded == 1
    assert await result_of(app, ids[2], "priority") == "hello from flask"
    assert await ready(app, "default") == 1  # untouched: its connection is another one


# -- the CLI and --app ---------------------------------------------------------------------------


def flask_cli(*args: str, db: Path, **app_config: object) -> subprocess.CompletedProcess[str]:
    env = clean_env(**{DB_ENV: str(db), CONFIG_ENV: json.dumps(app_config)})
    return app_cli("flask", "tests.flask_app:create_app", *args, env=env)


async def test_flask_asynctasq_worker_command(app: Flask, tmp_path: Path) -> None:
    with app.app_context():
        email_id = await tasks.dispatch(greeting("cli").on_queue("email"))
        await tasks.dispatch(greeting("left"))
    out = await asyncio.to_thread(
        flask_cli, "worker", "email", "--burst", "--concurrency", "2", "--name", "w1", db=tmp_path / "app.db"
    )
    assert out.returncode == 0, out.stderr
    assert "worker w1 listening on email" in out.stderr
    assert await result_of(app, email_id, "email") == "hello from flask"
    assert await ready(app, "default") == 1  # not one of the worker's queues


async def test_worker_command_stops_cleanly_on_sigterm(app: Flask, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    env[DB_ENV] = str(tmp_path / "app.db")
    log_path = tmp_path / "worker.log"
    command = ["-m", "flask", "--app", "tests.flask_app:create_app", "asynctasq", "worker"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        await wait_for(lambda: "listening on default, email, priority" in log_path.read_text(), timeout=30)
        with app.app_context():
            task_id = await tasks.dispatch(greeting("live"))
        assert await result_of(app, task_id) == "hello from flask"  # a running worker takes it
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0, log_path.read_text()


async def test_worker_command_flags_override_the_app_config(app: Flask, tmp_path: Path) -> None:
    with app.app_context():
        await tasks.dispatch_many([greeting(f"flag-{n}") for n in range(3)])
    db = tmp_path / "app.db"
    out = await asyncio.to_thread(
        flask_cli, "worker", "--max-tasks", "1", "--burst", db=db, ASYNCTASQ_MAX_TASKS=3
    )
    assert out.returncode == 0, out.stderr
    assert await ready(app, "default") == 2  # exactly one, not the app's three
    # the app's max_tasks=3 and no burst would wait for a third task: --burst ends it
    out = await asyncio.to_thread(flask_cli, "worker", "--burst", db=db, ASYNCTASQ_MAX_TASKS=3)
    assert out.returncode == 0, out.stderr
    assert await ready(app, "default") == 0


def worker_command(app: Flask) -> click.Command:
    group = app.cli.commands["asynctasq"]
    assert isinstance(group, click.Group)
    return group.commands["worker"]


def test_worker_command_has_an_option_for_every_worker_setting(app: Flask) -> None:
    options = {p.name: p for p in worker_command(app).params if isinstance(p, click.Option)}
    worker_settings = [s for s in Config.settings() if s.group == "worker"]
    assert len(worker_settings) >= 15
    for setting in worker_settings:
        option = options.pop(setting.name)
        assert option.opts == [f"--{setting.flag}"], setting.name
        assert option.help is not None and option.help.startswith(setting.help)
        assert setting.env in option.help
        if setting.type == "bool":
            assert option.secondary_opts == [f"--no-{setting.flag}"]
        if setting.choices:
            assert isinstance(option.type, click.Choice) and tuple(option.type.choices) == setting.choices
        assert option.multiple == (setting.type == "list[str]" and setting.name != "queues")
    assert not options  # nothing hand-written besides
    out = app.test_cli_runner().invoke(args=["asynctasq", "worker", "--help"])
    assert out.exit_code == 0, out.output
    for setting in worker_settings:
        assert f"--{setting.flag}" in out.output


def test_worker_command_errors(app: Flask) -> None:
    runner = app.test_cli_runner()
    out = runner.invoke(args=["asynctasq", "worker", "email", "emial", "--burst"])
    assert out.exit_code == 1
    assert "'emial' is not configured" in out.output
    out = runner.invoke(args=["asynctasq", "worker", "--concurrency", "0"])
    assert out.exit_code == 1
    assert "concurrency must be at least 1" in out.output
    out = runner.invoke(args=["asynctasq", "worker", "--dequeue-strategy", "fifo"])
    assert out.exit_code == 2
    assert "'fifo' is not one of" in out.output


async def test_load_app_worker(app: Flask, tmp_path: Path) -> None:
    with app.app_context():
        task_id = await tasks.dispatch(greeting("loaded").on_queue("priority"))
    config, task_context = load_app_worker("tests.flask_app:create_app", ["priority"])
    assert config.sqlite_path == str(tmp_path / "app.db")
    assert config.queues == ["priority"]
    config, task_context = load_app_worker("tests.flask_app")  # finds create_app
    assert config.queues == ["default", "email", "priority"]
    driver = DriverFactory.create_from_config(config)
    worker = Worker.from_config(driver, config, burst=True, task_context=task_context)
    worker.install_signal_handlers = False
    await work(worker)
    assert await result_of(app, task_id) == "hello from flask"
    assert teardowns("loaded") == [None]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.cli_tasks", "has no app or create_app"),
        ("tests.flask_app:nothing", "has no 'nothing'"),
        ("tests.flask_app:DB_ENV", "not a Flask or Quart app"),
        ("tests.no_such_module:app", "cannot import"),
    ],
)
def test_load_app_worker_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_app_worker(spec)


def test_app_without_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.flask_app

    monkeypatch.setattr(tests.flask_app, "bare", Flask("bare"), raising=False)
    with pytest.raises(ConfigError, match="no asynctasq extension"):
        load_app_worker("tests.flask_app:bare")


def test_missing_flask_names_the_extra() -> None:
    code = "import sys; sys.modules['flask'] = None; import asynctasq.integrations.flask"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1
    assert 'pip install "asynctasq[flask]"' in out.stderr


def doc_blocks(kind: str) -> list[str]:
    """The ``kind`` code blocks of docs/integrations.md's Flask part (up to "## Quart")."""
    text = (ROOT / "docs" / "integrations.md").read_text()
    section = text[text.index("## Flask\n") : text.index("## Quart\n")]
    blocks: list[tuple[str, list[str]]] = []
    inside = False
    for line in section.splitlines():
        if line.startswith("```"):
            inside = not inside
            if inside:
                blocks.append((line[3:], []))
        elif inside:
            blocks[-1][1].append(line)
    return ["\n".join(lines) + "\n" for lang, lines in blocks if lang == kind]


def test_every_flask_example_of_the_docs_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = {block.splitlines()[0]: block for block in doc_blocks("python")}
    assert set(blocks) == {"# myapp.py", "# my_worker.py", "# my_async_worker.py", "app.config.update("}
    for name in ("myapp.py", "my_worker.py", "my_async_worker.py"):
        (tmp_path / name).write_text(blocks[f"# {name}"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "myapp", raising=False)
    myapp = importlib.import_module("myapp")
    app = myapp.create_app()
    env = clean_env(ASYNCTASQ_BURST="1", PYTHONPATH=str(tmp_path))  # burst: the workers return

    def run(*argv: str) -> str:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    try:
        signup = app.test_client().post("/users/7")  # the sync view
        stats = app.test_client().post("/stats")  # the async view
        assert (signup.status_code, stats.status_code) == (200, 200), (signup.text, stats.text)
        (commands,) = doc_blocks("")
        dispatched: list[str] = []
        for line in commands.splitlines():
            argv = shlex.split(line.partition("#")[0])
            assert argv[:4] == ["flask", "--app", "myapp:create_app", "asynctasq"], line
            output = run(sys.executable, "-m", *argv)
            if argv[4] == "dispatch":
                dispatched.append(output.strip())
            if argv[4] == "info":
                assert "email" in output and "worker(s)" in output
        assert asyncio.run(result_of(app, signup.json["task"], "email")) == "welcome 7 from myapp"  # type: ignore[index]
        assert asyncio.run(result_of(app, stats.json["task"])) == 1  # type: ignore[index]
        run(sys.executable, "my_worker.py")  # takes the task of the dispatch line
        assert asyncio.run(result_of(app, dispatched[0], "email")) == "welcome 7 from myapp"
        with app.app_context():
            job = myapp.send_welcome.enqueue(8)
        run(sys.executable, "my_async_worker.py")
        assert asyncio.run(result_of(app, job.id, "email")) == "welcome 8 from myapp"
    finally:
        with app.app_context():
            myapp.tq.close()
        sys.modules.pop("myapp", None)
    example = Flask(__name__)
    exec(blocks["app.config.update("], {"app": example})
    s = AppSettings(example.config)
    assert {q: s.config_for(q).redis_url for q in s.queues} == {
        "default": "redis://redis.internal:6379",
        "priority": "redis://redis.internal:6379",
        "email": "redis://mail-redis.internal:6379",
        "email-priority": "redis://mail-redis.internal:6379",
    }


# -- Flask-RQ's pages (seeds 000 and 002), block by block, on real brokers --------------------


@pytest.fixture
def seed_app(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Flask]]:
    """The seeds' create_app() on ``broker``; its config also reaches worker processes."""
    made: list[Flask] = []

    def make(**config: object) -> Flask:
        keys = broker.app_config(**config)
        monkeypatch.setenv(FLASKRQ_CONFIG_ENV, json.dumps(keys))
        made.append(flaskrq.create_app())
        return made[-1]

    yield make
    for app in made:
        with app.app_context():
            tq.close()


def seed_settings(app: Flask) -> AppSettings:
    return settings(app)


async def run_seed_worker(app: Flask, queues: list[str] | None = None) -> Worker:
    with app.app_context():
        worker = tq.make_worker(queues, burst=True, install_signal_handlers=False)
    await worker.start()  # connects its own driver
    return worker


RESET = "tests.flaskrq_app.send_password_reset"


async def test_seed_configuring_queues(broker: Broker, seed_app: Callable[..., Flask]) -> None:
    """RQ_QUEUES = ["email", "priority"] and RQ_CONNECTION = "redis://redis.my-app.example"."""
    example = flaskrq.create_app(ASYNCTASQ_CONNECTION="redis://redis.my-app.example")
    assert (settings(example).config.driver, settings(example).config.redis_url) == (
        "redis",
        "redis://redis.my-app.example",
    )
    app = seed_app(ASYNCTASQ_QUEUES=["email", "priority"])
    s = seed_settings(app)
    assert s.queues == ["default", "email", "priority"]  # "default" always configured
    assert len(s.connections) == 1 and broker.describes(s.config) == "main"
    with app.app_context():
        jobs = [await tq.queues[name].enqueue(update_stats, data={name: 1}) for name in s.queues]
    for name in s.queues:
        assert await ready_on(s.config, name) == 1  # one connection for the three
    worker = await run_seed_worker(app)
    assert worker.succeeded == 3
    for job, name in zip(jobs, s.queues, strict=True):
        assert ran_in_the_app(await result_on(s.config, job.id), "update_stats", data={name: 1})


async def test_seed_using_queues_from_views(broker: Broker, seed_app: Callable[..., Flask]) -> None:
    """rq.queue.enqueue(update_stats, data=...) and rq.queues["email"].enqueue(...) in views."""
    app = seed_app(ASYNCTASQ_QUEUES=["email", "priority"])
    client = app.test_client()
    sent = [  # in a thread, as a WSGI server runs views
        await asyncio.to_thread(client.post, "/stats", json={"visits": 3}),  # sync views
        await asyncio.to_thread(client.post, "/users/7/reset"),
        await asyncio.to_thread(client.post, "/users/8/welcome"),  # async: await ...enqueue(...)
    ]
    assert [r.status_code for r in sent] == [200, 200, 200], [r.text for r in sent]
    jobs = [r.json for r in sent]
    assert [j["queue"] for j in jobs] == ["default", "email", "email"]  # type: ignore[index]
    worker = await run_seed_worker(app)
    assert worker.succeeded == 3
    config = seed_settings(app).config
    values = [await result_on(config, j["id"]) for j in jobs]  # type: ignore[index]
    assert ran_in_the_app(values[0], "update_stats", data={"visits": 3})
    assert ran_in_the_app(values[1], "send_password_reset", user_id=7)
    assert ran_in_the_app(values[2], "send_welcome", user_id=8)


async def test_seed_the_job_decorator(broker: Broker, seed_app: Callable[..., Flask]) -> None:
    """@rq.job(queue="email"), send_password_reset.enqueue(user_id=...), "same as"
    rq.queues["email"].enqueue(...), and rq.queues["priority"] overriding the queue."""
    app = seed_app(ASYNCTASQ_QUEUES=["email", "priority"])
    assert send_password_reset.name == RESET
    client = app.test_client()
    decorated = client.post("/users/1/reset-decorated").json
    same = client.post("/users/2/reset").json
    priority = client.post("/users/3/reset-priority").json
    assert [j["queue"] for j in (decorated, same, priority)] == ["email", "email", "priority"]  # type: ignore[index]
    config = seed_settings(app).config
    assert (await ready_on(config, "email"), await ready_on(config, "priority")) == (2, 1)
    worker = await run_seed_worker(app, ["priority"])
    assert worker.succeeded == 1  # only the overridden one
    assert ran_in_the_app(await result_on(config, priority["id"]), "send_password_reset", user_id=3)  # type: ignore[index]
    assert await ready_on(config, "email") == 2
    with app.app_context():
        job = await send_password_reset.enqueue(user_id=4)  # async code: the same method, awaited
    assert job.queue == "email"
    assert (await run_seed_worker(app, ["email"])).succeeded == 3


async def test_seed_a_queue_on_another_connection(broker: Broker, seed_app: Callable[..., Flask]) -> None:
    """RQ_QUEUE_CONNECTIONS = {"email": "redis://email-redis.my-app.example"}."""
    app = seed_app(ASYNCTASQ_QUEUES=["email"], ASYNCTASQ_QUEUE_CONNECTIONS={"email": broker.other})
    s = seed_settings(app)
    assert [broker.describes(s.config_for(q)) for q in s.queues] == ["main", "other"]
    with app.app_context():
        email = await send_password_reset.enqueue(user_id=9)
        stats = await tq.queue.enqueue(update_stats, data={})
    assert (await ready_on(s.config_for("email"), "email"), await ready_on(s.config, "email")) == (1, 0)
    assert (await ready_on(s.config, "default"), await ready_on(s.config_for("email"), "default")) == (1, 0)
    assert (await run_seed_worker(app, ["default", "email"])).succeeded == 1  # default's connection
    assert (await run_seed_worker(app, ["email"])).succeeded == 1  # email's own connection
    assert ran_in_the_app(await result_on(s.config_for("email"), email.id), "send_password_reset", user_id=9)
    assert ran_in_the_app(await result_on(s.config, stats.id), "update_stats", data={})


async def test_seed_queues_sharing_a_connection(broker: Broker, seed_app: Callable[..., Flask]) -> None:
    app = seed_app(**reference_example(broker))
    s = seed_settings(app)
    assert {q: broker.describes(s.config_for(q)) for q in s.queues} == {
        "default": "main",
        "priority": "main",
        "email": "other",
        "email-priority": "other",
    }
    assert len(s.connections) == 2
    with app.app_context():
        jobs = {q: await tq.queues[q].enqueue(send_password_reset, user_id=n) for n, q in enumerate(s.queues)}
    for q in s.queues:
        assert await ready_on(s.config_for(q), q) == 1
    assert (await run_seed_worker(app, ["email-priority", "email"])).succeeded == 2
    assert (await run_seed_worker(app)).succeeded == 2  # the first configured queue's connection
    for n, (q, job) in enumerate(jobs.items()):
        assert ran_in_the_app(await result_on(s.config_for(q), job.id), "send_password_reset", user_id=n)
    # Flask-RQ's rules: a "default" key, None values and unconfigured queues are ignored
    ignored = seed_app(
        ASYNCTASQ_QUEUES=["email"],
        ASYNCTASQ_QUEUE_CONNECTIONS={"default": broker.other, "email": None, "audit": broker.other},
    )
    assert len(seed_settings(ignored).connections) == 1


async def test_the_decorators_on_an_existing_task(seed_app: Callable[..., Flask]) -> None:
    app = seed_app(ASYNCTASQ_QUEUES=["email"])
    wrapped = tq.task(greeting)  # a task of tests/flask_app.py: same definition, plus enqueue
    assert wrapped.definition is greeting.definition
    with pytest.raises(TaskDefinitionError, match="is a task already"):
        tq.job(queue="email")(greeting)
    with app.app_context():
        job = await wrapped.enqueue("decorated")
    assert (job.queue, job.task) == ("default", "flask_app.greeting")


def test_seed_unknown_queue_names_the_configured_ones(seed_app: Callable[..., Flask]) -> None:
    app = seed_app(ASYNCTASQ_QUEUES=["email", "priority"])
    with app.app_context():
        with pytest.raises(KeyError) as caught:
            tq.queues["emial"]
        assert str(caught.value) == (
            "queue 'emial' is not configured for this app: add it to ASYNCTASQ_QUEUES "
            "(configured: default, email, priority)"
        )
        assert isinstance(caught.value, ConfigError)
        assert list(tq.queues) == ["default", "email", "priority"]
        with pytest.raises(TaskDefinitionError, match="is not a task: decorate it with @task"):
            tq.queue.enqueue(print, "x")


async def test_seed_worker_cli_command(broker: Broker, seed_app: Callable[..., Flask]) -> None:
    """$ flask rq worker (all queues, the first one's connection) and
    $ flask rq worker email email-priority (email's connection)."""
    config = {**reference_example(broker), "ASYNCTASQ_BURST": True}  # burst: the command returns
    app = seed_app(**config)
    s = seed_settings(app)
    with app.app_context():
        jobs = {q: await tq.queues[q].enqueue(send_password_reset, user_id=n) for n, q in enumerate(s.queues)}
    out = await asyncio.to_thread(seed_cli, "flask", broker, "worker", **config)
    assert out.returncode == 0, out.stderr
    assert "listening on default, priority, email, email-priority" in out.stderr
    assert (await ready_on(s.config, "default"), await ready_on(s.config, "priority")) == (0, 0)
    assert await ready_on(s.config_for("email"), "email") == 1  # on the other connection: untouched
    out = await asyncio.to_thread(seed_cli, "flask", broker, "worker", "email", "email-priority", **config)
    assert out.returncode == 0, out.stderr
    for n, (q, job) in enumerate(jobs.items()):
        assert ran_in_the_app(await result_on(s.config_for(q), job.id), "send_password_reset", user_id=n)


async def test_seed_worker_script(broker: Broker, seed_app: Callable[..., Flask], tmp_path: Path) -> None:
    """my_worker.py: with app.app_context(): worker = rq.make_worker(); worker.work(); stopped
    by SIGTERM like any worker."""
    app = seed_app()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    env["PYTHONPATH"] = str(ROOT)
    log_path = tmp_path / "my_worker.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "flaskrq_worker.py")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
    try:
        with app.app_context():
            job = await tq.queue.enqueue(update_stats, data={"script": 1})
        value = await result_on(seed_settings(app).config, job.id)  # waits for the running worker
        assert ran_in_the_app(value, "update_stats", data={"script": 1})
        assert proc.poll() is None  # not a burst: it works until told to stop
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0, log_path.read_text()  # SIGTERM: a graceful stop


async def test_make_worker_work_in_sync_code(broker: Broker, seed_app: Callable[..., Flask]) -> None:
    app = seed_app(ASYNCTASQ_QUEUES=["email"])
    with app.app_context():
        job = await send_password_reset.enqueue(user_id=11)

    def script() -> bool:
        with app.app_context():
            worker = tq.make_worker(install_signal_handlers=False)
            return worker.work(burst=True)

    assert await asyncio.to_thread(script) is True
    assert ran_in_the_app(
        await result_on(seed_settings(app).config, job.id), "send_password_reset", user_id=11
    )
    with app.app_context(), pytest.raises(RuntimeError, match=r"await worker\.start"):
        tq.make_worker().work()  # inside this test's running loop


async def test_app_cli_commands_read_the_app_config(broker: Broker, seed_app: Callable[..., Flask]) -> None:
    """flask asynctasq info | failed ... | dispatch: asynctasq's commands, on the app's config."""
    app = seed_app(**reference_example(broker))
    s = seed_settings(app)
    runner = app.test_cli_runner()

    async def invoke(*args: str) -> click.testing.Result:  # in a thread: the commands run their own loop
        return await asyncio.to_thread(runner.invoke, args=["asynctasq", *args])

    previous = asynctasq.get_config()
    try:
        out = await invoke("dispatch", RESET, "--kwargs", '{"user_id": 21}')
        assert out.exit_code == 0, out.output
        task_id = out.output.strip()
        assert await ready_on(s.config_for("email"), "email") == 1  # the task's queue, its connection
        out = await invoke("dispatch", RESET, "--args", "[22]", "--queue", "priority")
        assert out.exit_code == 0, out.output
        assert await ready_on(s.config, "priority") == 1
        with app.app_context():
            await broken.enqueue("on purpose")
        out = await invoke("info")
        assert out.exit_code == 0, out.output
        lines = out.output.splitlines()
        assert sum(line.startswith("== ") for line in lines) == 2  # one block per connection
        assert any(line.split()[:2] == ["default", "1"] for line in lines), out.output
        assert any(line.split()[:2] == ["email", "1"] for line in lines), out.output
        assert (await run_seed_worker(app)).failed == 1
        assert (await run_seed_worker(app, ["email"])).succeeded == 1
        assert ran_in_the_app(
            await result_on(s.config_for("email"), task_id), "send_password_reset", user_id=21
        )
        out = await invoke("failed", "list")
        assert out.exit_code == 0, out.output
        assert "tests.flaskrq_app.broken" in out.output and "ValueError: on purpose" in out.output
        out = await invoke("failed", "requeue", "--queue", "default")
        assert out.exit_code == 0 and "requeued 1 task(s)" in out.output, out.output
        assert await ready_on(s.config, "default") == 1
        out = await invoke("failed", "requeue")
        assert out.exit_code == 2 and "name ids, --queue or --all" in out.output, out.output
        out = await invoke("dispatch", RESET, "--queue", "emial")
        assert out.exit_code == 1 and "'emial' is not configured" in out.output, out.output
    finally:
        asynctasq.configure(previous)
