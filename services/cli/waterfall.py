"""Span records from the local span store drawn as a waterfall, for `agentflux trace`.

`find_traces` picks the traces an id names; `render` draws one of them as a tree of spans
against a shared time bar. Both take plain records in the format of
`interceptors._spanstore` (as `services.cli.spans.read_spans` yields them); `traces_in`
is `find_traces` over the store's files, parsing only the lines it needs. Drawing for a
terminal is the CLI's business, so this lives here rather than in `interceptors`."""

from __future__ import annotations

import math
import re
import textwrap
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any

import grpc
import typer

from services.cli.spans import Mark, read_matching

__all__ = ["find_traces", "render", "traces_in"]

Span = dict[str, Any]
_PACKAGE = re.compile(r"^.*\.(?=[^./]+/)")
_KINDS = {"SERVER": "srv", "CLIENT": "cli", "PRODUCER": "prod", "CONSUMER": "cons"}
_GRPC = {code.value[0]: code.name for code in grpc.StatusCode}
# How a record with links starts them (`interceptors._spanstore`'s format; none: `[]`).
_LINK = b'"links": [{'


def _attrs(span: Span) -> dict[str, Any]:
    return span.get("attributes") or {}


def _start(span: Span) -> int:
    return int(span.get("start_ns") or 0)


def _end(span: Span) -> int:
    return max(int(span.get("end_ns") or 0), _start(span))


def _named(span: Span, ident: str) -> bool:
    """Whether `span` is of a trace `ident` names: as its trace id or its correlation."""
    tid = str(span.get("trace_id", ""))
    return tid == ident.lower() or _attrs(span).get("agentflux.correlation_id") == ident


def _links(spans: Iterable[Span]) -> list[tuple[str, str]]:
    """(trace, linked trace) of every link the spans make."""
    return [(str(span.get("trace_id", "")), str(link.get("trace_id", "")))
            for span in spans for link in span.get("links") or []]  # fmt: skip


def _linked(pairs: list[tuple[str, str]], wanted: set[str]) -> set[str]:
    return {to for fro, to in pairs if fro in wanted} | {fro for fro, to in pairs if to in wanted}


def find_traces(spans: Iterable[Span], ident: str) -> dict[str, list[Span]]:
    """Every trace `ident` names, earliest first, each one's spans in start order.

    `ident` is tried as a trace id and as an `agentflux.correlation_id` (both are 32 hex).
    A correlation spans several traces when a hop started afresh (its traceparent was
    rejected). Traces linked to or from a matched one come along, one hop only: a batch
    consumer links to the producers of other requests, which must stay out."""
    by_trace: dict[str, list[Span]] = defaultdict(list)
    wanted: set[str] = set()
    for span in spans:
        by_trace[tid := str(span.get("trace_id", ""))].append(span)
        if _named(span, ident):
            wanted.add(tid)
    pairs = _links(span for group in by_trace.values() for span in group)
    linked = _linked(pairs, wanted) & by_trace.keys()
    found = {tid: sorted(by_trace[tid], key=_start) for tid in wanted | linked}
    return dict(sorted(found.items(), key=lambda item: (_start(item[1][0]), item[0])))


def traces_in(
    folder: Path, ident: str, since: Mapping[str, Mark] | None = None
) -> dict[str, list[Span]]:
    """`find_traces` over the span store in `folder`, reading only what it needs.

    The first pass parses the lines that hold `ident` or a link (few: batch consumers'),
    which names the traces wanted and linked; the second parses the lines of those traces.
    The rest of the store, nearly all of it once a day of runs is in, is searched as
    bytes and never parsed. `since` (`store_marks` taken before the request began): the
    request's own traces are looked for only in what came after; a trace they link to
    may be older, and is looked for in the whole store."""
    first = list(read_matching(folder, {ident.encode(), ident.lower().encode(), _LINK}, since))
    wanted = {str(span.get("trace_id", "")) for span in first if _named(span, ident)}
    linked = _linked(_links(first), wanted) - wanted
    wanted.discard("")
    linked.discard("")
    spans: Iterable[Span]
    if since is None:
        spans = _of(read_matching(folder, _needles(wanted | linked)), wanted | linked)
    else:
        spans = _of(read_matching(folder, _needles(wanted), since), wanted)
        if linked:
            spans = chain(spans, _of(read_matching(folder, _needles(linked)), linked))
    return find_traces(spans, ident)


def _needles(tids: set[str]) -> set[bytes]:
    return {tid.encode() for tid in tids}


def _of(spans: Iterable[Span], tids: set[str]) -> Iterator[Span]:
    """The spans of the traces `tids` (a line may name another trace in a link)."""
    return (s for s in spans if str(s.get("trace_id", "")) in tids)


def _tree(spans: list[Span]) -> list[tuple[Span, int, bool]]:
    """(span, depth, orphan) in depth-first order, siblings by start time."""
    by_id: dict[str, Span] = {}
    for span in sorted(spans, key=_start):
        by_id.setdefault(str(span.get("span_id")), span)
    children: dict[str, list[str]] = defaultdict(list)
    for sid, span in by_id.items():
        if (parent := str(span.get("parent_span_id"))) in by_id and parent != sid:
            children[parent].append(sid)
    rows: list[tuple[Span, int, bool]] = []
    seen: set[str] = set()
    # Spans on a parent cycle (corrupt records) hang from no root; the second pass over
    # every span draws them as roots rather than dropping them.
    roots = [sid for sid, s in by_id.items() if str(s.get("parent_span_id")) not in by_id]
    for first in roots + list(by_id):
        stack = [(first, 0)]
        while stack:
            sid, depth = stack.pop()
            if sid not in seen:
                seen.add(sid)
                orphan = depth == 0 and bool(by_id[sid].get("parent_span_id"))
                rows.append((by_id[sid], depth, orphan))
                stack.extend((kid, depth + 1) for kid in reversed(children[sid]))
    return rows


def _fit(text: str, n: int) -> str:
    return text if len(text) <= n else (text[: n - 1] + "…" if n > 0 else "")


def _ms(ns: float) -> str:
    ms = ns / 1e6
    return f"{ms:.1f}" if ms < 1e5 else f"{ms / 1e3:.0f}s"


def _destination(span: Span, short: bool = False) -> str:
    """Where a span went: system and queue, service or host. `short` leaves out what the
    name says already (`publish <topic>`, `<package.Service>/<Method>`) for Kafka's
    partition and offset, so that 100 columns keep the operation whole."""
    a, name = _attrs(span), str(span.get("name", ""))
    if dest := a.get("messaging.destination.name"):
        where = [str(a.get("messaging.system", "")), "" if short and str(dest) in name else dest]
        if short and a.get("messaging.destination.partition.id") not in (None, ""):
            where.append(f"p{a['messaging.destination.partition.id']}")
        if short and a.get("messaging.kafka.offset") is not None:
            where.append(f"#{a['messaging.kafka.offset']}")
        return " ".join(str(w) for w in where if w)
    if service := a.get("rpc.service"):
        target = f"{service}/{a.get('rpc.method', '')}"
        return "grpc" if short and target in name else f"grpc {target}"
    host = a.get("server.address") or a.get("net.peer.name") or ""
    return f"{a.get('db.system', '')} {host}".strip()


def _wait_ns(span: Span) -> float:
    wait = _attrs(span).get("agentflux.queue_wait_ms")
    return float(wait) * 1e6 if isinstance(wait, int | float) else 0.0


def _notes(span: Span, orphan: bool) -> list[tuple[str, str]]:
    """(text, color) lines under a span: errors, rejected context values, lost parents."""
    notes: list[tuple[str, str]] = []
    code = _attrs(span).get("rpc.grpc.status_code")
    exceptions = [e for e in span.get("events") or [] if e.get("name") == "exception"]
    if span.get("status") == "ERROR" or exceptions or code not in (None, 0):
        what = str(span.get("status_message") or "")
        if isinstance(code, int) and code:
            what = f"grpc {_GRPC.get(code, code)} {what}"
        for exc in exceptions:
            ea = exc.get("attributes") or {}
            what = what or str(ea.get("exception.message", ""))
            if (kind := str(ea.get("exception.type", ""))) and kind not in what:
                what += f" [{kind}]"
        notes.append((f"✗ error: {what.strip() or 'no message'}", "red"))
    for ev in span.get("events") or []:
        if ev.get("name") == "agentflux.context.rejected":
            a = ev.get("attributes") or {}
            notes.append((f"! rejected {a.get('key', '?')}: {a.get('reason', '')}", "yellow"))
    if orphan:
        notes.append((f"↑ parent {str(span['parent_span_id'])[:8]}… not in the store", "blue"))
    if links := span.get("links") or []:
        traces = ", ".join(sorted({str(ln.get("trace_id", ""))[:8] + "…" for ln in links}))
        notes.append((f"⇠ linked to {len(links)} span(s) in trace {traces}", "blue"))
    return notes


def _covered_ns(intervals: list[tuple[int, int]]) -> int:
    """Time covered by the union of intervals: nested client and server spans count once."""
    total, reach = 0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - int(max(start, reach))
            reach = end
    return total


def _footer(spans: list[Span], width: int) -> list[str]:
    waits: dict[str, float] = defaultdict(float)
    by_system: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for span in spans:
        wait, system = _wait_ns(span), _destination(span).partition(" ")[0] or "internal"
        waits[_destination(span)] += wait
        # A consumer's handler time is its service's, not the broker's: it counts its wait.
        consumer = span.get("kind") == "CONSUMER" and system != "internal"
        end = _start(span) if consumer else _end(span)
        by_system[system].append((int(_start(span) - (wait if consumer else 0)), end))
    per_queue = " · ".join(f"{q} {_ms(ns)}" for q, ns in waits.items() if ns)
    per_system = sorted(((_covered_ns(iv), s) for s, iv in by_system.items()), reverse=True)
    return [
        _fit(f"queue wait {_ms(sum(waits.values()))} ms  {per_queue}".rstrip(), width),
        _fit("time in    " + " · ".join(f"{s} {_ms(ns)} ms" for ns, s in per_system), width),
    ]


def render(trace_spans: list[Span], *, width: int = 100, color: bool = False) -> str:
    """One trace: a header, the span tree against a time bar, then totals."""

    def paint(text: str, fg: str | None = None, bold: bool = False) -> str:
        if not color or not text:
            return text
        return typer.style(text, fg=fg, bold=bold)

    if not trace_spans:
        return "(no spans)"
    rows = _tree(trace_spans)
    t0, t1 = min(_start(s) for s in trace_spans), max(_end(s) for s in trace_spans)
    total, cells = t1 - t0, max(10, width // 7)
    rest = max(30, width - cells - 38)  # what the operation and destination columns share
    ops = [len(str(s.get("name", ""))) + 2 * d for s, d, _ in rows]
    dest_w = min(max(len(_destination(s, short=True)) for s in trace_spans), rest // 4)
    op_w = min(max(ops), rest - dest_w - 1)
    dest_w = rest - op_w - 1

    def ids(key: str, label: str) -> str:
        found = sorted({str(_attrs(s)[key]) for s in trace_spans if _attrs(s).get(key)})
        return f"  {label} {', '.join(found)}" if found else ""

    when = datetime.fromtimestamp(t0 / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    count = f"{len(rows)} span{'s' if len(rows) > 1 else ''}"
    head = f"trace {trace_spans[0].get('trace_id')}  {count}  {_ms(total)} ms  {when}"
    tail = "".join(ids(f"agentflux.{k}_id", k) for k in ("correlation", "tenant", "run"))
    lines = [paint(_fit(head, width), bold=True), _fit(tail.strip(), width)]
    lines.append(
        f"{'timeline':<{cells + 2}} {'start':>6} {'dur':>6} {'wait':>5} {'service':<9} "
        f"{'kind':<4} {'operation':<{op_w}} {'destination':<{dest_w}}"[:width].rstrip()
    )

    def cell(ns: float, up: bool = False) -> int:
        at = (math.ceil if up else math.floor)((ns - t0) * cells / total) if total > 0 else 0
        return max(0, min(cells, at))

    for span, depth, orphan in rows:
        wait = _wait_ns(span)
        a = min(cell(_start(span)), cells - 1)
        b, w = max(a + 1, cell(_end(span), up=True)), cell(_start(span) - wait)
        bar = paint("░" * (a - w), "yellow") + paint("█" * (b - a), "cyan")
        name = str(span.get("name", ""))
        if len(name) + 2 * depth > op_w and "rpc.service" in _attrs(span):
            name = _PACKAGE.sub("", name)  # a deep gRPC name loses its package first
        name = _fit("  " * depth + name, op_w)
        wait_txt = f"{_ms(wait) if wait else '':>5}"
        kind = _KINDS.get(str(span.get("kind")), "int")
        lines.append(
            f"|{' ' * w}{bar}{' ' * (cells - b)}| {_ms(_start(span) - t0):>6} "
            f"{_ms(_end(span) - _start(span)):>6} {paint(wait_txt, 'yellow')} "
            f"{_fit(str(span.get('service', '')), 9):<9} {kind:<4} "
            f"{paint(f'{name:<{op_w}}', 'red' if span.get('status') == 'ERROR' else None)} "
            f"{_fit(_destination(span, short=True), dest_w)}".rstrip()
        )
        pad = " " * (cells + 5)
        for text, fg in _notes(span, orphan):
            wrapped = textwrap.wrap(text, width - len(pad), max_lines=3, placeholder=" …")
            lines += [pad + paint(part, fg) for part in wrapped]
    return "\n".join(lines + _footer(trace_spans, width))
