"""Build drivers from a :class:`~asynctasq.config.Config` or a URL; driver modules load lazily.

Drivers never see the config: the factory maps the settings of a driver's group to its
constructor's keyword arguments, as the driver table (:mod:`asynctasq.drivers`) says::

    driver = DriverFactory.create_from_config(Config(driver="redis", redis_url="redis://cache:6379"))
    driver = DriverFactory.from_url("postgresql://app@db/app", schema="jobs")
    driver = await asynctasq.connect("sqlite:///jobs.db")       # connected
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from asynctasq.config import Config, get_config
from asynctasq.drivers import DRIVERS, SCHEMES, DriverSpec
from asynctasq.drivers.base import BaseDriver
from asynctasq.errors import ConfigError, DriverNotAvailable
from asynctasq.utils.urls import redact_url

COMMON_SETTINGS = ("lease_seconds", "max_message_bytes")
"""Settings every driver's constructor takes."""


def driver_spec(name: str) -> DriverSpec:
    try:
        return DRIVERS[name]
    except KeyError:
        raise ConfigError(f"unknown driver {name!r}: choose one of {', '.join(DRIVERS)}") from None


def driver_class(name: str) -> type[BaseDriver]:
    """The driver class registered as ``name``; raises ConfigError or DriverNotAvailable."""
    spec = driver_spec(name)
    module_name, _, class_name = spec.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise DriverNotAvailable(
                f"the {name} driver is not available in this version of asynctasq"
            ) from None
        if spec.extra is not None:
            raise DriverNotAvailable(
                f'the {name} driver needs {exc.name}: pip install "asynctasq[{spec.extra}]"'
            ) from None
        raise
    cls: type[BaseDriver] = getattr(module, class_name)
    return cls


def driver_options(config: Config, name: str | None = None) -> dict[str, Any]:
    """The constructor keywords of driver ``name`` (default ``config.driver``) from ``config``."""
    spec = driver_spec(name or config.driver)
    prefix = spec.name + "_"
    options: dict[str, Any] = {}
    for setting in Config.settings():
        if setting.name in COMMON_SETTINGS:
            keyword: str | None = setting.name
        elif setting.name in spec.keywords:
            keyword = spec.keywords[setting.name]
        elif setting.group == spec.name and setting.name.startswith(prefix):
            keyword = setting.name.removeprefix(prefix)
        else:
            keyword = None
        value = getattr(config, setting.name)
        if keyword is not None and value is not None:
            options[keyword] = value
    return options


class DriverFactory:
    @staticmethod
    def create_from_config(config: Config | None = None) -> BaseDriver:
        """A new, not yet connected driver for ``config`` (default: the process-wide config)."""
        config = config or get_config()
        return driver_class(config.driver)(**driver_options(config))

    @staticmethod
    def from_url(url: str, **options: Any) -> BaseDriver:
        """A new, not yet connected driver for ``url``: ``sqlite:///path``, ``memory://``,
        ``redis://``/``rediss://``, ``postgresql://``, ``mysql://``, ``sqs://``, ``amqp://``;
        ``options`` are constructor keywords on top (``lease_seconds=60``, ...)."""
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError:
            scheme = ""
        spec = SCHEMES.get(scheme)
        if spec is None:
            known = ", ".join(f"{s}://" for s in SCHEMES)
            raise ConfigError(f"no driver for URL {redact_url(url)!r}: use one of {known}")
        cls = driver_class(spec.name)
        from_url = {spec.url_keyword: url} if spec.url_keyword else cls.options_from_url(url)
        return cls(**{**from_url, **options})


async def connect(url: str, **options: Any) -> BaseDriver:
    """A connected driver for ``url`` (see :meth:`DriverFactory.from_url`); disconnect it when
    done, or use ``async with DriverFactory.from_url(url) as driver``."""
    driver = DriverFactory.from_url(url, **options)
    await driver.connect()
    return driver


__all__ = ["DriverFactory", "connect", "driver_class", "driver_options", "driver_spec"]
