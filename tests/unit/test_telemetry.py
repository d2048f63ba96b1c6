"""`Telemetry`: the local span store as `agentflux trace` reads it, and OTLP export to a
collector (an in-process gRPC TraceService standing in for one)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.trace import Link, SpanKind, format_span_id, format_trace_id

from interceptors import Telemetry
from interceptors._spanstore import JsonLinesSpanExporter
from services.cli.spans import read_spans
from services.cli.waterfall import traces_in

HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "traces"


def emit_two_spans(telemetry: Telemetry) -> tuple[Any, Any, Any]:
    """A PRODUCER parent and an INTERNAL child with attributes, an event and a link."""
    with telemetry.tracer.start_as_current_span("linked") as linked:
        pass
    with (
        telemetry.tracer.start_as_current_span(
            "publish agent.requested",
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka"},
        ) as parent,
        telemetry.tracer.start_as_current_span(
            "step",
            attributes={"agentflux.run_id": "run-1", "n": 3, "tags": ("a", "b")},
            links=[Link(linked.get_span_context())],
        ) as child,
    ):
        child.add_event("agentflux.context.rejected", {"key": "ce_tenantid"})
    return linked, parent, child


def write_two_spans(store: Path) -> tuple[Any, Any, Any]:
    """`emit_two_spans` by a gateway's telemetry writing into `store`, flushed."""
    telemetry = Telemetry.create("gateway", span_store=store, batch_delay_ms=50)
    try:
        spans = emit_two_spans(telemetry)
        assert telemetry.flush()
    finally:
        telemetry.shutdown()
    return spans


def test_span_store_records_the_documented_fields(store: Path) -> None:
    linked, parent, child = write_two_spans(store)

    files = list(store.glob("spans-*.jsonl"))
    assert [f.name for f in files] == [time.strftime("spans-%Y%m%d.jsonl", time.gmtime())]
    by_name = {s["name"]: s for s in read_spans(store)}
    assert set(by_name) == {"linked", "publish agent.requested", "step"}
    for span in by_name.values():
        assert {
            "trace_id",
            "span_id",
            "parent_span_id",
            "name",
            "kind",
            "service",
            "start_ns",
            "end_ns",
            "status",
            "attributes",
            "events",
            "links",
        } <= set(span)
        assert HEX32.fullmatch(span["trace_id"])
        assert HEX16.fullmatch(span["span_id"])
        assert span["service"] == "gateway"
        assert span["start_ns"] <= span["end_ns"]

    pub, step = by_name["publish agent.requested"], by_name["step"]
    pctx, cctx, lctx = (
        parent.get_span_context(),
        child.get_span_context(),
        linked.get_span_context(),
    )
    assert pub["trace_id"] == step["trace_id"] == format_trace_id(pctx.trace_id)
    assert pub["span_id"] == format_span_id(pctx.span_id)
    assert pub["parent_span_id"] is None
    assert pub["kind"] == "PRODUCER"
    assert pub["attributes"] == {"messaging.system": "kafka"}
    assert step["span_id"] == format_span_id(cctx.span_id)
    assert step["parent_span_id"] == pub["span_id"]
    assert step["kind"] == "INTERNAL"
    assert step["attributes"] == {"agentflux.run_id": "run-1", "n": 3, "tags": ["a", "b"]}
    (event,) = step["events"]
    assert event["name"] == "agentflux.context.rejected"
    assert event["attributes"] == {"key": "ce_tenantid"}
    assert isinstance(event["time_ns"], int)
    assert step["links"] == [
        {"trace_id": format_trace_id(lctx.trace_id), "span_id": format_span_id(lctx.span_id)}
    ]
    assert by_name["linked"]["trace_id"] != pub["trace_id"]
    assert pub["links"] == []
    assert pub["events"] == []


def test_torn_last_line_is_skipped(store: Path) -> None:
    telemetry = Telemetry.create("gateway", span_store=store, batch_delay_ms=50)
    try:
        emit_two_spans(telemetry)
        assert telemetry.flush()
    finally:
        telemetry.shutdown()
    whole = list(read_spans(store))
    assert len(whole) == 3
    (path,) = store.glob("spans-*.jsonl")
    with path.open("a", encoding="utf-8") as fh:  # a writer killed in mid-line
        fh.write('{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f0')
    assert list(read_spans(store)) == whole


def test_each_service_writes_its_own_name(store: Path) -> None:
    gateway = Telemetry.create("gateway", span_store=store, batch_delay_ms=50)
    worker = Telemetry.create("worker", span_store=store, batch_delay_ms=50)
    try:
        # A span of another service inside the gateway's still names its own service.
        with (
            gateway.tracer.start_as_current_span("submit"),
            worker.tracer.start_as_current_span("work"),
        ):
            pass
        assert gateway.flush()
        assert worker.flush()
    finally:
        gateway.shutdown()
        worker.shutdown()
    services = {s["name"]: s["service"] for s in read_spans(store)}
    assert services == {"submit": "gateway", "work": "worker"}


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.lock = threading.Lock()

    def Export(  # noqa: N802 - the generated method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    # The OTLP exporter is synchronous gRPC, called from the BatchSpanProcessor's
    # thread: a synchronous server on its own threads answers it.
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        servicer, server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(None).wait()


def test_otlp_export_reaches_the_collector(collector: tuple[Collector, int]) -> None:
    servicer, port = collector
    telemetry = Telemetry.create("planner", otlp_endpoint=f"127.0.0.1:{port}", batch_delay_ms=50)
    try:
        with telemetry.tracer.start_as_current_span(
            "process agent.requested", kind=SpanKind.CONSUMER
        ) as span:
            span.set_attribute("agentflux.correlation_id", "corr-1")
        assert telemetry.flush()
    finally:
        telemetry.shutdown()

    with servicer.lock:
        got = [
            (
                {a.key: a.value.string_value for a in rs.resource.attributes},
                sp,
            )
            for request in servicer.requests
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for sp in ss.spans
        ]
    assert len(got) == 1, got
    resource, exported = got[0]
    assert resource["service.name"] == "planner"
    assert exported.name == "process agent.requested"
    assert exported.kind == exported.SPAN_KIND_CONSUMER
    assert exported.trace_id.hex() == format_trace_id(span.get_span_context().trace_id)
    attrs = {a.key: a.value.string_value for a in exported.attributes}
    assert attrs["agentflux.correlation_id"] == "corr-1"


def test_spans_written_after_a_torn_line_are_kept(store: Path) -> None:
    first = Telemetry.create("gateway", span_store=store, batch_delay_ms=50)
    try:
        with first.tracer.start_as_current_span("before"):
            pass
        assert first.flush()
    finally:
        first.shutdown()
    (path,) = store.glob("spans-*.jsonl")
    with path.open("a", encoding="utf-8") as fh:  # that writer was killed in mid-line
        fh.write('{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f0')

    restarted = Telemetry.create("gateway", span_store=store, batch_delay_ms=50)
    try:
        with restarted.tracer.start_as_current_span("after"):
            pass
        assert restarted.flush()
    finally:
        restarted.shutdown()
    assert [s["name"] for s in read_spans(store)] == ["before", "after"]


def test_a_store_cleared_or_replaced_under_a_running_writer_gets_the_next_spans(
    store: Path,
) -> None:
    telemetry = Telemetry.create("gateway", span_store=store, batch_delay_ms=50)
    try:
        with telemetry.tracer.start_as_current_span("first"):
            pass
        assert telemetry.flush()
        (path,) = store.glob("spans-*.jsonl")
        # A torn line from another process, while this writer holds the file open.
        with path.open("a", encoding="utf-8") as fh:
            fh.write('{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f0')
        with telemetry.tracer.start_as_current_span("second"):
            pass
        assert telemetry.flush()
        assert [s["name"] for s in read_spans(store)] == ["first", "second"]

        # The store is cleared (folder and all): the writer makes it again.
        path.unlink()
        store.rmdir()
        with telemetry.tracer.start_as_current_span("after clearing"):
            pass
        assert telemetry.flush()
        assert [s["name"] for s in read_spans(store)] == ["after clearing"]

        # The file is replaced by another one: the writer appends to the new one.
        replacement = store / "replacement"
        replacement.write_text("")
        replacement.replace(path)
        with telemetry.tracer.start_as_current_span("after replacing"):
            pass
        assert telemetry.flush()
        assert [s["name"] for s in read_spans(store)] == ["after replacing"]
    finally:
        telemetry.shutdown()


def test_exporters_of_one_process_append_whole_lines_side_by_side(store: Path) -> None:
    # Each service of a process exports to the same file from its own thread. An append
    # seen half done by another exporter's torn-line check used to add a blank line.
    telemetry = Telemetry.create("gateway")
    try:
        spans = []
        for i in range(50):
            with telemetry.tracer.start_as_current_span(
                f"s{i}", attributes={"pad": "x" * 2000}
            ) as s:
                pass
            spans.append(s)
    finally:
        telemetry.shutdown()
    exporters = [JsonLinesSpanExporter(store) for _ in range(4)]

    def export(exporter: JsonLinesSpanExporter) -> None:
        for _ in range(100):
            exporter.export(spans)

    threads = [threading.Thread(target=export, args=(e,)) for e in exporters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in exporters:
        e.shutdown()
    (path,) = store.glob("spans-*.jsonl")
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # ends with a newline
    assert [n for n, line in enumerate(lines[:-1]) if not line.strip()] == []
    assert len(lines) - 1 == 4 * 100 * 50


def test_the_store_search_follows_the_links_the_writer_wrote(store: Path) -> None:
    # `traces_in` finds records with links by how the writer spells them: written by the
    # writer itself here, so a change of its format cannot leave links unfound.
    linked, _parent, child = write_two_spans(store)
    linked_id = format_trace_id(linked.get_span_context().trace_id)
    child_id = format_trace_id(child.get_span_context().trace_id)
    found = traces_in(store, linked_id)
    assert set(found) == {linked_id, child_id}
    assert [s["name"] for s in found[linked_id]] == ["linked"]
