"""The OpenTelemetry SDK's in-memory exporter, installed once per test process for citeline's spans, and the
JSON log lines captured (``json_log_lines``)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from citeline import tracing

_EXPORTER: InMemorySpanExporter | None = None


def span_exporter() -> InMemorySpanExporter:
    """The process's in-memory exporter (cleared): the global tracer provider sends every span to it."""
    global _EXPORTER
    if _EXPORTER is None:
        _EXPORTER = InMemorySpanExporter()
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):  # the API's default: install the SDK's
            provider = TracerProvider()
            trace.set_tracer_provider(provider)
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    _EXPORTER.clear()
    return _EXPORTER


def by_name(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> ReadableSpan:
    found = by_name(spans, name)
    assert len(found) == 1, f"{len(found)} spans named {name!r} in {[s.name for s in spans]}"
    return found[0]


@contextmanager
def json_log_lines() -> Iterator[io.StringIO]:
    """citeline's log lines as JSON at INFO into a string; afterwards citeline's handler is removed and the root
    logger's level put back."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    tracing.configure_logging("INFO", "json", stream=stream)
    try:
        yield stream
    finally:
        for h in [h for h in root.handlers if getattr(h, "citeline", False)]:
            root.removeHandler(h)
        root.setLevel(level)
