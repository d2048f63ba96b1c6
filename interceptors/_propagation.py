"""Extract and inject a `FluxContext` and the trace context on every transport.

gRPC is strict: a malformed incoming value is the caller's bug, so extraction raises
`ContextValueError` and the server answers INVALID_ARGUMENT naming the key. Messages
are lenient: a queued message cannot be sent back, so a malformed value is dropped,
replaced (a fresh id, or a fresh trace) and reported to the caller, which records it
on the consumer span. A bad value is never propagated further."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, Setter, TextMapPropagator
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from interceptors._carriers import (
    CONTEXT_KEYS,
    TRACEPARENT,
    TRACESTATE,
    tracestate_ok,
    valid_traceparent,
)
from interceptors._context import FluxContext, check_event_id, check_id, current, new_id
from interceptors._errors import ContextValueError

__all__ = ["Extracted", "cloud_event", "emitted_context", "extract", "inject", "rfc3339"]

C = TypeVar("C")
PROTOBUF = "application/protobuf"
BAGGAGE = "baggage"
# ASCII digits only: int() would also take "1_000", " 12 ", non-ASCII digits, and a
# few hundred digits that overflow a float. 16 digits reach far past year 9999.
_EPOCH_MS = re.compile(r"[0-9]{1,16}")


# Every emitted event carries its time: the date and time of day are formatted once per
# second (datetime's formatting was about 2.7 µs of an emit), the microseconds each time.
_second: tuple[int, str] = (-1, "")


def rfc3339(ts: float) -> str:
    """`ts` (epoch seconds) as an RFC 3339 UTC timestamp with microseconds, as CloudEvents
    `time` wants: `2026-11-27T22:00:00.123456Z`."""
    global _second
    # Split and rounded as datetime.fromtimestamp does (half to even on the fraction), so
    # the text is the same as its isoformat's.
    frac, seconds = math.modf(ts)
    micros = round(frac * 1e6)
    if micros >= 1_000_000:
        micros, seconds = micros - 1_000_000, seconds + 1
    elif micros < 0:
        micros, seconds = micros + 1_000_000, seconds - 1
    whole = int(seconds)
    cached, prefix = _second
    if whole != cached:
        prefix = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (whole, prefix)
    return f"{prefix}.{micros:06d}Z"


def parse_rfc3339(value: str) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp, or None when it is not one."""
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(slots=True)
class Extracted:
    """What arrived: the context to bind, the parent trace context, and what was wrong."""

    context: FluxContext
    trace_parent: otel_context.Context
    rejected: list[ContextValueError] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)  # ce_type, ce_source, ce_time, ...
    # False when the carrier had no usable event id and `context.event_id` was made up
    # here: a consumer then derives a stable identity for dedupe instead.
    event_id_given: bool = True


def flatten(getter: Getter[C], carrier: C) -> dict[str, str]:
    """Every usable value of `carrier` by key (the last non-empty one of each), read in
    one pass: the carriers of this package know how; another getter is asked per key."""
    fast = getattr(getter, "flatten", None)
    if fast is not None:
        flat: dict[str, str] = fast(carrier)
        return flat
    out = {}
    for key in getter.keys(carrier):
        values = getter.get(carrier, key)
        if values and values[-1]:
            out[key] = values[-1]
    return out


# The context keys of each transport, and the CloudEvents attributes read as such.
_FIELDS = {
    transport: tuple((key.field, getattr(key, transport)) for key in CONTEXT_KEYS)
    for transport in ("grpc", "kafka", "amqp")
}
_ATTRIBUTES = ("ce_type", "ce_source", "ce_time", "ce_specversion", "content-type")


def extract(getter: Getter[C], carrier: C, transport: str, *, strict: bool) -> Extracted:
    """Reads the context from `carrier` (transport is "grpc", "kafka" or "amqp").

    Missing correlation and event ids are created here: this hop is then the edge."""
    values = flatten(getter, carrier)
    fields: dict[str, Any] = {}
    rejected: list[ContextValueError] = []
    for field_name, name in _FIELDS[transport]:
        raw = values.get(name)
        if raw is None or (transport == "grpc" and field_name == "deadline"):
            continue
        try:
            fields[field_name] = _parse(field_name, name, raw)
        except ContextValueError as exc:
            if strict:
                raise
            rejected.append(exc)

    trace_ok = True
    tp = values.get(TRACEPARENT)
    if tp is not None and not valid_traceparent(tp):
        bad = ContextValueError(
            TRACEPARENT, "not a W3C traceparent (<version>-<32 hex>-<16 hex>-<2 hex>)"
        )
        if strict:
            raise bad
        rejected.append(bad)
        trace_ok = False  # start a fresh trace instead
    ts = values.get(TRACESTATE)
    if ts is not None and not tracestate_ok(ts):
        bad = ContextValueError(TRACESTATE, "longer than 512 characters or not printable")
        if strict:
            raise bad
        rejected.append(bad)
        del values[TRACESTATE]  # keep the trace, drop the bad tracestate
    parent = _trace_parent(values) if trace_ok else otel_context.Context()

    if "correlation_id" not in fields:
        fields["correlation_id"] = new_id()
    given = "event_id" in fields
    if not given:
        fields["event_id"] = new_id()
    attributes = {k: v for k in _ATTRIBUTES if (v := values.get(k))}
    return Extracted(FluxContext(**fields), parent, rejected, attributes, given)


def _is_default(textmap: TextMapPropagator) -> bool:
    """Whether `textmap` is OpenTelemetry's default: W3C trace context, then baggage."""
    # CompositePropagator keeps its parts in a private list: a version without it, or
    # any other propagator (B3, Jaeger, a vendor's), takes the propagator's own path.
    parts = getattr(textmap, "_propagators", None)
    return (
        type(textmap) is CompositePropagator
        and isinstance(parts, list)
        and [type(p) for p in parts] == [TraceContextTextMapPropagator, W3CBaggagePropagator]
    )


_default_checked: tuple[TextMapPropagator | None, bool] = (None, False)


def _trace_parent(values: dict[str, str]) -> otel_context.Context:
    """The producer's span as a remote parent, read from `values` (a traceparent, when
    present, already passed `valid_traceparent`).

    With the default propagator and no baggage this builds what its `extract` would,
    without its second parse of the traceparent (about 4 of an extract's 16 µs)."""
    global _default_checked
    textmap = get_global_textmap()
    checked, default = _default_checked
    if textmap is not checked:
        default = _is_default(textmap)
        _default_checked = (textmap, default)
    if not default or BAGGAGE in values:
        return textmap.extract(values)
    tp = values.get(TRACEPARENT)
    if tp is None:
        return otel_context.Context()
    ts = values.get(TRACESTATE)
    span = NonRecordingSpan(
        SpanContext(
            trace_id=int(tp[3:35], 16),
            span_id=int(tp[36:52], 16),
            is_remote=True,
            trace_flags=TraceFlags(int(tp[53:55], 16)),
            trace_state=None if ts is None else TraceState.from_header([ts]),
        )
    )
    return set_span_in_context(span, otel_context.Context())


def _parse(field_name: str, key: str, raw: str) -> Any:
    if field_name == "deadline":
        if not _EPOCH_MS.fullmatch(raw):
            raise ContextValueError(key, "not an integer of epoch milliseconds")
        ms = int(raw)
        if ms <= 0:
            raise ContextValueError(key, "must be positive epoch milliseconds")
        return ms / 1000.0
    if field_name in ("event_id", "causation_id"):
        return check_event_id(key, raw)
    return check_id(key, raw, tenant=field_name == "tenant_id")


def inject(
    setter: Setter[C],
    carrier: C,
    transport: str,
    ctx: FluxContext,
    *,
    cloud_event: Mapping[str, str] | None = None,
) -> None:
    """Writes `ctx`, the current trace context and (for messages) CloudEvents attributes.

    For gRPC `ctx.event_id` is this call's request id; for messages it is `ce_id`."""
    out: dict[str, str] = {}
    for field_name, name in _FIELDS[transport]:
        value = getattr(ctx, field_name)
        if field_name == "deadline":
            if transport == "grpc" or value is None:
                continue  # gRPC sends the remaining time itself (grpc-timeout)
            value = str(int(value * 1000))
        if value:
            out[name] = value
    if cloud_event:
        out.update(cloud_event)
    get_global_textmap().inject(out)
    fill = getattr(setter, "fill", None)
    if fill is not None:
        fill(carrier, out)
    else:
        for name, value in out.items():
            setter.set(carrier, name, value)


def cloud_event(type_name: str, source: str, now: float | None = None) -> dict[str, str]:
    """CloudEvents binary-mode attributes other than `ce_id` (that is the event id)."""
    return {
        "ce_specversion": "1.0",
        "ce_type": type_name,
        "ce_source": source,
        "ce_time": rfc3339(time.time() if now is None else now),
        "content-type": PROTOBUF,
    }


def emitted_context(event: Any, idempotency_key: str = "") -> FluxContext:
    """The context of an event emitted now: it inherits the bound context (or starts
    a new correlation at the edge) and is caused by the work being handled."""
    parent = current()
    event_id = new_id()
    # Payload values become headers: they pass the same checks as incoming ones, so a
    # malformed value fails here, at its source, instead of one hop downstream.
    tenant: str = getattr(event, "tenant_id", "")
    run: str = getattr(event, "run_id", "")
    if tenant:
        check_id("tenant_id", tenant, tenant=True)
    if run:
        check_id("run_id", run)
    if idempotency_key:
        check_id("idempotency_key", idempotency_key)
    if parent is None:
        return FluxContext.new(
            event_id=event_id, idempotency_key=idempotency_key, tenant_id=tenant, run_id=run
        )
    # One copy, not two (`child` then `with_`): this runs for every message emitted.
    return parent.with_(
        causation_id=parent.event_id,
        event_id=event_id,
        idempotency_key=idempotency_key or "",
        tenant_id=parent.tenant_id or tenant,
        run_id=parent.run_id or run,
    )
