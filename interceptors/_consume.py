"""The one consume core behind the Kafka and RabbitMQ consumers.

Every message, whatever carried it, goes through the same steps: extract the context
from its headers, open a CONSUMER span parented to the producer's, check its type
against the destination's contract and decode it, bind the context, dedupe it through
the idempotency guard (renewing the claim's lease while the handler works), run the
chain of interceptors and the handler, and settle it. Only settling differs by
transport, so the transports supply a `Settler` and nothing else.

The links a service adds, and the dataclasses they see, are in `interceptors._chain`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, use_span

from interceptors._chain import HandlerLink, Inbound, Incoming, Outcome, Settler
from interceptors._context import FluxContext, bind, check_id
from interceptors._errors import ContextValueError, FluxError, is_retryable
from interceptors._idempotency import IdempotencyGuard
from interceptors._propagation import Extracted, extract, parse_rfc3339
from interceptors._spans import QUEUE_WAIT, context_attributes, record_rejected
from interceptors._telemetry import Telemetry, serving

__all__ = ["ConsumeCore", "dedupe_key", "stable_id"]

log = logging.getLogger(__name__)

PROTOBUF_TYPES = frozenset({"application/protobuf", "application/x-protobuf"})
JSON = "application/json"


class Problem(Exception):  # noqa: N818 - not an error of agentflux: a verdict on a message
    """The message itself is unusable: dead-letter it at once under `reason`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Contract(Protocol):
    """What a destination carries (an event or a task contract)."""

    @property
    def type_name(self) -> str:
        """The full protobuf type name, as `ce_type` carries it."""

    @property
    def message_class(self) -> type[Message]:
        """The class that decodes it."""


class ConsumeCore:
    """Runs the steps of the module doc for one message at a time (callers run many
    `process` calls at once); `counts` tallies outcomes."""

    def __init__(
        self,
        telemetry: Telemetry,
        settler: Settler,
        contract_of: Callable[[Inbound], Contract],
        *,
        system: str,
        guard: IdempotencyGuard | None = None,
        local_attempts: int = 1,
        backoff_s: float = 0.1,
        pending_wait_s: float | None = None,
    ) -> None:
        if local_attempts < 1:
            raise ValueError(f"local_attempts must be at least 1, got {local_attempts}")
        self.telemetry = telemetry
        self.settler = settler
        self.contract_of = contract_of
        self.system = system
        self.guard = guard
        self.local_attempts = local_attempts
        self.backoff_s = backoff_s
        self.pending_wait_s = pending_wait_s
        self.counts: dict[Outcome, int] = dict.fromkeys(Outcome, 0)

    async def process(self, inbound: Inbound, link: HandlerLink) -> Outcome:
        """Handles and settles one message; raises only `CancelledError` (after handing
        the message back) or when the broker refuses to settle it."""
        got = extract(inbound.getter, inbound.carrier or (), inbound.transport, strict=False)
        # The sampler sees what names the destination; the rest is built only for a span
        # that records (all at the start when it will: `Telemetry.will_record`), so a
        # sampled-out message pays next to nothing for tracing.
        attributes: dict[str, Any] = {
            "messaging.system": self.system,
            "messaging.destination.name": inbound.destination,
            "messaging.operation.type": "process",
        }
        full = self.telemetry.will_record(got.trace_parent)
        if full:
            attributes.update(self._attributes(inbound, got))
        span = self.telemetry.tracer.start_span(
            f"process {inbound.destination}",
            context=got.trace_parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        if span.is_recording():
            if not full:
                span.set_attributes(self._attributes(inbound, got))
            record_rejected(span, got.rejected)
        with (
            serving(self.telemetry),
            use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False),
        ):
            try:
                outcome = await self._process(inbound, got, link, span)
            except asyncio.CancelledError:
                span.set_attribute("agentflux.outcome", Outcome.HANDED_BACK.value)
                self.counts[Outcome.HANDED_BACK] += 1
                raise
            span.set_attribute("agentflux.outcome", outcome.value)
        self.counts[outcome] += 1
        return outcome

    async def _process(
        self, inbound: Inbound, got: Extracted, link: HandlerLink, span: Span
    ) -> Outcome:
        try:
            event = self._decode(inbound, got)
        except Problem as bad:
            return await self._dead_letter(inbound, span, bad.reason, bad.detail)
        try:
            ctx = payload_context(got.context, event)
        except Problem as bad:
            return await self._dead_letter(inbound, span, bad.reason, bad.detail)
        if not got.event_id_given:
            # Redeliveries of an id-less message must share one identity and causation.
            ctx = ctx.with_(event_id=stable_id(inbound.position))
            span.set_attribute("messaging.message.id", ctx.event_id)
        key = dedupe_key(ctx, got, inbound)
        incoming = Incoming(event, ctx, inbound, key)
        guard = self.guard
        with bind(ctx):
            if guard is not None:
                claim = await guard.settle(key, max_wait_s=self.pending_wait_s)
                if claim.pending:
                    span.set_attribute("agentflux.pending", True)
                    await self.settler.hand_back(inbound)
                    return Outcome.HANDED_BACK
                if not claim.new:
                    span.set_attribute("agentflux.duplicate", True)
                    await self.settler.ack(inbound)
                    return Outcome.DUPLICATE
            try:
                result = await self._handle(incoming, link, span)
            except asyncio.CancelledError:
                # Shielded: a cancelled handler must still free its key and return the
                # message, or the redelivery would wait out the lease.
                await asyncio.shield(self._give_back(incoming))
                raise
            except Exception as exc:
                if guard is not None:
                    await guard.release(key)
                return await self._failed(incoming, exc, span)
            if guard is not None:
                # Before the ack: a crash in between makes the redelivery a duplicate.
                await guard.complete(key, result or b"")
            await self.settler.ack(inbound)
            return Outcome.HANDLED

    async def _handle(self, incoming: Incoming, link: HandlerLink, span: Span) -> bytes | None:
        if self.guard is None:
            return await self._attempts(incoming, link, span)
        async with self.guard.heartbeat(incoming.dedupe_key):
            return await self._attempts(incoming, link, span)

    async def _give_back(self, incoming: Incoming) -> None:
        # Runs while a cancellation is on its way out: an error here must not replace it
        # (the caller would take the message for unsettled and process it again).
        try:
            if self.guard is not None:
                await self.guard.release(incoming.dedupe_key)
            await self.settler.hand_back(incoming.inbound)
        except Exception:
            log.warning(
                "could not hand back %s; its lease or the broker will",
                incoming.dedupe_key,
                exc_info=True,
            )

    async def _attempts(self, incoming: Incoming, link: HandlerLink, span: Span) -> bytes | None:
        for n in range(1, self.local_attempts + 1):
            try:
                return await link.handle(incoming)
            except Exception as exc:
                attempt = incoming.attempt + n - 1
                span.record_exception(exc, attributes={"agentflux.attempt": attempt})
                if n == self.local_attempts or not is_retryable(exc):
                    raise
                await asyncio.sleep(min(self.backoff_s * 2 ** (n - 1), 5.0))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _failed(self, incoming: Incoming, exc: Exception, span: Span) -> Outcome:
        error = describe(exc)
        span.set_status(Status(StatusCode.ERROR, error))
        if is_retryable(exc):
            if await self.settler.retry(incoming.inbound, error):
                return Outcome.RETRYING
            reason = "RETRIES_EXHAUSTED"
        else:
            reason = exc.reason if isinstance(exc, FluxError) else "NOT_RETRYABLE"
        await self.settler.dead_letter(incoming.inbound, reason, error)
        return Outcome.DEAD_LETTERED

    async def _dead_letter(self, inbound: Inbound, span: Span, reason: str, detail: str) -> Outcome:
        span.set_status(Status(StatusCode.ERROR, f"{reason}: {detail}"))
        span.set_attribute("agentflux.dead_letter.reason", reason)
        await self.settler.dead_letter(inbound, reason, detail)
        return Outcome.DEAD_LETTERED

    def _decode(self, inbound: Inbound, got: Extracted) -> Message:
        if inbound.carrier is None:
            raise Problem("UNREADABLE_HEADERS", inbound.header_error or "headers unreadable")
        try:
            contract = self.contract_of(inbound)
        except KeyError as exc:
            raise Problem("NO_CONTRACT", str(exc.args[0] if exc.args else exc)) from None
        ce_type = got.attributes.get("ce_type") or inbound.type_hint
        expected = contract.type_name
        if not ce_type:
            raise Problem("WRONG_TYPE", f"no ce_type; {inbound.destination} carries {expected}")
        if ce_type != expected:
            raise Problem(
                "WRONG_TYPE", f"ce_type {ce_type[:200]!r} is not {expected}, the type here"
            )
        content_type = got.attributes.get("content-type") or inbound.content_type
        media = content_type.split(";", 1)[0].strip().lower()
        if media and media not in PROTOBUF_TYPES and media != JSON:
            raise Problem(
                "UNSUPPORTED_CONTENT_TYPE",
                f"content-type {content_type[:200]!r}; this consumer reads "
                "application/protobuf and application/json (proto3 JSON)",
            )
        if not inbound.body:
            raise Problem("EMPTY", "no value (a tombstone or an empty message)")
        if media == JSON:
            # Proto3 JSON, as other languages' producers emit it. Fields this version
            # does not know are skipped, as the binary decoder keeps unknown fields
            # without failing: a newer producer must not break an older consumer.
            try:
                return json_format.Parse(
                    inbound.body.decode("utf-8"),
                    contract.message_class(),
                    ignore_unknown_fields=True,
                )
            except (UnicodeDecodeError, json_format.ParseError) as exc:
                raise Problem(
                    "UNDECODABLE",
                    f"not a valid {expected} in proto3 JSON (content-type {media}): "
                    f"{str(exc)[:300]}",
                ) from None
        try:
            return contract.message_class.FromString(inbound.body)
        except DecodeError as exc:
            raise Problem(
                "UNDECODABLE",
                f"not a valid {expected} (content-type {media or 'application/protobuf'}, "
                f"the default): {exc}",
            ) from None

    def _attributes(self, inbound: Inbound, got: Extracted) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "messaging.operation.name": "process",
            "messaging.message.id": got.context.event_id,
        }
        attrs.update({k: v for k, v in inbound.attributes.items() if v is not None and v != ""})
        sent = inbound.sent_at or parse_rfc3339(got.attributes.get("ce_time", ""))
        if sent:
            attrs[QUEUE_WAIT] = max(0.0, (time.time() - sent) * 1000)
        if inbound.attempt > 1:
            attrs["agentflux.attempt"] = inbound.attempt
        attrs.update(context_attributes(got.context))
        return attrs


# The context fields a payload may carry too (every contract event and task names its
# tenant and run), and the header each comes in.
_PAYLOAD_FIELDS = (("tenant_id", "ce_tenantid"), ("run_id", "ce_runid"))


def payload_context(ctx: FluxContext, event: Message) -> FluxContext:
    """`ctx` completed from the payload: a producer that sent only the CloudEvents
    attributes still gets its tenant and run bound. A header and the payload that
    disagree are a CONTEXT_CONFLICT (dead-lettered): neither is silently preferred, since
    either could be the one a careless or hostile producer got wrong."""
    fields = event.DESCRIPTOR.fields_by_name
    found: dict[str, str] = {}
    for name, header in _PAYLOAD_FIELDS:
        if name not in fields:
            continue
        in_payload = getattr(event, name)
        in_header = getattr(ctx, name)
        if not in_payload:
            continue
        if in_header and in_header != in_payload:
            raise Problem(
                "CONTEXT_CONFLICT",
                f"header {header} says {in_header[:128]!r} but the payload's {name} is "
                f"{in_payload[:128]!r}",
            )
        if not in_header:
            try:
                found[name] = check_id(name, in_payload, tenant=name == "tenant_id")
            except ContextValueError as bad:
                raise Problem("INVALID_CONTEXT", f"payload {bad}") from None
    return ctx.with_(**found) if found else ctx


def describe(exc: BaseException) -> str:
    """`Type: message` of an exception, bounded (it travels in a header)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 1000 else text[:997] + "..."


def stable_id(position: str) -> str:
    """An event id derived from where a message sits, the same on every redelivery."""
    try:
        return check_id("ce_id", position)
    except ContextValueError:
        return "at-" + hashlib.blake2b(position.encode(), digest_size=16).hexdigest()


def dedupe_key(ctx: FluxContext, got: Extracted, inbound: Inbound) -> str:
    """The message's identity for the guard: its idempotency key when it has one (the
    producer says which messages are the same effect); else CloudEvents identity,
    source + id (two sources may use the same id); else where it sits."""
    if ctx.idempotency_key:
        return "ik:" + ctx.idempotency_key
    if got.event_id_given:
        source = got.attributes.get("ce_source", "")
        digest = hashlib.blake2b(source.encode(), digest_size=8).hexdigest()
        return f"ce:{ctx.event_id}:{digest}"
    return "at:" + ctx.event_id
