"""The public surface: exported names, and type checking of task calls."""

from __future__ import annotations

import os
import textwrap

import pytest

import asynctasq

EXPECTED = {
    "AsyncTasQError",
    "BaseDriver",
    "Config",
    "ConfigError",
    "Delivery",
    "DriverError",
    "DriverFactory",
    "ResultTimeout",
    "Retry",
    "Task",
    "TaskCall",
    "TaskFailed",
    "TaskFunction",
    "UnknownTaskError",
    "Worker",
    "__version__",
    "configure",
    "connect",
    "current_task",
    "dispatch_many",
    "get_config",
    "result",
    "task",
}


def test_exported_names() -> None:
    assert set(asynctasq.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(asynctasq, name)


def test_import_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, asynctasq; "
        "heavy = {'redis', 'asyncpg', 'aiomysql', 'aioboto3', 'aio_pika', 'flask', 'quart', 'aiosqlite'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_mypy_rejects_wrong_arguments_at_the_call_site(tmp_path: pytest.TempPathFactory) -> None:
    api = pytest.importorskip("mypy.api")
    source = textwrap.dedent(
        """
        from asynctasq import task

        @task
        async def send_email(to: str, subject: str, timeout: int = 5) -> str:
            return to

        @task(queue="x")
        def resize(path: str) -> None: ...

        async def main() -> None:
            ok: str = await send_email(to="a", subject="b", timeout=3).on_queue("q").dispatch()
            await resize("p").dispatch()
            await send_email(to=1, subject="b").dispatch()
            await resize().dispatch()
        """
    )
    path = os.path.join(str(tmp_path), "snippet.py")
    with open(path, "w") as f:
        f.write(source)
    out, _, status = api.run(["--strict", "--no-incremental", "--cache-dir", os.devnull, path])
    assert status == 1, out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 2, out
    assert 'Argument "to" to "__call__" of "TaskFunction" has incompatible type "int"' in errors[0]
    assert 'Missing positional argument "path"' in errors[1]
