"""Reading the local span store, for `agentflux trace`.

The writer (`interceptors._spanstore.JsonLinesSpanExporter`) runs inside every service and
defines the record format; only the CLI reads the files back, so the reader lives here,
above the layers that write."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["read_spans"]


def read_spans(folder: Path) -> Iterator[dict[str, Any]]:
    """Every span record in the store, oldest file first; torn lines are skipped."""
    # A writer killed mid-line leaves a torn record; the writer ends it before appending,
    # so skipping lines that do not parse loses that one span and nothing after it.
    for path in sorted(folder.glob("spans-*.jsonl")):
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue
