"""Kafka producer middleware: contract events out with context and a PRODUCER span.

The topic and key come from the event's contract, the headers from the bound
`FluxContext` (the emitted event's causation id is the id of whatever is being
handled), plus CloudEvents attributes and `traceparent`."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message
from opentelemetry.trace import SpanKind

from interceptors._carriers import KAFKA
from interceptors._context import FluxContext
from interceptors._propagation import cloud_event, emitted_context, inject
from interceptors._spans import sent_attributes
from interceptors._telemetry import Telemetry
from services.runtime.adapters.kafka import Delivered, KafkaProducer
from services.runtime.contracts import ContractRegistry, registry

__all__ = ["EventProducer"]


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
        base = {"messaging.system": "kafka", "messaging.destination.name": topic}
        full = self.telemetry.will_record()
        with self.telemetry.tracer.start_as_current_span(
            f"publish {topic}",
            kind=SpanKind.PRODUCER,
            attributes=self._attributes(topic, key, ctx) if full else base,
        ) as span:
            recording = span.is_recording()
            if recording and not full:
                span.set_attributes(self._attributes(topic, key, ctx))
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
            if recording:
                span.set_attributes(
                    {
                        "messaging.destination.partition.id": str(delivered.partition),
                        "messaging.kafka.offset": delivered.offset,
                    }
                )
            return delivered

    @staticmethod
    def _attributes(topic: str, key: bytes, ctx: FluxContext) -> dict[str, Any]:
        key_text = key.decode("utf-8", "replace")
        return sent_attributes("kafka", topic, ctx, **{"messaging.kafka.message.key": key_text})
