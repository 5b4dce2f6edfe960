"""sd_notify without a dependency: READY, STOPPING, STATUS and WATCHDOG for ``Type=notify``."""

from __future__ import annotations

import os
import socket


def notify(*states: str) -> bool:
    """Send ``states`` (``"READY=1"``...) to systemd; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError:
        return False
    return True
