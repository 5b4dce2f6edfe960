"""Payload formats. msgpack is the default; JSON is selectable; pickle only on explicit opt-in.

Workers tell the formats apart by the first byte, so producers may switch formats while old
messages are still queued: ``{`` is JSON, ``\\x80`` followed by a protocol number is pickle
(refused unless the worker accepts pickle), anything else is msgpack.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import pickle
import uuid
from typing import Any, Protocol

import msgpack

from asynctasq.errors import ConfigError, SerializationError

_EXT_DATETIME, _EXT_DATE, _EXT_DECIMAL, _EXT_UUID, _EXT_TIME, _EXT_SET = 1, 2, 3, 4, 5, 6


class BaseSerializer(Protocol):
    name: str

    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


def _ext_default(obj: Any) -> msgpack.ExtType:
    if isinstance(obj, dt.datetime):
        return msgpack.ExtType(_EXT_DATETIME, obj.isoformat().encode())
    if isinstance(obj, dt.date):
        return msgpack.ExtType(_EXT_DATE, obj.isoformat().encode())
    if isinstance(obj, dt.time):
        return msgpack.ExtType(_EXT_TIME, obj.isoformat().encode())
    if isinstance(obj, decimal.Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode())
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(_EXT_UUID, obj.bytes)
    if isinstance(obj, set | frozenset):
        return msgpack.ExtType(_EXT_SET, msgpack.packb(list(obj), default=_ext_default))
    raise TypeError(f"cannot encode a value of type {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_DATETIME:
        return dt.datetime.fromisoformat(data.decode())
    if code == _EXT_DATE:
        return dt.date.fromisoformat(data.decode())
    if code == _EXT_TIME:
        return dt.time.fromisoformat(data.decode())
    if code == _EXT_DECIMAL:
        return decimal.Decimal(data.decode())
    if code == _EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == _EXT_SET:
        return set(msgpack.unpackb(data, ext_hook=_ext_hook, strict_map_key=False))
    return msgpack.ExtType(code, data)


class MsgpackSerializer:
    """msgpack, plus datetime, date, time, Decimal, UUID and set as extension types."""

    name = "msgpack"

    def __init__(self) -> None:
        self._packer = msgpack.Packer(default=_ext_default)

    def dumps(self, obj: Any) -> bytes:
        try:
            data: bytes = self._packer.pack(obj)
        except (TypeError, ValueError, OverflowError) as exc:
            self._packer.reset()
            raise SerializationError(f"msgpack {exc}") from None
        return data

    def loads(self, data: bytes) -> Any:
        return msgpack.unpackb(data, ext_hook=_ext_hook, strict_map_key=False)


class JsonSerializer:
    """Plain JSON: portable to other languages; no bytes, datetimes or sets."""

    name = "json"

    def dumps(self, obj: Any) -> bytes:
        try:
            return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"JSON {exc}") from None

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


class PickleSerializer:
    """Any picklable value. Only for brokers that nobody untrusted can write to: unpickling runs
    code. Workers accept it only when configured with ``serializer="pickle"``."""

    name = "pickle"

    def dumps(self, obj: Any) -> bytes:
        try:
            return pickle.dumps(obj, protocol=5)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise SerializationError(f"pickle cannot encode it: {exc}") from None

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


_SERIALIZERS: dict[str, BaseSerializer] = {
    "msgpack": MsgpackSerializer(),
    "json": JsonSerializer(),
    "pickle": PickleSerializer(),
}
BUILTIN_SERIALIZERS = tuple(_SERIALIZERS)


def get_serializer(name: str) -> BaseSerializer:
    """A built-in serializer by name, or yours by import path (``myapp.codecs:Codec`` or
    ``myapp.codecs.Codec``: an object, or a class made with no arguments, with ``dumps`` and
    ``loads``). Workers and producers must use the same custom serializer: its messages are
    read with it, not recognised by their first byte as the built-in formats are."""
    found = _SERIALIZERS.get(name) or _custom.get(name)
    if found is not None:
        return found
    if not is_custom(name):
        raise ConfigError(
            f"unknown serializer {name!r}: choose msgpack, json or pickle, or give the import path "
            "of your own (module.Class with dumps and loads)"
        )
    from asynctasq.core.worker import import_object

    obj = import_object(name, "serializer")
    if isinstance(obj, type):
        obj = obj()
    if not (callable(getattr(obj, "dumps", None)) and callable(getattr(obj, "loads", None))):
        raise ConfigError(f"serializer {name!r} needs dumps(obj) -> bytes and loads(bytes) methods")
    if not isinstance(getattr(obj, "name", None), str):
        obj.name = name
    _custom[name] = obj
    return obj  # type: ignore[no-any-return]


def is_custom(name: str) -> bool:
    """True for an import path rather than a built-in serializer's name."""
    return name not in _SERIALIZERS and ("." in name or ":" in name)


_custom: dict[str, BaseSerializer] = {}


def loads_any(data: bytes, *, accept_pickle: bool = False) -> Any:
    """Decode ``data`` in whichever format it was written; raise SerializationError if it is
    not one of ours, or is pickle and pickle is not accepted."""
    if not data:
        raise SerializationError("empty message")
    first = data[0]
    try:
        if first == 0x7B:  # "{"
            return _SERIALIZERS["json"].loads(data)
        if first == 0x80 and len(data) > 1 and 2 <= data[1] <= 5:
            if not accept_pickle:
                raise SerializationError(
                    "pickled message refused: start the worker with --serializer pickle to accept "
                    "pickle (only if nobody untrusted can write to the broker)"
                )
            return _SERIALIZERS["pickle"].loads(data)
        return _SERIALIZERS["msgpack"].loads(data)
    except SerializationError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same thing here
        raise SerializationError(f"undecodable message ({type(exc).__name__}: {exc})") from None
