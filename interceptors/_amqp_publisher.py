"""RabbitMQ publisher middleware: contract tasks out with context, the run's priority
and a PRODUCER span; the broker's confirm is awaited, so a returned publish raises."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message
from opentelemetry.trace import SpanKind

from interceptors._carriers import AMQP
from interceptors._context import FluxContext
from interceptors._propagation import cloud_event, emitted_context, inject
from interceptors._spans import sent_attributes
from interceptors._telemetry import Telemetry
from services.runtime.adapters.rabbitmq import RabbitConnection
from services.runtime.contracts import ContractRegistry, registry

__all__ = ["TaskPublisher"]


class TaskPublisher:
    """Publishes contract tasks to their exchange with the priority of their run."""

    def __init__(
        self,
        rabbit: RabbitConnection,
        telemetry: Telemetry,
        *,
        source: str,
        contracts: ContractRegistry | None = None,
        name_prefix: str = "",
    ) -> None:
        self.rabbit = rabbit
        self.telemetry = telemetry
        self.source = source
        self.contracts = contracts or registry()
        self.name_prefix = name_prefix

    async def publish(
        self,
        task: Message,
        *,
        idempotency_key: str = "",
        queue: str | None = None,
        expiration_s: float | None = None,
    ) -> FluxContext:
        """Publishes `task` and waits for the broker's confirm; returns its context.

        `queue` sends it to another queue of its topology (through the default exchange,
        e.g. the approval queue), with `expiration_s` as its time to live there."""
        contract = self.contracts.task(task)
        exchange = self.name_prefix + contract.exchange
        if queue is not None:
            exchange = ""  # the default exchange routes by queue name
        queue = queue or self.name_prefix + contract.queue
        raw_priority = getattr(task, "priority", 0)
        priority = self.contracts.amqp_priority(raw_priority)
        ctx = emitted_context(task, idempotency_key)
        # The full attributes at the start for a span that will record, else only if it
        # does (see `Telemetry.will_record`).
        base = {"messaging.system": "rabbitmq", "messaging.destination.name": queue}
        full = self.telemetry.will_record()
        with self.telemetry.tracer.start_as_current_span(
            f"publish {queue}",
            kind=SpanKind.PRODUCER,
            attributes=self._attributes(queue, priority, ctx) if full else base,
        ) as span:
            if not full and span.is_recording():
                span.set_attributes(self._attributes(queue, priority, ctx))
            headers: dict[str, Any] = {}
            inject(
                AMQP, headers, "amqp", ctx, cloud_event=cloud_event(contract.type_name, self.source)
            )
            await self.rabbit.publish(
                exchange,
                queue,
                task.SerializeToString(),
                headers=headers,
                priority=priority,
                message_id=ctx.event_id,
                message_type=contract.type_name,
                expiration_s=expiration_s,
            )
        return ctx

    @staticmethod
    def _attributes(queue: str, priority: int, ctx: FluxContext) -> dict[str, Any]:
        extra = {
            "messaging.rabbitmq.destination.routing_key": queue,
            "agentflux.priority": priority,
        }
        return sent_attributes("rabbitmq", queue, ctx, **extra)
