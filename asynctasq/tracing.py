"""OpenTelemetry tracing (``--otel`` / ``ASYNCTASQ_OTEL``; the ``otel`` extra): a PRODUCER span
per dispatch and a CONSUMER span per task run, linked by the trace context the message
carries, named and tagged after OpenTelemetry's messaging semantic conventions
(``send default``, ``process default``; ``messaging.system``, ``messaging.destination.name``,
``messaging.message.id``, ``messaging.operation.type``...). The spans go to whatever tracer
provider the application configured (the SDK and an exporter are the application's choice).

Nothing is imported, built or sent while tracing is off: the default costs nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from asynctasq.errors import ConfigError

if TYPE_CHECKING:
    from asynctasq.message import Envelope

SYSTEM = "asynctasq"


class Tracer:
    def __init__(self) -> None:
        try:
            from opentelemetry import context, propagate, trace
        except ImportError:
            raise ConfigError(
                "otel is on but opentelemetry-api is not installed: pip install 'asynctasq[otel]'"
            ) from None
        from asynctasq import __version__

        self._trace: Any = trace
        self._propagate: Any = propagate
        self._context: Any = context
        self._tracer = trace.get_tracer("asynctasq", __version__)

    def _attributes(self, env: Envelope, operation: str) -> dict[str, Any]:
        return {
            "messaging.system": SYSTEM,
            "messaging.destination.name": env.queue,
            "messaging.operation.type": operation,
            "messaging.operation.name": operation,
            "messaging.message.id": env.id,
            "asynctasq.task.name": env.task,
            "asynctasq.task.attempt": env.attempt,
        }

    @contextlib.contextmanager
    def sending(self, envelopes: list[Envelope]) -> Iterator[None]:
        """One PRODUCER span per message (the batch's in one go); each message carries its
        span's context. Enter it before the messages are encoded."""
        spans = []
        for env in envelopes:
            kind, attributes = self._trace.SpanKind.PRODUCER, self._attributes(env, "send")
            span = self._tracer.start_span(f"send {env.queue}", kind=kind, attributes=attributes)
            carrier: dict[str, str] = {}
            self._propagate.inject(carrier, context=self._trace.set_span_in_context(span))
            env.trace = carrier or None
            spans.append(span)
        try:
            yield
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(exc)))
            raise
        finally:
            for span in spans:
                span.end()

    @contextlib.contextmanager
    def processing(self, env: Envelope) -> Iterator[Any]:
        """The CONSUMER span of one run, child of the dispatch's span when the message has one
        (and linked to it, as the conventions ask of a process span)."""
        parent = self._propagate.extract(env.trace) if env.trace else None
        links = []
        if parent is not None:
            creator = self._trace.get_current_span(parent).get_span_context()
            if creator.is_valid:
                links.append(self._trace.Link(creator))
        with self._tracer.start_as_current_span(
            f"process {env.queue}",
            context=parent,
            kind=self._trace.SpanKind.CONSUMER,
            attributes=self._attributes(env, "process"),
            links=links,
        ) as span:
            yield span


_tracer: Tracer | None = None


def tracer() -> Tracer:
    global _tracer
    if _tracer is None:
        _tracer = Tracer()
    return _tracer


__all__ = ["Tracer", "tracer"]
