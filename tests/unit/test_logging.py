"""Logs stamped with the context: what an operator reads in the lines a service prints.

Each test configures logging to a string stream and reads the lines back, as they would
appear in a terminal or a log pipeline; the ids must be exactly those of the bound
context and of the current span of a real tracer provider."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, Tracer, format_span_id, format_trace_id

from interceptors._context import FluxContext, bind
from interceptors._logging import CONTEXT_FIELDS, ContextFilter, configure_logging

CTX = FluxContext(
    correlation_id="corr-42",
    event_id="evt-7",
    causation_id="cause-3",
    tenant_id="acme",
    run_id="run-9",
)
# A library's logger, not the service's: the handler stamps every logger's records.
log = logging.getLogger("some.library")


@pytest.fixture
def tracer() -> Iterator[Tracer]:
    provider = TracerProvider()
    yield provider.get_tracer("test")
    provider.shutdown()


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def json_lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def ids_of(span: Span) -> tuple[str, str]:
    context = span.get_span_context()
    return format_trace_id(context.trace_id), format_span_id(context.span_id)


def test_a_record_carries_the_bound_context_and_the_current_span(tracer: Tracer) -> None:
    out = io.StringIO()
    configure_logging("planner", json=True, stream=out)
    before = datetime.now(UTC)
    with bind(CTX), tracer.start_as_current_span("plan") as span:
        log.info("planning %s", "step 1")
    after = datetime.now(UTC)
    trace_id, span_id = ids_of(span)

    (entry,) = json_lines(out)
    assert entry == {
        "timestamp": entry["timestamp"],
        "level": "INFO",
        "service": "planner",
        "logger": "some.library",
        "message": "planning step 1",
        "correlation_id": "corr-42",
        "causation_id": "cause-3",
        "run_id": "run-9",
        "tenant_id": "acme",
        "trace_id": trace_id,
        "span_id": span_id,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["timestamp"])
    logged = datetime.strptime(entry["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert before - timedelta(milliseconds=1) <= logged <= after  # UTC, to the millisecond
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
    assert re.fullmatch(r"[0-9a-f]{16}", span_id)


def test_the_text_line_names_the_ids_that_lead_to_the_trace(tracer: Tracer) -> None:
    out = io.StringIO()
    configure_logging("planner", stream=out)
    with bind(CTX), tracer.start_as_current_span("plan") as span:
        log.warning("slow tool")
    trace_id, _ = ids_of(span)

    line = out.getvalue()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    expected = f"WARNING planner [corr=corr-42 run=run-9 tenant=acme trace={trace_id}]"
    assert re.fullmatch(f"{stamp} {re.escape(expected)} some.library: slow tool\n", line)


def test_outside_any_context_the_fields_exist_and_are_empty() -> None:
    out = io.StringIO()
    configure_logging("planner", json=True, stream=out)
    log.info("idle")
    (entry,) = json_lines(out)
    assert {key: entry[key] for key in CONTEXT_FIELDS} == dict.fromkeys(CONTEXT_FIELDS, "")

    text = io.StringIO()
    configure_logging("planner", stream=text)
    log.info("idle")
    assert text.getvalue().endswith("Z INFO planner some.library: idle\n")  # no brackets


def test_a_context_without_some_ids_leaves_them_out_of_the_text_line() -> None:
    out = io.StringIO()
    configure_logging("planner", stream=out)
    with bind(FluxContext(correlation_id="corr-1")):
        log.info("started")
    assert out.getvalue().endswith("Z INFO planner [corr=corr-1] some.library: started\n")


def test_values_passed_with_extra_win(tracer: Tracer) -> None:
    out = io.StringIO()
    configure_logging("planner", json=True, stream=out)
    with bind(CTX), tracer.start_as_current_span("plan") as span:
        log.info("for another run", extra={"run_id": "run-other", "trace_id": "t" * 32})
    _, span_id = ids_of(span)

    (entry,) = json_lines(out)
    assert entry["run_id"] == "run-other"
    assert entry["trace_id"] == "t" * 32
    assert entry["correlation_id"] == "corr-42"  # the fields not given still stamped
    assert entry["span_id"] == span_id


def test_configuring_twice_prints_each_line_once_to_the_new_stream() -> None:
    others = logging.getLogger().handlers[:]  # pytest's own, here
    first, second = io.StringIO(), io.StringIO()
    configure_logging("planner", stream=first)
    configure_logging("planner", json=True, stream=second)
    log.info("once")

    assert first.getvalue() == ""
    assert [e["message"] for e in json_lines(second)] == ["once"]
    root = logging.getLogger()
    assert sum(isinstance(f, ContextFilter) for h in root.handlers for f in h.filters) == 1
    assert all(h in root.handlers for h in others)  # handlers installed by others stay


def test_the_level_applies_to_every_logger() -> None:
    out = io.StringIO()
    configure_logging("planner", "WARNING", stream=out)
    log.info("hidden")
    log.error("shown")
    assert [e.split(": ", 1)[1] for e in out.getvalue().splitlines()] == ["shown"]


def test_an_exception_log_carries_its_traceback() -> None:
    out = io.StringIO()
    configure_logging("planner", json=True, stream=out)

    def fail() -> None:
        raise ValueError("tool answered nonsense")

    with bind(CTX):
        try:
            fail()
        except ValueError:
            log.exception("tool failed")

    (entry,) = json_lines(out)  # the multi-line traceback stays inside one JSON line
    assert entry["message"] == "tool failed"
    assert entry["correlation_id"] == "corr-42"
    assert entry["exc_info"].startswith("Traceback (most recent call last):")
    assert "in fail" in entry["exc_info"]
    assert entry["exc_info"].endswith("ValueError: tool answered nonsense")


def test_the_text_line_of_an_exception_is_followed_by_its_traceback() -> None:
    out = io.StringIO()
    configure_logging("planner", stream=out)
    try:
        raise KeyError("run-9")
    except KeyError:
        log.exception("lookup failed")
    first, *rest = out.getvalue().splitlines()
    assert first.endswith("some.library: lookup failed")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "KeyError: 'run-9'"


async def test_tasks_log_with_the_context_they_were_started_in(tracer: Tracer) -> None:
    out = io.StringIO()
    configure_logging("planner", json=True, stream=out)
    go = asyncio.Event()

    async def work(name: str) -> None:
        await go.wait()  # logs after its starter has left the bound block
        log.info(name)

    other = CTX.with_(correlation_id="corr-other", run_id="run-other")
    with bind(CTX), tracer.start_as_current_span("a") as span_a:
        a = asyncio.create_task(work("a"))
    with bind(other), tracer.start_as_current_span("b") as span_b:
        b = asyncio.create_task(work("b"))
    unbound = asyncio.create_task(work("unbound"))
    go.set()
    await asyncio.gather(a, b, unbound)

    entries = {e["message"]: e for e in json_lines(out)}
    assert (entries["a"]["correlation_id"], entries["a"]["run_id"]) == ("corr-42", "run-9")
    assert (entries["a"]["trace_id"], entries["a"]["span_id"]) == ids_of(span_a)
    assert (entries["b"]["correlation_id"], entries["b"]["run_id"]) == ("corr-other", "run-other")
    assert (entries["b"]["trace_id"], entries["b"]["span_id"]) == ids_of(span_b)
    assert {key: entries["unbound"][key] for key in CONTEXT_FIELDS} == dict.fromkeys(
        CONTEXT_FIELDS, ""
    )


def test_the_filter_stamps_records_of_a_handler_it_is_added_to() -> None:
    """For services that keep their own handlers: the filter alone does the stamping."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("tests.own_handler")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with bind(CTX):
            logger.warning("kept")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    (record,) = records
    assert {key: record.__dict__[key] for key in CONTEXT_FIELDS} == {
        "correlation_id": "corr-42",
        "causation_id": "cause-3",
        "run_id": "run-9",
        "tenant_id": "acme",
        "trace_id": "",
        "span_id": "",
    }
