"""`agentflux trace`: finding a request's traces in the span store and drawing them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from services.cli import spans as span_store
from services.cli.spans import read_matching, read_spans, store_marks
from services.cli.trace import trace
from services.cli.waterfall import find_traces, render, traces_in

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
BATCH_TRACE = "9e0f6f1fd1a54b3c8c1a6a1d2f3b4c5d"
RESTART_TRACE = "0af7651916cd43dd8448eb211c80319c"
OTHER_TRACE = "11111111111111111111111111111111"
CORR = "5d0c3b1a9e8f47f6a2b1c0d9e8f7a6b5"  # 32 hex, like the ids agentflux mints
TENANT = "acme"


def span(
    sid: str,
    parent: str | None,
    name: str,
    kind: str,
    service: str,
    start_ms: float,
    end_ms: float,
    trace_id: str = TRACE,
    corr: str = CORR,
    **fields: Any,
) -> dict[str, Any]:
    attrs = {"agentflux.correlation_id": corr, "agentflux.tenant_id": TENANT}
    attrs.update(fields.pop("attrs", {}))
    record: dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": sid.ljust(16, "0"),
        "parent_span_id": parent.ljust(16, "0") if parent else None,
        "name": name,
        "kind": kind,
        "service": service,
        "start_ns": T0 + int(start_ms * MS),
        "end_ns": T0 + int(end_ms * MS),
        "status": "UNSET",
        "status_message": "",
        "attributes": attrs,
        "links": [],
        "events": [],
    }
    record.update(fields)
    return record


def kafka(dest: str, op: str, **extra: Any) -> dict[str, Any]:
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": dest,
        "messaging.operation.type": op,
        "messaging.destination.partition.id": "0",
        **extra,
    }


def rabbit(dest: str, op: str, **extra: Any) -> dict[str, Any]:
    return {"messaging.system": "rabbitmq", "messaging.destination.name": dest,
            "messaging.operation.type": op, **extra}  # fmt: skip


REJECTED = {"name": "agentflux.context.rejected", "time_ns": T0 + 7 * MS,
            "attributes": {"key": "x-agentflux-run-id",
                           "reason": "longer than 128 characters"}}  # fmt: skip
EXCEPTION = {"name": "exception", "time_ns": T0 + 20 * MS,
             "attributes": {"exception.type": "grpc.aio.AioRpcError",
                            "exception.message": "failed to connect to all addresses"}}  # fmt: skip
GRPC_OK = {"rpc.system": "grpc", "rpc.grpc.status_code": 0}


def request_trace() -> list[dict[str, Any]]:
    """gateway -> kafka -> planner -> redis, rabbitmq -> worker -> memcached, grpc, kafka."""
    return [
        span("a1", None, "agentflux.v1.AgentGateway/Ask", "SERVER", "gateway", 0, 48,
             attrs={**GRPC_OK, "rpc.service": "agentflux.v1.AgentGateway", "rpc.method": "Ask"}),
        span("a2", "a1", "publish agent.requested", "PRODUCER", "gateway", 1, 2.5,
             attrs=kafka("agent.requested", "send")),
        span("b1", "a2", "process agent.requested", "CONSUMER", "planner", 6.5, 30,
             attrs=kafka("agent.requested", "process", **{
                 "agentflux.queue_wait_ms": 4.0, "messaging.kafka.offset": 42,
                 "messaging.consumer.group.name": "planner"}),
             events=[REJECTED]),
        span("b2", "b1", "GET", "CLIENT", "planner", 7, 7.4,
             attrs={"db.system": "redis", "db.statement": "GET af:run:1",
                    "net.peer.name": "127.0.0.1"}),
        span("b3", "b1", "publish tool.calls", "PRODUCER", "planner", 8, 9,
             attrs=rabbit("tool.calls", "send")),
        span("c1", "b3", "process tool.calls", "CONSUMER", "worker", 11, 28,
             attrs=rabbit("tool.calls", "process", **{"agentflux.queue_wait_ms": 2.0})),
        span("c2", "c1", "get", "CLIENT", "worker", 12, 12.3, attrs={"db.system": "memcached"}),
        span("c3", "c1", "agentflux.v1.ToolRegistry/Lookup", "CLIENT", "worker", 14, 20,
             status="ERROR", status_message="failed to connect to all addresses",
             events=[EXCEPTION],
             attrs={"rpc.system": "grpc", "rpc.service": "agentflux.v1.ToolRegistry",
                    "rpc.method": "Lookup", "rpc.grpc.status_code": 14}),
        span("c4", "c1", "publish agent.tool_called", "PRODUCER", "worker", 26, 27,
             attrs=kafka("agent.tool_called", "send")),
    ]  # fmt: skip


def batch_trace() -> list[dict[str, Any]]:
    """A batch consumer in its own trace, linked to two producers of different requests
    (so it carries no one correlation id)."""
    links = [{"trace_id": TRACE, "span_id": "c4".ljust(16, "0")},
             {"trace_id": OTHER_TRACE, "span_id": "d1".ljust(16, "0")}]  # fmt: skip
    return [
        span("e1", None, "process agent.tool_called", "CONSUMER", "recorder", 40, 45,
             trace_id=BATCH_TRACE, corr="", links=links,
             attrs=kafka("agent.tool_called", "process")),
        span("d1", None, "publish agent.tool_called", "PRODUCER", "worker", 35, 36,
             trace_id=OTHER_TRACE, corr="someone-else", attrs=kafka("agent.tool_called", "send")),
    ]  # fmt: skip


def restarted_trace() -> list[dict[str, Any]]:
    """The same request after a hop rejected its traceparent and started a new trace."""
    return [span("f1", None, "process agent.answered", "CONSUMER", "gateway", 50, 52,
                 trace_id=RESTART_TRACE, attrs=kafka("agent.answered", "process"))]  # fmt: skip


def store() -> list[dict[str, Any]]:
    return request_trace() + batch_trace() + restarted_trace()


def op_column(lines: list[str], name: str) -> int:
    """Where `name` starts on its line: the indentation of that span in the tree."""
    (line,) = [ln for ln in lines if f" {name} " in ln or ln.endswith(f" {name}")]
    return line.index(f" {name}") + 1


def test_finds_a_trace_by_its_id_with_the_traces_linked_to_it() -> None:
    found = find_traces(store(), TRACE.upper())
    assert list(found) == [TRACE, BATCH_TRACE]
    assert [s["name"] for s in found[TRACE]][:2] == [
        "agentflux.v1.AgentGateway/Ask", "publish agent.requested"]  # fmt: skip


def test_finds_every_trace_of_a_correlation_but_not_other_requests_in_a_batch() -> None:
    found = find_traces(store(), CORR)
    # The restarted trace shares only the correlation id; the batch trace only a link.
    # OTHER_TRACE is linked from the batch trace but belongs to another request.
    assert list(found) == [TRACE, BATCH_TRACE, RESTART_TRACE]
    assert found[BATCH_TRACE][0]["links"][0]["trace_id"] == TRACE


def test_unknown_ident_finds_nothing() -> None:
    assert find_traces(store(), "no-such-correlation") == {}
    assert find_traces(store(), "0" * 32) == {}


def test_renders_the_tree_in_start_order_with_indentation() -> None:
    spans = request_trace()
    lines = render(list(reversed(spans)), width=100).splitlines()
    assert all(len(line) <= 100 for line in lines)
    # At 100 columns a deep gRPC name loses its package before anything else.
    order = [s["name"].replace("agentflux.v1.ToolRegistry", "ToolRegistry") for s in spans]
    positions = [line_of(lines, name) for name in order]
    assert positions == sorted(positions)
    root = op_column(lines, "agentflux.v1.AgentGateway/Ask")
    assert op_column(lines, "publish agent.requested") == root + 2
    assert op_column(lines, "process agent.requested") == root + 4
    assert op_column(lines, "GET") == root + 6
    assert op_column(lines, "process tool.calls") == root + 8
    assert op_column(lines, "get") == root + 10
    assert op_column(lines, "ToolRegistry/Lookup") == root + 10
    assert lines[0].startswith(f"trace {TRACE}  9 spans  48.0 ms")
    assert f"correlation {CORR}  tenant {TENANT}" in lines[1]


def line_of(lines: list[str], name: str) -> int:
    return next(i for i, ln in enumerate(lines) if f" {name} " in ln or ln.endswith(name))


def test_shows_destinations_queue_waits_and_totals() -> None:
    lines = render(request_trace(), width=100).splitlines()
    consumer = lines[line_of(lines, "process agent.requested")]
    assert consumer.endswith("process agent.requested         kafka p0 #42")
    assert " 23.5   4.0 planner   cons " in consumer  # duration, then the wait column
    assert consumer.startswith("|░█")  # the wait drawn before the span in the bar
    assert lines[line_of(lines, "publish tool.calls")].endswith("rabbitmq")
    assert lines[line_of(lines, "get")].endswith("memcached")
    assert lines[line_of(lines, "GET")].endswith("redis 127.0…")
    assert lines[-2] == "queue wait 6.0 ms  kafka agent.requested 4.0 · rabbitmq tool.calls 2.0"
    # A consumer counts its queue wait, not its handler's time, as time in its broker.
    assert lines[-1] == (
        "time in    grpc 48.0 ms · kafka 6.5 ms · rabbitmq 3.0 ms · redis 0.4 ms · memcached 0.3 ms"
    )


def test_a_destination_the_name_does_not_say_is_spelled_out() -> None:
    spans = request_trace()
    spans[4]["name"] = "send"
    spans[7]["name"] = "lookup"
    lines = render(spans, width=140).splitlines()
    assert lines[line_of(lines, "send")].endswith("rabbitmq tool.calls")
    assert lines[line_of(lines, "lookup")].endswith("grpc agentflux.v1.ToolRegistry/Lookup")
    assert lines[line_of(lines, "GET")].endswith("redis 127.0.0.1")


def test_shows_errors_and_rejected_context_values() -> None:
    lines = render(request_trace(), width=100).splitlines()
    at = line_of(lines, "ToolRegistry/Lookup")
    assert " ".join(ln.strip() for ln in lines[at + 1 : at + 3]) == (
        "✗ error: grpc UNAVAILABLE failed to connect to all addresses [grpc.aio.AioRpcError]"
    )
    at = line_of(lines, "process agent.requested")
    assert lines[at + 1].strip() == "! rejected x-agentflux-run-id: longer than 128 characters"


def test_a_span_whose_parent_is_missing_is_a_marked_root() -> None:
    spans = [s for s in request_trace() if s["span_id"] != "b3".ljust(16, "0")]
    lines = render(spans, width=100).splitlines()
    root = op_column(lines, "agentflux.v1.AgentGateway/Ask")
    assert op_column(lines, "process tool.calls") == root
    assert op_column(lines, "get") == root + 2
    at = next(i for i, ln in enumerate(lines) if "process tool.calls" in ln)
    assert "↑ parent b3000000… not in the store" in lines[at + 1]


def test_a_batch_consumer_shows_its_links() -> None:
    out = render(find_traces(store(), CORR)[BATCH_TRACE])
    assert "process agent.tool_called" in out
    assert "⇠ linked to 2 span(s) in trace 11111111…, 4bf92f35…" in out


def test_long_names_are_cut_with_an_ellipsis_and_colors_only_on_request() -> None:
    spans = request_trace()
    spans[1]["name"] = "publish " + "x" * 120
    plain = render(spans, width=100)
    assert "…" in plain
    assert "\x1b[" not in plain
    assert all(len(line) <= 100 for line in plain.splitlines())
    assert "\x1b[" in render(spans, width=100, color=True)


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)  # a group, as in services.cli, so `trace` is a subcommand
    app.command("trace")(trace)
    return app


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    traces = tmp_path / "traces"
    traces.mkdir()
    lines = [json.dumps(s) for s in store()]
    lines.insert(3, '{"trace_id": "torn')  # a line cut short by a crash is skipped
    (traces / "spans-20231114.jsonl").write_text("\n".join(lines) + "\n")
    return traces


def test_cli_prints_the_waterfall(app: typer.Typer, folder: Path) -> None:
    result = CliRunner().invoke(app, ["trace", CORR, "--store", str(folder)])
    assert result.exit_code == 0, result.output
    for name in ("AgentGateway/Ask", "process tool.calls", "publish agent.tool_called", "GET"):
        assert name in result.stdout
    assert result.stdout.count("\ntrace ") + result.stdout.startswith("trace ") == 3


def test_cli_reads_the_stack_dir_store_by_default(
    app: typer.Typer, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(folder.parent)
    monkeypatch.setenv("AGENTFLUX_STACK_DIR", str(folder.parent))
    result = CliRunner().invoke(app, ["trace", TRACE])
    assert result.exit_code == 0, result.output
    assert f"trace {TRACE}" in result.stdout


def test_cli_json_prints_the_matched_spans(app: typer.Typer, folder: Path) -> None:
    result = CliRunner().invoke(app, ["trace", TRACE, "--store", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["trace_id"] for r in records} == {TRACE, BATCH_TRACE}
    assert len(records) == len(request_trace()) + 1


def test_cli_unknown_ident_says_what_to_do(app: typer.Typer, folder: Path) -> None:
    result = CliRunner().invoke(app, ["trace", "corr-unknown", "--store", str(folder)])
    assert result.exit_code == 1
    assert "no spans for corr-unknown" in result.stderr
    assert "flush" in result.stderr
    missing = folder.parent / "nowhere"
    result = CliRunner().invoke(app, ["trace", CORR, "--store", str(missing)])
    assert result.exit_code == 1
    assert str(missing) in result.stderr


@pytest.mark.parametrize("ident", ["not an id!", "../etc/passwd", "x" * 200])
def test_cli_rejects_a_malformed_ident(app: typer.Typer, folder: Path, ident: str) -> None:
    result = CliRunner().invoke(app, ["trace", ident, "--store", str(folder)])
    assert result.exit_code == 2
    assert "neither a trace id" in result.stderr


def noise(n: int) -> list[dict[str, Any]]:
    """Spans of other requests, as a busy day leaves in the store."""
    return [span(f"n{i}", None, "GET", "CLIENT", "planner", i, i + 0.3,
                 trace_id=f"{i:032x}", corr=f"{i + 7:032x}", attrs={"db.system": "redis"})
            for i in range(1, n + 1)]  # fmt: skip


@pytest.fixture
def busy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two days of store, the requests among noise, blocks of 256 bytes: every block
    boundary falls inside a line somewhere."""
    monkeypatch.setattr(span_store, "_BLOCK", 256)
    traces = tmp_path / "traces"
    traces.mkdir()
    records = noise(40) + store() + noise(40)
    day1 = [json.dumps(s) for s in records[:45]]
    day2 = [json.dumps(s) for s in records[45:]]
    day2.insert(5, '{"trace_id": "torn')
    (traces / "spans-20231114.jsonl").write_text("\n".join(day1) + "\n")
    # The newest file's last line not ended yet (its writer is mid-batch).
    (traces / "spans-20231115.jsonl").write_text("\n".join(day2))
    return traces


@pytest.mark.parametrize(
    "ident", [TRACE, TRACE.upper(), CORR, BATCH_TRACE, OTHER_TRACE, RESTART_TRACE, "0" * 32]
)
def test_the_store_search_finds_what_reading_it_all_finds(busy: Path, ident: str) -> None:
    assert traces_in(busy, ident) == find_traces(read_spans(busy), ident)


def count_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The lines the store's reader parses from now on, in order."""
    parsed: list[str] = []
    loads = json.loads

    def counting(text: str) -> Any:
        parsed.append(text)
        return loads(text)

    monkeypatch.setattr(span_store.json, "loads", counting)
    return parsed


def test_the_store_search_parses_only_the_lines_that_can_matter(
    busy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed = count_parses(monkeypatch)
    found = traces_in(busy, CORR)
    assert list(found) == [TRACE, BATCH_TRACE, RESTART_TRACE]
    # Each of the three traces' lines once or twice (both passes), the noise never.
    assert len(parsed) <= 2 * sum(len(spans) for spans in found.values())
    assert not [text for text in parsed if '"GET", "kind": "CLIENT", "service": "planner"' in text
                and CORR not in text and TRACE not in text]  # fmt: skip


OLD_TRACE = "22222222222222222222222222222222"


def test_a_search_from_marks_reads_only_what_came_after_but_follows_links_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `agentflux ask` does: marks before the request, the summary's looks after it.
    monkeypatch.setattr(span_store, "_BLOCK", 256)
    folder = tmp_path / "traces"
    folder.mkdir()
    day = folder / "spans-20231115.jsonl"
    old = span("o1", None, "publish agent.requested", "PRODUCER", "gateway", -9, -8,
               trace_id=OLD_TRACE, corr="someone-earlier")  # fmt: skip
    # Another batch consumer's links: a line any search for links parses, if it reads it.
    elsewhere = [{"trace_id": OTHER_TRACE, "span_id": "d1".ljust(16, "0")}]
    batch = span("g1", None, "process agent.tool_called", "CONSUMER", "recorder", -5, -4,
                 trace_id="3" * 32, corr="", links=elsewhere)  # fmt: skip
    day.write_text("".join(json.dumps(s) + "\n" for s in [*noise(30), old, batch]))
    marks = store_marks(folder)
    assert marks == {day.name: (day.stat().st_ino, day.stat().st_size)}
    # The request's consumer links back to a message produced before the marks.
    request = request_trace()
    request[2]["links"] = [{"trace_id": OLD_TRACE, "span_id": "o1".ljust(16, "0")}]
    with day.open("a") as fh:
        fh.write("".join(json.dumps(s) + "\n" for s in [*request, *noise(5)]))
    (folder / "spans-20231116.jsonl").write_text(json.dumps(restarted_trace()[0]) + "\n")

    everything = find_traces(read_spans(folder), CORR)
    parsed = count_parses(monkeypatch)
    found = traces_in(folder, CORR, marks)
    assert found == everything
    assert list(found) == [OLD_TRACE, TRACE, RESTART_TRACE]
    # The request's lines from the marks on (two passes), the linked trace's and the
    # line linking to it (a third pass, the whole store); no noise, before or after.
    assert all(any(i in t for i in (CORR, OLD_TRACE)) for t in parsed)
    assert len(parsed) <= 2 * (len(request) + 1) + 2


def test_a_mark_inside_a_line_or_of_a_replaced_file_loses_nothing_after_it(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "traces"
    folder.mkdir()
    first, second = request_trace()[:2]
    day = folder / "spans-20231115.jsonl"
    day.write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n")
    ino = day.stat().st_ino
    needle = {TRACE.encode()}

    def ids(since: dict[str, tuple[int, int]]) -> list[str]:
        return [s["span_id"] for s in read_matching(folder, needle, since)]

    both = [first["span_id"], second["span_id"]]
    # Inside the first line (a write torn across the mark): that line is skipped whole.
    assert ids({day.name: (ino, 5)}) == [second["span_id"]]
    # At a line's start: from that line on.
    assert ids({day.name: (ino, len(json.dumps(first)) + 1)}) == [second["span_id"]]
    # Shorter than its mark: not the file marked (a cleared store), all of it is new.
    assert ids({day.name: (ino, 10**9)}) == both
    # A file with no mark is new: all of it.
    assert ids({}) == both
    # Replaced by a longer one (another inode): all of it, though the mark is within it.
    new = folder / "new"
    new.write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n" * 100)
    new.replace(day)
    assert day.stat().st_ino != ino
    assert ids({day.name: (ino, 5)}) == both
