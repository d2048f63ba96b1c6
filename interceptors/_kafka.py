"""Kafka middleware: contract events out with context and a PRODUCER span, in with
the context restored, a CONSUMER span, dedupe and a dead-letter topic for poison.

Producer side: the topic and key come from the event's contract, the headers from
the bound `FluxContext` (the emitted event's causation id is the id of whatever is
being handled), plus CloudEvents attributes and `traceparent`.

Consumer side: `handle()` decodes by the topic's contract, parents the CONSUMER span
to the producer's span (a batch gets links instead), records how long the record
waited, binds the context for the handler, skips duplicates through the idempotency
guard, and stores the offset once the record is finished (handled, duplicate, or
dead-lettered), so a crash re-delivers and a poison record never blocks a partition."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message as Record
from google.protobuf.message import DecodeError, Message
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from interceptors._carriers import KAFKA
from interceptors._context import FluxContext, bind
from interceptors._idempotency import IdempotencyGuard
from interceptors._propagation import Extracted, cloud_event, emitted_context, extract, inject
from interceptors._spans import (
    QUEUE_WAIT,
    context_attributes,
    messaging_attributes,
    record_rejected,
)
from interceptors._telemetry import Telemetry, serving
from services.runtime.adapters.kafka import Delivered, KafkaConsumer, KafkaProducer
from services.runtime.contracts import ContractRegistry, registry

__all__ = ["EventConsumer", "EventProducer", "Handled", "Incoming"]


def _headers(record: Record) -> list[tuple[str, bytes]]:
    # Consumed records always carry headers as (str, bytes | None) pairs.
    raw: Any = record.headers() or ()
    return [(k, v or b"") for k, v in raw]


class EventProducer:
    """Emits contract events to their topics."""

    def __init__(
        self,
        producer: KafkaProducer,
        telemetry: Telemetry,
        *,
        source: str,
        contracts: ContractRegistry | None = None,
        topic_prefix: str = "",
    ) -> None:
        self.producer = producer
        self.telemetry = telemetry
        self.source = source
        self.contracts = contracts or registry()
        self.topic_prefix = topic_prefix

    async def emit(self, event: Message, *, idempotency_key: str = "") -> Delivered:
        """Produces `event` and waits for the broker's ack; returns where it landed.

        `idempotency_key` should be deterministic for the effect (say run, step and
        tool call), so a retried handler's re-emission is recognised downstream."""
        contract = self.contracts.event(event)
        topic = self.topic_prefix + contract.topic
        key = contract.key(event)
        ctx = emitted_context(event, idempotency_key)
        attrs = messaging_attributes(
            "kafka", topic, "send", ctx.event_id, **{"messaging.kafka.message.key": key.decode()}
        )
        attrs.update(context_attributes(ctx))
        with self.telemetry.tracer.start_as_current_span(
            f"publish {topic}", kind=SpanKind.PRODUCER, attributes=attrs
        ) as span:
            headers: list[tuple[str, bytes]] = []
            inject(
                KAFKA,
                headers,
                "kafka",
                ctx,
                cloud_event=cloud_event(contract.type_name, self.source),
            )
            delivered = await self.producer.produce(
                topic, event.SerializeToString(), key=key, headers=headers
            )
            span.set_attribute("messaging.destination.partition.id", str(delivered.partition))
            span.set_attribute("messaging.kafka.offset", delivered.offset)
            return delivered


@dataclass(frozen=True, slots=True)
class Incoming:
    """A decoded event being handled, with its context and the raw record."""

    event: Message
    context: FluxContext
    record: Record


class Handled(enum.Enum):
    """What became of a record."""

    HANDLED = "handled"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"


Handler = Callable[[Incoming], Awaitable[bytes | None]]
"""Handles one event; may return an outcome the idempotency guard keeps."""


class EventConsumer:
    """Runs handlers on records of a `KafkaConsumer` with context, spans and dedupe."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        telemetry: Telemetry,
        *,
        group: str,
        dead_letters: KafkaProducer,
        guard: IdempotencyGuard | None = None,
        contracts: ContractRegistry | None = None,
        topic_prefix: str = "",
        attempts: int = 3,
    ) -> None:
        self.consumer = consumer
        self.telemetry = telemetry
        self.group = group
        self.dead_letters = dead_letters
        self.guard = guard
        self.contracts = contracts or registry()
        self.topic_prefix = topic_prefix
        self.attempts = attempts
        self.counts: dict[Handled, int] = dict.fromkeys(Handled, 0)

    def _contract_topic(self, topic: str) -> str:
        return topic[len(self.topic_prefix) :] if topic.startswith(self.topic_prefix) else topic

    async def handle(self, record: Record, handler: Handler) -> Handled:
        """Handles one record (see the module doc); stores its offset when finished."""
        topic = record.topic() or ""
        got = extract(KAFKA, _headers(record), "kafka", strict=False)
        attrs = self._attributes(record, got)
        with (
            serving(self.telemetry),
            self.telemetry.tracer.start_as_current_span(
                f"process {topic}",
                context=got.trace_parent,
                kind=SpanKind.CONSUMER,
                attributes=attrs,
            ) as span,
        ):
            record_rejected(span, got.rejected)
            outcome = await self._handle(record, got, handler, span)
        self.counts[outcome] += 1
        self.consumer.store(record)
        return outcome

    async def _handle(self, record: Record, got: Extracted, handler: Handler, span: Any) -> Handled:
        try:
            contract = self.contracts.event_for_topic(self._contract_topic(record.topic() or ""))
            event = contract.message_class.FromString(record.value() or b"")
        except (KeyError, DecodeError) as exc:
            return await self._dead_letter(record, f"undecodable: {exc}", span)
        ctx = got.context
        dedupe_key = ctx.idempotency_key or ctx.event_id
        claim = None
        if self.guard is not None:
            claim = await self.guard.settle(dedupe_key)
            # Still pending: another handler holds a live lease. A record cannot be handed
            # back alone, and storing its offset would lose it if that handler dies, so
            # wait on until the claim is decided (it finishes, or its lease expires).
            while claim.pending:
                claim = await self.guard.settle(dedupe_key)
        if claim is not None and not claim.new:
            span.set_attribute("agentflux.duplicate", True)
            return Handled.DUPLICATE
        error: Exception | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                with bind(ctx):
                    result = await handler(Incoming(event, ctx, record))
            except Exception as exc:  # the handler's failure is recorded, never fatal here
                error = exc
                span.record_exception(exc, attributes={"agentflux.attempt": attempt})
                if attempt < self.attempts:  # no pause before dead-lettering
                    await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
                continue
            if self.guard and claim is not None:
                await self.guard.complete(dedupe_key, result or b"")
            return Handled.HANDLED
        if self.guard and claim is not None:
            await self.guard.release(dedupe_key)
        return await self._dead_letter(record, f"handler failed: {error!r}", span)

    async def _dead_letter(self, record: Record, reason: str, span: Any) -> Handled:
        span.set_status(Status(StatusCode.ERROR, reason))
        headers = [
            *_headers(record),
            ("dlq_topic", (record.topic() or "").encode()),
            ("dlq_partition", str(record.partition()).encode()),
            ("dlq_offset", str(record.offset()).encode()),
            ("dlq_group", self.group.encode()),
            ("dlq_error", reason[:1000].encode()),
        ]
        dlq = self.topic_prefix + self.contracts.dead_letter_topic
        await self.dead_letters.produce(
            dlq, record.value() or b"", key=record.key(), headers=headers
        )
        return Handled.DEAD_LETTERED

    def _attributes(self, record: Record, got: Extracted) -> dict[str, Any]:
        _, created_ms = record.timestamp()
        wait = max(0.0, time.time() * 1000 - created_ms) if created_ms > 0 else None
        attrs = messaging_attributes(
            "kafka",
            record.topic() or "",
            "process",
            got.context.event_id,
            **{
                "messaging.destination.partition.id": str(record.partition()),
                "messaging.kafka.offset": record.offset(),
                "messaging.kafka.message.key": (record.key() or b"").decode("utf-8", "replace"),
                "messaging.consumer.group.name": self.group,
                QUEUE_WAIT: wait,
            },
        )
        attrs.update(context_attributes(got.context))
        return attrs

    async def handle_batch(self, records: Sequence[Record], handler: Handler) -> list[Handled]:
        """Handles records under one CONSUMER span linked to each producer's span."""
        if not records:
            return []
        extracted = [extract(KAFKA, _headers(r), "kafka", strict=False) for r in records]
        links = [
            Link(sc)
            for got in extracted
            if (sc := trace.get_current_span(got.trace_parent).get_span_context()).is_valid
        ]
        topic = records[0].topic() or ""
        with self.telemetry.tracer.start_as_current_span(
            f"process {topic}",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                **messaging_attributes("kafka", topic, "process", ""),
                "messaging.batch.message_count": len(records),
                "messaging.consumer.group.name": self.group,
            },
        ):
            return [await self.handle(r, handler) for r in records]

    async def run(self, handler: Handler, stop: asyncio.Event, *, max_records: int = 100) -> None:
        """Consumes and handles until `stop` is set, committing after each batch."""
        while not stop.is_set():
            for record in await self.consumer.consume(max_records, timeout=0.25):
                await self.handle(record, handler)
            await self.consumer.commit()
