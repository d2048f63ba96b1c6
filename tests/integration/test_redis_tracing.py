"""Redis commands as spans (`instrument_caches`), against the real local Redis.

The spans must keep the shape the contrib `opentelemetry-instrumentation-redis` gives
them (traces, `agentflux trace` and the other tests read it): each case runs once under
the contrib instrumentation and once under agentflux's and compares the two, and the
main attributes are also spelled out. Keys carry the test's prefix and are deleted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio as aioredis
import redis.asyncio.client
import redis.client
from opentelemetry import trace
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.redis.util import _format_command_args
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from redis.exceptions import ResponseError, WatchError

from interceptors import instrument_caches, uninstrument_caches
from interceptors._redis_tracing import statement
from interceptors._telemetry import RoutingTracerProvider, serving
from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings
from tests.integration.cache_kit import Traced, traced_caches

pytestmark = pytest.mark.integration

# Every method either instrumentation wraps, as it was before any of them.
PATCHED = (
    (redis.asyncio.client.Redis, "execute_command"),
    (redis.asyncio.client.Pipeline, "execute"),
    (redis.asyncio.client.Pipeline, "immediate_execute_command"),
    (redis.client.Redis, "execute_command"),
    (redis.client.Pipeline, "execute"),
    (redis.client.Pipeline, "immediate_execute_command"),
)
ORIGINALS = {(cls, name): cls.__dict__[name] for cls, name in PATCHED}


@pytest.fixture
def traced() -> Iterator[Traced]:
    """agentflux's cache instrumentation on, into a fresh telemetry; off afterwards."""
    with traced_caches() as t:
        yield t
    if RedisInstrumentor().is_instrumented_by_opentelemetry:
        RedisInstrumentor().uninstrument()
    for (cls, name), original in ORIGINALS.items():
        assert cls.__dict__[name] is original, f"{cls.__qualname__}.{name} left patched"


@pytest.fixture
async def client(settings: Settings, prefix: str) -> AsyncIterator[aioredis.Redis]:
    c = connect_redis(settings)
    yield c
    with suppress_instrumentation():
        keys = [k async for k in c.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await c.delete(*keys)
    await c.aclose()


def endpoint(settings: Settings) -> dict[str, Any]:
    """The connection attributes every span of the project's client carries."""
    dsn = urlsplit(settings.redis_dsn)
    return {
        "db.system": "redis",
        "db.redis.database_index": int(dsn.path.strip("/") or 0),
        "net.peer.name": dsn.hostname,
        "net.peer.port": dsn.port,
        "net.transport": "ip_tcp",
    }


def only(spans: list[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def shape(span: ReadableSpan) -> tuple[Any, ...]:
    """What the two instrumentations must agree on."""
    return (
        span.name,
        span.kind,
        dict(span.attributes or {}),
        span.status.status_code,
        span.status.description,
        [(e.name, dict(e.attributes or {}).get("exception.type")) for e in span.events],
    )


# -- the span of a command -----------------------------------------------------------


async def test_a_command_is_a_client_span_with_sanitized_statement(
    traced: Traced, client: aioredis.Redis, prefix: str, settings: Settings
) -> None:
    with traced.telemetry.tracer.start_as_current_span("handler") as parent:
        assert await client.set(f"{prefix}k", b"secret value", ex=60) is True
    spans = traced.spans()
    span = only([s for s in spans if s.name != "handler"])
    assert span.name == "SET"
    assert span.kind == SpanKind.CLIENT
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert dict(span.attributes or {}) == {
        "db.statement": "SET ? ? ? ?",  # key, value, EX, 60: no value shown
        "db.redis.args_length": 5,
        **endpoint(settings),
    }
    assert span.status.status_code == StatusCode.UNSET
    assert span.resource.attributes["service.name"] == "cache-user"


def test_the_statement_is_sanitized_and_cut_as_the_contrib_does() -> None:
    assert statement(()) == ""
    assert statement(("PING",)) == "PING"
    assert statement(("GET", "k")) == "GET ?"
    assert statement((b"GET", "k")) == "b'GET' ?"
    for n in (498, 499, 500, 501, 502, 600, 5000):
        args = ("DEL", *(f"k{i}" for i in range(n)))
        assert statement(args) == _format_command_args(list(args)), n
    long = statement(("DEL", *range(600)))
    assert len(long) == 1000
    assert long == ("DEL" + " ?" * 600)[:997] + "..."


async def test_a_long_command_is_cut_at_1000_characters(
    traced: Traced, client: aioredis.Redis, prefix: str
) -> None:
    keys = [f"{prefix}k{i}" for i in range(600)]
    assert await client.delete(*keys) == 0
    span = only(traced.redis_spans())
    assert span.name == "DEL"
    assert span.attributes is not None
    assert span.attributes["db.statement"] == ("DEL" + " ?" * 600)[:997] + "..."
    assert span.attributes["db.redis.args_length"] == 601


async def test_a_pipeline_is_one_span_of_its_commands(
    traced: Traced, client: aioredis.Redis, prefix: str, settings: Settings
) -> None:
    for transaction in (False, True):
        async with client.pipeline(transaction=transaction) as pipe:
            pipe.set(f"{prefix}p", b"v")
            pipe.get(f"{prefix}p")
            pipe.hgetall(f"{prefix}h")
            assert await pipe.execute() == [True, b"v", {}]
        span = only(traced.redis_spans())
        assert span.name == "SET GET HGETALL"
        assert span.kind == SpanKind.CLIENT
        assert dict(span.attributes or {}) == {
            "db.statement": "SET ? ?\nGET ?\nHGETALL ?",
            "db.redis.pipeline_length": 3,
            **endpoint(settings),
        }


async def test_an_empty_pipeline_is_named_redis(traced: Traced, client: aioredis.Redis) -> None:
    async with client.pipeline() as pipe:
        assert await pipe.execute() == []
    span = only(traced.redis_spans())
    assert span.name == "redis"
    assert span.attributes is not None
    assert span.attributes["db.statement"] == ""
    assert span.attributes["db.redis.pipeline_length"] == 0


async def test_a_failed_command_records_the_error_and_still_raises(
    traced: Traced, client: aioredis.Redis, prefix: str
) -> None:
    await client.set(f"{prefix}s", b"a string")
    traced.spans()
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await client.lpush(f"{prefix}s", b"x")
    span = only(traced.redis_spans())
    assert span.name == "LPUSH"
    assert span.status.status_code == StatusCode.ERROR
    assert (span.status.description or "").startswith("ResponseError: WRONGTYPE")
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "redis.exceptions.ResponseError"
    assert "WRONGTYPE" in str(event.attributes["exception.message"])


async def test_a_lost_watch_leaves_the_pipeline_span_unmarked(
    traced: Traced, client: aioredis.Redis, prefix: str
) -> None:
    key = f"{prefix}w"
    async with client.pipeline() as pipe:
        await pipe.watch(key)
        pipe.multi()
        pipe.set(key, b"mine")
        await client.set(key, b"theirs")  # another connection of the pool
        with pytest.raises(WatchError):
            await pipe.execute()
    watch, theirs, execute = traced.redis_spans()
    assert (watch.name, theirs.name, execute.name) == ("WATCH", "SET", "SET")
    assert execute.attributes is not None
    assert execute.attributes["db.redis.pipeline_length"] == 1
    assert execute.status.status_code == StatusCode.UNSET
    assert not execute.events


async def test_the_same_spans_as_the_contrib_instrumentation(
    traced: Traced, client: aioredis.Redis, prefix: str
) -> None:
    script = client.register_script("return redis.call('HGET', KEYS[1], ARGV[1])")
    await client.hset(f"{prefix}h", mapping={"a": "1"})
    assert await script(keys=[f"{prefix}h"], args=["a"]) == b"1"  # loaded: one EVALSHA

    async def pipeline() -> None:
        async with client.pipeline() as pipe:
            pipe.incr(f"{prefix}n")
            pipe.expire(f"{prefix}n", 60)
            await pipe.execute()

    async def wrong_type() -> None:
        with pytest.raises(ResponseError):
            await client.lpush(f"{prefix}h", b"x")

    cases: list[Callable[[], Awaitable[Any]]] = [
        lambda: client.get(f"{prefix}missing"),
        lambda: client.set(f"{prefix}k", b"v", nx=True, px=60_000),
        lambda: client.hgetall(f"{prefix}h"),
        lambda: script(keys=[f"{prefix}h"], args=["a"]),
        lambda: client.delete(*(f"{prefix}k{i}" for i in range(700))),
        pipeline,
        wrong_type,
    ]
    ours = []
    for case in cases:
        traced.spans()
        await case()
        ours.append([shape(s) for s in traced.redis_spans()])
    uninstrument_caches()
    RedisInstrumentor().instrument(tracer_provider=RoutingTracerProvider(traced.telemetry))
    try:
        theirs = []
        for case in cases:
            traced.spans()
            await case()
            theirs.append([shape(s) for s in traced.redis_spans()])
    finally:
        RedisInstrumentor().uninstrument()
    assert ours == theirs
    assert all(len(spans) == 1 for spans in ours)


# -- when there is no span -----------------------------------------------------------


async def test_a_sampled_out_parent_gives_no_span(
    traced: Traced, client: aioredis.Redis, prefix: str
) -> None:
    sampled_out = SpanContext(
        trace_id=0x1234, span_id=0x5678, is_remote=True, trace_flags=TraceFlags(0)
    )
    with trace.use_span(NonRecordingSpan(sampled_out)):
        assert await client.set(f"{prefix}k", b"v") is True
        async with client.pipeline() as pipe:
            pipe.get(f"{prefix}k")
            assert await pipe.execute() == [b"v"]
    assert traced.spans() == []
    # A telemetry that samples nothing: neither its own spans nor the commands record.
    nothing = Traced("sampled-out", sample_ratio=0.0)
    try:
        with serving(nothing.telemetry), nothing.telemetry.tracer.start_as_current_span("run"):
            assert await client.get(f"{prefix}k") == b"v"
        assert nothing.spans() == []
    finally:
        nothing.telemetry.shutdown()
    assert await client.get(f"{prefix}k") == b"v"  # and without a parent it records
    assert [s.name for s in traced.redis_spans()] == ["GET"]


async def test_suppressed_instrumentation_gives_no_span(
    traced: Traced, client: aioredis.Redis, prefix: str
) -> None:
    with suppress_instrumentation():
        await client.set(f"{prefix}k", b"v")
        async with client.pipeline() as pipe:
            pipe.get(f"{prefix}k")
            await pipe.execute()
    assert traced.spans() == []


async def test_spans_go_to_the_service_being_served(
    traced: Traced, client: aioredis.Redis, prefix: str
) -> None:
    other = Traced("other-service")
    try:
        with serving(other.telemetry):
            await client.get(f"{prefix}k")
        assert traced.spans() == []
        span = only(other.redis_spans())
        assert span.resource.attributes["service.name"] == "other-service"
    finally:
        other.telemetry.shutdown()


# -- switching it on and off ---------------------------------------------------------


async def test_instrumenting_twice_traces_each_command_once(
    traced: Traced, client: aioredis.Redis, prefix: str
) -> None:
    patched = {key: key[0].__dict__[key[1]] for key in ORIGINALS}
    later = Traced("later")
    try:
        instrument_caches(traced.telemetry)
        instrument_caches(later.telemetry)  # does nothing either: the first one stays
        assert {key: key[0].__dict__[key[1]] for key in ORIGINALS} == patched
        await client.get(f"{prefix}k")
        assert [s.name for s in traced.redis_spans()] == ["GET"]
        assert later.spans() == []
    finally:
        later.telemetry.shutdown()


async def test_uninstrument_restores_the_originals(
    traced: Traced, client: aioredis.Redis, prefix: str
) -> None:
    for (cls, name), original in ORIGINALS.items():
        assert cls.__dict__[name] is not original, f"{cls.__qualname__}.{name} not patched"
    uninstrument_caches()
    for (cls, name), original in ORIGINALS.items():
        assert cls.__dict__[name] is original, f"{cls.__qualname__}.{name}"
    await client.get(f"{prefix}k")
    async with client.pipeline() as pipe:
        pipe.get(f"{prefix}k")
        await pipe.execute()
    assert traced.spans() == []
    uninstrument_caches()  # twice: still fine
    instrument_caches(traced.telemetry)  # and back on
    await client.get(f"{prefix}k")
    assert [s.name for s in traced.redis_spans()] == ["GET"]


async def test_redis_is_left_to_the_contrib_when_it_is_on(
    traced: Traced, client: aioredis.Redis, prefix: str
) -> None:
    # As under `opentelemetry-instrument`: the contrib was on before agentflux started.
    uninstrument_caches()
    RedisInstrumentor().instrument(tracer_provider=RoutingTracerProvider(traced.telemetry))
    instrument_caches(traced.telemetry)
    await client.get(f"{prefix}k")
    span = only(traced.redis_spans())
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "opentelemetry.instrumentation.redis"
    uninstrument_caches()  # not ours to take off
    assert RedisInstrumentor().is_instrumented_by_opentelemetry
    await client.get(f"{prefix}k")
    assert len(traced.redis_spans()) == 1
    RedisInstrumentor().uninstrument()


async def test_a_contrib_switched_on_later_is_not_doubled(
    traced: Traced, client: aioredis.Redis, prefix: str
) -> None:
    RedisInstrumentor().instrument(tracer_provider=RoutingTracerProvider(traced.telemetry))
    await client.get(f"{prefix}k")
    span = only(traced.redis_spans())
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "opentelemetry.instrumentation.redis"
    RedisInstrumentor().uninstrument()
    await client.get(f"{prefix}k")
    span = only(traced.redis_spans())
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "agentflux.redis"


async def test_uninstrumenting_under_the_contrib_leaves_it_working(
    traced: Traced, client: aioredis.Redis, prefix: str
) -> None:
    RedisInstrumentor().instrument(tracer_provider=RoutingTracerProvider(traced.telemetry))
    uninstrument_caches()  # ours is wrapped by the contrib's: it stays, switched off
    await client.get(f"{prefix}k")
    span = only(traced.redis_spans())
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "opentelemetry.instrumentation.redis"
    RedisInstrumentor().uninstrument()
    await client.get(f"{prefix}k")
    assert traced.spans() == []
    uninstrument_caches()  # now on top again: taken off (the fixture checks the originals)
    for (cls, name), original in ORIGINALS.items():
        assert cls.__dict__[name] is original, f"{cls.__qualname__}.{name}"


# -- the sync client -----------------------------------------------------------------


def test_the_sync_client_is_traced(traced: Traced, settings: Settings, prefix: str) -> None:
    sync = redis.Redis.from_url(settings.redis_dsn)
    try:
        assert sync.set(f"{prefix}sync", b"v", ex=60) is True
        with sync.pipeline() as pipe:
            pipe.get(f"{prefix}sync")
            pipe.ttl(f"{prefix}sync")
            assert pipe.execute()[0] == b"v"
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            sync.lpush(f"{prefix}sync", b"x")
        with sync.pipeline() as pipe:
            pipe.watch(f"{prefix}sync")
            pipe.multi()
            pipe.delete(f"{prefix}sync")
            assert pipe.execute() == [1]
        spans = traced.redis_spans()
        assert [s.name for s in spans] == ["SET", "GET TTL", "LPUSH", "WATCH", "DEL"]
        set_, pipeline, failed, watch, delete = spans
        assert all(s.kind == SpanKind.CLIENT for s in spans)
        assert dict(set_.attributes or {}) == {
            "db.statement": "SET ? ? ? ?",
            "db.redis.args_length": 5,
            **endpoint(settings),
        }
        assert pipeline.attributes is not None
        assert pipeline.attributes["db.statement"] == "GET ?\nTTL ?"
        assert pipeline.attributes["db.redis.pipeline_length"] == 2
        assert failed.status.status_code == StatusCode.ERROR
        assert [e.name for e in failed.events] == ["exception"]
        assert watch.attributes is not None
        assert watch.attributes["db.statement"] == "WATCH ?"
        assert delete.attributes is not None
        assert delete.attributes["db.redis.pipeline_length"] == 1
    finally:
        sync.delete(f"{prefix}sync")
        sync.close()
