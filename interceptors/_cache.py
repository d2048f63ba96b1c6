"""Redis and Memcached calls as spans of the current trace.

Each command becomes a CLIENT span, child of whatever span is current, so a cache read
inside a handled message or RPC lands in its trace. Redis (redis-py, asyncio and sync,
pipelines included) is traced by the project's own wrapper (`_redis_tracing`): spans
shaped as the contrib `opentelemetry-instrumentation-redis` shapes them (values replaced
by `?` in `db.statement`), for less CPU per command; when the contrib instrumentation is
on already (`opentelemetry-instrument`), Redis is left to it. The services' asyncio
Memcached client is traced by `_memcached_tracing`, in the shape of the contrib
pymemcache instrumentation, which traces pymemcache (synchronous code). All of them
patch the client libraries process-wide; a routing provider sends each span to the
service whose call or message is being handled (`serving`), or to the one given here
when none is, so several services in one process still appear as themselves."""

from __future__ import annotations

from opentelemetry.instrumentation.pymemcache import PymemcacheInstrumentor

from interceptors._memcached_tracing import (
    instrument_memcached,
    memcached_instrumented,
    uninstrument_memcached,
)
from interceptors._redis_tracing import instrument_redis, redis_instrumented, uninstrument_redis
from interceptors._telemetry import RoutingTracerProvider, Telemetry

__all__ = ["instrument_caches", "uninstrument_caches"]

_SCOPE = "agentflux.redis"
_MEMCACHED_SCOPE = "agentflux.memcached"


def instrument_caches(telemetry: Telemetry) -> None:
    """Traces Redis and Memcached commands (idempotent: later calls do nothing)."""
    provider = RoutingTracerProvider(telemetry)
    if not redis_instrumented():
        instrument_redis(provider.get_tracer(_SCOPE))
    if not memcached_instrumented():
        instrument_memcached(provider.get_tracer(_MEMCACHED_SCOPE))
    memcached = PymemcacheInstrumentor()
    if not memcached.is_instrumented_by_opentelemetry:
        memcached.instrument(tracer_provider=provider)


def uninstrument_caches() -> None:
    """Removes the cache instrumentation (tests that switch providers). A contrib Redis
    instrumentation that someone else switched on stays on."""
    uninstrument_redis()
    uninstrument_memcached()
    memcached = PymemcacheInstrumentor()
    if memcached.is_instrumented_by_opentelemetry:
        memcached.uninstrument()
