"""asynctasq: an asyncio-native task queue with pluggable drivers.

::

    from asynctasq import task

    @task
    async def send_email(to: str) -> None: ...

    await send_email(to="a@b.c").dispatch()
"""

from asynctasq.config import Config, configure, get_config
from asynctasq.context import current_task
from asynctasq.core.driver_factory import DriverFactory, connect
from asynctasq.core.worker import Worker
from asynctasq.drivers.base import BaseDriver, Delivery
from asynctasq.errors import (
    AsyncTasQError,
    ConfigError,
    DriverError,
    ResultTimeout,
    Retry,
    TaskFailed,
    UnknownTaskError,
)
from asynctasq.queue import Job, Queue
from asynctasq.task import Task, TaskCall, TaskFunction, dispatch_many, result, task

__version__ = "0.1.0"

__all__ = [
    "AsyncTasQError",
    "BaseDriver",
    "Config",
    "ConfigError",
    "Delivery",
    "DriverError",
    "DriverFactory",
    "Job",
    "Queue",
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
]
