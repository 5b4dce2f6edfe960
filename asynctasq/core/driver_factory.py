"""Build a driver from a :class:`~asynctasq.config.Config`; driver modules load lazily."""

from __future__ import annotations

import importlib

from asynctasq.config import DRIVERS, Config, get_config
from asynctasq.drivers.base import BaseDriver
from asynctasq.errors import ConfigError

_DRIVER_CLASSES = {
    "memory": "asynctasq.drivers.memory:MemoryDriver",
    "sqlite": "asynctasq.drivers.sqlite:SQLiteDriver",
    "redis": "asynctasq.drivers.redis:RedisDriver",
    "postgres": "asynctasq.drivers.postgres:PostgresDriver",
    "mysql": "asynctasq.drivers.mysql:MySQLDriver",
    "sqs": "asynctasq.drivers.sqs:SQSDriver",
    "rabbitmq": "asynctasq.drivers.rabbitmq:RabbitMQDriver",
}
assert set(_DRIVER_CLASSES) == set(DRIVERS)


def driver_class(name: str) -> type[BaseDriver]:
    """The driver class registered as ``name``; raises ConfigError or DriverNotAvailable."""
    try:
        target = _DRIVER_CLASSES[name]
    except KeyError:
        raise ConfigError(f"unknown driver {name!r}: choose one of {', '.join(_DRIVER_CLASSES)}") from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigError(f"the {name} driver is not available in this version of asynctasq") from None
        raise
    cls: type[BaseDriver] = getattr(module, class_name)
    return cls


class DriverFactory:
    @staticmethod
    def create_from_config(config: Config | None = None) -> BaseDriver:
        """A new, not yet connected driver for ``config`` (default: the process-wide config)."""
        config = config or get_config()
        return driver_class(config.driver).from_config(config)
