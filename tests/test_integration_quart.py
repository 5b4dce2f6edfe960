"""The Quart extension with real apps, real SQLite brokers and real workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

pytest.importorskip("quart")

import click
import click.testing
from quart import Quart

import asynctasq
from asynctasq.config import Config
from asynctasq.core.driver_factory import DriverFactory
from asynctasq.core.worker import Worker
from asynctasq.errors import ConfigError, TaskFailed
from asynctasq.integrations import EXTENSION_KEY, AppSettings, load_app_worker
from tests import flaskrq_quart as flaskrq
from tests.conftest import wait_for
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
from tests.flaskrq_quart import CONFIG_ENV as FLASKRQ_CONFIG_ENV
from tests.flaskrq_quart import broken, send_password_reset, tq, update_stats
from tests.quart_app import (
    DB_ENV,
    TEARDOWNS,
    chain,
    create_app,
    fails,
    greeting,
    own_g,
    slow,
    started,
    tasks,
    waits,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def make_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., Quart]]:
    """create_app() on a fresh database; the apps' producer connections close afterwards."""
    monkeypatch.setenv(DB_ENV, str(tmp_path / "app.db"))
    TEARDOWNS.clear()
    started.clear()
    made: list[Quart] = []

    def make(**config: object) -> Quart:
        made.append(create_app(**config))
        return made[-1]

    yield make
    for app in made:
        async with app.app_context():
            await tasks.close()


@pytest.fixture
def app(make_app: Callable[..., Quart]) -> Quart:
    return make_app()


def settings(app: Quart) -> AppSettings:
    state = app.extensions[EXTENSION_KEY]
    assert isinstance(state.settings, AppSettings)
    return state.settings


async def make_worker(app: Quart, queues: list[str] | None = None, **options: object) -> Worker:
    options.setdefault("burst", True)
    async with app.app_context():
        return tasks.make_worker(queues, install_signal_handlers=False, **options)


async def work(worker: Worker) -> Worker:
    async with worker.driver:
        await worker.start()
    return worker


async def result_of(app: Quart, task_id: str, queue: str = "default") -> object:
    driver = DriverFactory.create_from_config(settings(app).config_for(queue))
    async with driver:
        return await asynctasq.result(task_id, timeout=5, driver=driver)


async def ready(app: Quart, queue: str, connection_queue: str | None = None) -> int:
    driver = DriverFactory.create_from_config(settings(app).config_for(connection_queue or queue))
    async with driver:
        return (await driver.stats([queue]))[queue]["ready"]


def teardowns(label: str) -> list[str | None]:
    return [exc for seen, exc in TEARDOWNS if seen == label]


def test_settings_and_errors() -> None:
    app = create_app(ASYNCTASQ_QUEUES="email", ASYNCTASQ_QUEUE_CONNECTIONS={"email": "mail.db"})
    assert settings(app).queues == ["default", "email"]
    assert settings(app).config_for("email").sqlite_path == "mail.db"
    with pytest.raises(ConfigError, match="did you mean 'ASYNCTASQ_DRIVER'"):
        create_app(ASYNCTASQ_DRIVERS="redis")


async def test_views_dispatch_and_serving_closes_the_connections(app: Quart) -> None:
    producer = app.extensions[EXTENSION_KEY].producer
    async with app.test_app() as test_app:
        client = test_app.test_client()
        response = await client.post("/greet/async-view")
        assert response.status_code == 200, await response.get_data(as_text=True)
        async_id = (await response.get_json())["id"]
        response = await client.post("/greet-sync/sync-view")  # runs in a thread: dispatch_sync
        assert response.status_code == 200, await response.get_data(as_text=True)
        sync_id = (await response.get_json())["id"]
        assert len(producer._drivers) == 2  # this loop's, and the background loop's
    assert not producer._drivers  # after_serving closed both
    worker = await work(await make_worker(app))
    assert worker.succeeded == 2
    assert await result_of(app, async_id, "email") == "hello from quart"
    assert await result_of(app, sync_id) == "hello from quart"
    assert teardowns("async-view") == [None]
    assert teardowns("sync-view") == [None]


async def test_every_task_gets_its_own_app_context(app: Quart) -> None:
    async with app.app_context():
        ids = await tasks.dispatch_many([own_g(n) for n in range(6)])
    worker = await work(await make_worker(app, concurrency=6))
    assert worker.succeeded == 6
    assert [await result_of(app, task_id) for task_id in ids] == list(range(6))
    for n in range(6):
        assert teardowns(f"own-{n}") == [None]


async def test_torn_down_on_error_and_on_timeout(app: Quart) -> None:
    async with app.app_context():
        failing = await tasks.dispatch(fails("error"))
        late = await tasks.dispatch(slow("timeout"))
    worker = await work(await make_worker(app))
    assert worker.failed == 2
    for task_id in (failing, late):
        with pytest.raises(TaskFailed):
            await result_of(app, task_id)
    assert teardowns("error") == ["ValueError"]
    assert teardowns("timeout") == ["TaskTimeout"]


@pytest.mark.parametrize("how", ["stop-task", "shutdown"])
async def test_torn_down_on_cancel(app: Quart, how: str) -> None:
    async with app.app_context():
        task_id = await tasks.dispatch(waits("cancel"))
    worker = await make_worker(app, burst=False)
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


async def test_each_queue_goes_to_its_connection(make_app: Callable[..., Quart], tmp_path: Path) -> None:
    app = make_app(ASYNCTASQ_QUEUE_CONNECTIONS={"email": str(tmp_path / "mail.db")})
    async with app.app_context():
        ids = await tasks.dispatch_many([greeting("d"), greeting("e").on_queue("email")])
    assert await ready(app, "default") == 1
    assert await ready(app, "email") == 1
    assert await ready(app, "email", connection_queue="default") == 0
    worker = await work(await make_worker(app, ["email"]))
    assert worker.succeeded == 1
    assert await result_of(app, ids[1], "email") == "hello from quart"
    assert await ready(app, "default") == 1


def quart_cli(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    return app_cli("quart", "tests.quart_app:create_app", *args, env=clean_env(**{DB_ENV: str(db)}))


async def test_quart_asynctasq_worker_command(app: Quart, tmp_path: Path) -> None:
    async with app.app_context():
        email_id = await tasks.dispatch(greeting("cli").on_queue("email"))
        chain_id = await tasks.dispatch(chain("chained").on_queue("email"))
        await tasks.dispatch(greeting("left"))
    out = await asyncio.to_thread(
        quart_cli, "worker", "email", "--burst", "--name", "qw1", db=tmp_path / "app.db"
    )
    assert out.returncode == 0, out.stderr
    assert "worker qw1 listening on email" in out.stderr
    assert "Warning" not in out.stderr  # the connection the chain task opened was closed
    assert await result_of(app, email_id, "email") == "hello from quart"
    follow_up = await result_of(app, chain_id, "email")
    assert isinstance(follow_up, str)
    assert await result_of(app, follow_up, "email") == "hello from quart"
    assert await ready(app, "default") == 1


def test_worker_command_options_come_from_config() -> None:
    group = create_app().cli.commands["asynctasq"]
    assert isinstance(group, click.Group)
    options = {p.name: p.opts for p in group.commands["worker"].params if isinstance(p, click.Option)}
    assert options == {s.name: [f"--{s.flag}"] for s in Config.settings() if s.group == "worker"}


async def test_load_app_worker(app: Quart, tmp_path: Path) -> None:
    async with app.app_context():
        task_id = await tasks.dispatch(greeting("loaded"))
    config, task_context = load_app_worker("tests.quart_app:create_app")
    assert config.sqlite_path == str(tmp_path / "app.db")
    assert config.queues == ["default", "email", "priority"]
    driver = DriverFactory.create_from_config(config)
    worker = Worker.from_config(driver, config, burst=True, task_context=task_context)
    worker.install_signal_handlers = False
    await work(worker)
    assert await result_of(app, task_id) == "hello from quart"
    assert teardowns("loaded") == [None]


def test_missing_quart_names_the_extra() -> None:
    code = "import sys; sys.modules['quart'] = None; import asynctasq.integrations.quart"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1
    assert 'pip install "asynctasq[quart]"' in out.stderr


# -- Flask-RQ's pages (seeds 000 and 002) in Quart, on real brokers ---------------------------


@pytest.fixture
async def seed_app(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., Quart]]:
    """The seeds' create_app() on ``broker``; its config also reaches worker processes."""
    made: list[Quart] = []

    def make(**config: object) -> Quart:
        monkeypatch.setenv(FLASKRQ_CONFIG_ENV, json.dumps(broker.app_config(**config)))
        made.append(flaskrq.create_app())
        return made[-1]

    yield make
    for app in made:
        async with app.app_context():
            await tq.close()


async def run_seed_worker(app: Quart, queues: list[str] | None = None) -> Worker:
    async with app.app_context():
        worker = tq.make_worker(queues, burst=True, install_signal_handlers=False)
        await worker.start()  # connects its own driver
    return worker


async def test_seed_queues_views_and_the_job_decorator(
    broker: Broker, seed_app: Callable[..., Quart]
) -> None:
    """RQ_QUEUES, rq.queue / rq.queues["email"].enqueue(...), @rq.job(queue="email") and
    rq.queues["priority"] overriding it: awaited in Quart's async views, blocking in a sync one."""
    app = seed_app(ASYNCTASQ_QUEUES=["email", "priority"])
    s = settings(app)
    assert s.queues == ["default", "email", "priority"] and len(s.connections) == 1
    client = app.test_client()
    sent = [
        await client.post("/stats", json={"visits": 3}),
        await client.post("/users/7/reset"),
        await client.post("/users/8/reset-decorated"),
        await client.post("/users/9/reset-priority"),  # sync: Quart runs it in a thread
    ]
    jobs = [await r.get_json() for r in sent]
    assert [r.status_code for r in sent] == [200] * 4, jobs
    assert [j["queue"] for j in jobs] == ["default", "email", "email", "priority"]
    assert (await ready_on(s.config, "email"), await ready_on(s.config, "priority")) == (2, 1)
    assert (await run_seed_worker(app, ["priority"])).succeeded == 1
    assert (await run_seed_worker(app)).succeeded == 3
    values = [await result_on(s.config, j["id"]) for j in jobs]
    assert ran_in_the_app(values[0], "update_stats", data={"visits": 3})
    assert [v["user_id"] for v in values[1:]] == [7, 8, 9]
    assert all(ran_in_the_app(v, "send_password_reset", user_id=v["user_id"]) for v in values[1:])
    async with app.app_context():
        with pytest.raises(KeyError, match="'emial' is not configured for this app"):
            tq.queues["emial"]


async def test_seed_connections_and_the_worker_script(
    broker: Broker, seed_app: Callable[..., Quart], tmp_path: Path
) -> None:
    """RQ_QUEUE_CONNECTIONS with a reference; a worker listens on its first queue's connection;
    my_worker.py (async: Quart's app context) runs until SIGTERM."""
    app = seed_app(**reference_example(broker))
    s = settings(app)
    assert {q: broker.describes(s.config_for(q)) for q in s.queues} == {
        "default": "main",
        "priority": "main",
        "email": "other",
        "email-priority": "other",
    }
    async with app.app_context():
        jobs = {q: await tq.queues[q].enqueue(send_password_reset, user_id=n) for n, q in enumerate(s.queues)}
    for q in s.queues:
        assert await ready_on(s.config_for(q), q) == 1
    assert (await run_seed_worker(app, ["email-priority", "email"])).succeeded == 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    env["PYTHONPATH"] = str(ROOT)
    log_path = tmp_path / "my_worker.log"
    with open(log_path, "w") as log:
        script = str(ROOT / "tests" / "flaskrq_quart_worker.py")
        proc = subprocess.Popen([sys.executable, script], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        for n, (q, job) in enumerate(jobs.items()):  # default and priority: the script's worker
            assert ran_in_the_app(await result_on(s.config_for(q), job.id), "send_password_reset", user_id=n)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0, log_path.read_text()


async def test_seed_quart_asynctasq_commands(broker: Broker, seed_app: Callable[..., Quart]) -> None:
    """quart asynctasq worker [QUEUES]..., info, failed and dispatch, on the app's config."""
    config = {**reference_example(broker), "ASYNCTASQ_BURST": True}
    app = seed_app(**config)
    s = settings(app)
    async with app.app_context():
        first = await tq.queue.enqueue(update_stats, data={"n": 1})
        mail = await send_password_reset.enqueue(user_id=5)
        await broken.enqueue("on purpose")
    out = await asyncio.to_thread(seed_cli, "quart", broker, "worker", **config)
    assert out.returncode == 0, out.stderr
    assert ran_in_the_app(await result_on(s.config, first.id), "update_stats", data={"n": 1})
    assert await ready_on(s.config_for("email"), "email") == 1  # another connection: untouched
    out = await asyncio.to_thread(seed_cli, "quart", broker, "worker", "email", "email-priority", **config)
    assert out.returncode == 0, out.stderr
    assert ran_in_the_app(await result_on(s.config_for("email"), mail.id), "send_password_reset", user_id=5)
    runner = app.test_cli_runner()

    async def invoke(*args: str) -> click.testing.Result:  # in a thread: the commands run their own loop
        return await asyncio.to_thread(runner.invoke, args=["asynctasq", *args])

    out = await invoke("failed", "list")
    assert out.exit_code == 0 and "ValueError: on purpose" in out.output, out.output
    out = await invoke("info")
    assert out.exit_code == 0 and out.output.count("== ") == 2, out.output
    previous = asynctasq.get_config()
    try:
        out = await invoke("dispatch", "tests.flaskrq_quart.send_password_reset", "--args", "[6]")
    finally:
        asynctasq.configure(previous)
    assert out.exit_code == 0, out.output
    assert await ready_on(s.config_for("email"), "email") == 1
