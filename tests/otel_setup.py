"""Imported by a worker subprocess of the tracing test (--import tests.otel_setup): an SDK
tracer provider with an in-memory exporter, whose spans are written as JSON to the file named
by $ASYNCTASQ_TEST_SPANS when the worker process exits."""

from __future__ import annotations

import atexit
import json
import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tests.cli_tasks  # noqa: F401 - the tasks the test dispatches

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)


def _dump() -> None:
    spans = [
        {
            "name": s.name,
            "kind": s.kind.name,
            "trace_id": s.context.trace_id,
            "span_id": s.context.span_id,
            "parent_span_id": s.parent.span_id if s.parent else None,
            "links": [link.context.span_id for link in s.links],
            "attributes": dict(s.attributes or {}),
            "status": s.status.status_code.name,
        }
        for s in exporter.get_finished_spans()
    ]
    with open(os.environ["ASYNCTASQ_TEST_SPANS"], "w") as f:
        json.dump(spans, f)


atexit.register(_dump)
