"""Reading the local span store, for `agentflux trace`.

The writer (`interceptors._spanstore.JsonLinesSpanExporter`) runs inside every service and
defines the record format; only the CLI reads the files back, so the reader lives here,
above the layers that write."""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["Mark", "read_matching", "read_spans", "store_marks"]

# Bytes read at a time by `read_matching`: a block is searched whole, and split into lines
# only when it holds a needle (a day of spans is a file of a gigabyte or more).
_BLOCK = 1 << 20


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


# Where a file of the store ended at some moment: (inode, size).
Mark = tuple[int, int]


def store_marks(folder: Path) -> dict[str, Mark]:
    """Where each file of the store ends now (file name -> mark): given to
    `read_matching` as `since`, it reads only what was appended after this moment."""
    marks: dict[str, Mark] = {}
    for path in folder.glob("spans-*.jsonl"):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue  # deleted meanwhile
        marks[path.name] = (st.st_ino, st.st_size)
    return marks


def read_matching(
    folder: Path, needles: Collection[bytes], since: Mapping[str, Mark] | None = None
) -> Iterator[dict[str, Any]]:
    """The span records whose line holds any of `needles` (raw bytes), oldest file first;
    torn lines are skipped, as by `read_spans`. With `since` (`store_marks`), each file
    is read from its mark on; all of it when it is new, or not the file marked (replaced,
    as by a user clearing the store: another inode, or shorter than its mark).

    A block of lines with no needle in it is neither split nor parsed: finding one trace
    in a gigabyte-sized store takes a search of its bytes, not a million JSON parses."""
    if not needles:
        return
    for path in sorted(folder.glob("spans-*.jsonl")):
        with path.open("rb") as fh:
            _seek_mark(fh, (since or {}).get(path.name))
            rest = b""
            while chunk := fh.read(_BLOCK):
                block = rest + chunk
                cut = block.rfind(b"\n") + 1  # whole lines now; the rest with the next read
                block, rest = block[:cut], block[cut:]
                yield from _parsed(block, needles)
            yield from _parsed(rest, needles)  # a last line the writer has not ended yet


def _seek_mark(fh: BinaryIO, mark: Mark | None) -> None:
    """Positions `fh` at `mark` when it is a mark of this file."""
    st = os.fstat(fh.fileno())
    if mark is None or mark[0] != st.st_ino or not 0 < mark[1] <= st.st_size:
        return  # from the start
    # Marks fall between two writes, and every write ends its lines, so a mark is a
    # line's start; a line torn across it (a writer killed mid-write) is skipped whole.
    fh.seek(mark[1] - 1)
    if fh.read(1) != b"\n":
        fh.readline()


def _parsed(block: bytes, needles: Collection[bytes]) -> Iterator[dict[str, Any]]:
    if not any(needle in block for needle in needles):
        return
    for line in block.splitlines():
        if any(needle in line for needle in needles):
            try:
                yield json.loads(line.decode("utf-8", "replace"))
            except ValueError:
                continue
