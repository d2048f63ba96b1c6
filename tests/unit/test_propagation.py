"""Extract and inject on every transport: round trips, CloudEvents, lenient and strict modes."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.propagate import get_global_textmap, set_global_textmap
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanContext

from interceptors._carriers import AMQP, CONTEXT_KEYS, GRPC, KAFKA
from interceptors._context import FluxContext, check_id
from interceptors._errors import ContextValueError
from interceptors._propagation import Extracted, cloud_event, extract, inject, rfc3339
from interceptors._telemetry import Telemetry

MESSAGES = ("kafka", "amqp")
TRANSPORTS = ("kafka", "amqp", "grpc")
CARRIERS: dict[str, Any] = {"kafka": KAFKA, "amqp": AMQP, "grpc": GRPC}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


@pytest.fixture(scope="module")
def telemetry() -> Iterator[Telemetry]:
    tel = Telemetry.create("test-propagation")
    yield tel
    tel.shutdown()


def new_carrier(transport: str) -> Any:
    return {} if transport == "amqp" else []


def as_dict(carrier: Any) -> dict[str, str]:
    """Header name -> text value, whatever the transport's shape."""
    pairs = carrier.items() if isinstance(carrier, dict) else carrier
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in pairs}


def put(transport: str, carrier: Any, key: str, value: str) -> None:
    """Overwrites one header the way a (possibly hostile) sender would."""
    CARRIERS[transport].set(carrier, key, value)


def key_of(field: str, transport: str) -> str:
    return next(getattr(k, transport) for k in CONTEXT_KEYS if k.field == field)


def full_context() -> FluxContext:
    return FluxContext(
        correlation_id="corr-5d0c3b1a9e8f",
        event_id="evt-1",
        causation_id="evt-0",
        idempotency_key="run-7:step-2:call-1",
        tenant_id="acme-eu",
        run_id="run-7",
        deadline=round(time.time() + 30, 3),
    )


def parent_span(parent: Context) -> SpanContext:
    return trace.get_current_span(parent).get_span_context()


def sent(telemetry: Telemetry, transport: str, ctx: FluxContext) -> tuple[Any, SpanContext]:
    """Headers as a producer writes them inside its span, and that span's context."""
    carrier = new_carrier(transport)
    with telemetry.tracer.start_as_current_span("publish") as span:
        ce = cloud_event("agentflux.v1.RunRequested", "/agentflux/gateway")
        inject(
            CARRIERS[transport],
            carrier,
            transport,
            ctx,
            cloud_event=None if transport == "grpc" else ce,
        )
    return carrier, span.get_span_context()


def received(transport: str, carrier: Any) -> Extracted:
    return extract(CARRIERS[transport], carrier, transport, strict=transport == "grpc")


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_round_trip_preserves_every_field_and_the_trace(
    telemetry: Telemetry, transport: str
) -> None:
    ctx = full_context()
    carrier, span = sent(telemetry, transport, ctx)
    got = received(transport, carrier)

    assert got.rejected == []
    expected = ctx if transport != "grpc" else ctx.with_(deadline=None)  # grpc-timeout
    assert got.context == expected
    parent = parent_span(got.trace_parent)
    assert parent.is_valid
    assert parent.is_remote
    assert parent.trace_id == span.trace_id
    assert parent.span_id == span.span_id
    assert parent.trace_flags.sampled


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_field_travels_under_its_table_key(telemetry: Telemetry, transport: str) -> None:
    ctx = full_context()
    headers = as_dict(sent(telemetry, transport, ctx)[0])
    for key in CONTEXT_KEYS:
        name = getattr(key, transport)
        if key.field == "deadline":
            if transport == "grpc":
                assert name not in headers  # gRPC sends the remaining time itself
            else:
                assert headers[name] == str(int(ctx.deadline * 1000))  # type: ignore[operator]
        else:
            assert headers[name] == getattr(ctx, key.field)
    tp = headers["traceparent"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", tp)


def test_grpc_metadata_keys_are_valid_lower_case_ascii(telemetry: Telemetry) -> None:
    metadata, _ = sent(telemetry, "grpc", full_context())
    for key, value in metadata:
        assert re.fullmatch(r"[0-9a-z_.\-]+", key)
        assert not key.endswith("-bin")
        assert isinstance(value, str)
        assert value.isascii()


def test_amqp_headers_may_arrive_as_bytes(telemetry: Telemetry) -> None:
    ctx = full_context()
    headers, span = sent(telemetry, "amqp", ctx)
    as_bytes = {k: v.encode() for k, v in headers.items()}
    got = extract(AMQP, as_bytes, "amqp", strict=False)
    assert got.rejected == []
    assert got.context == ctx
    assert parent_span(got.trace_parent).span_id == span.span_id


def test_kafka_last_header_wins_and_empty_values_are_absent() -> None:
    headers = [
        ("ce_correlationid", b"first"),
        ("ce_correlationid", b"second"),
        ("ce_tenantid", b""),
    ]
    got = extract(KAFKA, headers, "kafka", strict=False)
    assert got.context.correlation_id == "second"
    assert got.context.tenant_id == ""
    assert got.rejected == []


def test_inject_replaces_a_stale_header_instead_of_duplicating_it() -> None:
    headers: list[tuple[str, bytes]] = [("ce_correlationid", b"stale"), ("other", b"kept")]
    inject(KAFKA, headers, "kafka", FluxContext.new())
    names = [k for k, _ in headers]
    assert names.count("ce_correlationid") == 1
    assert ("ce_correlationid", b"stale") not in headers
    assert ("other", b"kept") in headers


# --- CloudEvents -----------------------------------------------------------------------


@pytest.mark.parametrize("transport", MESSAGES)
def test_messages_carry_cloud_events_attributes(telemetry: Telemetry, transport: str) -> None:
    ctx = full_context()
    before = time.time()
    carrier, _ = sent(telemetry, transport, ctx)
    headers = as_dict(carrier)

    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_id"] == ctx.event_id
    assert headers["ce_type"] == "agentflux.v1.RunRequested"
    assert headers["ce_source"] == "/agentflux/gateway"
    assert headers["content-type"] == "application/protobuf"
    ce_time = headers["ce_time"]
    assert RFC3339.fullmatch(ce_time), ce_time
    stamp = datetime.fromisoformat(ce_time)
    assert stamp.tzinfo is not None
    assert stamp.utcoffset() == UTC.utcoffset(None)
    assert before - 1 <= stamp.timestamp() <= time.time() + 1

    got = received(transport, carrier)
    assert got.attributes["ce_type"] == "agentflux.v1.RunRequested"
    assert got.attributes["ce_source"] == "/agentflux/gateway"
    assert got.attributes["ce_specversion"] == "1.0"
    assert got.attributes["ce_time"] == ce_time


def test_grpc_metadata_carries_no_cloud_events_attributes(telemetry: Telemetry) -> None:
    headers = as_dict(sent(telemetry, "grpc", full_context())[0])
    assert not [k for k in headers if k.startswith("ce_")]


# --- edges: missing ids ------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_missing_ids_are_created_here(transport: str) -> None:
    first = received(transport, new_carrier(transport))
    second = received(transport, new_carrier(transport))
    for got in (first, second):
        assert got.rejected == []
        check_id("correlation", got.context.correlation_id)
        check_id("event", got.context.event_id)
        assert got.context.correlation_id != got.context.event_id
        assert got.context.causation_id == ""
        assert got.context.deadline is None
        assert not parent_span(got.trace_parent).is_valid
    assert first.context.correlation_id != second.context.correlation_id
    assert first.context.event_id != second.context.event_id


@pytest.mark.parametrize("transport", MESSAGES)
def test_a_missing_event_id_alone_is_created(telemetry: Telemetry, transport: str) -> None:
    ctx = full_context()
    carrier, _ = sent(telemetry, transport, ctx)
    carrier = (
        {k: v for k, v in carrier.items() if k != "ce_id"}
        if isinstance(carrier, dict)
        else [(k, v) for k, v in carrier if k != "ce_id"]
    )
    got = received(transport, carrier)
    assert got.context.correlation_id == ctx.correlation_id
    assert got.context.event_id not in ("", ctx.event_id)


# --- lenient mode (messages) -------------------------------------------------------------

OVERLONG = "c" * 300
BROKEN_TRACEPARENTS = [
    "not-a-traceparent",
    f"00-{TRACE_ID}-{SPAN_ID}",  # no flags
    f"ff-{TRACE_ID}-{SPAN_ID}-01",  # version ff is forbidden
    f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",
    f"00-{'0' * 32}-{SPAN_ID}-01",
    f"00-{TRACE_ID}-{SPAN_ID}-01-extra",  # version 00 has exactly four fields
    f"01-{TRACE_ID}-{SPAN_ID}-01extra",  # a later version's extra fields follow a `-`
    f"01-{TRACE_ID}-{SPAN_ID}",  # ... after the four every version has
    f" 00-{TRACE_ID}-{SPAN_ID}-01 ",
]


def _lenient_cases() -> list[Any]:
    cases: list[Any] = []
    for transport in MESSAGES:
        bad = [
            ("correlation_id", key_of("correlation_id", transport), OVERLONG),
            ("correlation_id", key_of("correlation_id", transport), "corr\r\nx-evil: 1"),
            ("tenant_id", key_of("tenant_id", transport), "acme corp"),
            ("tenant_id", key_of("tenant_id", transport), "acme:other-tenant"),
            ("causation_id", key_of("causation_id", transport), "evt\n0"),
            ("idempotency_key", key_of("idempotency_key", transport), "k" * 129),
            ("run_id", key_of("run_id", transport), "run/7"),
            ("event_id", key_of("event_id", transport), "évt-1"),
            ("deadline", key_of("deadline", transport), "soon"),
            ("deadline", key_of("deadline", transport), "-5"),
            ("deadline", key_of("deadline", transport), "1_700_000_000_000"),
            ("deadline", key_of("deadline", transport), "\u0661\u0667" + "\u0660" * 11),
            ("deadline", key_of("deadline", transport), "9" * 400),  # overflows a float
            *[("trace", "traceparent", tp) for tp in BROKEN_TRACEPARENTS],
            ("tracestate", "tracestate", ",".join(f"v{i:02d}=" + "x" * 20 for i in range(25))),
        ]
        cases += [
            pytest.param(transport, field, key, value, id=f"{transport}-{key}-{value[:12]!r}")
            for field, key, value in bad
        ]
    return cases


@pytest.mark.parametrize(("transport", "field", "key", "value"), _lenient_cases())
def test_lenient_mode_drops_replaces_and_reports_a_bad_value(
    telemetry: Telemetry, transport: str, field: str, key: str, value: str
) -> None:
    ctx = full_context()
    carrier, span = sent(telemetry, transport, ctx)
    put(transport, carrier, key, value)

    got = extract(CARRIERS[transport], carrier, transport, strict=False)

    # Reported, naming the header.
    assert [bad.key for bad in got.rejected] == [key]
    assert all(isinstance(bad, ContextValueError) for bad in got.rejected)

    # Dropped and replaced; everything else arrives intact.
    parent = parent_span(got.trace_parent)
    expected = ctx
    if field in ("correlation_id", "event_id"):
        fresh = getattr(got.context, field)
        assert fresh != value
        assert fresh != getattr(ctx, field)
        check_id(key, fresh)
        expected = ctx.with_(**{field: fresh})
    elif field == "deadline":
        expected = ctx.with_(deadline=None)
    elif field not in ("trace", "tracestate"):
        expected = ctx.with_(**{field: ""})
    assert got.context == expected
    if field == "trace":
        assert not parent.is_valid  # a fresh trace starts here
    else:
        assert parent.trace_id == span.trace_id
        assert parent.span_id == span.span_id

    # Never propagated: what this hop sends on does not contain the bad value.
    out = new_carrier(transport)
    with telemetry.tracer.start_as_current_span("process", context=got.trace_parent) as hop:
        inject(CARRIERS[transport], out, transport, got.context.child("evt-2"))
    forwarded = as_dict(out)
    assert value not in forwarded.values()
    if len(value) > 8:  # short ones like "-5" occur by chance inside timestamps and ids
        assert not any(value in v for v in forwarded.values())
    if field == "trace":
        assert TRACE_ID not in forwarded["traceparent"]
        assert hop.get_span_context().trace_id != int(TRACE_ID, 16)
    if field == "tracestate":
        assert "tracestate" not in forwarded


@pytest.mark.parametrize("transport", MESSAGES)
def test_lenient_mode_reports_every_bad_value_at_once(transport: str) -> None:
    carrier = new_carrier(transport)
    put(transport, carrier, key_of("correlation_id", transport), OVERLONG)
    put(transport, carrier, key_of("tenant_id", transport), "acme corp")
    put(transport, carrier, key_of("deadline", transport), "soon")
    put(transport, carrier, "traceparent", "garbage")

    got = extract(CARRIERS[transport], carrier, transport, strict=False)

    assert sorted(bad.key for bad in got.rejected) == sorted(
        [
            key_of("correlation_id", transport),
            key_of("tenant_id", transport),
            key_of("deadline", transport),
            "traceparent",
        ]
    )
    check_id("correlation", got.context.correlation_id)
    assert (got.context.tenant_id, got.context.deadline) == ("", None)
    assert not parent_span(got.trace_parent).is_valid


# --- strict mode (gRPC) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("x-correlation-id", "c" * 300),
        ("x-correlation-id", "has space"),
        ("x-tenant-id", "acme corp"),
        ("x-request-id", "r" * 257),
        ("x-causation-id", "évt"),
        ("idempotency-key", "k" * 129),
        ("x-run-id", "-run"),
        ("traceparent", f"00-{TRACE_ID}-{SPAN_ID}"),
        ("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01-extra"),
        ("tracestate", "a=" + "x" * 600),
    ],
)
def test_strict_mode_raises_naming_the_metadata_key(
    telemetry: Telemetry, key: str, value: str
) -> None:
    metadata, _ = sent(telemetry, "grpc", full_context())
    put("grpc", metadata, key, value)
    with pytest.raises(ContextValueError) as caught:
        extract(GRPC, metadata, "grpc", strict=True)
    assert caught.value.key == key
    assert key in str(caught.value)


def test_strict_mode_ignores_binary_metadata() -> None:
    got = extract(GRPC, [("x-correlation-id", b"\x00\xff")], "grpc", strict=True)
    check_id("correlation", got.context.correlation_id)


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"tenant_id": "acme corp"}, "tenant_id"),
        ({"run_id": "run\n1"}, "run_id"),
    ],
)
def test_an_emitted_event_with_a_malformed_payload_id_is_refused(
    fields: dict[str, str], key: str
) -> None:
    from agentflux.v1 import events_pb2

    from interceptors._errors import ContextValueError
    from interceptors._propagation import emitted_context

    event = events_pb2.AgentRequested(conversation_id="conv-1", **fields)
    with pytest.raises(ContextValueError) as caught:
        emitted_context(event)
    assert caught.value.key == key


def test_a_malformed_idempotency_key_is_refused_at_the_producer() -> None:
    from agentflux.v1 import events_pb2

    from interceptors._errors import ContextValueError
    from interceptors._propagation import emitted_context

    with pytest.raises(ContextValueError):
        emitted_context(events_pb2.AgentRequested(conversation_id="c"), "key with spaces")


# --- what the standards allow other producers to send -----------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "event_id",
    ["orders/2026/7", "urn:uuid:5d3c", "a b", "x" * 256, "{json}"],
)
def test_any_printable_event_id_is_kept_as_sent(
    telemetry: Telemetry, transport: str, event_id: str
) -> None:
    ctx = full_context()
    carrier, _ = sent(telemetry, transport, ctx)
    put(transport, carrier, key_of("event_id", transport), event_id)
    put(transport, carrier, key_of("causation_id", transport), event_id)
    got = received(transport, carrier)
    assert got.rejected == []
    assert got.event_id_given
    assert got.context.event_id == event_id
    assert got.context.causation_id == event_id


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "traceparent",
    [
        f"01-{TRACE_ID}-{SPAN_ID}-01",
        f"01-{TRACE_ID}-{SPAN_ID}-01-what-version-1-adds",
        f"cc-{TRACE_ID}-{SPAN_ID}-00-x",
    ],
)
def test_a_later_traceparent_version_continues_the_trace(
    telemetry: Telemetry, transport: str, traceparent: str
) -> None:
    carrier, _ = sent(telemetry, transport, full_context())
    put(transport, carrier, "traceparent", traceparent)
    got = received(transport, carrier)
    assert got.rejected == []
    parent = parent_span(got.trace_parent)
    assert format(parent.trace_id, "032x") == TRACE_ID
    assert format(parent.span_id, "016x") == SPAN_ID


# --- the fast paths: the same results as the library's own ---------------------------


def test_rfc3339_is_datetimes_isoformat_to_the_microsecond() -> None:
    rng = random.Random(3339)
    stamps = [0.0, 0.9999995, 1.0000005, -0.0000005, 1e9 + 0.5, 1799999999.9999995]
    stamps += [rng.uniform(-4e9, 4e9) for _ in range(3000)]
    now = time.time()
    stamps += [now + rng.uniform(-3, 3) for _ in range(3000)]  # the cached second, and not
    stamps += [round(rng.uniform(0, 2e9), 6) + rng.choice((5e-7, -5e-7)) for _ in range(3000)]
    for ts in stamps:
        expected = datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")
        assert rfc3339(ts) == expected.replace("+00:00", "Z"), ts
    assert RFC3339.fullmatch(rfc3339(now))


TRACESTATE = "vendor1=opaque,vendor2=x-1"


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"},
        {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00", "tracestate": TRACESTATE},
        {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-03", "tracestate": ""},
        {"traceparent": f"01-{TRACE_ID}-{SPAN_ID}-01-what-version-1-adds"},
        {},
    ],
)
def test_the_parent_is_what_the_default_propagator_extracts(headers: dict[str, str]) -> None:
    carrier = [(k, v.encode()) for k, v in headers.items()]
    got = extract(KAFKA, carrier, "kafka", strict=False).trace_parent
    want = get_global_textmap().extract(dict(headers))
    assert parent_span(got) == parent_span(want)
    assert parent_span(got).trace_state == parent_span(want).trace_state


def test_baggage_and_another_propagator_go_through_the_propagator() -> None:
    carrier = [
        ("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01".encode()),
        ("baggage", b"plan=gold,region=eu"),
    ]
    got = extract(KAFKA, carrier, "kafka", strict=False).trace_parent
    assert baggage.get_all(got) == {"plan": "gold", "region": "eu"}
    assert format(parent_span(got).trace_id, "032x") == TRACE_ID

    class Only(TextMapPropagator):
        """A propagator of its own: every extract gives the same fixed parent."""

        parent = SpanContext(0xABC, 0xDEF, is_remote=True)

        def extract(
            self, carrier: Any, context: Context | None = None, getter: Any = None
        ) -> Context:
            return trace.set_span_in_context(trace.NonRecordingSpan(self.parent), Context())

        def inject(self, carrier: Any, context: Context | None = None, setter: Any = None) -> None:
            pass

        @property
        def fields(self) -> set[str]:
            return set()

    before = get_global_textmap()
    set_global_textmap(Only())
    try:
        got = extract(KAFKA, carrier[:1], "kafka", strict=False).trace_parent
    finally:
        set_global_textmap(before)
    assert parent_span(got) == Only.parent
