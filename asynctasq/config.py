"""Settings, and the one place that reads the environment.

Every setting ``x_y`` is the keyword argument ``Config(x_y=...)``, the CLI flag ``--x-y``, the
variable ``ASYNCTASQ_X_Y`` (a few flags have shorter names: ``--import``, ``--name``; their
variables follow the flag) and the key ``X_Y`` of a config file (``-c settings``, see
:mod:`asynctasq.config_file`). Precedence: flag > argument > config file > environment >
default::

    config = Config(driver="redis", redis_url="redis://localhost:6379")
    asynctasq.configure(driver="postgres", postgres_dsn="postgresql://app@db/app")

A misspelt setting is an error naming the closest valid one.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from asynctasq import constants as c
from asynctasq.drivers import DRIVER_NAMES
from asynctasq.errors import ConfigError
from asynctasq.signing import Signer
from asynctasq.utils.urls import redact_url

ENV_PREFIX = "ASYNCTASQ_"
DRIVERS = DRIVER_NAMES
SERIALIZERS = ("msgpack", "json", "pickle")
DEQUEUE_STRATEGIES = ("round_robin", "priority", "random")
_ALIASES = {"dequeue_strategy": {"default": "priority"}}
"""Other spellings of a choice: RQ calls queue-order priority ``default``."""
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _setting(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    secret: bool = False,
    group: str = "general",
    choices: tuple[str, ...] | None = None,
) -> Any:
    return field(
        default=default,
        metadata={"help": help, "flag": flag, "secret": secret, "group": group, "choices": choices},
    )


@dataclass(init=False, repr=False, eq=True)
class Config:
    """The settings of producers and workers; see the module docstring for sources."""

    # -- general
    config_file: str | None = _setting(
        None,
        "Config file: a Python settings module (as RQ's: `-c settings`), a .py path, a .toml "
        "file or pyproject.toml's [tool.asynctasq]. Flags beat it; it beats the environment.",
        flag="config",
    )
    url: str | None = _setting(
        None,
        "Broker URL that picks the driver and its connection (redis://, rediss://, unix://, "
        "postgresql://, mysql://, amqp://, sqs://, sqlite:///path, memory://): RQ's --url. "
        "An explicit --driver or connection setting beats it.",
        secret=True,
    )
    driver: str = _setting(c.DEFAULT_DRIVER, "Broker driver.", choices=DRIVERS)
    serializer: str = _setting(
        c.DEFAULT_SERIALIZER,
        "Format this process writes: dispatched tasks, retried messages and results. Workers "
        "read msgpack and JSON whatever this is, and pickle only when this is 'pickle'. Or the "
        "import path of your own (module.Class with dumps and loads), used by both sides.",
        choices=SERIALIZERS,
    )
    default_queue: str = _setting(c.DEFAULT_QUEUE, "Queue of tasks that name none.")
    default_max_attempts: int = _setting(c.DEFAULT_MAX_ATTEMPTS, "Attempts of tasks that set none.")
    default_timeout: float | None = _setting(None, "Timeout in seconds of tasks that set none.")
    default_retry_after: float = _setting(
        c.DEFAULT_RETRY_AFTER_S,
        "Base of the exponential retry backoff in seconds (doubles per attempt, jittered).",
    )
    max_retry_delay: float = _setting(
        c.DEFAULT_MAX_RETRY_DELAY_S, "Upper bound of a computed retry delay, seconds."
    )
    results_ttl: float = _setting(c.DEFAULT_RESULTS_TTL_S, "Seconds a task's result is kept; 0 keeps none.")
    lease_seconds: float = _setting(
        c.DEFAULT_LEASE_S,
        "Lease of a dequeued task; the worker extends it while the task runs. A task of a "
        "worker that died comes back after this long.",
    )
    max_message_bytes: int | None = _setting(
        None,
        "Largest encoded task message accepted at dispatch (default: the driver's limit, 16 MiB, "
        "or the broker's own where lower).",
    )
    signing_key: str | None = _setting(
        None,
        "HMAC key (32+ characters): producers sign every message, workers run only messages "
        "signed with it (see asynctasq.signing).",
        secret=True,
    )
    signing_old_keys: list[str] = _setting(
        (), "Earlier signing keys workers still accept, comma-separated (key rotation).", secret=True
    )
    otel: bool = _setting(
        False,
        "OpenTelemetry spans for dispatches and task runs, linked through the message (needs "
        "the otel extra and a tracer provider of the application's).",
    )
    # -- worker
    queues: list[str] = _setting(
        (c.DEFAULT_QUEUE,), "Queues in priority order, comma-separated.", group="worker"
    )
    concurrency: int = _setting(c.DEFAULT_CONCURRENCY, "Most tasks run at once.", group="worker")
    burst: bool = _setting(False, "Process what is queued, then exit.", group="worker")
    max_tasks: int | None = _setting(None, "Exit after exactly this many tasks.", group="worker")
    max_idle_time: float | None = _setting(
        None, "Exit after this many seconds without a task.", group="worker"
    )
    dequeue_strategy: str = _setting(
        c.DEFAULT_DEQUEUE_STRATEGY, "How queues are visited.", group="worker", choices=DEQUEUE_STRATEGIES
    )
    worker_name: str | None = _setting(
        None, "Worker name (default: host.pid.random).", flag="name", group="worker"
    )
    imports: list[str] = _setting(
        (), "Module with tasks to import (repeatable).", flag="import", group="worker"
    )
    path: list[str] = _setting((), "Directory prepended to sys.path (repeatable).", group="worker")
    shutdown_timeout: float = _setting(
        c.DEFAULT_SHUTDOWN_TIMEOUT_S,
        "Seconds running tasks get to finish after SIGTERM before they are given back.",
        group="worker",
    )
    heartbeat_interval: float = _setting(
        c.DEFAULT_HEARTBEAT_INTERVAL_S, "Seconds between worker registry heartbeats.", group="worker"
    )
    process_pool_size: int | None = _setting(
        None, "Processes for process=True tasks (default: CPU count).", group="worker"
    )
    process_pool_max_tasks_per_child: int | None = _setting(
        None, "Recycle a pool process after this many tasks.", group="worker"
    )
    process_pool_max_memory_per_child_mb: float | None = _setting(
        None,
        "Recycle a pool process, after its current task, once its RSS passes this many MB.",
        group="worker",
    )
    on_startup: list[str] = _setting(
        (),
        "Async function hook(worker) awaited before the first task, as module:function (repeatable).",
        group="worker",
    )
    on_shutdown: list[str] = _setting(
        (),
        "Async function hook(worker) awaited after the last task, as module:function (repeatable).",
        group="worker",
    )
    exception_handlers: list[str] = _setting(
        (),
        "Called in order when a task raises, handler(task, exc, attempt), as module.function "
        "(repeatable); one returning False stops the chain.",
        flag="exception-handler",
        group="worker",
    )
    disable_default_exception_handler: bool = _setting(
        False, "No log line of the worker's own for a task's exception.", group="worker"
    )
    maintenance_interval: float = _setting(
        c.DEFAULT_MAINTENANCE_INTERVAL_S,
        "Seconds between the driver's clean-ups (expired results, old failed entries); 0: none. "
        "Leases need none: an expired one is claimable again.",
        group="worker",
    )
    worker_class: str | None = _setting(
        None, "Worker subclass to run, as module.Class (RQ's --worker-class).", group="worker"
    )
    log_level: str = _setting(
        c.DEFAULT_LOG_LEVEL,
        "Logging level.",
        group="worker",
        choices=LOG_LEVELS,
    )
    log_format: str = _setting(
        c.DEFAULT_LOG_FORMAT, "Format of log lines (logging's %-style fields).", group="worker"
    )
    date_format: str = _setting(c.DEFAULT_DATE_FORMAT, "Format of log times (strftime).", group="worker")
    json_logs: bool = _setting(
        False, "Log one JSON object a line (time, level, logger, message, task fields).", group="worker"
    )
    disable_task_description_logging: bool = _setting(
        False,
        "No INFO line per task (name, id, queue, outcome, duration): RQ's --disable-job-desc-logging.",
        group="worker",
    )
    metrics_port: int | None = _setting(
        None,
        "Serve Prometheus metrics on this port (needs the metrics extra); a worker pool serves "
        "one endpoint for all its processes.",
        group="worker",
    )
    sentry_dsn: str | None = _setting(
        None,
        "Sentry DSN: report each task's final failure to Sentry (needs the sentry extra).",
        group="worker",
        secret=True,
    )
    # -- sqlite
    sqlite_path: str = _setting(c.DEFAULT_SQLITE_PATH, "SQLite database file.", group="sqlite")
    # -- redis
    redis_url: str = _setting(c.DEFAULT_REDIS_URL, "redis:// or rediss:// URL.", group="redis", secret=True)
    redis_password: str | None = _setting(None, "Redis password.", group="redis", secret=True)
    redis_db: int | None = _setting(
        None, "Redis database number (default: the URL's, else 0).", group="redis"
    )
    redis_max_connections: int = _setting(
        c.DEFAULT_REDIS_MAX_CONNECTIONS,
        "Redis connections kept for blocking waits; one more carries every other command.",
        group="redis",
    )
    redis_prefix: str = _setting(
        c.DEFAULT_REDIS_PREFIX, "Key prefix, so several apps share one Redis.", group="redis"
    )
    # -- postgres
    postgres_dsn: str = _setting(c.DEFAULT_POSTGRES_DSN, "PostgreSQL DSN.", group="postgres", secret=True)
    postgres_schema: str = _setting(
        c.DEFAULT_POSTGRES_SCHEMA, "Schema of the queue tables.", group="postgres"
    )
    postgres_table: str = _setting(c.DEFAULT_POSTGRES_TABLE, "Name of the tasks table.", group="postgres")
    postgres_min_pool_size: int = _setting(
        c.DEFAULT_POSTGRES_MIN_POOL_SIZE, "Smallest connection pool.", group="postgres"
    )
    postgres_max_pool_size: int = _setting(
        c.DEFAULT_POSTGRES_MAX_POOL_SIZE, "Largest connection pool.", group="postgres"
    )
    # -- mysql
    mysql_dsn: str = _setting(c.DEFAULT_MYSQL_DSN, "MySQL/MariaDB DSN.", group="mysql", secret=True)
    mysql_table: str = _setting(c.DEFAULT_MYSQL_TABLE, "Name of the tasks table.", group="mysql")
    mysql_max_pool_size: int = _setting(
        c.DEFAULT_MYSQL_MAX_POOL_SIZE, "Largest connection pool.", group="mysql"
    )
    # -- sqs
    sqs_region: str = _setting(c.DEFAULT_SQS_REGION, "AWS region.", group="sqs")
    sqs_queue_url_prefix: str | None = _setting(
        None, "Queue URL prefix (https://sqs.REGION.amazonaws.com/ACCOUNT/).", group="sqs"
    )
    sqs_endpoint_url: str | None = _setting(None, "Endpoint override (moto, LocalStack).", group="sqs")
    sqs_create_queues: bool = _setting(
        False, "Create missing queues (and their -failed queues) on first use.", group="sqs"
    )
    sqs_message_group_id: str = _setting(
        c.DEFAULT_SQS_MESSAGE_GROUP_ID,
        "Message group of tasks sent to FIFO (.fifo) queues that name none (broker_options).",
        group="sqs",
    )
    sqs_wait_time_seconds: int = _setting(
        c.DEFAULT_SQS_WAIT_TIME_S, "Long poll of an idle worker, 1-20 seconds.", group="sqs"
    )
    aws_access_key_id: str | None = _setting(None, "AWS access key id.", group="sqs")
    aws_secret_access_key: str | None = _setting(None, "AWS secret key.", group="sqs", secret=True)
    # -- rabbitmq
    rabbitmq_url: str = _setting(
        c.DEFAULT_RABBITMQ_URL, "AMQP URL (amqp:// or amqps://).", group="rabbitmq", secret=True
    )
    rabbitmq_prefix: str = _setting(
        c.DEFAULT_RABBITMQ_PREFIX, "Prefix of every queue and exchange name.", group="rabbitmq"
    )
    rabbitmq_queue_type: str = _setting(
        c.DEFAULT_RABBITMQ_QUEUE_TYPE,
        "Queue type: auto (quorum on RabbitMQ 3.10+), quorum or classic.",
        group="rabbitmq",
        choices=("auto", "quorum", "classic"),
    )
    rabbitmq_prefetch: int | None = _setting(
        None, "Fixed per-consumer prefetch (default: follow the worker's free slots).", group="rabbitmq"
    )
    rabbitmq_consumer_timeout_s: float | None = _setting(
        None,
        "x-consumer-timeout of the consumers (RabbitMQ 3.12+; older servers: the "
        "consumer_timeout server setting).",
        group="rabbitmq",
    )

    def __init__(self, *, _environ: Mapping[str, str] | None = None, **settings: Any) -> None:
        known = {f.name: f for f in fields(self)}
        for key in settings:
            if key not in known:
                raise ConfigError(_unknown(key, known))
        environ = os.environ if _environ is None else _environ
        spec = settings.get("config_file") or environ.get(env_name("config_file")) or None
        from_file: dict[str, Any] = {}
        self.dict_config: dict[str, Any] | None = None
        """The config file's DICT_CONFIG (logging.config.dictConfig), if it has one."""
        if spec:
            from asynctasq.config_file import load_config_file

            loaded = load_config_file(str(spec))
            from_file, self.dict_config = loaded.settings, loaded.dict_config
            if "driver" not in from_file and "driver" not in settings and env_name("driver") not in environ:
                groups = {known[k].metadata["group"] for k in from_file} & set(DRIVERS)
                if len(groups) == 1:  # RQ's settings file: REDIS_URL alone means Redis
                    from_file["driver"] = groups.pop()
        url = settings.get("url") or from_file.get("url") or environ.get(env_name("url"))
        from_url = url_settings(str(url), "url") if url else {}
        if url and not from_url:
            raise ConfigError(
                f"url={redact_url(str(url))!r} has no driver scheme: use redis://, postgresql://, "
                "mysql://, amqp://, sqs://, sqlite:///path or memory://"
            )
        for name, f in known.items():
            if name in settings:
                value = _coerce(name, settings[name], f.type, from_env=False)
            elif name in from_url and (
                "url" in settings
                or ("url" in from_file and name not in from_file)
                or (name not in from_file and env_name(name) not in environ)
            ):  # what a URL stands for sits just below the layer the URL came from
                value = _coerce(name, from_url[name], f.type, from_env=False)
            elif name in from_file:
                value = _coerce(name, from_file[name], f.type, from_env=False, source=str(spec))
            else:
                raw = environ.get(env_name(name))
                value = _default(f) if raw is None else _coerce(name, raw, f.type, from_env=True)
            choices = f.metadata.get("choices")
            if name == "serializer" and isinstance(value, str) and ("." in value or ":" in value):
                choices = None  # an import path: checked when the serializer is loaded
            if choices and value not in choices:
                value = _ALIASES.get(name, {}).get(value, value)
                if name == "log_level" and isinstance(value, str):
                    value = value.upper()  # --log-level warning
                if value not in choices:
                    raise ConfigError(f"{name}={value!r} is not one of: {', '.join(choices)}")
            object.__setattr__(self, name, value)
        for name in ("concurrency", "default_max_attempts", "redis_max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        Signer.from_settings(self.signing_key, self.signing_old_keys)  # a bad key fails here
        self._explicit = frozenset(settings)

    def replace(self, **overrides: Any) -> Config:
        """A copy with ``overrides`` on top (how CLI flags beat arguments)."""
        current = {f.name: getattr(self, f.name) for f in fields(self) if f.name in self._explicit}
        return Config(**{**current, **overrides})

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                # a DSN's user part is Sentry's key: hidden whole
                value = redact_url(value) if "://" in str(value) and f.name != "sentry_dsn" else "***"
            parts.append(f"{f.name}={value!r}")
        return f"Config({', '.join(parts)})"

    @staticmethod
    def settings() -> list[SettingInfo]:
        """Every setting with its flag, variable, type, default and help (for the CLI)."""
        out = []
        for f in fields(Config):
            flag = f.metadata.get("flag") or f.name.replace("_", "-")
            out.append(
                SettingInfo(
                    f.name,
                    flag,
                    env_name(f.name),
                    str(f.type),
                    _default(f),
                    f.metadata["help"],
                    f.metadata["group"],
                    f.metadata["choices"],
                )
            )
        return out


@dataclass(frozen=True)
class SettingInfo:
    name: str
    flag: str
    env: str
    type: str
    default: Any
    help: str
    group: str
    choices: tuple[str, ...] | None

    @property
    def base_type(self) -> str:
        """The type without ``| None``: ``str``, ``int``, ``float``, ``bool`` or ``list[str]``."""
        return self.type.replace(" ", "").removesuffix("|None")

    @property
    def repeatable(self) -> bool:
        """A list flag given several times (``--import a --import b``); ``queues`` takes commas."""
        return self.base_type == "list[str]" and self.name != "queues"

    @property
    def help_text(self) -> str:
        """The help of its CLI flag: what it does, its variable, default and choices."""
        notes = [f"env {self.env}"]
        if self.default not in (None, "", []):
            shown = ",".join(self.default) if isinstance(self.default, list) else self.default
            notes.append(f"default {shown}")
        if self.choices:
            notes.append(f"one of {', '.join(self.choices)}")
        return f"{self.help} ({'; '.join(notes)})"


def url_settings(url: str, where: str) -> dict[str, Any]:
    """The settings a driver URL stands for (``redis://...`` -> driver and redis_url); empty
    when ``url`` has no driver scheme."""
    from asynctasq.core.driver_factory import driver_class
    from asynctasq.drivers import SCHEMES

    spec = SCHEMES.get(url.partition("://")[0].lower()) if "://" in url else None
    if spec is None:
        return {}
    options = {spec.url_keyword: url} if spec.url_keyword else driver_class(spec.name).options_from_url(url)
    by_keyword: dict[str, str] = {}
    for f in fields(Config):
        group = f.metadata["group"]
        if f.name in spec.keywords:
            by_keyword[spec.keywords[f.name]] = f.name
        elif group == spec.name and f.name.startswith(spec.name + "_"):
            by_keyword.setdefault(f.name.removeprefix(spec.name + "_"), f.name)
    settings: dict[str, Any] = {"driver": spec.name}
    for keyword, value in options.items():
        if keyword not in by_keyword:
            raise ConfigError(
                f"{where}: the {spec.name} driver cannot be set up from a URL; give its settings"
            )
        settings[by_keyword[keyword]] = value
    return settings


def env_name(setting: str) -> str:
    f = _FIELDS[setting]
    flag = f.metadata.get("flag") or setting
    return ENV_PREFIX + flag.upper().replace("-", "_")


def _default(f: Any) -> Any:
    value = f.default
    return list(value) if isinstance(value, tuple) else value


def closest_setting(key: str, known: list[str]) -> str:
    """``unknown setting 'x'``, with the closest valid name when there is one."""
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; see `python -m asynctasq worker --help`"
    return f"unknown setting {key!r}{hint}"


def _unknown(key: str, known: Mapping[str, Any]) -> str:
    return closest_setting(key, list(known))


_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list[str]": list}


def _coerce(name: str, value: Any, annotation: Any, *, from_env: bool, source: str | None = None) -> Any:
    text = str(annotation).replace(" ", "")
    optional = text.endswith("|None")
    base = text.removesuffix("|None")
    if value is None or (from_env and optional and value == ""):
        if optional:
            return None
        raise ConfigError(f"{name} cannot be empty")
    if source is not None:
        source = f"{source}: {name.upper()}"
    else:
        source = f"environment variable {env_name(name)}" if from_env else f"setting {name}"
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if base == "list[str]":
            items = value.split(",") if isinstance(value, str) else list(value)
            return [str(i).strip() for i in items if str(i).strip()]
        if base == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if base == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}={value!r} is not a valid {base}") from None


_FIELDS = {f.name: f for f in fields(Config)}


_global_config: Config | None = None


def configure(config: Config | None = None, **settings: Any) -> Config:
    """Set the process-wide config that ``dispatch()`` uses; returns it."""
    global _global_config
    if config is not None and settings:
        config = config.replace(**settings)
    _global_config = config if config is not None else Config(**settings)
    from asynctasq.task import reset_producer  # the producer's drivers follow the new config

    reset_producer()
    return _global_config


def get_config() -> Config:
    """The config set by :func:`configure`, else one from the environment and defaults."""
    global _global_config
    if _global_config is None:
        _global_config = Config()
    return _global_config


__all__ = ["Config", "configure", "get_config", "redact_url"]
