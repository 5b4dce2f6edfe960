"""The command line: parses flags, builds a Config, hands off. ``python -m asynctasq --help``."""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Optional, TypeVar

import typer

from asynctasq.config import Config, SettingInfo
from asynctasq.drivers import DRIVER_NAMES, DRIVER_TABLE
from asynctasq.errors import AsyncTasQError, UnsupportedOperation

app = typer.Typer(
    name="asynctasq",
    help="asynctasq: run workers, dispatch tasks and inspect queues.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
failed_app = typer.Typer(help="List, requeue or purge tasks in the failed registry.", no_args_is_help=True)
app.add_typer(failed_app, name="failed")

F = TypeVar("F", bound=Callable[..., Any])
_PANELS = {"general": "Tasks", "worker": "Worker", **{d.name: d.display_name for d in DRIVER_TABLE}}
_SCALARS: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool}


_SHORT = {  # RQ's short flags and other spellings
    "config_file": ["-c"],
    "url": ["-u"],
    "burst": ["-b"],
    "path": ["-P"],
    "worker_class": ["-w"],
    "max_tasks": ["--max-jobs"],
}


def _option(setting: SettingInfo) -> inspect.Parameter:
    base = setting.base_type
    py_type: Any = list[str] if setting.repeatable else _SCALARS.get(base, str)
    help_text = setting.help_text
    if base == "bool":
        decl = [f"--{setting.flag}/--no-{setting.flag}"]
    else:
        decl = [f"--{setting.flag}"]
    decl += _SHORT.get(setting.name, [])
    option = typer.Option(*decl, help=help_text, show_default=False, rich_help_panel=_PANELS[setting.group])
    return inspect.Parameter(
        setting.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[Optional[py_type], option],  # noqa: UP045 - typer reads this form
    )


def with_settings(*groups: str) -> Callable[[F], F]:
    """Add a ``--x-y`` option for every Config setting in ``groups`` (all driver groups always);
    the command receives them collected as ``flags``: only those given on the command line."""
    wanted = set(groups) | set(DRIVER_NAMES)

    def decorate(func: F) -> F:
        sig = inspect.signature(func, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "flags"]
        names = {p.name for p in own}
        extra = [_option(s) for s in Config.settings() if s.group in wanted and s.name not in names]
        extra_names = {p.name for p in extra}

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            flags = {k: kwargs.pop(k) for k in list(kwargs) if k in extra_names}
            flags = {k: v for k, v in flags.items() if v is not None and v != []}
            return func(flags=flags, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=own + extra)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _config(flags: dict[str, Any]) -> Config:
    try:
        return Config(**flags)
    except AsyncTasQError as exc:
        raise _fail(str(exc), 2) from None


def _setup_logging(config: Config) -> None:
    from asynctasq.utils.logs import setup_logging

    try:
        setup_logging(config)
    except (ValueError, TypeError, AttributeError, ImportError) as exc:  # a bad DICT_CONFIG
        raise _fail(f"cannot configure logging from {config.config_file}: {exc}", 2) from None


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"asynctasq {version('asynctasq')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True),
    ] = False,
) -> None:
    """asynctasq: run workers, dispatch tasks and inspect queues."""


def _import_tasks(config: Config) -> None:
    for entry in reversed(["", *config.path]):
        path = os.path.abspath(entry) if entry else os.getcwd()
        if path not in sys.path:
            sys.path.insert(0, path)
    for module in config.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise _fail(f"cannot import {module!r} ({exc}); check --import and --path") from None


T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    from asynctasq.utils.loop import run

    try:
        return run(coro)
    except AsyncTasQError as exc:
        raise _fail(str(exc)) from None
    except (ConnectionError, OSError) as exc:
        raise _fail(f"broker unreachable: {exc}") from None


async def _with_driver(config: Config, body: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    from asynctasq.core.driver_factory import DriverFactory

    driver = DriverFactory.create_from_config(config)
    await driver.connect()
    try:
        return await body(driver)
    finally:
        await driver.disconnect()


# -- worker ------------------------------------------------------------------------------


@app.command()
@with_settings("general", "worker")
def worker(
    queue_names: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(
            metavar="[QUEUE]...", help="Queues in priority order (same as --queues).", show_default=False
        ),
    ] = None,
    processes: Annotated[
        int, typer.Option("--processes", help="Run this many worker processes under a supervisor.")
    ] = 1,
    app_spec: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--app",
            help="Flask/Quart app (module:app or module:create_app) whose asynctasq settings the "
            "worker uses; each task runs in its app context.",
        ),
    ] = None,
    *,
    flags: dict[str, Any],
) -> None:
    """Run a worker: take tasks from the queues and run them until stopped.

    The first SIGTERM/SIGINT stops fetching and lets running tasks finish (up to
    --shutdown-timeout); a second one gives them back at once. Exit code 0 on a clean stop.
    """
    if processes > 1:
        _supervise("worker", ("--processes",), processes, flags)
        return
    if queue_names:
        flags["queues"] = [q for name in queue_names for q in name.split(",") if q]
    config = _config(flags)
    _setup_logging(config)
    task_context = None
    if app_spec:
        from asynctasq.integrations import load_app_worker

        _import_tasks(Config(path=config.path))  # sys.path first: the app's module imports next
        try:
            app_config, task_context = load_app_worker(app_spec, flags.pop("queues", None))
            config = app_config.replace(**flags)
        except AsyncTasQError as exc:
            raise _fail(str(exc), 2) from None
    _import_tasks(config)

    worker_class = _worker_class(config)

    async def main(driver: Any) -> None:
        await worker_class.from_config(driver, config, task_context=task_context).start()

    _run(_with_driver(config, main))


def _worker_class(config: Config) -> Any:
    from asynctasq.core.worker import Worker, import_object

    if config.worker_class is None:
        return Worker
    try:
        found = import_object(config.worker_class, "worker_class")
    except AsyncTasQError as exc:
        raise _fail(str(exc), 2) from None
    if not (isinstance(found, type) and issubclass(found, Worker)):
        raise _fail(f"--worker-class {config.worker_class}: not a subclass of asynctasq.Worker", 2)
    return found


def _supervise(command: str, own_options: tuple[str, ...], processes: int, flags: dict[str, Any]) -> None:
    """Run ``processes`` workers with this command line's other arguments."""
    from asynctasq.core.supervisor import Supervisor

    config = _config(flags)  # fail fast on bad settings, before any child starts
    _setup_logging(config)
    argv = sys.argv[sys.argv.index(command) + 1 :]
    child_args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in own_options:
            skip = True
        elif not any(arg.startswith(opt + "=") for opt in own_options):
            child_args.append(arg)
    raise typer.Exit(Supervisor(child_args, processes, metrics_port=config.metrics_port).run())


@app.command(name="worker-pool", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker_pool(
    ctx: typer.Context,
    num_workers: Annotated[int, typer.Option("--num-workers", "-n", help="Worker processes.")] = 2,
) -> None:
    """Run several worker processes under one supervisor that restarts any that dies.

    Every other argument is passed to each `worker`: `worker-pool -n 3 --queues high,default`.
    """
    from asynctasq.core.supervisor import Supervisor

    config = _config({})
    _setup_logging(config)
    args = list(ctx.args)
    port = config.metrics_port
    for i, arg in enumerate(args):
        if arg == "--metrics-port" and i + 1 < len(args):
            port = int(args[i + 1])
        elif arg.startswith("--metrics-port="):
            port = int(arg.partition("=")[2])
    raise typer.Exit(Supervisor(args, num_workers, metrics_port=port).run())


# -- producing ---------------------------------------------------------------------------


def _dispatch(
    task_name: str, args: str, kwargs: str, queue: str | None, delay: float, flags: dict[str, Any]
) -> None:
    config = _config(flags)
    _import_tasks(config)
    from asynctasq.registry import registry
    from asynctasq.task import TaskCall

    definition = registry.get(task_name)
    if definition is None:
        module = task_name.rpartition(".")[0] or task_name
        raise _fail(f"unknown task {task_name!r}: import the module that defines it, e.g. --import {module}")
    try:
        parsed_args = json.loads(args)
        parsed_kwargs = json.loads(kwargs)
    except json.JSONDecodeError as exc:
        raise _fail(f"--args and --kwargs take JSON ({exc})", 2) from None
    if not isinstance(parsed_args, list) or not isinstance(parsed_kwargs, dict):
        raise _fail("--args takes a JSON list and --kwargs a JSON object", 2)
    if queue is not None:
        from asynctasq.drivers.base import validate_queue_name

        try:
            validate_queue_name(queue)  # --queue '' is an error, not the task's default queue
        except AsyncTasQError as exc:
            raise _fail(f"--queue: {exc}", 2) from None

    async def main(driver: Any) -> str:
        import asynctasq

        asynctasq.configure(config)
        call = TaskCall(definition, tuple(parsed_args), parsed_kwargs)
        if queue is not None:
            call.on_queue(queue)
        return await call.delay(delay).dispatch(driver)

    typer.echo(_run(_with_driver(config, main)))


_ARGS = typer.Option("--args", help="Positional arguments as a JSON list.")
_KWARGS = typer.Option("--kwargs", help="Keyword arguments as a JSON object.")
_QUEUE = typer.Option("--queue", "-q", help="Queue (default: the task's).")
_DELAY = typer.Option("--delay", help="Seconds before the task becomes visible.")


@app.command()
@with_settings("general", "worker")
def dispatch(
    task_name: Annotated[str, typer.Argument(help="Registered task name, e.g. myapp.tasks.send_email.")],
    args: Annotated[str, _ARGS] = "[]",
    kwargs: Annotated[str, _KWARGS] = "{}",
    queue: Annotated[Optional[str], _QUEUE] = None,  # noqa: UP045
    delay: Annotated[float, _DELAY] = 0.0,
    *,
    flags: dict[str, Any],
) -> None:
    """Dispatch a registered task (import its module with --import); prints the task id."""
    _dispatch(task_name, args, kwargs, queue, delay, flags)


app.command(name="enqueue", help="Same as dispatch.")(dispatch)


# -- inspecting ----------------------------------------------------------------------------


@app.command()
@with_settings("general", "worker")
def info(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document, for scripts.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh in place until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes.")] = 2.0,
    *,
    flags: dict[str, Any],
) -> None:
    """Show every queue on the broker (or --queues) with its counts, and the workers."""
    from asynctasq import ops

    config = _config(flags)
    only = config.queues if "queues" in flags else None

    async def snapshot(driver: Any) -> Any:
        return await ops.snapshot(driver, only)

    if as_json:
        typer.echo(json.dumps(_run(_with_driver(config, snapshot)).as_dict(), indent=2))
        return
    if not watch:
        ops.render(_run(_with_driver(config, snapshot)))
        return

    async def watching(driver: Any) -> None:
        await ops.watch(driver, only, interval)

    try:
        _run(_with_driver(config, watching))
    except KeyboardInterrupt:
        pass


def _broadcast(flags: dict[str, Any], command: str, worker_name: str | None) -> None:
    config = _config(flags)

    async def main(driver: Any) -> list[str]:
        from asynctasq.ops import broadcast

        return await broadcast(driver, {"command": command}, worker_name)

    names = _run(_with_driver(config, main))
    if worker_name is not None and not names:
        raise _fail(f"no registered worker is named {worker_name!r} (see `asynctasq info`)")
    typer.echo(f"{command} sent to {len(names)} worker(s){': ' + ', '.join(names) if names else ''}")


_WORKER = typer.Option("--worker", help="Only this worker (default: every registered one).")


@app.command()
@with_settings("general", "worker")
def suspend(
    worker_name: Annotated[Optional[str], _WORKER] = None,  # noqa: UP045
    *,
    flags: dict[str, Any],
) -> None:
    """Workers stop taking tasks but stay up (running tasks finish); `resume` goes on."""
    _broadcast(flags, "suspend", worker_name)


@app.command()
@with_settings("general", "worker")
def resume(
    worker_name: Annotated[Optional[str], _WORKER] = None,  # noqa: UP045
    *,
    flags: dict[str, Any],
) -> None:
    """Suspended workers take tasks again."""
    _broadcast(flags, "resume", worker_name)


@app.command()
@with_settings("general", "worker")
def health(
    worker_name: Annotated[str, typer.Option("--worker", help="The worker's name (--name).")],
    max_age: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            "--max-age", help="Stale after this many seconds without a heartbeat (default: 3 heartbeats)."
        ),
    ] = None,
    *,
    flags: dict[str, Any],
) -> None:
    """Exit 0 when the worker is registered and beating, 1 when stale or missing (for liveness probes)."""
    from asynctasq.core.worker import Worker

    config = _config(flags)
    limit = max_age if max_age is not None else 3 * config.heartbeat_interval

    async def main(driver: Any) -> Any:
        return next((w for w in await Worker.all(driver) if w.name == worker_name), None)

    found = _run(_with_driver(config, main))
    if found is None:
        raise _fail(f"worker {worker_name!r} is not registered (stopped, or never started)")
    age = time.time() - found.last_heartbeat.timestamp() if found.last_heartbeat else float("inf")
    if age > limit:
        raise _fail(f"worker {worker_name!r} is stale: last heartbeat {age:.0f}s ago (limit {limit:.0f}s)")
    typer.echo(f"ok: {worker_name} {found.state}, heartbeat {age:.0f}s ago")


@app.command(name="systemd-unit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def systemd_unit(
    ctx: typer.Context,
    template: Annotated[
        bool, typer.Option("--template", help="An asynctasq-worker@.service instance template.")
    ] = False,
) -> None:
    """Print a Type=notify systemd unit that runs `worker` with the other arguments given."""
    from asynctasq.ops import systemd_unit as render_unit

    typer.echo(render_unit(list(ctx.args), template=template), nl=False)


@app.command()
@with_settings("general", "worker")
def cancel(
    task_id: Annotated[str, typer.Argument(help="The task id dispatch printed.")],
    *,
    flags: dict[str, Any],
) -> None:
    """Remove a task that is still waiting (ready or delayed); a running one goes on (see stop-task)."""
    config = _config(flags)
    only = config.queues if "queues" in flags else None

    async def main(driver: Any) -> str | None:
        from asynctasq.ops import cancel_task

        return await cancel_task(driver, task_id, only)

    queue = _run(_with_driver(config, main))
    if queue is None:
        raise _fail(
            f"task {task_id} is not waiting on any queue: it ran, is running (asynctasq stop-task), "
            "or the id is wrong"
        )
    typer.echo(f"cancelled {task_id} (it was waiting on {queue})")


@app.command()
@with_settings("general", "worker")
def shutdown(
    worker_name: Annotated[str, typer.Argument(help="Worker name, as `info` lists it.")],
    *,
    flags: dict[str, Any],
) -> None:
    """Ask a running worker to shut down gracefully (like SIGTERM)."""
    config = _config(flags)

    async def main(driver: Any) -> None:
        await driver.send_command(worker_name, {"command": "shutdown"})

    _run(_with_driver(config, main))
    typer.echo(f"shutdown sent to {worker_name}")


@app.command(name="stop-task")
@with_settings("general", "worker")
def stop_task(
    task_id: Annotated[str, typer.Argument(help="Id of a running task.")],
    *,
    flags: dict[str, Any],
) -> None:
    """Stop a running task; it goes to the failed registry as stopped."""
    config = _config(flags)

    async def main(driver: Any) -> bool:
        for w in await driver.list_workers():
            if task_id in w.get("current_tasks", []):
                await driver.send_command(w["name"], {"command": "stop-task", "task_id": task_id})
                typer.echo(f"stop sent to {w['name']}")
                return True
        return False

    if not _run(_with_driver(config, main)):
        raise _fail(f"no registered worker is running task {task_id}")


@app.command()
@with_settings("general")
def migrate(*, flags: dict[str, Any]) -> None:
    """Create or upgrade the broker's schema (SQL drivers)."""
    config = _config(flags)
    _setup_logging(_config({}))

    from asynctasq.core.driver_factory import DriverFactory

    driver = DriverFactory.create_from_config(config)

    async def main() -> list[str] | str:
        try:
            return await driver.migrate()  # opens what it needs
        except UnsupportedOperation as exc:
            if driver.supports("migrations"):
                raise
            return str(exc)  # nothing to migrate is not an error
        finally:
            await driver.disconnect()

    applied = _run(main())
    if isinstance(applied, str):
        typer.echo(applied)
        return
    typer.echo("\n".join(applied) if applied else f"{config.driver}: schema is up to date")


# -- failed registry -----------------------------------------------------------------------


_TASK_FILTER = typer.Option("--task", help="Only this task name.")
_OLDER = typer.Option("--older-than", help="Only entries that failed more than this many seconds ago.")
_NEWER = typer.Option("--newer-than", help="Only entries that failed less than this many seconds ago.")
_ONLY_QUEUE = typer.Option("--queue", "-q", help="Only this queue.")


@failed_app.command("list")
@with_settings("general")
def failed_list(
    queue: Annotated[Optional[str], _ONLY_QUEUE] = None,  # noqa: UP045
    task: Annotated[Optional[str], _TASK_FILTER] = None,  # noqa: UP045
    older_than: Annotated[Optional[float], _OLDER] = None,  # noqa: UP045
    newer_than: Annotated[Optional[float], _NEWER] = None,  # noqa: UP045
    limit: Annotated[int, typer.Option(help="Most entries shown.")] = 50,
    *,
    flags: dict[str, Any],
) -> None:
    """List failed tasks with their error."""
    config = _config(flags)

    async def main(driver: Any) -> None:
        from asynctasq.ops import failed_tasks

        found = await failed_tasks(
            driver, queue=queue, task=task, older_than=older_than, newer_than=newer_than, limit=limit
        )
        for f in found:
            e = f.entry
            what = f"{f.task} [{f.task_id}]" if f.envelope is not None else "<undecodable>"
            error = (e["error"].strip().splitlines() or ["?"])[-1]
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["failed_at"]))
            typer.echo(f"{e['id']}  {stamp}  {e['queue']}  {what}  {error}")
        typer.echo(f"{len(found)} failed task(s)")

    _run(_with_driver(config, main))


@failed_app.command("show")
@with_settings("general")
def failed_show(
    task_id: Annotated[str, typer.Argument(help="A task id (what dispatch printed) or an entry id.")],
    *,
    flags: dict[str, Any],
) -> None:
    """Show one failed task: its call, attempts and the whole error."""
    config = _config(flags)

    async def main(driver: Any) -> Any:
        from asynctasq.ops import failed_tasks

        found = await failed_tasks(driver, ids=[task_id])
        return found[0] if found else None

    f = _run(_with_driver(config, main))
    if f is None:
        raise _fail(f"no failed task {task_id!r} (see `asynctasq failed list`)")
    e, env = f.entry, f.envelope
    typer.echo(f"entry:     {e['id']}")
    typer.echo(f"queue:     {e['queue']}")
    typer.echo(f"failed at: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e['failed_at']))}")
    if env is not None:
        typer.echo(f"task:      {env.task}")
        typer.echo(f"id:        {env.id}")
        typer.echo(f"args:      {json.dumps(env.args, default=repr)}")
        typer.echo(f"kwargs:    {json.dumps(env.kwargs, default=repr)}")
        typer.echo(f"attempt:   {env.attempt} of {env.max_attempts}")
        enqueued = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(env.enqueued_at))
        typer.echo(f"enqueued:  {enqueued}")
    else:
        typer.echo("message:   undecodable")
    typer.echo("error:")
    typer.echo(e["error"].rstrip())


_IDS = typer.Argument(help="Entry ids from `failed list`, or task ids.")
_ALL = typer.Option("--all", help="Every failed task.")


def _failed_bulk(
    action: str,
    ids: list[str] | None,
    queue: str | None,
    task: str | None,
    older_than: float | None,
    all_: bool,
    flags: dict[str, Any],
) -> int:
    """``requeue`` or ``purge`` the selected entries; return how many it touched."""
    if not (ids or queue or task or older_than is not None or all_):
        raise _fail("name ids, --queue, --task, --older-than or --all", 2)
    config = _config(flags)

    async def main(driver: Any) -> int:
        from asynctasq.ops import failed_tasks, requeue_failed
        from asynctasq.serializers import get_serializer
        from asynctasq.signing import Signer

        found = await failed_tasks(driver, queue=queue, task=task, older_than=older_than, ids=ids or None)
        if action == "purge":
            return int(await driver.failed_purge([f.entry["id"] for f in found])) if found else 0
        signer = Signer.from_settings(config.signing_key, config.signing_old_keys)
        return await requeue_failed(driver, found, get_serializer(config.serializer), signer)

    return _run(_with_driver(config, main))


@failed_app.command("requeue")
@with_settings("general")
def failed_requeue(
    ids: Annotated[Optional[list[str]], _IDS] = None,  # noqa: UP045
    queue: Annotated[Optional[str], _ONLY_QUEUE] = None,  # noqa: UP045
    task: Annotated[Optional[str], _TASK_FILTER] = None,  # noqa: UP045
    older_than: Annotated[Optional[float], _OLDER] = None,  # noqa: UP045
    all_: Annotated[bool, _ALL] = False,
    *,
    flags: dict[str, Any],
) -> None:
    """Put failed tasks back on their queue: the same task id, attempts from 1."""
    typer.echo(f"requeued {_failed_bulk('requeue', ids, queue, task, older_than, all_, flags)} task(s)")


@failed_app.command("purge")
@with_settings("general")
def failed_purge(
    ids: Annotated[Optional[list[str]], _IDS] = None,  # noqa: UP045
    queue: Annotated[Optional[str], _ONLY_QUEUE] = None,  # noqa: UP045
    task: Annotated[Optional[str], _TASK_FILTER] = None,  # noqa: UP045
    older_than: Annotated[Optional[float], _OLDER] = None,  # noqa: UP045
    all_: Annotated[bool, _ALL] = False,
    *,
    flags: dict[str, Any],
) -> None:
    """Delete failed tasks for good."""
    typer.echo(f"purged {_failed_bulk('purge', ids, queue, task, older_than, all_, flags)} task(s)")


try:  # typer >= 0.22 carries its own click
    from typer import TyperException as _UsageProblem
except ImportError:  # pragma: no cover - older typer on top of click
    from click import ClickException as _UsageProblem  # type: ignore[no-redef,import-not-found,assignment,unused-ignore]


def main() -> None:
    """Entry point: usage errors become one line on stderr, never a traceback."""
    if len(sys.argv) == 1:
        sys.argv.append("--help")
    try:
        code = app(standalone_mode=False)
    except _UsageProblem as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        typer.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(getattr(exc, "exit_code", 1))
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
