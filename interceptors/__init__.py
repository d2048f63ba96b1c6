"""agentflux interceptors: one context across gRPC, Kafka, RabbitMQ, Redis and Memcached.

- `FluxContext` (correlation, causation, idempotency key, tenant, run, deadline) lives
  in a contextvar; `bind()` sets it for a block, `current()` reads it.
- `CONTEXT_KEYS` is the one table of where each field travels on each transport.
- gRPC: `ServerContextInterceptor` and `client_interceptors()`.
- Kafka: `EventProducer` / `EventConsumer`; RabbitMQ: `TaskPublisher` / `TaskConsumer`.
- `instrument_caches()` makes Redis and Memcached commands spans of the current trace.
- `IdempotencyGuard`: a Bloom filter in front of Redis `SET NX`, for every consumer.
- `Telemetry`: a tracer provider per service, exporting to the local span store.
- Errors: `FluxError` and its subclasses, each carrying a gRPC status code.
"""

from interceptors._amqp import Delivery, Settled, TaskConsumer, TaskPublisher
from interceptors._cache import instrument_caches, uninstrument_caches
from interceptors._carriers import CONTEXT_KEYS, ContextKey
from interceptors._context import FluxContext, bind, current, new_id
from interceptors._errors import (
    AlreadyExists,
    ContextValueError,
    DeadlineExceeded,
    FailedPrecondition,
    FluxError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from interceptors._grpc_client import client_interceptors
from interceptors._grpc_server import ServerContextInterceptor, status_of
from interceptors._idempotency import Claim, GuardStats, IdempotencyGuard
from interceptors._kafka import EventConsumer, EventProducer, Handled, Incoming
from interceptors._spanstore import JsonLinesSpanExporter, read_spans
from interceptors._telemetry import Telemetry

__all__ = [
    "CONTEXT_KEYS",
    "AlreadyExists",
    "Claim",
    "ContextKey",
    "ContextValueError",
    "DeadlineExceeded",
    "Delivery",
    "EventConsumer",
    "EventProducer",
    "FailedPrecondition",
    "FluxContext",
    "FluxError",
    "GuardStats",
    "Handled",
    "IdempotencyGuard",
    "Incoming",
    "InvalidArgument",
    "JsonLinesSpanExporter",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServerContextInterceptor",
    "Settled",
    "TaskConsumer",
    "TaskPublisher",
    "Telemetry",
    "Unauthenticated",
    "Unavailable",
    "bind",
    "client_interceptors",
    "current",
    "instrument_caches",
    "new_id",
    "read_spans",
    "status_of",
    "uninstrument_caches",
]
