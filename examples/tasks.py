"""Tasks of the quick start. The worker finds them with ``--import tasks``."""

from __future__ import annotations

import asyncio
import hashlib
import random

from asynctasq import Retry, Task, task


@task
async def send_welcome_email(to: str, name: str) -> str:
    await asyncio.sleep(0.05)  # pretend to talk to a mail server
    print(f"  sent welcome email to {name} <{to}>", flush=True)
    return f"queued-{to}"


@task(queue="high", max_attempts=4, retry_after=0.2)
async def charge_card(order_id: int, cents: int) -> dict[str, int | str]:
    if random.random() < 0.5:
        print(f"  payment gateway busy for order {order_id}, asking for a retry", flush=True)
        raise Retry(delay=0.2)
    print(f"  charged {cents / 100:.2f} for order {order_id}", flush=True)
    return {"order": order_id, "status": "paid"}


@task
def make_thumbnail(path: str) -> str:
    """A plain ``def`` runs in a thread, so it never blocks the worker's event loop."""
    digest = hashlib.sha256(path.encode()).hexdigest()[:8]
    print(f"  thumbnail of {path} -> thumbs/{digest}.png", flush=True)
    return f"thumbs/{digest}.png"


class MonthlyReport(Task):
    queue = "reports"

    def __init__(self, account_id: int, month: str) -> None:
        self.account_id = account_id
        self.month = month

    async def handle(self) -> str:
        print(f"  built the {self.month} report of account {self.account_id}", flush=True)
        return f"report-{self.account_id}-{self.month}.pdf"
