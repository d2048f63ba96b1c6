"""Redis and Memcached calls as spans of the current trace.

The OpenTelemetry contrib instrumentations do this well for redis-py (asyncio and
pipelines included; values are replaced by `?` in `db.statement`) and pymemcache
(pooled clients included): each command becomes a CLIENT span, child of whatever span
is current, so a cache read inside a handled message or RPC lands in its trace. They
patch the client libraries process-wide; a routing provider sends each span to the
service whose call or message is being handled (`serving`), or to the one given here
when none is, so several services in one process still appear as themselves."""

from __future__ import annotations

from opentelemetry.instrumentation.pymemcache import PymemcacheInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor

from interceptors._telemetry import RoutingTracerProvider, Telemetry

__all__ = ["instrument_caches", "uninstrument_caches"]


def instrument_caches(telemetry: Telemetry) -> None:
    """Traces Redis and Memcached commands (idempotent: later calls do nothing)."""
    for instrumentor in (RedisInstrumentor(), PymemcacheInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=RoutingTracerProvider(telemetry))


def uninstrument_caches() -> None:
    """Removes the cache instrumentation (tests that switch providers)."""
    for instrumentor in (RedisInstrumentor(), PymemcacheInstrumentor()):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
