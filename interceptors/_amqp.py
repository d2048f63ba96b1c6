"""RabbitMQ middleware: contract tasks out with context, priority and a PRODUCER span;
in with the context restored, a CONSUMER span, dedupe and dead-lettering.

A delivery is acked only after its handler finished (or it was a duplicate). A task
that cannot be decoded is dead-lettered at once (reject without requeue: the queue's
dead-letter exchange keeps the original bytes); a handler failure is requeued once and
dead-lettered when it fails again. Delay-tier retries belong to the worker."""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from google.protobuf.message import DecodeError, Message
from opentelemetry.trace import SpanKind, Status, StatusCode

from interceptors._carriers import AMQP
from interceptors._context import FluxContext, bind
from interceptors._idempotency import IdempotencyGuard
from interceptors._propagation import (
    cloud_event,
    emitted_context,
    extract,
    inject,
    parse_rfc3339,
)
from interceptors._spans import (
    QUEUE_WAIT,
    context_attributes,
    messaging_attributes,
    record_rejected,
)
from interceptors._telemetry import Telemetry, serving
from services.runtime.adapters.rabbitmq import RabbitConnection
from services.runtime.contracts import ContractRegistry, TaskContract, registry

__all__ = ["Delivery", "Settled", "TaskConsumer", "TaskPublisher"]


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

    async def publish(self, task: Message, *, idempotency_key: str = "") -> FluxContext:
        """Publishes `task` and waits for the broker's confirm; returns its context."""
        contract = self.contracts.task(task)
        exchange = self.name_prefix + contract.exchange
        queue = self.name_prefix + contract.queue
        raw_priority = getattr(task, "priority", 0)
        priority = self.contracts.amqp_priority(raw_priority)
        ctx = emitted_context(task, idempotency_key)
        attrs = messaging_attributes(
            "rabbitmq",
            queue,
            "send",
            ctx.event_id,
            **{"messaging.rabbitmq.destination.routing_key": queue, "agentflux.priority": priority},
        )
        attrs.update(context_attributes(ctx))
        with self.telemetry.tracer.start_as_current_span(
            f"publish {queue}", kind=SpanKind.PRODUCER, attributes=attrs
        ):
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
            )
        return ctx


@dataclass(frozen=True, slots=True)
class Delivery:
    """A decoded task being handled, with its context and the raw delivery."""

    task: Message
    context: FluxContext
    message: AbstractIncomingMessage


class Settled(enum.Enum):
    """What became of a delivery."""

    ACKED = "acked"
    DUPLICATE = "duplicate"
    REQUEUED = "requeued"
    DEAD_LETTERED = "dead_lettered"


TaskHandler = Callable[[Delivery], Awaitable[bytes | None]]


class TaskConsumer:
    """Runs a handler on deliveries of one task queue with context, spans and dedupe."""

    def __init__(
        self,
        telemetry: Telemetry,
        contract: TaskContract,
        *,
        queue: str,
        guard: IdempotencyGuard | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.contract = contract
        self.queue = queue
        self.guard = guard
        self.counts: dict[Settled, int] = dict.fromkeys(Settled, 0)

    async def handle(self, message: AbstractIncomingMessage, handler: TaskHandler) -> Settled:
        """Handles one delivery and settles it (ack, requeue or dead-letter)."""
        got = extract(AMQP, message.headers or {}, "amqp", strict=False)
        sent = parse_rfc3339(got.attributes.get("ce_time", ""))
        wait = max(0.0, (time.time() - sent) * 1000) if sent else None
        attrs = messaging_attributes(
            "rabbitmq",
            self.queue,
            "process",
            got.context.event_id,
            **{
                "messaging.rabbitmq.message.delivery_tag": message.delivery_tag,
                "agentflux.redelivered": bool(message.redelivered),
                QUEUE_WAIT: wait,
            },
        )
        attrs.update(context_attributes(got.context))
        with (
            serving(self.telemetry),
            self.telemetry.tracer.start_as_current_span(
                f"process {self.queue}",
                context=got.trace_parent,
                kind=SpanKind.CONSUMER,
                attributes=attrs,
            ) as span,
        ):
            record_rejected(span, got.rejected)
            settled = await self._settle(message, got.context, handler, span)
            span.set_attribute("agentflux.settled", settled.value)
        self.counts[settled] += 1
        return settled

    async def _settle(
        self, message: AbstractIncomingMessage, ctx: FluxContext, handler: TaskHandler, span: Any
    ) -> Settled:
        try:
            task = self.contract.message_class.FromString(message.body)
        except DecodeError as exc:
            span.set_status(Status(StatusCode.ERROR, f"undecodable: {exc}"))
            await message.reject(requeue=False)
            return Settled.DEAD_LETTERED
        key = ctx.idempotency_key or ctx.event_id
        claim = await self.guard.settle(key) if self.guard else None
        if claim is not None and claim.pending:
            # Another handler still holds a live lease: acking would lose the task if it
            # dies, so hand the delivery back; its redelivery waits for the claim again.
            span.set_attribute("agentflux.pending", True)
            await message.nack(requeue=True)
            return Settled.REQUEUED
        if claim is not None and not claim.new:
            span.set_attribute("agentflux.duplicate", True)
            await message.ack()
            return Settled.DUPLICATE
        try:
            with bind(ctx):
                result = await handler(Delivery(task, ctx, message))
        except Exception as exc:  # settle the delivery; the error is on the span
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, repr(exc)))
            if self.guard and claim is not None:
                await self.guard.release(key)
            if message.redelivered:
                await message.reject(requeue=False)
                return Settled.DEAD_LETTERED
            await message.nack(requeue=True)
            return Settled.REQUEUED
        if self.guard and claim is not None:
            await self.guard.complete(key, result or b"")
        await message.ack()
        return Settled.ACKED
