"""The examples in docs/ run as written."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import asynctasq
from tests.backends import ServiceUnavailable, check_port, unavailable
from tests.cli_tasks import add

ROOT = Path(__file__).resolve().parent.parent


def python_block_after(doc: str, heading: str) -> str:
    text = (ROOT / "docs" / doc).read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block after {heading!r} in {doc}"
    return match.group(1)


async def test_programmatic_worker_example_runs_as_written(tmp_path: Path) -> None:
    try:
        check_port("Redis", "127.0.0.1", 6379)
    except ServiceUnavailable as exc:
        unavailable(str(exc))
    script = tmp_path / "example.py"
    script.write_text(python_block_after("running-workers.md", "## Embedded in a program"))
    asynctasq.configure(driver="redis", redis_url="redis://localhost:6379", results_ttl=60)
    try:
        task_id = await add(20, 22).dispatch()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
        runner = (
            "import runpy, sys, tests.cli_tasks; "  # the example's worker needs the task registered
            f"runpy.run_path({str(script)!r}, run_name='__main__')"
        )
        with open(tmp_path / "example.log", "w") as log:
            proc = subprocess.Popen([sys.executable, "-c", runner], cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            assert await asynctasq.result(task_id, timeout=30) == 42
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        assert code == 0, (tmp_path / "example.log").read_text()
    finally:
        from asynctasq.task import close_producer

        await close_producer()
        asynctasq.configure(driver="memory")


def test_the_capability_table_of_the_driver_contract_matches_the_drivers() -> None:
    from asynctasq.core.driver_factory import driver_class
    from asynctasq.drivers import DRIVER_TABLE
    from asynctasq.drivers.base import CAPABILITIES, BaseDriver

    text = (ROOT / "docs" / "driver-contract.md").read_text()
    names = [d.name for d in DRIVER_TABLE]
    no = "\u2013"  # the table's en dash
    assert "| capability | " + " | ".join(names) + " |" in text
    for c in sorted(CAPABILITIES):
        marks = ["✔" if c in driver_class(n).capabilities else no for n in names]
        assert f"| `{c}` | " + " | ".join(marks) + " |" in text, c
    for m in ("list_queues", "oldest_waiting", "peek", "maintain"):
        marks = ["✔" if getattr(driver_class(n), m) is not getattr(BaseDriver, m) else no for n in names]
        assert f"| `{m}()` | " + " | ".join(marks) + " |" in text, m
