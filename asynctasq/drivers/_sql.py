"""What the SQL drivers share: identifier checks and versioned migrations.

A driver's migrations are a list of :class:`Migration` in a module of their own
(``_postgres_schema.py``, ``_mysql_schema.py``): numbered from 1, each a list of statements
with ``{placeholders}`` for the validated table names. Never edit a shipped migration; append
a new one. The driver applies the pending ones under a lock of its database (an advisory
lock, ``GET_LOCK``), records each in a version table, and refuses to run on a schema that is
behind (:func:`check_version` says what to run).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, TypeVar

from asynctasq.errors import ConfigError, SchemaError

_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
T = TypeVar("T")


def int_ids(ids: Iterable[str]) -> list[int]:
    """The ids that can be rows of ours (decimal integers); any other matches nothing."""
    return [int(text) for text in map(str, ids) if text.isascii() and text.isdigit()]


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size`` (statements bound their parameters)."""
    return (items[start : start + size] for start in range(0, len(items), size))


def validate_identifier(value: str, what: str, driver: str, max_len: int = 63) -> str:
    """Return ``value`` if it is a plain SQL identifier of at most ``max_len`` characters."""
    if not isinstance(value, str) or len(value) > max_len or not _IDENTIFIER_RE.match(value):
        raise ConfigError(
            f"invalid {driver} {what} {value!r}: use 1-{max_len} letters, digits and _, "
            "not starting with a digit"
        )
    return value


class Migration(NamedTuple):
    version: int
    description: str
    statements: Sequence[str]


def latest(migrations: Sequence[Migration]) -> int:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise AssertionError("migrations must be numbered 1, 2, 3... in order")
    return versions[-1]


def pending(migrations: Sequence[Migration], current: int, target: int | None = None) -> list[Migration]:
    """The migrations after ``current`` up to ``target`` (default: all), in order."""
    top = latest(migrations) if target is None else target
    return [m for m in migrations if current < m.version <= top]


def check_version(found: int, need: int, where: str, migrate_hint: str) -> None:
    """Raise :class:`SchemaError` unless the schema at ``where`` is at version ``need``."""
    if found < need:
        raise SchemaError(
            f"the asynctasq tables in {where} are at schema version {found}, this asynctasq needs "
            f"{need}: {migrate_hint}"
        )
    if found > need:
        raise SchemaError(
            f"the asynctasq tables in {where} are at schema version {found}, newer than this "
            f"asynctasq knows ({need}): upgrade asynctasq"
        )


__all__ = ["Migration", "check_version", "chunks", "int_ids", "latest", "pending", "validate_identifier"]
