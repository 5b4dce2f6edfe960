from __future__ import annotations

import pytest

from asynctasq.config import Config, redact_url
from asynctasq.errors import ConfigError


def test_precedence_argument_over_environment_over_default() -> None:
    env = {"ASYNCTASQ_DRIVER": "redis", "ASYNCTASQ_CONCURRENCY": "7", "ASYNCTASQ_QUEUES": "high, default"}
    config = Config(_environ=env, concurrency=3)
    assert (config.driver, config.concurrency, config.queues) == ("redis", 3, ["high", "default"])
    assert Config(_environ={}).driver == "sqlite"
    assert Config(_environ={}).sqlite_path == "asynctasq.db"


def test_flags_beat_arguments() -> None:
    config = Config(_environ={}, driver="redis", concurrency=4)
    flagged = config.replace(concurrency=9)
    assert (flagged.driver, flagged.concurrency) == ("redis", 9)


def test_every_setting_has_a_flag_and_matching_variable() -> None:
    for s in Config.settings():
        assert s.env == "ASYNCTASQ_" + s.flag.upper().replace("-", "_")
    names = {s.flag: s.env for s in Config.settings()}
    assert names["redis-url"] == "ASYNCTASQ_REDIS_URL"
    assert names["sqlite-path"] == "ASYNCTASQ_SQLITE_PATH"
    assert names["import"] == "ASYNCTASQ_IMPORT"


def test_misspelt_setting_names_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'redis_url'"):
        Config(redis_ulr="redis://x")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ASYNCTASQ_CONCURRENCY": "many"}, "ASYNCTASQ_CONCURRENCY='many' is not a valid int"),
        ({"ASYNCTASQ_BURST": "perhaps"}, "is not a valid bool"),
        ({"ASYNCTASQ_DRIVER": "kafka"}, "is not one of"),
        ({"ASYNCTASQ_CONCURRENCY": "0"}, "at least 1"),
    ],
)
def test_bad_values_are_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config(_environ=env)


def test_types_from_environment() -> None:
    env = {"ASYNCTASQ_BURST": "yes", "ASYNCTASQ_MAX_TASKS": "", "ASYNCTASQ_DEFAULT_TIMEOUT": "2.5"}
    config = Config(_environ=env)
    assert config.burst is True and config.max_tasks is None and config.default_timeout == 2.5


def test_passwords_never_show() -> None:
    config = Config(
        _environ={},
        redis_url="redis://:hunter2@cache:6379/0",
        postgres_dsn="postgresql://app:hunter2@db/app",
        redis_password="hunter2",
        aws_secret_access_key="hunter2",
    )
    assert "hunter2" not in repr(config)
    assert redact_url("postgresql://app:s3cret@db:5432/app") == "postgresql://app:***@db:5432/app"
    assert redact_url("redis://localhost:6379") == "redis://localhost:6379"


def test_configuration_doc_lists_every_setting() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    for s in Config.settings():
        assert f"`--{s.flag}`" in text and f"`{s.env}`" in text, s.name
