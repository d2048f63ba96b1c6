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

# One encoder for every span: json.dumps with an option builds a new one per call (about
# 3 µs of a span's 25 µs export), and a span's record is a fresh tree of dicts, lists
# and scalars, so the check for cycles has nothing to find.
_ENCODE = json.JSONEncoder(default=str, check_circular=False).encode


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


# One lock per store folder for the whole process: each service of a process has an
# exporter of its own, and a torn-line check (size, last byte) racing another exporter's
# append would see that append half done and end it with a needless blank line.
_FOLDER_LOCKS: dict[Path, threading.Lock] = {}
_FOLDER_LOCKS_LOCK = threading.Lock()


def _folder_lock(folder: Path) -> threading.Lock:
    with _FOLDER_LOCKS_LOCK:
        return _FOLDER_LOCKS.setdefault(folder.absolute(), threading.Lock())


class JsonLinesSpanExporter(SpanExporter):
    """Appends spans to the day's JSON-lines file in `folder`.

    The file stays open between exports: opening it (and making the folder) for every
    batch cost four system calls more per export, which a process that exports a batch
    or two per run paid in every run. It is opened again on a new day, and when it was
    deleted or replaced under the writer (a user clearing the store), so that no span
    goes to a file nobody can read any more."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = _folder_lock(folder)
        self._fd: int | None = None
        self._path: Path | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(_ENCODE(span_to_dict(s)) + "\n" for s in spans)
        path = self.folder / f"spans-{time.strftime('%Y%m%d', time.gmtime())}.jsonl"
        with self._lock:
            try:
                fd, size = self._open(path)
                # A writer killed in mid-line left no newline: end its torn line
                # first, or the first span appended now would be lost with it.
                torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
                os.write(fd, ("\n" + lines if torn else lines).encode())
            except OSError:
                self._close()  # opened afresh by the next export
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _open(self, path: Path) -> tuple[int, int]:
        """The file's descriptor and size, opened again when it is not the day's file or
        no longer the one at `path` (deleted, or replaced)."""
        if self._fd is not None and self._path == path:
            held = os.fstat(self._fd)
            try:
                there = os.stat(path)
            except FileNotFoundError:
                there = None
            if there is not None and (there.st_ino, there.st_dev) == (held.st_ino, held.st_dev):
                return self._fd, held.st_size
        self._close()
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self._fd, self._path = fd, path
        return fd, os.fstat(fd).st_size

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd, self._path = self._fd, None, None
            os.close(fd)

    def shutdown(self) -> None:
        with self._lock:
            self._close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
