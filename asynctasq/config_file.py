"""Config files: ``asynctasq worker -c settings`` (a Python module, as RQ's), ``-c asynctasq.toml``
or ``-c pyproject.toml`` (its ``[tool.asynctasq]`` table).

A Python module gives its UPPER_CASE names, a TOML file its keys; each is a setting of
:class:`asynctasq.config.Config` (``QUEUES``, ``CONCURRENCY``, ``REDIS_URL``...), or a flag's
name where the flag differs (``NAME`` for ``worker_name``, ``IMPORT`` for ``imports``). RQ's
settings module works as written: ``REDIS_HOST`` / ``REDIS_PORT`` become ``redis_url``,
``DICT_CONFIG`` configures logging, ``SENTRY_DSN`` turns on error reporting, and a file that
configures only one broker (only ``REDIS_*`` names, say) selects that driver unless ``--driver``
or ``ASYNCTASQ_DRIVER`` names another. Precedence: flag > config file > environment > default.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from asynctasq.errors import ConfigError

FILE_ONLY = ("dict_config",)
"""Keys a config file may hold that are not settings (they have no flag or variable)."""


@dataclass
class ConfigFile:
    """What a config file says: ``settings`` (Config keywords) and ``dict_config`` (logging)."""

    source: str
    settings: dict[str, Any] = field(default_factory=dict)
    dict_config: dict[str, Any] | None = None


def load_config_file(spec: str) -> ConfigFile:
    """Read ``spec``: a ``.toml`` path, a ``.py`` path, or an importable module name."""
    if spec.endswith(".toml"):
        raw = _read_toml(spec)
    elif spec.endswith(".py") or os.sep in spec:
        raw = _module_settings(_load_path(spec), spec)
    else:
        raw = _module_settings(_import(spec), spec)
    return _normalise(raw, spec)


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc}") from None
    if os.path.basename(path) == "pyproject.toml":
        table = data.get("tool", {}).get("asynctasq")
        if not isinstance(table, dict):
            raise ConfigError(f"{path!r} has no [tool.asynctasq] table")
        return table
    return data.get("asynctasq", data) if isinstance(data.get("asynctasq"), dict) else data


def _load_path(path: str) -> types.ModuleType:
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    name = "_asynctasq_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load config file {path!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: say what broke in it
        raise ConfigError(f"config file {path!r} failed: {type(exc).__name__}: {exc}") from None
    return module


def _import(name: str) -> types.ModuleType:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # `-c settings` finds ./settings.py, as RQ's does
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name or name.startswith(f"{exc.name}."):
            raise ConfigError(
                f"config module {name!r} not found: give a module on sys.path (the current "
                "directory is searched) or a path to a .py or .toml file"
            ) from None
        raise ConfigError(f"config module {name!r} failed: {exc}") from None
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"config module {name!r} failed: {type(exc).__name__}: {exc}") from None


def _module_settings(module: types.ModuleType, spec: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(module).items():
        if not key.isupper() or key.startswith("_"):
            continue  # imports, helpers and private names of the module
        if isinstance(value, types.ModuleType | types.FunctionType | type):
            continue
        out[key] = value
    return out


def _normalise(raw: Mapping[str, Any], source: str) -> ConfigFile:
    from asynctasq.config import Config, closest_setting

    by_key: dict[str, str] = {}
    for s in Config.settings():
        by_key[s.name] = s.name
        by_key[s.flag.replace("-", "_")] = s.name
    out = ConfigFile(source)
    host = port = None
    for key, value in raw.items():
        lowered = str(key).lower().replace("-", "_")
        if lowered == "dict_config":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: DICT_CONFIG must be a dict (logging.config.dictConfig)")
            out.dict_config = value
        elif lowered == "redis_host":
            host = str(value)
        elif lowered == "redis_port":
            port = int(value)
        elif lowered in by_key:
            out.settings[by_key[lowered]] = value
        else:
            raise ConfigError(f"{source}: {closest_setting(lowered, list(by_key) + list(FILE_ONLY))}")
    if host is not None or port is not None:
        if "redis_url" in out.settings:
            raise ConfigError(f"{source}: give REDIS_URL or REDIS_HOST/REDIS_PORT, not both")
        out.settings["redis_url"] = f"redis://{host or 'localhost'}:{port or 6379}"
    return out


__all__ = ["ConfigFile", "load_config_file"]
