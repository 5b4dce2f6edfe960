"""systemd Type=notify: the worker says READY, STOPPING and pets the watchdog."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_worker_notifies_systemd(tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTASQ_")}
    env.update(
        NOTIFY_SOCKET=address, ASYNCTASQ_SQLITE_PATH=str(tmp_path / "sd.db"), ASYNCTASQ_LEASE_SECONDS="0.3"
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "asynctasq", "worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    messages: list[str] = []

    def receive_until(wanted: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not any(wanted in m for m in messages):
            assert time.monotonic() < deadline, f"no {wanted} from the worker; got {messages}"
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                continue

    try:
        receive_until("READY=1")
        receive_until("WATCHDOG=1")
        worker.send_signal(signal.SIGTERM)
        receive_until("STOPPING=1")
        assert worker.wait(20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        sock.close()
    assert any("STATUS=listening on default" in m for m in messages)
