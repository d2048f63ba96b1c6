"""Redis and Memcached calls as spans of the current trace.

The OpenTelemetry contrib instrumentations do this well for redis-py (asyncio and
pipelines included; values are replaced by `?` in `db.statement`) and pymemcache
(pooled clients included): each command becomes a CLIENT span, child of whatever span
is current, so a cache read inside a handled message or RPC lands in its trace. They
patch the client libraries process-wide, with the tracer provider of the first service
to call this; one service per process is how agentflux runs in production."""

from __future__ import annotations

from opentelemetry.instrumentation.pymemcache import PymemcacheInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor

from interceptors._telemetry import Telemetry

__all__ = ["instrument_caches", "uninstrument_caches"]


def instrument_caches(telemetry: Telemetry) -> None:
    """Traces Redis and Memcached commands (idempotent: later calls do nothing)."""
    for instrumentor in (RedisInstrumentor(), PymemcacheInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=telemetry.provider)


def uninstrument_caches() -> None:
    """Removes the cache instrumentation (tests that switch providers)."""
    for instrumentor in (RedisInstrumentor(), PymemcacheInstrumentor()):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
