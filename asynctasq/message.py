"""The versioned wire envelope every driver carries as opaque bytes.

Version 1 is a map with the keys ``v id task args kwargs queue attempt max_attempts timeout
retry_after enqueued_at``, encoded with msgpack (default), JSON or (opt-in) pickle. A worker
refuses versions newer than it knows, with a message that says to upgrade it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from asynctasq.errors import SerializationError
from asynctasq.serializers import BaseSerializer, loads_any
from asynctasq.signing import MAGIC, Signer, strip_signature

ENVELOPE_VERSION = 1
_SIGNED_FIRST = MAGIC[:1]


def new_task_id() -> str:
    """128 random bits as 32 hex digits (the shape of uuid4().hex, at a quarter of its cost)."""
    return os.urandom(16).hex()


@dataclass(slots=True)
class Envelope:
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    id: str = field(default_factory=new_task_id)
    attempt: int = 1
    """The attempt this delivery is (1 on the first run); retries write attempt + 1."""
    max_attempts: int = 3
    timeout: float | None = None
    retry_after: float = 1.0
    enqueued_at: float = field(default_factory=time.time)
    trace: dict[str, str] | None = None
    """The producer's trace context (W3C ``traceparent`` ...), when tracing is on."""

    def encode(self, serializer: BaseSerializer, signer: Signer | None = None) -> bytes:
        """The message bytes, signed by ``signer`` when given (asynctasq.signing)."""
        try:
            body = serializer.dumps(
                {
                    "v": ENVELOPE_VERSION,
                    "id": self.id,
                    "task": self.task,
                    "args": self.args,
                    "kwargs": self.kwargs,
                    "queue": self.queue,
                    "attempt": self.attempt,
                    "max_attempts": self.max_attempts,
                    "timeout": self.timeout,
                    "retry_after": self.retry_after,
                    "enqueued_at": self.enqueued_at,
                    **({"trace": self.trace} if self.trace else {}),
                }
            )
        except SerializationError as exc:
            raise SerializationError(
                f"cannot encode the arguments of task {self.task!r} with the {serializer.name} "
                f"serializer: {exc}. Pass plain values (str, int, float, bool, None, list, dict"
                f"{', bytes, datetime, Decimal, UUID, set' if serializer.name == 'msgpack' else ''}), "
                "or opt in to pickle with serializer='pickle'"
            ) from None
        return body if signer is None else signer.sign(body)

    @classmethod
    def decode(
        cls, data: bytes, *, accept_pickle: bool = False, serializer: BaseSerializer | None = None
    ) -> Envelope:
        """Decode a message; a signed one is decoded unverified (a worker verifies first).
        ``serializer``: a custom one that writes these messages (the built-in formats are
        recognised by their first byte)."""
        if data[:1] == _SIGNED_FIRST:
            data = strip_signature(data)
        if serializer is None:
            raw = loads_any(data, accept_pickle=accept_pickle)
        else:
            try:
                raw = serializer.loads(data)
            except Exception as exc:  # noqa: BLE001 - the user's serializer: any error is "cannot decode"
                raise SerializationError(
                    f"the {serializer.name} serializer cannot decode it: {exc}"
                ) from None
        if not isinstance(raw, dict) or "task" not in raw or "v" not in raw:
            raise SerializationError(f"not an asynctasq message: {_preview(data)}")
        version = raw["v"]
        if not isinstance(version, int) or version > ENVELOPE_VERSION:
            raise SerializationError(
                f"message format v{version} is newer than this worker knows (v{ENVELOPE_VERSION}): "
                "upgrade asynctasq on the workers"
            )
        try:
            args = raw.get("args", [])
            kwargs = raw.get("kwargs", {})
            timeout = raw.get("timeout")
            if type(args) is not list:
                if type(args) is not tuple:  # a string would run as one argument per character
                    raise TypeError(f"args must be a list, not {type(args).__name__}")
                args = list(args)
            if type(kwargs) is not dict:
                raise TypeError(f"kwargs must be a map, not {type(kwargs).__name__}")
            # the checks inline, the fields in order: this runs once per task
            attempt = raw.get("attempt", 1)
            max_attempts = raw.get("max_attempts", 3)
            retry_after = raw.get("retry_after", 1.0)
            enqueued_at = raw.get("enqueued_at", 0.0)
            env = cls(
                raw["task"],
                args,
                kwargs,
                raw.get("queue") or "default",
                raw["id"],
                attempt if type(attempt) is int else int(attempt),
                max_attempts if type(max_attempts) is int else int(max_attempts),
                None if timeout is None else (timeout if type(timeout) is float else float(timeout)),
                retry_after if type(retry_after) is float else float(retry_after),
                enqueued_at if type(enqueued_at) is float else float(enqueued_at),
            )
            trace = raw.get("trace")
            if trace is not None:  # a carrier of strings, or nothing: never a reason to fail
                env.trace = (
                    {str(k): str(v) for k, v in trace.items() if isinstance(v, str)}
                    if isinstance(trace, dict)
                    else None
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise SerializationError(f"malformed asynctasq message ({exc!r}): {_preview(data)}") from None
        if type(env.task) is not str or type(env.id) is not str:
            raise SerializationError(f"malformed asynctasq message: {_preview(data)}")
        if kwargs and not all(type(k) is str for k in env.kwargs):
            raise SerializationError(f"malformed asynctasq message (non-string keyword): {_preview(data)}")
        return env


def _preview(data: bytes, size: int = 60) -> str:
    text = repr(data[:size])
    return text + ("..." if len(data) > size else "")
