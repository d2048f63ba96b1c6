"""Where each context field travels on each transport, and how to read and write it.

`CONTEXT_KEYS` is the one table: a field's gRPC metadata key, Kafka header and AMQP
header. Messages name the fields as CloudEvents extension attributes (binary mode:
`ce_<name>`), beside the CloudEvents core attributes and W3C `traceparent`. The
carrier classes adapt each transport's header shape to OpenTelemetry's
`Getter`/`Setter`, so the same extract/inject code serves all three."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.propagators.textmap import Getter, Setter

__all__ = [
    "CE_ATTRIBUTES",
    "CONTEXT_KEYS",
    "TRACEPARENT",
    "TRACESTATE",
    "AmqpHeaders",
    "ContextKey",
    "GrpcMetadata",
    "KafkaHeaders",
    "valid_traceparent",
]


@dataclass(frozen=True, slots=True)
class ContextKey:
    """One `FluxContext` field and its key on each transport."""

    field: str
    grpc: str
    kafka: str
    amqp: str


CONTEXT_KEYS: tuple[ContextKey, ...] = (
    ContextKey("correlation_id", "x-correlation-id", "ce_correlationid", "ce_correlationid"),
    ContextKey("causation_id", "x-causation-id", "ce_causationid", "ce_causationid"),
    ContextKey("idempotency_key", "idempotency-key", "ce_idempotencykey", "ce_idempotencykey"),
    ContextKey("tenant_id", "x-tenant-id", "ce_tenantid", "ce_tenantid"),
    ContextKey("run_id", "x-run-id", "ce_runid", "ce_runid"),
    # The id of the call or event itself: the causation id of what it leads to.
    ContextKey("event_id", "x-request-id", "ce_id", "ce_id"),
    # gRPC carries deadlines natively (grpc-timeout); messages carry an absolute
    # time in epoch milliseconds, since a relative one would be stale on arrival.
    ContextKey("deadline", "grpc-timeout", "ce_deadline", "ce_deadline"),
)

# CloudEvents binary-mode attributes on Kafka and AMQP messages besides the above.
CE_ATTRIBUTES = ("ce_specversion", "ce_type", "ce_source", "ce_time", "content-type")
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# W3C Trace Context: version 00 is exactly these four fields; a later version (any but
# `ff`) starts with the same four and may add more after a `-`, which a version-00 reader
# parses and ignores (the spec's forward compatibility, as OpenTelemetry does).
_TRACEPARENT = re.compile(
    r"(?!ff)(?P<version>[0-9a-f]{2})-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}"
    r"(?P<rest>-[\x20-\x7e]*)?"
)
_TRACEPARENT_MAX = 512
_TRACESTATE_MAX = 512


def valid_traceparent(value: str) -> bool:
    """Whether `value` is a W3C traceparent a version-00 reader accepts: version 00 with
    exactly its four fields and non-zero ids, or a later version (not `ff`) whose first
    four fields are those, optionally followed by `-` and more."""
    if len(value) > _TRACEPARENT_MAX:
        return False
    got = _TRACEPARENT.fullmatch(value)
    if got is None:
        return False
    return got["version"] != "00" or got["rest"] is None


def tracestate_ok(value: str) -> bool:
    """A tracestate small and printable enough to forward."""
    return len(value) <= _TRACESTATE_MAX and value.isprintable()


class KafkaHeaders(Getter[list[tuple[str, bytes]]], Setter[list[tuple[str, bytes]]]):
    """Kafka record headers: a list of (name, bytes) pairs; the last value wins."""

    def flatten(self, carrier: list[tuple[str, bytes]]) -> dict[str, str]:
        """Every header at once (the last non-empty value of each name): one pass over
        the list instead of one per key looked up."""
        return {k: v.decode("utf-8", "replace") for k, v in carrier or () if v}

    def fill(self, carrier: list[tuple[str, bytes]], values: Mapping[str, str]) -> None:
        """`set` of every pair of `values`, in one pass."""
        if carrier:
            carrier[:] = [(k, v) for k, v in carrier if k not in values]
        carrier.extend((k, v.encode()) for k, v in values.items())

    def get(self, carrier: list[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [v.decode("utf-8", "replace") for k, v in carrier or () if k == key and v]
        return values[-1:] or None

    def keys(self, carrier: list[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier or ()]

    def set(self, carrier: list[tuple[str, bytes]], key: str, value: str) -> None:
        carrier[:] = [(k, v) for k, v in carrier if k != key]
        carrier.append((key, value.encode()))


class AmqpHeaders(Getter[Mapping[str, Any]], Setter[MutableMapping[str, Any]]):
    """AMQP message headers: a table of str or bytes values."""

    def flatten(self, carrier: Mapping[str, Any]) -> dict[str, str]:
        """Every header with a usable value (non-empty str, or bytes decoded)."""
        out: dict[str, str] = {}
        for k, v in (carrier or {}).items():
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            if isinstance(v, str) and v:
                out[k] = v
        return out

    def fill(self, carrier: MutableMapping[str, Any], values: Mapping[str, str]) -> None:
        """`set` of every pair of `values`."""
        carrier.update(values)

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = (carrier or {}).get(key)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return [value] if isinstance(value, str) and value else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier or {})

    def set(self, carrier: MutableMapping[str, Any], key: str, value: str) -> None:
        carrier[key] = value


class GrpcMetadata(Getter[Iterable[tuple[str, Any]]], Setter[list[tuple[str, str]]]):
    """gRPC metadata: (key, value) pairs with lower-case keys; binary keys are skipped."""

    def flatten(self, carrier: Iterable[tuple[str, Any]]) -> dict[str, str]:
        """Every text entry at once (the last non-empty value of each key)."""
        return {k: v for k, v in carrier or () if v and isinstance(v, str)}

    def fill(self, carrier: list[tuple[str, str]], values: Mapping[str, str]) -> None:
        """`set` of every pair of `values`, in one pass."""
        if carrier:
            carrier[:] = [(k, v) for k, v in carrier if k not in values]
        carrier.extend(values.items())

    def get(self, carrier: Iterable[tuple[str, Any]], key: str) -> list[str] | None:
        values = [v for k, v in carrier or () if k == key and isinstance(v, str) and v]
        return values[-1:] or None

    def keys(self, carrier: Iterable[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier or ()]

    def set(self, carrier: list[tuple[str, str]], key: str, value: str) -> None:
        carrier[:] = [(k, v) for k, v in carrier if k != key]
        carrier.append((key, value))


KAFKA = KafkaHeaders()
AMQP = AmqpHeaders()
GRPC = GrpcMetadata()
