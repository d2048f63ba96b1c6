"""The local span store: finished spans appended as JSON lines, always on in development.

One file per day under `<stack_dir>/traces/spans-YYYYMMDD.jsonl`, one JSON object per
span (the format `agentflux trace` reads, through `services.cli.spans`):

    {"trace_id": "32 hex", "span_id": "16 hex", "parent_span_id": "16 hex" | null,
     "name": "publish agent.requested", "kind": "PRODUCER", "service": "gateway",
     "start_ns": 1700000000000000000, "end_ns": ..., "status": "OK" | "ERROR" | "UNSET",
     "status_message": "...", "attributes": {...}, "links": [{"trace_id", "span_id"}],
     "events": [{"name", "time_ns", "attributes"}]}

Writes are appended under a lock with O_APPEND, so several processes can share a file."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import format_span_id, format_trace_id

__all__ = ["JsonLinesSpanExporter", "span_to_dict"]


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """The JSON-lines record of one finished span."""
    ctx = span.get_span_context()
    assert ctx is not None
    parent = span.parent
    resource = span.resource.attributes if span.resource else {}
    return {
        "trace_id": format_trace_id(ctx.trace_id),
        "span_id": format_span_id(ctx.span_id),
        "parent_span_id": format_span_id(parent.span_id) if parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": str(resource.get("service.name", "")),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "status_message": span.status.description or "",
        "attributes": dict(span.attributes or {}),
        "links": [
            {
                "trace_id": format_trace_id(link.context.trace_id),
                "span_id": format_span_id(link.context.span_id),
            }
            for link in span.links
        ],
        "events": [
            {"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends spans to the day's JSON-lines file in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_to_dict(s), default=str) + "\n" for s in spans)
        path = self.folder / f"spans-{time.strftime('%Y%m%d', time.gmtime())}.jsonl"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._lock:
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    # A writer killed in mid-line left no newline: end its torn line
                    # first, or the first span appended now would be lost with it.
                    size = os.fstat(fd).st_size
                    torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
                    os.write(fd, ("\n" + lines if torn else lines).encode())
                finally:
                    os.close(fd)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
