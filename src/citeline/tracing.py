"""Traces and log context: OpenTelemetry spans, the request id, JSON log lines.

Spans: :func:`span` (a block) and :func:`traced` (a function) open a span named after a stage under the
current one, through the OpenTelemetry *API* (a core dependency). Without an SDK every span is a no-op;
:func:`configure_tracing` installs the SDK's tracer provider with an OTLP exporter when the standard
``OTEL_*`` variables ask for one (the SDK and the exporter are the ``[otel]`` extra). :func:`record_span`
writes a span whose times were measured already (a sync's chunk, embed and write stages, which overlap).

The request id: one per HTTP request (``X-Request-ID``: a sane incoming one is kept, anything else is
replaced by a new one, see :func:`accept_request_id`) or per answer outside a request. It lives in a
context variable (:func:`request_context`), so it reaches worker threads with the request's context, and
from there every span (attribute ``citeline.request_id``), every audit row (``payload.request_id``) and
every log line (:class:`ContextFilter`).

Logs: :func:`configure_logging` writes text (the default) or one JSON object per line (``json``), each with
the request id and the principal when there is one; never a key or a header: only what the message says.

Span attributes are all under ``citeline.``; nothing here imports citeline beyond its errors.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import IO, Any, ParamSpec, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span

from citeline.errors import ConfigError

__all__ = ["REQUEST_ID_ATTR", "REQUEST_ID_HEADER", "ContextFilter", "JsonFormatter", "accept_request_id", "annotate",
           "capture", "configure_logging", "configure_tracing", "current_principal", "current_request_id",
           "in_context", "new_request_id", "now_ns", "record_span", "request_context", "set_principal", "span",
           "traced"]

TRACER = "citeline"
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_ATTR = "citeline.request_id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # ASCII only: no spaces, newlines or quotes
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("citeline_request_id", default=None)
_principal: contextvars.ContextVar[str | None] = contextvars.ContextVar("citeline_principal", default=None)
_configured = threading.Lock()
_provider: Any = None  # the SDK tracer provider configure_tracing installed (flushed at exit)
_tracer = trace.get_tracer(TRACER)  # a proxy: it follows the global provider, also one installed later

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


# -- the request id --------------------------------------------------------------------------------
def new_request_id() -> str:
    """A fresh request id: 32 hex digits."""
    return uuid.uuid4().hex


def accept_request_id(value: str | None) -> tuple[str, bool]:
    """``(id, accepted)``: ``value`` if it is 1–128 characters of ASCII letters, digits and ``._:-``, else a
    new id (``accepted`` False). A refused value is never echoed or logged: it may be hostile."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value, True
    return new_request_id(), False


def current_request_id() -> str | None:
    return _request_id.get()


def current_principal() -> str | None:
    return _principal.get()


def set_principal(user: str | None) -> None:
    """Name the authenticated principal for the rest of this context (log lines, spans)."""
    _principal.set(user)
    if user is not None:
        trace.get_current_span().set_attribute("citeline.principal", user)


@contextlib.contextmanager
def request_context(request_id: str | None = None, principal: str | None = None) -> Iterator[str]:
    """Run the block under ``request_id`` (a new one if None) and ``principal``; yields the id."""
    rid = request_id or new_request_id()
    tokens = (_request_id.set(rid), _principal.set(principal))
    try:
        yield rid
    finally:
        with contextlib.suppress(ValueError):  # a generator closed in another context (finalised elsewhere)
            _principal.reset(tokens[1])
            _request_id.reset(tokens[0])


# -- spans -----------------------------------------------------------------------------------------
def _attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    out = {f"citeline.{k}": v for k, v in attributes.items() if v is not None}
    rid = _request_id.get()
    if rid is not None:
        out[REQUEST_ID_ATTR] = rid
    return out


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span]:
    """A span for the block, a child of the current one; an exception is recorded and marks it an error."""
    with _tracer.start_as_current_span(name, attributes=_attributes(attributes)) as s:
        yield s


def traced(name: str, *, request: bool = False) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function so that each call runs in a span called ``name``; with ``request``, under a new
    request id unless one is set already (an answer asked outside an HTTP request still gets one)."""
    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            fresh = request and _request_id.get() is None
            with request_context() if fresh else contextlib.nullcontext(), span(name):
                return fn(*args, **kwargs)
        return inner
    return wrap


def annotate(**attributes: Any) -> None:
    """Set attributes (``citeline.<key>``; None values skipped) on the current span."""
    trace.get_current_span().set_attributes({f"citeline.{k}": v for k, v in attributes.items() if v is not None})


def now_ns() -> int:
    """The wall clock in nanoseconds, as span times are given."""
    return time.time_ns()


def record_span(name: str, start_ns: int, end_ns: int | None = None, **attributes: Any) -> None:
    """A span measured already: from ``start_ns`` to ``end_ns`` (default now), a child of the current span."""
    s = _tracer.start_span(name, start_time=start_ns, attributes=_attributes(attributes))
    s.end(end_time=end_ns if end_ns is not None else now_ns())


def capture() -> contextvars.Context:
    """This context (current span, request id, principal), to go on in later with :func:`in_context`."""
    return contextvars.copy_context()


def in_context(ctx: contextvars.Context, items: Iterator[T]) -> Iterator[T]:
    """Iterate ``items`` with each step (and its closing) run in ``ctx``, from :func:`capture`.

    A streamed answer is produced later and on another thread than the request that made it: this carries
    the request's trace, id and principal into each step without setting them in the consuming thread's
    context, so a stream closed or finalised anywhere leaves no context behind.
    """
    try:
        while True:
            try:
                item = ctx.run(next, items)
            except StopIteration:
                return
            yield item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            ctx.run(close)


def configure_tracing(service_name: str = "citeline") -> bool:
    """Export spans when the environment asks for it; True if an exporter is installed (once per process).

    ``OTEL_TRACES_EXPORTER`` = ``otlp`` (the default once ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set), ``console`` or ``none``. The OTLP exporter speaks
    HTTP/protobuf and reads the standard ``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, timeout);
    ``OTEL_SERVICE_NAME`` overrides ``service_name``. Needs the ``[otel]`` extra (ConfigError otherwise).
    """
    global _provider
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp" if endpoint else "none").strip().lower()
    if kind in ("", "none"):
        return False
    if kind not in ("otlp", "console"):
        raise ConfigError(f"OTEL_TRACES_EXPORTER={kind!r} is not supported by citeline: use otlp, console or none")
    with _configured:
        if _provider is not None:
            return True
        try:
            from opentelemetry.sdk.resources import SERVICE_NAME, Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
            exporter: SpanExporter
            if kind == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
                exporter = OTLPSpanExporter()
            else:
                exporter = ConsoleSpanExporter()
        except ImportError as exc:
            raise ConfigError(f"OTEL_TRACES_EXPORTER={kind} needs the OpenTelemetry SDK and OTLP exporter "
                              f"({exc.name} is not installed): pip install 'citeline[otel]'") from exc
        name = os.environ.get("OTEL_SERVICE_NAME") or service_name
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _provider = provider
    return True


# -- logs ------------------------------------------------------------------------------------------
class ContextFilter(logging.Filter):
    """Adds ``request_id``, ``principal`` and the current ``trace_id`` to every record (None when unset)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = _request_id.get()
        record.request_id = rid
        record.principal = _principal.get()
        ctx = trace.get_current_span().get_span_context()
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else None
        record.context = f" [request_id={rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, principal, trace_id (and the
    exception's traceback as ``exc``). Control characters are escaped, so one record is always one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        for key in ("request_id", "principal", "trace_id"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=True, default=str)


def configure_logging(level: str | int = "WARNING", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Log to ``stream`` (stderr) at ``level``, as ``text`` or ``json`` lines, with the request context.

    A second call replaces the handler the first added. Like :func:`logging.basicConfig`, it leaves logging
    alone when the root logger already has handlers that are not citeline's (an application or a test
    runner that embeds citeline owns its logging) unless ``stream`` is given.
    """
    fmt = fmt.strip().lower()
    if fmt not in ("text", "json"):
        raise ConfigError(f"log format {fmt!r}: use text or json (CITELINE_LOG_FORMAT)")
    if isinstance(level, str):
        level = level.strip().upper()
        if level not in logging.getLevelNamesMapping():
            raise ConfigError(f"log level {level!r}: use DEBUG, INFO, WARNING or ERROR (CITELINE_LOG_LEVEL)")
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "citeline", False)]
    if stream is None and len(ours) < len(root.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.citeline = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(levelname)s:%(name)s:%(message)s%(context)s"))
    for old in ours:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
