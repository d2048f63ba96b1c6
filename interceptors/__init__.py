"""agentflux interceptors: one context across gRPC, Kafka, RabbitMQ, Redis and Memcached.

- `FluxContext` (correlation, causation, idempotency key, tenant, run, deadline) lives
  in a contextvar; `bind()` sets it for a block, `current()` reads it.
- `CONTEXT_KEYS` is the one table of where each field travels on each transport.
- gRPC: `ServerContextInterceptor` and `client_interceptors()`.
- Kafka: `EventProducer` / `EventConsumer`; RabbitMQ: `TaskPublisher` / `TaskConsumer`.
  Both consumers run one consume core (context, span, type check, dedupe, handler,
  settle) with a chain of `ConsumeInterceptor` links a service can extend.
- `instrument_caches()` makes Redis and Memcached commands spans of the current trace.
- `IdempotencyGuard`: exact claims in Redis (`SET NX GET` with a renewed lease).
- `Telemetry`: a tracer provider per service, exporting to the local span store.
- `configure_logging()`: log records stamped with correlation id, run, tenant and trace id.
- Errors: `FluxError` and its subclasses, each carrying a gRPC status code.

Names load on first use (PEP 562): a service that only speaks Kafka never imports
aio_pika, and `import interceptors` alone imports no transport at all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # What type checkers and IDEs see; at run time `_EXPORTS` below does the importing.
    from interceptors._amqp_consumer import ATTEMPT_HEADER, TaskConsumer
    from interceptors._amqp_publisher import TaskPublisher
    from interceptors._bloom import RotatingBloomFilter
    from interceptors._cache import instrument_caches, uninstrument_caches
    from interceptors._carriers import CONTEXT_KEYS, ContextKey
    from interceptors._chain import (
        ConsumeInterceptor,
        Handler,
        HandlerLink,
        Inbound,
        Incoming,
        Outcome,
    )
    from interceptors._context import (
        FluxContext,
        bind,
        current,
        new_id,
    )
    from interceptors._errors import (
        AlreadyExists,
        ContextValueError,
        DeadlineExceeded,
        FailedPrecondition,
        FluxError,
        InvalidArgument,
        NotFound,
        OutOfRange,
        PermissionDenied,
        ResourceExhausted,
        Unauthenticated,
        Unavailable,
        is_retryable,
    )
    from interceptors._grpc_client import client_interceptors
    from interceptors._grpc_server import ServerContextInterceptor, status_of, wrap_handler
    from interceptors._idempotency import Claim, GuardStats, IdempotencyGuard
    from interceptors._kafka_consumer import EventConsumer
    from interceptors._kafka_producer import EventProducer
    from interceptors._logging import ContextFilter, configure_logging
    from interceptors._spanstore import JsonLinesSpanExporter
    from interceptors._telemetry import Telemetry

# Public name -> the private module defining it: the one table the lazy loader reads.
# A new public name is one line here, plus its import above and its `__all__` entry for
# type checkers (tests/unit/test_lazy_imports.py fails when the three disagree).
_EXPORTS: dict[str, str] = {
    "ATTEMPT_HEADER": "_amqp_consumer",
    "CONTEXT_KEYS": "_carriers",
    "AlreadyExists": "_errors",
    "Claim": "_idempotency",
    "ConsumeInterceptor": "_chain",
    "ContextFilter": "_logging",
    "ContextKey": "_carriers",
    "ContextValueError": "_errors",
    "DeadlineExceeded": "_errors",
    "EventConsumer": "_kafka_consumer",
    "EventProducer": "_kafka_producer",
    "FailedPrecondition": "_errors",
    "FluxContext": "_context",
    "FluxError": "_errors",
    "GuardStats": "_idempotency",
    "Handler": "_chain",
    "HandlerLink": "_chain",
    "IdempotencyGuard": "_idempotency",
    "Inbound": "_chain",
    "Incoming": "_chain",
    "InvalidArgument": "_errors",
    "JsonLinesSpanExporter": "_spanstore",
    "NotFound": "_errors",
    "OutOfRange": "_errors",
    "Outcome": "_chain",
    "PermissionDenied": "_errors",
    "ResourceExhausted": "_errors",
    "RotatingBloomFilter": "_bloom",
    "ServerContextInterceptor": "_grpc_server",
    "TaskConsumer": "_amqp_consumer",
    "TaskPublisher": "_amqp_publisher",
    "Telemetry": "_telemetry",
    "Unauthenticated": "_errors",
    "Unavailable": "_errors",
    "bind": "_context",
    "client_interceptors": "_grpc_client",
    "configure_logging": "_logging",
    "current": "_context",
    "instrument_caches": "_cache",
    "is_retryable": "_errors",
    "new_id": "_context",
    "status_of": "_grpc_server",
    "uninstrument_caches": "_cache",
    "wrap_handler": "_grpc_server",
}

__all__ = [
    "ATTEMPT_HEADER",
    "CONTEXT_KEYS",
    "AlreadyExists",
    "Claim",
    "ConsumeInterceptor",
    "ContextFilter",
    "ContextKey",
    "ContextValueError",
    "DeadlineExceeded",
    "EventConsumer",
    "EventProducer",
    "FailedPrecondition",
    "FluxContext",
    "FluxError",
    "GuardStats",
    "Handler",
    "HandlerLink",
    "IdempotencyGuard",
    "Inbound",
    "Incoming",
    "InvalidArgument",
    "JsonLinesSpanExporter",
    "NotFound",
    "OutOfRange",
    "Outcome",
    "PermissionDenied",
    "ResourceExhausted",
    "RotatingBloomFilter",
    "ServerContextInterceptor",
    "TaskConsumer",
    "TaskPublisher",
    "Telemetry",
    "Unauthenticated",
    "Unavailable",
    "bind",
    "client_interceptors",
    "configure_logging",
    "current",
    "instrument_caches",
    "is_retryable",
    "new_id",
    "status_of",
    "uninstrument_caches",
    "wrap_handler",
]


def _load(name: str) -> Any:
    """Imports the module behind a public name and caches the value in this module, so
    the next access is a plain attribute read that never comes back here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


if not TYPE_CHECKING:
    # Hidden from type checkers: a module-level __getattr__ would make mypy accept any
    # name (typed as its return value), so a misspelt import would pass type checking.
    __getattr__ = _load


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
