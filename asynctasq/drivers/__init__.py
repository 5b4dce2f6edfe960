"""The driver table: one row per driver, read by the config, the factory, the CLI, the
integrations, the tests and CI. Importing this package loads no driver library.

Adding a driver is one module ``drivers/<name>.py`` with a :class:`~asynctasq.drivers.base.BaseDriver`
subclass, and one row here. A row says where the class lives, which ``pip`` extra installs its
library, which URL schemes :func:`asynctasq.connect` maps to it, and which
:class:`~asynctasq.config.Config` settings become which constructor keywords: by default every
setting of the driver's group ``<name>_x`` becomes the keyword ``x``; ``keywords`` renames
the exceptions. Settings left at ``None`` are not passed, so the constructor's default applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DriverSpec:
    name: str
    target: str
    """``module:Class`` of the driver."""
    extra: str | None
    """The ``pip install "asynctasq[<extra>]"`` that brings its library (None: a core dependency)."""
    schemes: tuple[str, ...]
    """URL schemes of :func:`asynctasq.connect` / ``DriverFactory.from_url``."""
    url_keyword: str | None
    """The constructor keyword a URL of these schemes fills (None: the driver parses it itself
    in ``options_from_url``)."""
    keywords: Mapping[str, str] = field(default_factory=dict)
    """Config setting -> constructor keyword, where the default ``<name>_x -> x`` does not fit."""
    service: str | None = None
    """The server CI must have running for the driver's tests (``.ci/run`` makes sure of it);
    None when it needs none or its tests start their own (SQS: moto, from a fixture)."""
    connection_setting: str | None = None
    """The Config setting a bare connection string sets (a Flask-RQ style per-queue
    connection): the URL, DSN or path; None when the driver has none."""
    title: str = ""
    """How docs and ``--help`` name it (default: the name)."""

    @property
    def display_name(self) -> str:
        return self.title or self.name


DRIVER_TABLE: tuple[DriverSpec, ...] = (
    DriverSpec(
        "sqlite",
        "asynctasq.drivers.sqlite:SQLiteDriver",
        None,
        ("sqlite",),
        None,
        connection_setting="sqlite_path",
        title="SQLite",
    ),
    DriverSpec("memory", "asynctasq.drivers.memory:MemoryDriver", None, ("memory",), None, title="memory"),
    DriverSpec(
        "redis",
        "asynctasq.drivers.redis:RedisDriver",
        "redis",
        ("redis", "rediss", "unix"),
        "url",
        service="redis",
        connection_setting="redis_url",
        title="Redis",
    ),
    DriverSpec(
        "postgres",
        "asynctasq.drivers.postgres:PostgresDriver",
        "postgres",
        ("postgresql", "postgres"),
        "dsn",
        service="postgres",
        connection_setting="postgres_dsn",
        title="PostgreSQL",
    ),
    DriverSpec(
        "mysql",
        "asynctasq.drivers.mysql:MySQLDriver",
        "mysql",
        ("mysql", "mariadb"),
        "dsn",
        service="mariadb",
        connection_setting="mysql_dsn",
        title="MySQL/MariaDB",
    ),
    DriverSpec(
        "sqs",
        "asynctasq.drivers.sqs:SQSDriver",
        "sqs",
        ("sqs",),
        None,
        keywords={"aws_access_key_id": "aws_access_key_id", "aws_secret_access_key": "aws_secret_access_key"},
        connection_setting="sqs_queue_url_prefix",
        title="SQS",
    ),
    DriverSpec(
        "rabbitmq",
        "asynctasq.drivers.rabbitmq:RabbitMQDriver",
        "rabbitmq",
        ("amqp", "amqps"),
        "url",
        service="rabbitmq",
        connection_setting="rabbitmq_url",
        title="RabbitMQ",
    ),
)
DRIVERS: dict[str, DriverSpec] = {spec.name: spec for spec in DRIVER_TABLE}
DRIVER_NAMES: tuple[str, ...] = tuple(DRIVERS)
SCHEMES: dict[str, DriverSpec] = {scheme: spec for spec in DRIVER_TABLE for scheme in spec.schemes}

__all__ = ["DRIVERS", "DRIVER_NAMES", "DRIVER_TABLE", "SCHEMES", "DriverSpec"]
