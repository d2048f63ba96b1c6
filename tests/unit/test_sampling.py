"""Sampling (`AGENTFLUX_TRACE_SAMPLE_RATIO`): a ratio of new traces, parent-based, so a
trace is recorded whole or not at all, and a sampled-out message still carries its
context and its (unsampled) trace context to the next hop.

The producer and consumer here are the real interceptors over plain objects: a list
stands in for the topic (no broker is the subject of these tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from agentflux.v1 import events_pb2
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import NonRecordingSpan

from interceptors import EventProducer, Incoming, Outcome, Telemetry
from interceptors._carriers import KAFKA
from interceptors._chain import Inbound, chain
from interceptors._consume import ConsumeCore
from interceptors._context import FluxContext, bind
from services.runtime.adapters.kafka import Delivered
from services.runtime.config import Settings
from services.runtime.contracts import registry


class Kept(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += spans
        return SpanExportResult.SUCCESS


class Topic:
    """Stands in for a Kafka producer: keeps what was produced."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []

    async def produce(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> Delivered:
        self.records.append((topic, value, list(headers or [])))
        return Delivered(topic, 0, len(self.records) - 1)


def telemetry(name: str, ratio: float | None) -> tuple[Telemetry, Kept]:
    kept = Kept()
    return Telemetry.create(name, exporters=[kept], sample_ratio=ratio), kept


async def hop(
    upstream: Telemetry, downstream: Telemetry, topic: Topic
) -> tuple[list[tuple[str, bytes]], FluxContext]:
    """Emits one event upstream and processes it downstream; returns its headers and
    the context the handler saw."""
    producer = EventProducer(topic, upstream, source="test")  # type: ignore[arg-type]
    event = events_pb2.AgentRequested(run_id="run-1", tenant_id="t1", conversation_id="c1")
    with bind(FluxContext.new(correlation_id="corr-1")):
        await producer.emit(event, idempotency_key="run-1:requested")
    name, value, headers = topic.records[-1]
    contracts = registry()
    core = ConsumeCore(
        downstream,
        _Settled(),
        lambda inbound: contracts.event_for_topic(inbound.destination),
        system="kafka",
    )
    seen: list[FluxContext] = []

    async def handler(incoming: Incoming) -> bytes:
        seen.append(incoming.context)
        return b"ok"

    inbound = Inbound(
        transport="kafka",
        destination=name,
        body=value,
        carrier=headers,
        getter=KAFKA,
        position=f"{name}:0:0",
        raw=None,
    )
    assert await core.process(inbound, chain(handler, [])) is Outcome.HANDLED
    return headers, seen[0]


class _Settled:
    async def ack(self, inbound: Inbound) -> None:
        return None

    async def retry(self, inbound: Inbound, error: str) -> bool:
        return False

    async def dead_letter(self, inbound: Inbound, reason: str, error: str) -> None:
        raise AssertionError(f"dead-lettered: {reason}: {error}")

    async def hand_back(self, inbound: Inbound) -> None:
        return None


def sampled_flag(headers: list[tuple[str, bytes]]) -> bool:
    """The W3C traceparent's sampled bit (other flag bits, such as random, aside)."""
    flags = dict(headers)["traceparent"].decode().rsplit("-", 1)[1]
    return bool(int(flags, 16) & 0x01)


def test_a_sampled_out_trace_records_nothing_downstream_but_keeps_its_context() -> None:
    up, up_kept = telemetry("up", 0.0)
    down, down_kept = telemetry("down", 1.0)  # would record a trace of its own
    headers, ctx = asyncio.run(hop(up, down, Topic()))
    up.flush()
    down.flush()
    assert not sampled_flag(headers)  # the decision travels with the message
    assert up_kept.spans == []
    assert down_kept.spans == []  # parent-based: the downstream follows it
    assert ctx.correlation_id == "corr-1"  # context is not tracing: it always travels
    assert ctx.idempotency_key == "run-1:requested"


def test_with_the_sdk_disabled_nothing_is_traced_and_the_context_still_travels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # OTEL_SDK_DISABLED (the standard variable) turns tracing off entirely: no span, not
    # even a non-recording one with ids of its own. The benches' reference for what a
    # sampled-out run still pays for tracing; the services must work without it.
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    up, up_kept = telemetry("up", None)
    down, down_kept = telemetry("down", None)
    with up.tracer.start_as_current_span("root") as span:
        assert not span.get_span_context().is_valid
    headers, ctx = asyncio.run(hop(up, down, Topic()))
    up.flush()
    down.flush()
    assert up_kept.spans == []
    assert down_kept.spans == []
    assert "traceparent" not in dict(headers)
    assert ctx.correlation_id == "corr-1"
    assert ctx.idempotency_key == "run-1:requested"


def test_a_sampled_trace_is_recorded_whole_even_where_the_ratio_is_zero() -> None:
    up, up_kept = telemetry("up", 1.0)
    down, down_kept = telemetry("down", 0.0)
    headers, _ = asyncio.run(hop(up, down, Topic()))
    up.flush()
    down.flush()
    assert sampled_flag(headers)
    (producer,) = up_kept.spans
    (consumer,) = down_kept.spans
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.message.id"]  # the full attributes when recorded
    assert consumer.attributes["agentflux.correlation_id"] == "corr-1"


def test_a_ratio_samples_about_that_share_of_new_traces() -> None:
    tel, kept = telemetry("svc", 0.25)
    n = 4000
    recorded = 0
    for _ in range(n):
        with tel.tracer.start_as_current_span("root") as span:
            recorded += span.is_recording()
            with tel.tracer.start_as_current_span("child") as child:
                assert child.is_recording() == span.is_recording()  # whole or nothing
    assert 0.20 * n < recorded < 0.30 * n
    tel.flush()
    assert len(kept.spans) == 2 * recorded


def test_a_sampled_out_span_is_cheap_and_still_propagates() -> None:
    tel, kept = telemetry("svc", 0.0)
    with tel.tracer.start_as_current_span("root") as span:
        assert isinstance(span, NonRecordingSpan)
        assert span.get_span_context().is_valid  # ids still minted, for propagation
    tel.flush()
    assert kept.spans == []


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_a_ratio_outside_zero_to_one_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match="sample_ratio"):
        Telemetry.create("svc", sample_ratio=ratio)


def test_the_setting_reaches_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFLUX_TRACE_SAMPLE_RATIO", "0.5")
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.trace_sample_ratio == 0.5
    sampler = Telemetry.for_service("planner", settings).provider.sampler
    assert "TraceIdRatioBased{0.5}" in sampler.get_description()
    assert sampler.get_description().startswith("ParentBased")


def test_without_the_setting_the_standard_otel_variables_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AGENTFLUX_TRACE_SAMPLE_RATIO", raising=False)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    sampler = Telemetry.for_service("planner", settings).provider.sampler
    assert sampler.get_description() == "AlwaysOffSampler"


@pytest.mark.parametrize(
    ("ratio", "sampler", "roots"),
    [
        (None, None, True),  # the SDK's default: parent-based, every root recorded
        (1.0, None, True),
        (0.5, None, False),
        (0.0, None, False),
        (None, "always_off", False),
        (None, "always_on", True),
    ],
)
def test_will_record_tells_before_a_span_starts(
    monkeypatch: pytest.MonkeyPatch, ratio: float | None, sampler: str | None, roots: bool
) -> None:
    if sampler is None:
        monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    else:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    tel = Telemetry.create("svc", sample_ratio=ratio)
    assert tel.will_record() is roots
    up, _ = telemetry("up", 1.0)
    with up.tracer.start_as_current_span("sampled parent"):
        assert tel.will_record() is True
    off, _ = telemetry("off", 0.0)
    with off.tracer.start_as_current_span("unsampled parent"):
        assert tel.will_record() is False
    tel.shutdown()


def test_a_span_whose_recording_was_not_foreseen_gets_every_attribute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`always_on` (not parent-based) records the children of a sampled-out parent,
    which `will_record` cannot foresee: such spans get their attributes after they
    start, and end up with the same ones as spans that got them at the start."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")

    def spans(edge_ratio: float, up_ratio: float | None) -> list[ReadableSpan]:
        """The producer's span (if recorded) and the consumer's, of a hop done under an
        edge span; `down` records whatever its parent says (always_on)."""
        edge, _ = telemetry("edge", edge_ratio)
        up, up_kept = telemetry("up", up_ratio)
        down, down_kept = telemetry("down", None)

        async def run() -> None:
            with edge.tracer.start_as_current_span("edge"):
                await hop(up, down, Topic())

        asyncio.run(run())
        up.flush()
        down.flush()
        return [*up_kept.spans, *down_kept.spans]

    producer, consumer = spans(1.0, None)  # both foreseen: their parents are sampled
    late_producer, _ = spans(0.0, None)  # records under a sampled-out edge span
    (late_consumer,) = spans(0.0, 0.0)  # records under a sampled-out producer
    for foreseen, late in ((producer, late_producer), (consumer, late_consumer)):
        assert foreseen.parent is not None
        assert late.parent is not None
        assert foreseen.parent.trace_flags.sampled
        assert not late.parent.trace_flags.sampled
        assert foreseen.attributes is not None
        assert late.attributes is not None
        assert set(foreseen.attributes) == set(late.attributes)
        assert late.attributes["agentflux.correlation_id"] == "corr-1"
        assert late.attributes["messaging.message.id"]
