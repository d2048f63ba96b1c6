"""Log records stamped with the context, so a log line leads to the whole request.

Services log through the standard `logging` module. `ContextFilter` adds the bound
`FluxContext`'s ids and the current span's trace and span ids to every record, and
`configure_logging` prints them, so an operator who reads a line can run
`agentflux trace <correlation id or trace id>` and see everything that request caused,
across every hop."""

from __future__ import annotations

import logging
import time
from json import dumps
from typing import IO, Any

from opentelemetry import trace
from opentelemetry.trace import format_span_id, format_trace_id

from interceptors._context import current

__all__ = ["CONTEXT_FIELDS", "ContextFilter", "configure_logging"]

CONTEXT_FIELDS = ("correlation_id", "causation_id", "run_id", "tenant_id", "trace_id", "span_id")
"""The record attributes `ContextFilter` sets (empty strings when there is no value)."""

# The text format shows what takes an operator to the trace (the correlation or trace
# id) and what tells requests apart at a glance; the JSON lines carry every field.
_TEXT_FIELDS = (
    ("corr", "correlation_id"),
    ("run", "run_id"),
    ("tenant", "tenant_id"),
    ("trace", "trace_id"),
)
_HANDLER = "agentflux.context"  # how `configure_logging` finds the handler it installed


class ContextFilter(logging.Filter):
    """Stamps each record with `CONTEXT_FIELDS`: the correlation, causation, run and
    tenant ids of the bound `FluxContext`, and the trace and span ids of the current
    OpenTelemetry span (32 and 16 lowercase hex digits).

    Attach it to a handler rather than a logger: handler filters see the records of
    every library's loggers, logger filters only their own. A value the caller passed
    with `extra=` is kept. It never drops a record, and does no more than two context
    variable reads per record, since it runs on every one."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        ctx = current()
        if ctx is None:
            for key in ("correlation_id", "causation_id", "run_id", "tenant_id"):
                fields.setdefault(key, "")
        else:
            fields.setdefault("correlation_id", ctx.correlation_id)
            fields.setdefault("causation_id", ctx.causation_id)
            fields.setdefault("run_id", ctx.run_id)
            fields.setdefault("tenant_id", ctx.tenant_id)
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            fields.setdefault("trace_id", format_trace_id(span.trace_id))
            fields.setdefault("span_id", format_span_id(span.span_id))
        else:
            fields.setdefault("trace_id", "")
            fields.setdefault("span_id", "")
        return True


def _timestamp(record: logging.LogRecord) -> str:
    # UTC with milliseconds: lines from several services sort and compare as written.
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class _Text(logging.Formatter):
    """`<time> <LEVEL> <service> [corr=… run=… tenant=… trace=…] <logger>: <message>`,
    with empty fields (and empty brackets) left out so lines stay short."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        stamps = " ".join(
            f"{label}={value}" for label, key in _TEXT_FIELDS if (value := getattr(record, key, ""))
        )
        context = f"[{stamps}] " if stamps else ""
        line = (
            f"{_timestamp(record)} {record.levelname} {self.service} "
            f"{context}{record.name}: {record.getMessage()}"
        )
        if exception := _exception_text(self, record):
            line = f"{line}\n{exception}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class _JsonLines(logging.Formatter):
    """One JSON object per line: timestamp, level, service, logger, message, every
    context field (empty when unknown, so each line has the same keys), and `exc_info`
    (`stack_info`) with the traceback (stack) text when the record carries one."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((key, getattr(record, key, "")) for key in CONTEXT_FIELDS)
        if exception := _exception_text(self, record):
            entry["exc_info"] = exception
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # `default=str`: an `extra=` value of any type must not cost the line.
        return dumps(entry, ensure_ascii=False, default=str)


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The traceback of a record's exception, formatted once and cached on the record
    (as `logging.Formatter` does), so other handlers do not format it again."""
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text or ""


def configure_logging(
    service: str,
    level: str | int = "INFO",
    *,
    json: bool = False,
    stream: IO[str] | None = None,
) -> None:
    """Sends every log record of the process to `stream` (stderr by default) as text or,
    with `json=True`, as JSON lines, each stamped with the correlation, run, tenant and
    trace ids of the work that logged it (see `ContextFilter`), and sets the root level.

    One handler on the root logger, with the filter on the handler, so records of
    every library get the ids. Calling it again replaces that handler instead of adding
    a second (which would print each line twice); handlers installed by others stay."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER)
    handler.addFilter(ContextFilter())
    handler.setFormatter(_JsonLines(service) if json else _Text(service))
    root.addHandler(handler)
    root.setLevel(level)
