"""Span building, kept apart from carriers: names, kinds and attributes per hop."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry.trace import Span

from interceptors._context import FluxContext
from interceptors._errors import ContextValueError

__all__ = ["context_attributes", "messaging_attributes", "record_rejected", "sent_attributes"]

QUEUE_WAIT = "agentflux.queue_wait_ms"


def context_attributes(ctx: FluxContext) -> dict[str, str]:
    """The agentflux context as span attributes (empty fields left out)."""
    pairs = {
        "agentflux.correlation_id": ctx.correlation_id,
        "agentflux.causation_id": ctx.causation_id,
        "agentflux.tenant_id": ctx.tenant_id,
        "agentflux.run_id": ctx.run_id,
        "agentflux.idempotency_key": ctx.idempotency_key,
    }
    return {k: v for k, v in pairs.items() if v}


def messaging_attributes(
    system: str,
    destination: str,
    operation: str,
    message_id: str,
    **extra: Any,
) -> dict[str, Any]:
    """OpenTelemetry messaging attributes (semantic conventions, messaging spans).

    `operation` is "send" for producers and "process" for consumers."""
    attrs: dict[str, Any] = {
        "messaging.system": system,
        "messaging.destination.name": destination,
        "messaging.operation.type": operation,
        "messaging.operation.name": "publish" if operation == "send" else "process",
        "messaging.message.id": message_id,
    }
    attrs.update({k: v for k, v in extra.items() if v is not None and v != ""})
    return attrs


def sent_attributes(
    system: str, destination: str, ctx: FluxContext, **extra: Any
) -> dict[str, Any]:
    """A PRODUCER span's attributes: the messaging ones of a send of `ctx`'s event, and
    the context it carries."""
    attrs = messaging_attributes(system, destination, "send", ctx.event_id, **extra)
    attrs.update(context_attributes(ctx))
    return attrs


def record_rejected(span: Span, rejected: Iterable[ContextValueError]) -> None:
    """Records each malformed incoming value that was dropped and replaced."""
    for bad in rejected:
        span.add_event("agentflux.context.rejected", {"key": bad.key, "reason": bad.description})
