"""Per-hop benchmark: each hop done by bare clients, with the stock OpenTelemetry
instrumentation and through agentflux, in one run.

    .venv/bin/python -m bench.hops [--quick] [--hop NAME ...] [--json PATH]

Hops (`--hop`): grpc, kafka, rabbitmq, redis, memcached, guard. Every hop measures its
raw baseline, its stock baseline (gRPC, Kafka and RabbitMQ: the contrib instrumentation
a user would install, plus the context headers agentflux carries, added by hand; Redis:
the contrib instrumentation agentflux's own Redis tracing replaces) and its agentflux
variants in interleaved rounds (raw, stock, agentflux, ..., then the reverse order, and
so on) after a warm-up, so the noise of a shared machine lands on all of them alike. The
numbers to read are the ratios agentflux/raw and agentflux/stock from the same run;
absolute times on a shared 2-core machine prove little. Everything the bench creates
(topics, consumer groups, queues, exchanges, keys, span files) lives under a
`bench.<random>.` prefix or a temporary folder and is removed at the end, and every
client is closed. See bench/README.md for what each hop compares."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import functools
import gc
import ipaddress
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aio_pika
import grpc
import redis.asyncio as aioredis
from agentflux.v1 import events_pb2, gateway_pb2, gateway_pb2_grpc, tasks_pb2, types_pb2
from aio_pika.abc import AbstractIncomingMessage, DeliveryMode
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import Message as Record
from confluent_kafka.admin import AdminClient
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor
from opentelemetry.instrumentation.confluent_kafka import ConfluentKafkaInstrumentor
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.pymemcache import PymemcacheInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind

from interceptors import (
    EventConsumer,
    EventProducer,
    FluxContext,
    IdempotencyGuard,
    Incoming,
    Outcome,
    ServerContextInterceptor,
    TaskConsumer,
    TaskPublisher,
    Telemetry,
    bind,
    client_interceptors,
    instrument_caches,
    uninstrument_caches,
)
from interceptors._telemetry import RoutingTracerProvider
from services.runtime import lifecycle
from services.runtime.adapters.kafka import (
    KafkaConsumer,
    KafkaProducer,
    consumer_config,
    producer_config,
)
from services.runtime.adapters.memcached import connect_memcached, connect_memcached_async
from services.runtime.adapters.rabbitmq import PROTOBUF, RabbitConnection
from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings
from services.runtime.contracts import registry
from services.runtime.topology import (
    TaskTopology,
    TopicSpec,
    declare_task_topology,
    ensure_kafka_topics,
    task_topology,
)

CONTRACTS = registry()
EVENT = CONTRACTS.event(events_pb2.AgentRequested)
TASK = CONTRACTS.task(tasks_pb2.ToolTask)
AMQP_PRIORITY = CONTRACTS.amqp_priority(types_pb2.PRIORITY_HIGH)
SOURCE = "/agentflux/bench"
LOOPBACK = "127.0.0.1"
# Only to notice a broken hop: no healthy operation comes near it (a consumer group's
# first join is the slowest thing here, a few seconds).
TIMEOUT_S = 30.0
VALUE = b"v" * 256  # a small cached value (a prompt template, tool metadata)


# -- what to run ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """How much of one hop to run, per variant."""

    n: int  # timed operations
    rounds: int  # interleaved rounds the timed operations are split into
    warmup: int  # untimed operations first
    burst: int = 0  # operations in flight at once in a throughput round (0: none)
    burst_rounds: int = 0


# Sized so that all hops took about 60 s (--quick: about 15 s) on a quiet 2-core machine
# before the stock baselines, which make the gRPC, Kafka and RabbitMQ hops about a third
# longer (the Redis hop, with its stock and throughput rounds, takes about 30 s).
PLANS: dict[str, Plan] = {
    "grpc": Plan(5000, 10, 300, burst=200, burst_rounds=6),
    "kafka": Plan(2000, 10, 30, burst=300, burst_rounds=6),
    "rabbitmq": Plan(2000, 10, 30, burst=300, burst_rounds=6),
    "redis": Plan(20000, 10, 500, burst=200, burst_rounds=6),
    "memcached": Plan(20000, 10, 500),
    "guard": Plan(10000, 10, 300),
}
QUICK_PLANS: dict[str, Plan] = {
    "grpc": Plan(1200, 6, 100, burst=100, burst_rounds=4),
    "kafka": Plan(400, 4, 10, burst=100, burst_rounds=2),
    "rabbitmq": Plan(400, 4, 10, burst=100, burst_rounds=2),
    "redis": Plan(3000, 6, 100, burst=100, burst_rounds=4),
    "memcached": Plan(3000, 6, 100),
    "guard": Plan(1800, 6, 50),
}
HOP_NAMES = tuple(PLANS)
# A decoded payload: what the stock consumers check the headers against.
M = TypeVar("M", events_pb2.AgentRequested, tasks_pb2.ToolTask)

Op = Callable[[], Awaitable[None]]
Burst = Callable[[int], Awaitable[None]]
Hook = Callable[[], None]

RAW, STOCK, AGENTFLUX = "raw", "stock", "agentflux"  # Variant.kind


@dataclass(slots=True)
class Variant:
    """One way of doing a hop: `op` is one timed operation (a round trip, a GET);
    `burst(k)` puts k of them in flight at once; `enter`/`leave` run around each of
    its rounds, untimed (switching a process-wide instrumentation on and off). `kind`
    says what it is beside the others: the raw baseline, a stock baseline, or agentflux
    (references that are neither count as agentflux, and are labelled so)."""

    name: str
    op: Op
    burst: Burst | None = None
    enter: Hook | None = None
    leave: Hook | None = None
    kind: str = AGENTFLUX


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- measuring ----------------------------------------------------------------------


def _orders(variants: Sequence[Variant], rounds: int) -> Iterator[Sequence[Variant]]:
    """raw, a, b / b, a, raw / raw, a, b ...: no variant always runs first or last."""
    for r in range(rounds):
        yield variants if r % 2 == 0 else variants[::-1]


@contextlib.contextmanager
def _round_of(variant: Variant) -> Iterator[None]:
    if variant.enter is not None:
        variant.enter()
    # Each variant pays for its own garbage, not for the previous round's.
    gc.collect()
    try:
        yield
    finally:
        if variant.leave is not None:
            variant.leave()


async def measure(variants: Sequence[Variant], plan: Plan) -> dict[str, list[float]]:
    """Latency samples (ms) of each variant: warm-up, then interleaved timed rounds."""
    for v in variants:
        with _round_of(v):
            for _ in range(plan.warmup):
                await v.op()
    per_round = max(1, -(-plan.n // plan.rounds))
    samples: dict[str, list[float]] = {v.name: [] for v in variants}
    clock = time.perf_counter_ns
    for order in _orders(variants, plan.rounds):
        for v in order:
            sink = samples[v.name]
            op = v.op
            with _round_of(v):
                for _ in range(per_round):
                    t0 = clock()
                    await op()
                    sink.append((clock() - t0) / 1e6)
    return samples


@dataclass(slots=True)
class Bursts:
    """Per variant and throughput round: operations per second, and the process's CPU
    time per operation in µs (every thread: librdkafka's, grpc's and the span
    processors' count too, as they would in a service)."""

    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu_us: dict[str, list[float]] = field(default_factory=dict)
    warmup: int = 0  # operations of the untimed warm-up burst


async def measure_bursts(variants: Sequence[Variant], plan: Plan) -> Bursts:
    """Operations per second and CPU per operation of each variant with `plan.burst`
    in flight, per round."""
    bursty = [v for v in variants if v.burst is not None]
    if not plan.burst or not plan.burst_rounds or len(bursty) < 2:
        return Bursts()
    out = Bursts(warmup=min(plan.burst, 50))
    for v in bursty:  # warm the batching paths too
        assert v.burst is not None
        with _round_of(v):
            await v.burst(out.warmup)
    for v in bursty:
        out.rates[v.name] = []
        out.cpu_us[v.name] = []
    for order in _orders(bursty, plan.burst_rounds):
        for v in order:
            assert v.burst is not None
            with _round_of(v):
                c0 = time.process_time()
                t0 = time.perf_counter()
                await v.burst(plan.burst)
                wall = time.perf_counter() - t0
                cpu = time.process_time() - c0
            out.rates[v.name].append(plan.burst / wall)
            out.cpu_us[v.name].append(cpu / plan.burst * 1e6)
    return out


@dataclass(frozen=True, slots=True)
class Stats:
    """Latency of one variant, in ms; `ops_per_s` is serial (one operation at a time)."""

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    ops_per_s: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        q = statistics.quantiles(samples, n=100, method="inclusive")
        total = sum(samples)
        return cls(
            len(samples), q[49], q[89], q[98], total / len(samples), len(samples) / total * 1e3
        )


def _ratio(value: float, base: float | None) -> float | None:
    return None if base is None else value / base


def _median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


@dataclass(frozen=True, slots=True)
class Row:
    """The latency of one variant of a hop beside the raw baseline of the same run and,
    for a variant that is not itself a baseline, beside the hop's stock baseline."""

    hop: str
    variant: str
    kind: str
    stats: Stats
    raw: Stats
    stock: Stats | None = None
    stock_variant: str = ""

    @property
    def label(self) -> str:
        return f"{self.hop} [{self.variant}]"

    @property
    def ratio_p50(self) -> float:
        return self.stats.p50 / self.raw.p50

    @property
    def ratio_p99(self) -> float:
        return self.stats.p99 / self.raw.p99

    @property
    def stock_ratio_p50(self) -> float | None:
        return _ratio(self.stats.p50, self.stock.p50 if self.stock else None)

    @property
    def stock_ratio_p99(self) -> float | None:
        return _ratio(self.stats.p99, self.stock.p99 if self.stock else None)

    def to_json(self) -> dict[str, Any]:
        return {
            "hop": self.hop,
            "variant": self.variant,
            "kind": self.kind,
            "stats": asdict(self.stats),
            "raw": asdict(self.raw),
            "ratio_p50": self.ratio_p50,
            "ratio_p99": self.ratio_p99,
            "stock_variant": self.stock_variant or None,
            "stock": asdict(self.stock) if self.stock else None,
            "stock_ratio_p50": self.stock_ratio_p50,
            "stock_ratio_p99": self.stock_ratio_p99,
        }


@dataclass(frozen=True, slots=True)
class RateRow:
    """Throughput and CPU per operation of one variant beside the raw baseline and (as
    in `Row`) the stock one; medians of the rounds."""

    hop: str
    variant: str
    kind: str
    in_flight: int
    rounds: list[float]
    cpu_rounds: list[float]
    raw_rounds: list[float]
    raw_cpu_rounds: list[float]
    stock_rounds: list[float] | None = None
    stock_cpu_rounds: list[float] | None = None
    stock_variant: str = ""

    @property
    def rate(self) -> float:
        return statistics.median(self.rounds)

    @property
    def cpu_us(self) -> float:
        return statistics.median(self.cpu_rounds)

    @property
    def ratio(self) -> float:
        return self.rate / statistics.median(self.raw_rounds)

    @property
    def cpu_ratio(self) -> float:
        return self.cpu_us / statistics.median(self.raw_cpu_rounds)

    @property
    def stock_ratio(self) -> float | None:
        return _ratio(self.rate, _median(self.stock_rounds))

    @property
    def stock_cpu_ratio(self) -> float | None:
        return _ratio(self.cpu_us, _median(self.stock_cpu_rounds))

    def to_json(self) -> dict[str, Any]:
        return {
            "hop": self.hop,
            "variant": self.variant,
            "kind": self.kind,
            "in_flight": self.in_flight,
            "ops_per_s": self.rate,
            "cpu_us_per_op": self.cpu_us,
            "ratio": self.ratio,
            "cpu_ratio": self.cpu_ratio,
            "stock_variant": self.stock_variant or None,
            "stock_ratio": self.stock_ratio,
            "stock_cpu_ratio": self.stock_cpu_ratio,
            "rounds": self.rounds,
            "cpu_us_rounds": self.cpu_rounds,
            "raw_rounds": self.raw_rounds,
            "raw_cpu_us_rounds": self.raw_cpu_rounds,
        }


@dataclass(slots=True)
class HopResult:
    name: str
    rows: list[Row]
    rates: list[RateRow] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    loadavg: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())
    stock_variant: str = ""  # what the hop's "vs stock" columns compare against
    ops: dict[str, int] = field(default_factory=dict)  # operations done per variant


async def run_hop(
    name: str,
    label: str,
    variants: Sequence[Variant],
    plan: Plan,
    notes: dict[str, Any],
    *,
    stock: str = "",
) -> HopResult:
    """Measures `variants` (the first is the raw baseline) and compares the others to it
    and, those that are not baselines themselves, to the stock variant named `stock`."""
    samples = await measure(variants, plan)
    bursts = await measure_bursts(variants, plan)
    raw = variants[0].name
    result = HopResult(name, [], notes=notes, stock_variant=stock)
    for v in variants:
        result.ops[v.name] = plan.warmup + len(samples[v.name])
        if v.name in bursts.rates:
            result.ops[v.name] += bursts.warmup + plan.burst * len(bursts.rates[v.name])
    for v in variants:
        against = stock if stock and v.kind == AGENTFLUX else ""
        result.rows.append(
            Row(
                label,
                v.name,
                v.kind,
                Stats.of(samples[v.name]),
                Stats.of(samples[raw]),
                Stats.of(samples[against]) if against else None,
                against,
            )
        )
        if raw in bursts.rates and v.name in bursts.rates:
            result.rates.append(
                RateRow(
                    label,
                    v.name,
                    v.kind,
                    plan.burst,
                    bursts.rates[v.name],
                    bursts.cpu_us[v.name],
                    bursts.rates[raw],
                    bursts.cpu_us[raw],
                    bursts.rates.get(against) if against else None,
                    bursts.cpu_us.get(against) if against else None,
                    against,
                )
            )
    return result


def record_spans(result: HopResult, counts: Mapping[str, int]) -> None:
    """Puts the spans each traced variant exported, in all and per operation, in the
    notes. A traced variant that exported none is broken (an instrumentation that does
    not see the bench's calls measures nothing): the hop fails rather than report it."""
    result.notes["spans"] = dict(counts)
    result.notes["spans_per_op"] = {
        name: round(count / result.ops[name], 2) for name, count in counts.items()
    }
    silent = [name for name, count in counts.items() if count == 0]
    if silent:
        raise RuntimeError(f"no spans exported by: {', '.join(silent)}")


# -- telemetry and clean-up helpers ------------------------------------------------------


class CountingExporter(SpanExporter):
    """Counts the spans, then drops them: the cost of tracing without any output."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def counting_telemetry(stack: AsyncExitStack, service: str) -> tuple[Telemetry, CountingExporter]:
    """A service's telemetry (batched export, as `Telemetry.create` always does) whose
    spans are counted and dropped; shut down with the hop."""
    counter = CountingExporter()
    telemetry = Telemetry.create(service, exporters=[counter])
    stack.callback(telemetry.shutdown)
    return telemetry, counter


def exported(telemetry: Telemetry, counter: CountingExporter) -> int:
    telemetry.flush()
    return counter.count


# -- the stock baseline: contrib instrumentation, context by hand ----------------------


def stock_provider(stack: AsyncExitStack, service: str) -> tuple[TracerProvider, CountingExporter]:
    """What a user of the contrib instrumentations sets up: the SDK's TracerProvider
    exporting through a BatchSpanProcessor with the delay `Telemetry.create` uses, here
    into a counter that drops the spans. No agentflux code; shut down with the hop."""
    counter = CountingExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(counter, schedule_delay_millis=500))
    stack.callback(provider.shutdown)
    return provider, counter


def stock_exported(provider: TracerProvider, counter: CountingExporter) -> int:
    provider.force_flush()
    return counter.count


@dataclass(frozen=True, slots=True)
class Handling:
    """The context of the work being done, as a stock user would keep it: a contextvar
    of their own (`_handling`) rather than agentflux's `FluxContext`, with the fields the
    hops carry. `event_id` is the id of the call or message being handled."""

    correlation_id: str
    event_id: str
    causation_id: str = ""
    tenant_id: str = ""
    run_id: str = ""
    deadline: float | None = None

    def attributes(self) -> dict[str, str]:
        """The context as span attributes, empty fields left out (as agentflux does)."""
        pairs = {
            "app.correlation_id": self.correlation_id,
            "app.causation_id": self.causation_id,
            "app.tenant_id": self.tenant_id,
            "app.run_id": self.run_id,
        }
        return {k: v for k, v in pairs.items() if v}


_handling: contextvars.ContextVar[Handling | None] = contextvars.ContextVar(
    "bench_handling", default=None
)
# The stock variants check every id that arrives or leaves, as agentflux does, with one
# pattern (agentflux's checks differ per field; the work is one match per value).
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@contextlib.contextmanager
def handling(tenant_id: str = "", run_id: str = "") -> Iterator[None]:
    """Binds one context for agentflux (`bind`) and for the stock variants (`_handling`)
    around a hop's rounds, as in a service handling a run: calls and messages then carry
    correlation, causation, tenant and run on both sides alike (outside any context,
    agentflux would send only the ids it makes up). The messaging hops leave tenant and
    run to the payload: the consumers refuse a header that disagrees with it."""
    outer = Handling(uuid.uuid4().hex, uuid.uuid4().hex, tenant_id=tenant_id, run_id=run_id)
    token = _handling.set(outer)
    try:
        flux = FluxContext(
            correlation_id=outer.correlation_id,
            event_id=outer.event_id,
            tenant_id=tenant_id,
            run_id=run_id,
        )
        with bind(flux):
            yield
    finally:
        _handling.reset(token)


def stock_headers(type_name: str, tenant_id: str, run_id: str) -> dict[str, str]:
    """The CloudEvents attributes and context agentflux puts on a message, by hand. The
    contrib instrumentations inject `traceparent` themselves: adding it here as well
    would send it twice (the Kafka one appends to the header list)."""
    outer = _handling.get()
    headers = {
        "ce_specversion": "1.0",
        "ce_type": type_name,
        "ce_source": SOURCE,
        "ce_id": uuid.uuid4().hex,
        "ce_time": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "content-type": PROTOBUF,
        "ce_correlationid": outer.correlation_id if outer else uuid.uuid4().hex,
    }
    if outer is not None:  # caused by the work being handled
        headers["ce_causationid"] = outer.event_id
        tenant_id = outer.tenant_id or tenant_id
        run_id = outer.run_id or run_id
    # Payload values become headers: checked here, at their source.
    for key, value in (("ce_tenantid", tenant_id), ("ce_runid", run_id)):
        if value:
            if not _ID.fullmatch(value):
                raise ValueError(f"{key} {value!r} is not a well-formed id")
            headers[key] = value
    return headers


def stock_received(headers: Mapping[str, str]) -> Handling:
    """The context of a message, read by hand: each id checked, a malformed or missing
    one dropped (a fresh id where one is needed: a queued message cannot be refused back
    to its sender), the deadline read."""

    def one(key: str) -> str:
        value = headers.get(key, "")
        return value if value and _ID.fullmatch(value) else ""

    deadline_ms = headers.get("ce_deadline", "")
    return Handling(
        one("ce_correlationid") or uuid.uuid4().hex,
        one("ce_id") or uuid.uuid4().hex,
        one("ce_causationid"),
        one("ce_tenantid"),
        one("ce_runid"),
        int(deadline_ms) / 1000 if deadline_ms.isdigit() else None,
    )


def stock_handle(headers: Mapping[str, str], span: Span, payload: M) -> M:
    """What a stock consumer does around its handler, by hand: the context read from the
    headers, put on the span, checked against the decoded payload and bound while the
    handler runs (the bench's handler does nothing)."""
    ctx = stock_received(headers)
    span.set_attributes(ctx.attributes())
    token = _handling.set(ctx)
    try:
        for name, said in (("tenant_id", ctx.tenant_id), ("run_id", ctx.run_id)):
            if said and said != getattr(payload, name):
                raise RuntimeError(f"header {name} {said!r} disagrees with the payload")
        return payload
    finally:
        _handling.reset(token)


async def quietly(what: str, action: Awaitable[Any]) -> None:
    """Runs a clean-up step; a failure is reported (naming what may be left) but does
    not stop the other steps."""
    try:
        await action
    except Exception as exc:
        log(f"  clean-up of {what} failed: {exc!r}")


async def purge_redis(client: aioredis.Redis, prefix: str) -> int:
    """Deletes every key under `prefix`; returns how many."""
    count = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(match=prefix + "*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            count += await client.unlink(*batch)
            batch = []
    if batch:
        count += await client.unlink(*batch)
    return count


def redis_for(stack: AsyncExitStack, settings: Settings, prefix: str) -> aioredis.Redis:
    """A Redis client (the project's factory) whose keys under `prefix` are deleted and
    which is closed when the hop ends."""
    client = connect_redis(settings)
    stack.push_async_callback(client.aclose)

    async def purge() -> None:
        await quietly(f"Redis keys {prefix}*", purge_redis(client, prefix))

    stack.push_async_callback(purge)
    return client


# -- 1. gRPC unary -------------------------------------------------------------------


class _Gateway(gateway_pb2_grpc.AgentGatewayServicer):
    """A trivial gateway: GetRun answers at once, with no I/O."""

    async def GetRun(  # noqa: N802 - the generated method name
        self, request: gateway_pb2.GetRunRequest, context: Any
    ) -> gateway_pb2.GetRunResponse:
        run = types_pb2.Run(run_id=request.run_id, status=types_pb2.RUN_STATUS_RUNNING)
        return gateway_pb2.GetRunResponse(run=run)


class _PassThroughServer(grpc.aio.ServerInterceptor):
    """Does nothing: what any server interceptor costs in grpc.aio."""

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        return await continuation(details)


class _PassThroughClient(grpc.aio.UnaryUnaryClientInterceptor):
    """Does nothing: what any client interceptor costs in grpc.aio."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(details, request)


class _StockGateway(_Gateway):
    """The trivial gateway plus, by hand, the context work agentflux's server
    interceptor does, as a stock user would write it in the handler (the contrib
    interceptor already wraps it, so no second interceptor is paid for): read and check
    the context metadata, make up the missing ids, echo the correlation and request ids
    as initial metadata, read the deadline, put the context on the SERVER span and bind
    it while the handler runs."""

    async def GetRun(  # noqa: N802 - the generated method name
        self, request: gateway_pb2.GetRunRequest, context: Any
    ) -> gateway_pb2.GetRunResponse:
        got = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        for key in _STOCK_GRPC_KEYS:
            value = got.get(key)
            if value is not None and not _ID.fullmatch(value):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {key}")
        remaining = context.time_remaining()
        ctx = Handling(
            got.get("x-correlation-id") or uuid.uuid4().hex,
            got.get("x-request-id") or uuid.uuid4().hex,
            got.get("x-causation-id", ""),
            got.get("x-tenant-id", ""),
            got.get("x-run-id", ""),
            None if remaining is None else time.time() + remaining,
        )
        await context.send_initial_metadata(
            (("x-correlation-id", ctx.correlation_id), ("x-request-id", ctx.event_id))
        )
        trace.get_current_span().set_attributes(ctx.attributes())
        token = _handling.set(ctx)
        try:
            return await super().GetRun(request, context)
        finally:
            _handling.reset(token)


_STOCK_GRPC_KEYS = ("x-correlation-id", "x-causation-id", "x-request-id", "x-tenant-id", "x-run-id")


def stock_call_metadata() -> tuple[tuple[str, str], ...]:
    """The context metadata agentflux's client interceptor sends, added to each call by
    hand: the correlation of the work being handled, a fresh request id caused by it,
    tenant and run (`traceparent` comes from the contrib interceptor)."""
    outer = _handling.get()
    request_id = uuid.uuid4().hex
    if outer is None:  # the edge: a new correlation
        return (("x-correlation-id", uuid.uuid4().hex), ("x-request-id", request_id))
    pairs = [
        ("x-correlation-id", outer.correlation_id),
        ("x-causation-id", outer.event_id),
        ("x-request-id", request_id),
    ]
    if outer.tenant_id:
        pairs.append(("x-tenant-id", outer.tenant_id))
    if outer.run_id:
        pairs.append(("x-run-id", outer.run_id))
    return tuple(pairs)


def stock_timeout() -> float:
    """The call's timeout capped by the bound deadline, as agentflux's client does."""
    outer = _handling.get()
    if outer is None or outer.deadline is None:
        return TIMEOUT_S
    return min(TIMEOUT_S, max(0.0, outer.deadline - time.time()))


def stock_grpc_interceptors(
    provider: TracerProvider,
) -> tuple[list[grpc.aio.ServerInterceptor], list[grpc.aio.ClientInterceptor]]:
    """`opentelemetry-instrumentation-grpc`'s aio server interceptor and client
    interceptors (one per arity), on `provider`."""
    # The contrib factories carry no annotations.
    server = aio_server_interceptor(tracer_provider=provider)  # type: ignore[no-untyped-call]
    client = aio_client_interceptors(tracer_provider=provider)  # type: ignore[no-untyped-call]
    return [server], list(client)


async def _grpc_pair(
    stack: AsyncExitStack,
    server_side: Sequence[grpc.aio.ServerInterceptor] = (),
    client_side: Sequence[grpc.aio.ClientInterceptor] = (),
    gateway: _Gateway | None = None,
) -> gateway_pb2_grpc.AgentGatewayStub:
    """A grpc.aio server on loopback and a client channel to it."""
    server = grpc.aio.server(interceptors=list(server_side))
    # Only GetRun is served; the stub's other methods are never called.
    servicer = gateway or _Gateway()  # type: ignore[abstract]
    gateway_pb2_grpc.add_AgentGatewayServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    await server.start()
    stack.push_async_callback(server.stop, None)
    channel = grpc.aio.insecure_channel(
        f"{LOOPBACK}:{port}", interceptors=list(client_side) or None
    )
    stack.push_async_callback(channel.close)
    return gateway_pb2_grpc.AgentGatewayStub(channel)


def _unary(stub: gateway_pb2_grpc.AgentGatewayStub, *, by_hand: bool = False) -> tuple[Op, Burst]:
    """GetRun once, or k at once; `by_hand` adds the stock variant's context metadata
    and deadline to each call."""
    # grpc.aio calls are awaitables; the generated stubs type them as plain responses.
    get_run: Any = stub.GetRun
    request = gateway_pb2.GetRunRequest(run_id="run-bench")

    def call() -> Any:
        if by_hand:
            return get_run(request, timeout=stock_timeout(), metadata=stock_call_metadata())
        return get_run(request, timeout=TIMEOUT_S)

    async def op() -> None:
        await call()

    async def burst(k: int) -> None:
        await asyncio.gather(*(call() for _ in range(k)))

    return op, burst


def _count_lines(folder: Path) -> int:
    """Span records in a span-store folder (a sanity check that spans were written)."""
    return sum(len(p.read_bytes().splitlines()) for p in folder.glob("*.jsonl"))


async def bench_grpc(
    settings: Settings, plan: Plan, stack: AsyncExitStack, prefix: str
) -> HopResult:
    """grpc.aio unary GetRun: bare server and client vs the contrib grpc instrumentation
    with the context metadata by hand (stock) vs agentflux's server and client
    interceptors, spans dropped (the tracing cost alone) and spans written to the
    JSON-lines span store (the development default) in a temporary folder. The calls
    are made in a bound context (see `handling`)."""
    dropped, counter = counting_telemetry(stack, "bench-grpc")
    store = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentflux-bench-")))
    stored = Telemetry.create("bench-grpc", span_store=store)
    stack.callback(stored.shutdown)  # before the folder goes (the stack unwinds LIFO)
    provider, stock_counter = stock_provider(stack, "bench-grpc")
    stock_gateway = _StockGateway()  # type: ignore[abstract]  # only GetRun is served

    stubs = {
        "raw": await _grpc_pair(stack),
        "stock": await _grpc_pair(stack, *stock_grpc_interceptors(provider), stock_gateway),
        # A reference, not agentflux: the part of the cost that is grpc.aio's own
        # interceptor machinery, whatever the interceptors do.
        "no-op interceptors (reference)": await _grpc_pair(
            stack, [_PassThroughServer()], [_PassThroughClient()]
        ),
        "interceptors, spans dropped": await _grpc_pair(
            stack, [ServerContextInterceptor(dropped)], client_interceptors(dropped)
        ),
        "interceptors, JSON-lines store": await _grpc_pair(
            stack, [ServerContextInterceptor(stored)], client_interceptors(stored)
        ),
    }
    kinds = {"raw": RAW, "stock": STOCK}
    variants = [
        Variant(name, *_unary(stub, by_hand=name == "stock"), kind=kinds.get(name, AGENTFLUX))
        for name, stub in stubs.items()
    ]
    with handling(tenant_id="bench", run_id="run-bench"):
        result = await run_hop("grpc", "grpc unary", variants, plan, {}, stock="stock")
    stored.flush()
    spans = {
        "stock": stock_exported(provider, stock_counter),
        "interceptors, spans dropped": exported(dropped, counter),
        "interceptors, JSON-lines store": _count_lines(store),
    }
    record_spans(result, spans)
    return result


# -- 2. Kafka produce -> consume ---------------------------------------------------------


def make_request() -> events_pb2.AgentRequested:
    event = events_pb2.AgentRequested(
        run_id=f"run-{uuid.uuid4().hex[:12]}",
        tenant_id="bench",
        conversation_id="conv-bench",
        prompt="What is 6 * 7?",
        priority=types_pb2.PRIORITY_HIGH,
    )
    event.request_time.GetCurrentTime()
    return event


def _decode(record: Record) -> events_pb2.AgentRequested:
    # Every variant decodes what it consumed, as any real consumer does.
    return events_pb2.AgentRequested.FromString(record.value() or b"")


def _run_id(record: Record) -> str:
    return _decode(record).run_id


class RawKafka:
    """confluent-kafka used as a bare program would: blocking calls on this thread, the
    adapters' producer and consumer configs (linger 1 ms, manual offset store)."""

    def __init__(self, settings: Settings, topic: str, group: str) -> None:
        self.topic = topic
        self.producer = Producer(producer_config(settings))
        self.consumer = Consumer(consumer_config(settings, group))
        self.consumer.subscribe([topic])
        self.group = group
        self.offsets = self.consumer  # where offsets are stored
        self.unacked = 0
        self.failed: list[KafkaError] = []

    def _report(self, err: KafkaError | None, _record: Record) -> None:
        self.unacked -= 1
        if err is not None:
            self.failed.append(err)

    def _headers(self, event: events_pb2.AgentRequested) -> list[tuple[str, bytes]] | None:
        return None

    def _produce(self, event: events_pb2.AgentRequested) -> None:
        value = event.SerializeToString()
        key = EVENT.key(event)
        headers = self._headers(event)
        while True:
            try:
                # The key by name: the contrib producer proxy passes the positional
                # arguments after the topic on as if the topic were one of them.
                self.producer.produce(
                    self.topic,
                    value,
                    key=key,
                    # A copy per attempt: the contrib instrumentation appends traceparent.
                    headers=None if headers is None else list(headers),
                    on_delivery=self._report,
                )
                break
            except BufferError:
                self.producer.poll(0.005)
        self.unacked += 1

    def _take(self, n: int, deadline: float) -> list[Record]:
        """Waits for one record, then takes up to n - 1 more already fetched."""
        first = None
        while first is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no record on {self.topic}")
            first = self.consumer.poll(min(1.0, left))
        batch = [first, *(self.consumer.consume(n - 1, 0) if n > 1 else ())]
        out = []
        for record in batch:
            err = record.error()
            if err is None:
                out.append(record)
            elif err.fatal() or not err.retriable():
                raise KafkaException(err)
        return out

    def _accept(self, record: Record) -> str:
        """Handles a record (decodes it) and stores its offset; returns its run id."""
        run_id = _run_id(record)
        self.offsets.store_offsets(message=record)
        return run_id

    def _receive(self, n: int, deadline: float) -> list[str]:
        """Takes up to n records (at least one) and accepts them; their run ids."""
        return [self._accept(record) for record in self._take(n, deadline)]

    def _acked(self, deadline: float) -> None:
        while self.unacked and time.monotonic() < deadline:
            self.producer.poll(0.05)  # returns as soon as a report is there
        if self.failed:
            raise KafkaException(self.failed[0])
        if self.unacked:
            raise TimeoutError(f"{self.unacked} records on {self.topic} not acknowledged")

    async def op(self) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        event = make_request()
        self._produce(event)
        while event.run_id not in self._receive(1, deadline):
            pass
        self._acked(deadline)

    async def burst(self, k: int) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        for _ in range(k):
            self._produce(make_request())
        self.producer.poll(0)
        got = 0
        while got < k:
            got += len(self._receive(k - got, deadline))
        self._acked(deadline)

    async def close(self) -> None:
        self.producer.flush(10)
        self.consumer.close()


def _stock_headers_of(record: Record) -> dict[str, str]:
    raw: Any = record.headers() or ()  # (str, bytes) pairs; the stubs say otherwise
    return {k: v.decode("utf-8", "replace") for k, v in raw if v}


def stock_process(tracer: trace.Tracer, group: str, record: Record, offsets: Consumer) -> str:
    """What a stock consumer does with each record when it makes a span per record, as
    agentflux does: a CONSUMER span parented to the producer's trace, the context handled
    by hand (`stock_handle`), the offset stored on `offsets`; returns the run id."""
    headers = _stock_headers_of(record)
    topic = record.topic() or ""
    attributes = {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": "process",
        "messaging.message.id": headers.get("ce_id", ""),
        "messaging.consumer.group.name": group,
        "messaging.destination.partition.id": str(record.partition()),
        "messaging.kafka.offset": record.offset() or 0,
    }
    with tracer.start_as_current_span(
        f"process {topic}",
        context=propagate.extract(headers),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    ) as span:
        event = stock_handle(headers, span, _decode(record))
        offsets.store_offsets(message=record)
    return event.run_id


class StockKafka(RawKafka):
    """The same bare program with `opentelemetry-instrumentation-confluent-kafka`: the
    producer and consumer wrapped by `instrument_producer`/`instrument_consumer` (a
    PRODUCER span per record; per poll or consume call, a "recv" span and a "process"
    span linked to the records' producers, left current until the next call), and the
    CloudEvents headers and context by hand. `span_per_message` adds what the contrib
    consumer does not do and agentflux does: a CONSUMER span per record, parented to
    the producer's trace.

    `ConfluentKafkaInstrumentor().instrument()` would not do here: it swaps the classes
    in the `confluent_kafka` module, which code that imported `Producer` before (the
    adapters, this bench) never sees; it would trace nothing."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        group: str,
        provider: TracerProvider,
        *,
        span_per_message: bool,
    ) -> None:
        super().__init__(settings, topic, group)
        self.producer = ConfluentKafkaInstrumentor.instrument_producer(
            self.producer, tracer_provider=provider
        )
        self.consumer = ConfluentKafkaInstrumentor.instrument_consumer(
            self.consumer, tracer_provider=provider
        )
        # The consumer proxy forwards neither `store_offsets` nor most other methods (the
        # call lands on an uninitialised client: "Consumer closed"): store on the client.
        self.offsets = ConfluentKafkaInstrumentor.uninstrument_consumer(self.consumer)
        self.tracer = provider.get_tracer("bench.stock")
        self.span_per_message = span_per_message
        # The contrib consumer attaches its "process" span to the caller's context until
        # the next poll. The consumer side runs in a context of its own, as it would in
        # a service of its own: the span then neither parents this hop's producer spans
        # nor leaks into the other variants' rounds.
        self.consuming = contextvars.Context()

    def _headers(self, event: events_pb2.AgentRequested) -> list[tuple[str, bytes]]:
        headers = stock_headers(EVENT.type_name, event.tenant_id, event.run_id)
        return [(k, v.encode()) for k, v in headers.items()]

    def _accept(self, record: Record) -> str:
        if self.span_per_message:
            return stock_process(self.tracer, self.group, record, self.offsets)
        # The contrib "process" span of this poll is the current one.
        event = stock_handle(_stock_headers_of(record), trace.get_current_span(), _decode(record))
        self.offsets.store_offsets(message=record)
        return event.run_id

    def _receive(self, n: int, deadline: float) -> list[str]:
        return self.consuming.run(super()._receive, n, deadline)

    async def close(self) -> None:
        self.producer.flush(10)
        self.consuming.run(self.consumer.close)  # ends the open "process" span there


class AdapterKafka:
    """The project's adapters: `KafkaProducer.produce` awaits the broker's ack on the
    event loop, `KafkaConsumer.consume` polls on its executor thread."""

    def __init__(self, settings: Settings, topic: str, group: str) -> None:
        self.topic = topic
        self.producer = KafkaProducer(settings)
        self.consumer = KafkaConsumer(settings, group, [topic])

    async def _take(self, n: int, deadline: float) -> list[Record]:
        while True:
            records = await self.consumer.consume(n, timeout=1.0)
            if records:
                return records
            if time.monotonic() > deadline:
                raise TimeoutError(f"no record on {self.topic}")

    def _send(self, event: events_pb2.AgentRequested) -> Awaitable[Any]:
        return self.producer.produce(self.topic, event.SerializeToString(), key=EVENT.key(event))

    def _accept(self, record: Record) -> str:
        """Handles a record (decodes it) and stores its offset; returns its run id."""
        run_id = _run_id(record)
        self.consumer.store(record)
        return run_id

    async def _receive(self, run_id: str, deadline: float) -> None:
        seen = ""
        while seen != run_id:
            for record in await self._take(1, deadline):
                seen = self._accept(record)

    async def _receive_many(self, k: int, deadline: float) -> None:
        got = 0
        while got < k:
            for record in await self._take(k - got, deadline):
                self._accept(record)
                got += 1

    async def op(self) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        event = make_request()
        # Producer and consumer work independently, as they do in two services.
        await _both(self._send(event), self._receive(event.run_id, deadline))

    async def burst(self, k: int) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        sends = asyncio.gather(*(self._send(make_request()) for _ in range(k)))
        await _both(sends, self._receive_many(k, deadline))

    async def close(self) -> None:
        await self.consumer.close()
        await self.producer.close()


class FluxKafka(AdapterKafka):
    """The interceptors on the same adapters: `EventProducer.emit` (headers, PRODUCER
    span) and `EventConsumer.handle` (context, CONSUMER span, optional dedupe)."""

    def __init__(
        self,
        settings: Settings,
        prefix: str,
        group: str,
        telemetry: Telemetry,
        guard: IdempotencyGuard | None,
    ) -> None:
        super().__init__(settings, prefix + EVENT.topic, group)
        self.emitter = EventProducer(self.producer, telemetry, source=SOURCE, topic_prefix=prefix)
        self.events = EventConsumer(
            self.consumer,
            telemetry,
            group=group,
            dead_letters=self.producer,
            guard=guard,
            topic_prefix=prefix,
        )
        self.last = ""

    async def _handler(self, incoming: Incoming) -> bytes | None:
        event = incoming.event
        assert isinstance(event, events_pb2.AgentRequested)
        self.last = event.run_id
        return None

    async def _handle(self, record: Record) -> None:
        outcome = await self.events.handle(record, self._handler)
        if outcome is not Outcome.HANDLED:
            raise RuntimeError(f"record was {outcome.value}, not handled")
        # `handle` no longer stores the offset (only `run` tracks offsets): store it here,
        # as the raw and adapter variants do, so every variant does the same work.
        self.consumer.store(record)

    def _send(self, event: events_pb2.AgentRequested) -> Awaitable[Any]:
        return self.emitter.emit(event)

    async def _receive(self, run_id: str, deadline: float) -> None:
        while self.last != run_id:
            for record in await self._take(1, deadline):
                await self._handle(record)

    async def _receive_many(self, k: int, deadline: float) -> None:
        got = 0
        while got < k:
            for record in await self._take(k - got, deadline):
                await self._handle(record)
                got += 1


class StockAdapterKafka(AdapterKafka):
    """The stock instrumentation on the project's asyncio adapters: what an asyncio
    service that takes the contrib instrumentation gets, on the same client code as
    agentflux (produce awaiting the broker's ack, `consume` on the executor thread). The
    adapters' librdkafka clients are wrapped by `instrument_producer` and
    `instrument_consumer`; the CloudEvents headers and context are added by hand and each
    record gets a CONSUMER span, as in `StockKafka` with `span_per_message`. Beside
    `adapters`, this row is the stock instrumentation's own cost on an asyncio service;
    beside `interceptors`, the two instrumentations on one base."""

    def __init__(
        self, settings: Settings, topic: str, group: str, provider: TracerProvider
    ) -> None:
        super().__init__(settings, topic, group)
        # The adapters keep their librdkafka clients in these two attributes; the proxies
        # forward produce, poll, consume, subscribe, commit and close, which is all the
        # adapters call here but `store_offsets` (done on the client itself, below).
        self.producer._producer = ConfluentKafkaInstrumentor.instrument_producer(
            self.producer._producer, tracer_provider=provider
        )
        self.offsets = self.consumer._consumer
        self.consumer._consumer = ConfluentKafkaInstrumentor.instrument_consumer(
            self.offsets, tracer_provider=provider
        )
        self.tracer = provider.get_tracer("bench.stock")
        self.group = group

    def _send(self, event: events_pb2.AgentRequested) -> Awaitable[Any]:
        headers = stock_headers(EVENT.type_name, event.tenant_id, event.run_id)
        return self.producer.produce(
            self.topic,
            event.SerializeToString(),
            key=EVENT.key(event),
            headers=[(k, v.encode()) for k, v in headers.items()],
        )

    def _accept(self, record: Record) -> str:
        return stock_process(self.tracer, self.group, record, self.offsets)


async def _both(send: Awaitable[Any], receive: Awaitable[None]) -> None:
    """Runs `send` as a task beside `receive`; both must finish."""
    sending = asyncio.ensure_future(send)
    try:
        await receive
    except BaseException:
        sending.cancel()
        raise
    await sending


async def _drop_kafka(settings: Settings, topics: list[str], groups: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    gone = (KafkaError.GROUP_ID_NOT_FOUND, KafkaError.UNKNOWN_TOPIC_OR_PART)

    async def drop(what: str, fut: Any) -> None:
        try:
            await asyncio.wrap_future(fut)
        except KafkaException as exc:
            if exc.args[0].code() not in gone:  # never created (a hop that failed early)
                log(f"  clean-up of {what} failed: {exc!r}")

    for group, fut in admin.delete_consumer_groups(groups, request_timeout=30).items():
        await drop(f"consumer group {group}", fut)
    for topic, fut in admin.delete_topics(topics, operation_timeout=30).items():
        await drop(f"Kafka topic {topic}", fut)


# The Kafka hop's stock baseline: the contrib instrumentation on the same asyncio adapters
# as agentflux, a span per record (`StockAdapterKafka`).
ASYNC_STOCK = "stock on the adapters, span per message"


async def bench_kafka(
    settings: Settings, plan: Plan, stack: AsyncExitStack, prefix: str
) -> HopResult:
    """One record produced (acks=all, linger 1 ms) and consumed by a group consumer,
    one at a time: raw confluent-kafka vs the same with the contrib instrumentation and
    the headers by hand (stock; poll-level consumer spans, and with a span per record)
    vs the adapters, bare and with the stock instrumentation (a span per record) vs the
    interceptors (without and with the idempotency guard). Each variant has its own topic
    and group. agentflux is compared with the stock instrumentation on the same adapters:
    the stock rows on raw confluent-kafka block their caller's thread in `poll` and
    `flush`, which an asyncio service cannot do on its loop, so beside them agentflux
    would also be paying for the adapters' hand-overs between threads."""
    names = (
        "raw",
        "stock",
        "stock, span per message",
        ASYNC_STOCK,
        "adapters",
        "interceptors",
        "interceptors + guard",
    )
    prefixes = {name: f"{prefix}{i}." for i, name in enumerate(names)}
    groups = {name: p + "group" for name, p in prefixes.items()}
    topic = {name: p + EVENT.topic for name, p in prefixes.items()}
    keep = {"retention.ms": str(3_600_000)}
    specs = [TopicSpec(t, settings.kafka_partitions, keep) for t in topic.values()]
    # The interceptors dead-letter to <prefix>agent.dlq; nothing should go there, but a
    # record that did must land in a topic that is cleaned up.
    specs += [
        TopicSpec(prefixes[n] + CONTRACTS.dead_letter_topic, 1, keep)
        for n in ("interceptors", "interceptors + guard")
    ]
    topics = [s.name for s in specs]
    stack.push_async_callback(_drop_kafka, settings, topics, [*groups.values()])  # runs last
    await ensure_kafka_topics(settings, specs)

    # One provider or telemetry per traced variant: the span counts are per variant.
    stock_providers = {n: stock_provider(stack, "bench-kafka") for n in names[1:4]}
    telemetries = {n: counting_telemetry(stack, "bench-kafka") for n in names[5:]}
    redis = redis_for(stack, settings, prefix)
    guard = IdempotencyGuard(redis, namespace=prefix + "guard", ttl_s=600)

    clients: dict[str, RawKafka | AdapterKafka] = {}

    def add(name: str, client: RawKafka | AdapterKafka) -> None:
        clients[name] = client
        stack.push_async_callback(quietly, f"{name} Kafka clients", client.close())

    add("raw", RawKafka(settings, topic["raw"], groups["raw"]))
    for n, per_message in (("stock", False), ("stock, span per message", True)):
        provider = stock_providers[n][0]
        add(n, StockKafka(settings, topic[n], groups[n], provider, span_per_message=per_message))
    add(
        ASYNC_STOCK,
        StockAdapterKafka(
            settings, topic[ASYNC_STOCK], groups[ASYNC_STOCK], stock_providers[ASYNC_STOCK][0]
        ),
    )
    add("adapters", AdapterKafka(settings, topic["adapters"], groups["adapters"]))
    for n, with_guard in (("interceptors", None), ("interceptors + guard", guard)):
        add(n, FluxKafka(settings, prefixes[n], groups[n], telemetries[n][0], with_guard))
    await asyncio.gather(
        *(c.consumer.start() for c in clients.values() if isinstance(c, AdapterKafka))
    )

    kinds = {"raw": RAW, "stock": STOCK, "stock, span per message": STOCK, ASYNC_STOCK: STOCK}
    variants = [Variant(n, c.op, c.burst, kind=kinds.get(n, AGENTFLUX)) for n, c in clients.items()]
    notes: dict[str, Any] = {"topics": topics, "partitions": settings.kafka_partitions}
    with handling():
        result = await run_hop(
            "kafka",
            "kafka produce->consume",
            variants,
            plan,
            notes,
            stock=ASYNC_STOCK,
        )
    spans = {n: stock_exported(*stock_providers[n]) for n in stock_providers}
    spans |= {n: exported(*telemetries[n]) for n in telemetries}
    record_spans(result, spans)
    notes["guard"] = asdict(guard.stats)
    return result


# -- 3. RabbitMQ publish-with-confirm -> consume -> ack ------------------------------------


def make_task() -> tasks_pb2.ToolTask:
    return tasks_pb2.ToolTask(
        run_id=f"run-{uuid.uuid4().hex[:12]}",
        tenant_id="bench",
        conversation_id="conv-bench",
        step_tool_count=1,
        call=types_pb2.ToolCall(tool_call_id="call-1", name="calculator"),
        priority=types_pb2.PRIORITY_HIGH,
        attempt=1,
        max_attempts=3,
    )


class RawRabbit:
    """aio-pika as a bare program would use it: one connection, a confirming channel,
    prefetch 64, a consumer callback that decodes and acks."""

    def __init__(self, topo: TaskTopology) -> None:
        self.topo = topo
        self.want = 0
        self.got = 0
        self.done: asyncio.Future[None] | None = None

    async def start(self, settings: Settings) -> None:
        self.connection = await aio_pika.connect(settings.amqp_url, timeout=TIMEOUT_S)
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.set_qos(prefetch_count=64)
        self.exchange = await channel.get_exchange(self.topo.exchange, ensure=False)
        self.queue = await channel.get_queue(self.topo.queue, ensure=False)
        self.tag = await self.queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._accept(message)
        await message.ack()
        self.got += 1
        if self.got >= self.want and self.done is not None and not self.done.done():
            self.done.set_result(None)

    def _accept(self, message: AbstractIncomingMessage) -> None:
        tasks_pb2.ToolTask.FromString(message.body)  # decoded, as any consumer does

    def _expect(self, k: int) -> asyncio.Future[None]:
        self.got, self.want = 0, k
        self.done = asyncio.get_running_loop().create_future()
        return self.done

    async def _publish(self, task: tasks_pb2.ToolTask) -> None:
        message = aio_pika.Message(
            task.SerializeToString(),
            content_type=PROTOBUF,
            delivery_mode=DeliveryMode.PERSISTENT,
            priority=AMQP_PRIORITY,
        )
        await self.exchange.publish(message, self.topo.routing_key, mandatory=True)

    async def op(self) -> None:
        done = self._expect(1)
        async with asyncio.timeout(TIMEOUT_S):
            await self._publish(make_task())  # the consumer callback runs meanwhile
            await done

    async def burst(self, k: int) -> None:
        done = self._expect(k)
        async with asyncio.timeout(TIMEOUT_S):
            await asyncio.gather(*(self._publish(make_task()) for _ in range(k)))
            await done

    async def close(self) -> None:
        await self.queue.cancel(self.tag)
        await self.connection.close()


class StockRabbit(RawRabbit):
    """The same bare program with `opentelemetry-instrumentation-aio-pika` (a PRODUCER
    span per publish, a CONSUMER span per delivery parented to the producer's trace)
    and the CloudEvents headers, properties and context by hand.

    The instrumentation patches aio-pika's `Exchange.publish` and `Queue.consume`
    process-wide, so it is on during this variant's rounds only (`enter`/`leave`). The
    consumer is registered with it on: `Queue.consume` wraps the callback when it is
    called, and that callback stays traced after `uninstrument` (the other variants'
    consumers, registered with it off, are not traced)."""

    def __init__(self, topo: TaskTopology, provider: TracerProvider) -> None:
        super().__init__(topo)
        self.provider = provider
        self.instrumentor = AioPikaInstrumentor()

    def instrument(self) -> None:
        if not self.instrumentor.is_instrumented_by_opentelemetry:
            # A version conflict must fail the hop, not leave a baseline that traces
            # nothing (instrument() would only log it).
            self.instrumentor.instrument(
                tracer_provider=self.provider, raise_exception_on_conflict=True
            )

    def uninstrument(self) -> None:
        if self.instrumentor.is_instrumented_by_opentelemetry:
            self.instrumentor.uninstrument()

    async def start(self, settings: Settings) -> None:
        self.instrument()
        try:
            await super().start(settings)
        finally:
            self.uninstrument()

    def _accept(self, message: AbstractIncomingMessage) -> None:
        headers = {
            k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            for k, v in (message.headers or {}).items()
            if isinstance(v, str | bytes)
        }
        # The contrib CONSUMER span of this delivery is the current one.
        task = tasks_pb2.ToolTask.FromString(message.body)
        stock_handle(headers, trace.get_current_span(), task)

    async def _publish(self, task: tasks_pb2.ToolTask) -> None:
        headers = stock_headers(TASK.type_name, task.tenant_id, task.run_id)
        message = aio_pika.Message(
            task.SerializeToString(),
            headers=dict(headers),
            content_type=PROTOBUF,
            delivery_mode=DeliveryMode.PERSISTENT,
            priority=AMQP_PRIORITY,
            message_id=headers["ce_id"],
            type=TASK.type_name,
        )
        await self.exchange.publish(message, self.topo.routing_key, mandatory=True)


class AdapterRabbit:
    """The project's adapter: `RabbitConnection.publish` (persistent, mandatory, waits
    for the confirm) and its `consume` generator, acking each delivery."""

    def __init__(self, topo: TaskTopology) -> None:
        self.topo = topo

    async def start(self, settings: Settings) -> None:
        self.rabbit = await RabbitConnection.connect(settings)
        self.deliveries = self.rabbit.consume(self.topo.queue)

    def _send(self, task: tasks_pb2.ToolTask) -> Awaitable[Any]:
        return self.rabbit.publish(
            self.topo.exchange,
            self.topo.routing_key,
            task.SerializeToString(),
            priority=AMQP_PRIORITY,
        )

    async def _settle(self, delivery: AbstractIncomingMessage) -> None:
        tasks_pb2.ToolTask.FromString(delivery.body)
        await delivery.ack()

    async def _receive(self, k: int) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            for _ in range(k):
                await self._settle(await anext(self.deliveries))

    async def op(self) -> None:
        await _both(self._send(make_task()), self._receive(1))

    async def burst(self, k: int) -> None:
        sends = asyncio.gather(*(self._send(make_task()) for _ in range(k)))
        await _both(sends, self._receive(k))

    async def close(self) -> None:
        await self.deliveries.aclose()
        await self.rabbit.close()


class FluxRabbit(AdapterRabbit):
    """The interceptors on the same adapter: `TaskPublisher.publish` (headers, priority,
    PRODUCER span) and `TaskConsumer.handle` (context, CONSUMER span, dedupe, ack)."""

    def __init__(
        self, topo: TaskTopology, prefix: str, telemetry: Telemetry, guard: IdempotencyGuard | None
    ) -> None:
        super().__init__(topo)
        self.prefix = prefix
        self.telemetry = telemetry
        self.guard = guard

    async def start(self, settings: Settings) -> None:
        await super().start(settings)
        self.publisher = TaskPublisher(
            self.rabbit, self.telemetry, source=SOURCE, name_prefix=self.prefix
        )
        # Retries and dead letters would be published on this same connection; none
        # should happen here (the handler never fails).
        self.tasks = TaskConsumer(
            self.rabbit, self.telemetry, TASK, topology=self.topo, guard=self.guard
        )

    async def _handler(self, incoming: Incoming) -> bytes | None:
        return None

    def _send(self, task: tasks_pb2.ToolTask) -> Awaitable[Any]:
        return self.publisher.publish(task)

    async def _settle(self, delivery: AbstractIncomingMessage) -> None:
        outcome = await self.tasks.handle(delivery, self._handler)
        if outcome is not Outcome.HANDLED:
            raise RuntimeError(f"delivery was {outcome.value}, not handled")


async def _drop_rabbit(settings: Settings, topos: list[TaskTopology]) -> None:
    async with await RabbitConnection.connect(settings) as admin:
        for topo in topos:
            for queue in topo.all_queues:
                await quietly(f"queue {queue}", admin.channel.queue_delete(queue))
            for exchange in (topo.exchange, topo.retry_exchange, topo.dead_letter_exchange):
                await quietly(f"exchange {exchange}", admin.channel.exchange_delete(exchange))


async def bench_rabbitmq(
    settings: Settings, plan: Plan, stack: AsyncExitStack, prefix: str
) -> HopResult:
    """A persistent task published with confirm, consumed and acked, one at a time: raw
    aio-pika vs the same with the contrib instrumentation and the headers by hand
    (stock) vs the adapter vs the interceptors (without and with the guard). Each
    variant has its own copy of the tool-task topology (classic priority queue)."""
    names = ("raw", "stock", "adapters", "interceptors", "interceptors + guard")
    prefixes = {name: f"{prefix}{i}." for i, name in enumerate(names)}
    topos = {name: task_topology(settings, TASK, p) for name, p in prefixes.items()}
    stack.push_async_callback(
        quietly, "RabbitMQ topology", _drop_rabbit(settings, [*topos.values()])
    )
    async with await RabbitConnection.connect(settings) as admin:
        for topo in topos.values():
            await declare_task_topology(admin.channel, topo)

    provider, stock_counter = stock_provider(stack, "bench-rabbitmq")
    # One telemetry per agentflux variant: the span counts are per variant.
    telemetries = {n: counting_telemetry(stack, "bench-rabbitmq") for n in names[3:]}
    redis = redis_for(stack, settings, prefix)
    guard = IdempotencyGuard(redis, namespace=prefix + "guard", ttl_s=600)
    stock = StockRabbit(topos["stock"], provider)
    stack.callback(stock.uninstrument)  # whatever a failed round left on
    clients: dict[str, RawRabbit | AdapterRabbit] = {
        "raw": RawRabbit(topos["raw"]),
        "stock": stock,
        "adapters": AdapterRabbit(topos["adapters"]),
    }
    for n, with_guard in (("interceptors", None), ("interceptors + guard", guard)):
        clients[n] = FluxRabbit(topos[n], prefixes[n], telemetries[n][0], with_guard)
    for name, client in clients.items():
        await client.start(settings)
        stack.push_async_callback(quietly, f"{name} RabbitMQ clients", client.close())

    variants = [
        Variant("raw", clients["raw"].op, clients["raw"].burst, kind=RAW),
        Variant(
            "stock",
            stock.op,
            stock.burst,
            enter=stock.instrument,
            leave=stock.uninstrument,
            kind=STOCK,
        ),
        *(Variant(n, clients[n].op, clients[n].burst) for n in names[2:]),
    ]
    notes: dict[str, Any] = {"queues": [t.queue for t in topos.values()]}
    with handling():
        result = await run_hop(
            "rabbitmq", "rabbitmq publish->consume->ack", variants, plan, notes, stock="stock"
        )
    spans = {"stock": stock_exported(provider, stock_counter)}
    spans |= {n: exported(*telemetries[n]) for n in telemetries}
    record_spans(result, spans)
    notes["guard"] = asdict(guard.stats)
    return result


# -- 4. Redis and Memcached GET --------------------------------------------------------


def _instrumented(
    name: str, op: Op, burst: Burst | None = None, *, telemetry: Telemetry
) -> Variant:
    """`op` with `instrument_caches` on during its rounds only (it patches the client
    libraries process-wide, so the other variants' rounds run without it)."""
    return Variant(
        name, op, burst, enter=lambda: instrument_caches(telemetry), leave=uninstrument_caches
    )


class StockInstrumentation:
    """A contrib instrumentation (`RedisInstrumentor`, `PymemcacheInstrumentor`), on
    during the stock rounds only (it patches its client library process-wide). Its spans
    go through the same routing provider as agentflux's into a telemetry of their own,
    so the two differ only in the wrapper around each command."""

    def __init__(self, instrumentor: BaseInstrumentor, telemetry: Telemetry) -> None:
        self.provider = RoutingTracerProvider(telemetry)
        self.instrumentor = instrumentor

    def instrument(self) -> None:
        if not self.instrumentor.is_instrumented_by_opentelemetry:
            self.instrumentor.instrument(
                tracer_provider=self.provider, raise_exception_on_conflict=True
            )

    def uninstrument(self) -> None:
        if self.instrumentor.is_instrumented_by_opentelemetry:
            self.instrumentor.uninstrument()


async def bench_redis(
    settings: Settings, plan: Plan, stack: AsyncExitStack, prefix: str
) -> HopResult:
    """GET of a 256-byte value, redis-py asyncio with hiredis. raw: redis-py's own
    `BlockingConnectionPool`, as a user builds it, with the same bound and timeouts as
    the project's. stock: the same client with the contrib instrumentation. agentflux:
    the project's client (`connect_redis`: `LeanPool`, `LeanConnection`), bare and with
    `instrument_caches` (agentflux's own wrapper). Each traced variant makes a CLIENT
    span per command."""
    telemetry, counter = counting_telemetry(stack, "bench-cache")
    stock_telemetry, stock_counter = counting_telemetry(stack, "bench-cache")
    stock = StockInstrumentation(RedisInstrumentor(), stock_telemetry)
    stack.callback(uninstrument_caches)
    stack.callback(stock.uninstrument)  # whatever a failed round left on
    client = redis_for(stack, settings, prefix)
    lean_pool = client.connection_pool
    assert isinstance(lean_pool, aioredis.BlockingConnectionPool)
    # redis-py's own pool and connection class, with the project client's settings.
    plain = aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool(
            max_connections=lean_pool.max_connections,
            timeout=lean_pool.timeout,
            **lean_pool.connection_kwargs,
        )
    )
    stack.push_async_callback(plain.aclose)
    key = prefix + "value"
    await client.set(key, VALUE, ex=600)

    def getter(redis: aioredis.Redis) -> tuple[Op, Burst]:
        async def get() -> None:
            if await redis.get(key) is None:
                raise RuntimeError(f"{key} vanished")

        async def burst(k: int) -> None:
            # More than the pool's connections: the rest wait for one, in every variant.
            await asyncio.gather(*(get() for _ in range(k)))

        return get, burst

    lean = getter(client)
    variants = [
        Variant("raw", *getter(plain), kind=RAW),
        Variant(
            "stock", *getter(plain), enter=stock.instrument, leave=stock.uninstrument, kind=STOCK
        ),
        Variant("connect_redis", *lean),
        _instrumented("connect_redis + instrument_caches", *lean, telemetry=telemetry),
    ]
    notes: dict[str, Any] = {}
    result = await run_hop("redis", "redis GET", variants, plan, notes, stock="stock")
    record_spans(
        result,
        {
            "stock": exported(stock_telemetry, stock_counter),
            "connect_redis + instrument_caches": exported(telemetry, counter),
        },
    )
    return result


async def bench_memcached(
    settings: Settings, plan: Plan, stack: AsyncExitStack, prefix: str
) -> HopResult:
    """GET of a 256-byte value. raw: pymemcache's pooled client called on the event
    loop (blocking it for the round trip: the floor, not something a service may do).
    stock: the same client on a thread, as an asyncio program must call it, with the
    contrib pymemcache instrumentation (the services' way before `AsyncMemcached`);
    also on the loop, for the instrumentation's own cost. agentflux: `AsyncMemcached`
    on the loop, bare and with `instrument_caches`."""
    telemetry, counter = counting_telemetry(stack, "bench-cache")
    # One telemetry per stock variant: the span counts are per variant.
    loop_telemetry, loop_counter = counting_telemetry(stack, "bench-cache")
    thread_telemetry, thread_counter = counting_telemetry(stack, "bench-cache")
    on_loop = StockInstrumentation(PymemcacheInstrumentor(), loop_telemetry)
    on_thread = StockInstrumentation(PymemcacheInstrumentor(), thread_telemetry)
    stack.callback(uninstrument_caches)
    stack.callback(on_loop.uninstrument)  # whatever a failed round left on
    client = connect_memcached(settings)
    stack.callback(client.close)
    services_client = connect_memcached_async(settings)
    stack.callback(services_client.close)
    executor = ThreadPoolExecutor(4, thread_name_prefix="bench-memcached")
    stack.callback(executor.shutdown)
    key = prefix + "value"
    client.set(key, VALUE, expire=600)

    async def forget() -> None:
        client.delete(key, noreply=False)

    stack.push_async_callback(quietly, f"memcached key {key}", forget())

    def blocking_get() -> None:
        if client.get(key) is None:
            raise RuntimeError(f"{key} vanished")

    async def get() -> None:
        blocking_get()

    async def threaded_get() -> None:
        # The caller's context goes along, so the span joins the caller's trace.
        job = functools.partial(contextvars.copy_context().run, blocking_get)
        await asyncio.get_running_loop().run_in_executor(executor, job)

    async def async_get() -> None:
        if await services_client.get(key) is None:
            raise RuntimeError(f"{key} vanished")

    variants = [
        Variant("raw", get, kind=RAW),
        Variant(
            "stock, on the loop",
            get,
            enter=on_loop.instrument,
            leave=on_loop.uninstrument,
            kind=STOCK,
        ),
        Variant(
            "stock, on a thread",
            threaded_get,
            enter=on_thread.instrument,
            leave=on_thread.uninstrument,
            kind=STOCK,
        ),
        Variant("AsyncMemcached", async_get),
        _instrumented("AsyncMemcached + instrument_caches", async_get, telemetry=telemetry),
    ]
    notes: dict[str, Any] = {}
    result = await run_hop(
        "memcached", "memcached GET", variants, plan, notes, stock="stock, on a thread"
    )
    record_spans(
        result,
        {
            "stock, on the loop": exported(loop_telemetry, loop_counter),
            "stock, on a thread": exported(thread_telemetry, thread_counter),
            "AsyncMemcached + instrument_caches": exported(telemetry, counter),
        },
    )
    return result


# -- 5. IdempotencyGuard ------------------------------------------------------------------


async def bench_guard(
    settings: Settings, plan: Plan, stack: AsyncExitStack, prefix: str
) -> HopResult:
    """What dedupe costs a consumer per new message: `IdempotencyGuard.begin` (one
    SET NX GET PX) + `complete` (SET PX of the outcome), i.e. two Redis round trips, vs
    one bare SET NX PX of a fresh key."""
    client = redis_for(stack, settings, prefix)
    guard = IdempotencyGuard(client, namespace=prefix + "guard", ttl_s=600)
    raw_prefix = prefix + "raw:"

    async def set_nx() -> None:
        marker = b"P" + uuid.uuid4().bytes
        await client.set(raw_prefix + uuid.uuid4().hex, marker, nx=True, px=600_000)

    async def begin_complete() -> None:
        key = uuid.uuid4().hex
        claim = await guard.begin(key)
        if not claim.new:
            raise RuntimeError(f"fresh key {key} was not new")
        await guard.complete(key, b"")

    variants = [Variant("raw", set_nx, kind=RAW), Variant("begin+complete", begin_complete)]
    notes: dict[str, Any] = {}
    result = await run_hop("guard", "guard vs SET NX", variants, plan, notes)
    notes["guard"] = asdict(guard.stats)
    return result


HopFn = Callable[[Settings, Plan, AsyncExitStack, str], Awaitable[HopResult]]
HOPS: dict[str, HopFn] = {
    "grpc": bench_grpc,
    "kafka": bench_kafka,
    "rabbitmq": bench_rabbitmq,
    "redis": bench_redis,
    "memcached": bench_memcached,
    "guard": bench_guard,
}


# -- report ----------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _x(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}x"


def latency_table(rows: Sequence[Row]) -> str:
    header = ("hop [variant]", "p50", "vs raw", "vs stock", "p99", "vs raw", "vs stock", "n")
    body = []
    for r in rows:
        raw = r.kind == RAW
        body.append(
            (
                r.label,
                _ms(r.stats.p50),
                "" if raw else _x(r.ratio_p50),
                _x(r.stock_ratio_p50),
                _ms(r.stats.p99),
                "" if raw else _x(r.ratio_p99),
                _x(r.stock_ratio_p99),
                str(r.stats.n),
            )
        )
    return _markdown(header, body)


def rate_table(rates: Sequence[RateRow]) -> str:
    header = (
        "hop [variant] (ops in flight)",
        "ops/s",
        "vs raw",
        "vs stock",
        "CPU µs/op",
        "vs raw",
        "vs stock",
    )
    body = []
    for r in rates:
        raw = r.kind == RAW
        body.append(
            (
                f"{r.hop} [{r.variant}] ({r.in_flight})",
                f"{r.rate:,.0f}",
                "" if raw else _x(r.ratio),
                _x(r.stock_ratio),
                f"{r.cpu_us:,.0f}",
                "" if raw else _x(r.cpu_ratio),
                _x(r.stock_cpu_ratio),
            )
        )
    return _markdown(header, body)


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|" + "|".join("-" * (w + 1) + ("-" if i == 0 else ":") for i, w in enumerate(widths)) + "|"
    )
    return "\n".join([line(header), rule, *(line(row) for row in body)])


def report(results: Sequence[HopResult]) -> str:
    rows = [row for r in results for row in r.rows]
    rates = [rate for r in results for rate in r.rates]
    if not rows:
        return "No hop finished."
    parts = [
        "Latency in ms, one operation at a time. vs raw = variant / raw; vs stock = "
        "agentflux / the hop's stock baseline (1.00x: the same; above: slower).",
        latency_table(rows),
    ]
    if rates:
        parts += [
            "",
            "Throughput with many operations in flight; ops/s ratios below 1.00x are "
            "slower. CPU per operation is the whole process's (every thread); ratios above "
            "1.00x use more.",
            rate_table(rates),
        ]
    stocks = [f"{r.name}: [{r.stock_variant}]" for r in results if r.stock_variant]
    if stocks:
        parts += ["", "vs stock compares with: " + "; ".join(stocks) + "."]
    return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class AcrossRuns:
    """One agentflux row's ratios to its hop's stock baseline, run by run (None where
    that run had no such row or no throughput round)."""

    label: str
    p50: list[float | None]
    p99: list[float | None]
    cpu: list[float | None]

    @staticmethod
    def median(values: list[float | None]) -> float | None:
        got = [v for v in values if v is not None]
        return statistics.median(got) if got else None


def across(runs: Sequence[Sequence[HopResult]]) -> list[AcrossRuns]:
    """Every agentflux row that has a stock baseline, in the order of the first run
    that has it, with its ratios in each run."""
    labels: list[str] = []
    for results in runs:
        for result in results:
            for row in result.rows:
                if row.stock is not None and row.label not in labels:
                    labels.append(row.label)
    out = []
    for label in labels:
        p50: list[float | None] = []
        p99: list[float | None] = []
        cpu: list[float | None] = []
        for results in runs:
            rows = {row.label: row for r in results for row in r.rows}
            rates = {rate.hop + f" [{rate.variant}]": rate for r in results for rate in r.rates}
            found = rows.get(label)
            p50.append(found.stock_ratio_p50 if found else None)
            p99.append(found.stock_ratio_p99 if found else None)
            burst = rates.get(label)
            cpu.append(burst.stock_cpu_ratio if burst else None)
        out.append(AcrossRuns(label, p50, p99, cpu))
    return out


def across_runs(runs: Sequence[Sequence[HopResult]]) -> str:
    """The agentflux rows' ratios to stock in each run and their medians: one run's
    ratio moves with the machine's spells, the median of several less."""

    def each(values: list[float | None]) -> str:
        return " / ".join(_x(v) if v is not None else "-" for v in values)

    body = [
        [
            a.label,
            each(a.p50),
            _x(AcrossRuns.median(a.p50)),
            each(a.p99),
            _x(AcrossRuns.median(a.p99)),
            each(a.cpu),
            _x(AcrossRuns.median(a.cpu)),
        ]
        for a in across(runs)
    ]
    if not body:
        return "No agentflux row with a stock baseline finished."
    header = [
        "hop [variant]",
        "p50 vs stock, each run",
        "median",
        "p99 vs stock, each run",
        "median",
        "CPU/op vs stock, each run",
        "median",
    ]
    return (
        "Ratios to each hop's stock baseline (as in the tables above), run by run, and "
        "their median.\n" + _markdown(header, body)
    )


def across_runs_json(runs: Sequence[Sequence[HopResult]]) -> list[dict[str, Any]]:
    return [
        {
            "label": a.label,
            "stock_ratio_p50": a.p50,
            "stock_ratio_p99": a.p99,
            "stock_cpu_ratio": a.cpu,
            "median_stock_ratio_p50": AcrossRuns.median(a.p50),
            "median_stock_ratio_p99": AcrossRuns.median(a.p99),
            "median_stock_cpu_ratio": AcrossRuns.median(a.cpu),
        }
        for a in across(runs)
    ]


def to_json(
    results: Sequence[HopResult],
    failures: dict[str, str],
    args: argparse.Namespace,
    plans: dict[str, Plan],
    started: datetime,
    load: tuple[tuple[float, ...], tuple[float, ...]],
) -> dict[str, Any]:
    return {
        "started": started.isoformat(),
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_start": load[0],
            "loadavg_end": load[1],
        },
        "rows": [row.to_json() for r in results for row in r.rows],
        "throughput": [rate.to_json() for r in results for rate in r.rates],
        "hops": {
            r.name: {
                "plan": asdict(plans[r.name]),
                "seconds": r.seconds,
                "loadavg_before_after": r.loadavg,
                "notes": r.notes,
            }
            for r in results
        },
        "failures": failures,
    }


# -- main ------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _targets(settings: Settings, hops: Sequence[str]) -> dict[str, tuple[str, int]]:
    """(host, port) of each service the selected hops use."""
    out: dict[str, tuple[str, int]] = {}
    if "kafka" in hops:
        host, _, port = settings.kafka_bootstrap_servers.split(",")[0].rpartition(":")
        out["kafka"] = (host, int(port))
    if "rabbitmq" in hops:
        amqp = urlsplit(settings.amqp_url)
        out["rabbitmq"] = (amqp.hostname or "", amqp.port or 5672)
    if {"kafka", "rabbitmq", "redis", "guard"} & set(hops):
        dsn = urlsplit(settings.redis_dsn)
        out["redis"] = (dsn.hostname or "", dsn.port or 6379)
    if "memcached" in hops:
        out["memcached"] = settings.memcached_address
    return out


async def preflight(settings: Settings, hops: Sequence[str]) -> list[str]:
    """What keeps the selected hops from running: a service off loopback (the bench
    only runs against the local stack) or one that does not accept connections."""
    problems = []
    for name, (host, port) in _targets(settings, hops).items():
        if not _is_loopback(host):
            problems.append(f"{name} is at {host}:{port}, not on loopback")
            continue
        try:
            if name == "rabbitmq":  # a real handshake: a bare TCP probe is logged as an error
                connection = await aio_pika.connect(settings.amqp_url, timeout=5)
                await connection.close()
            else:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
                writer.close()
                await writer.wait_closed()
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            problems.append(f"{name} does not answer on {host}:{port} ({exc!r})")
    return problems


@contextlib.asynccontextmanager
async def _hop_scope(name: str) -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack
        log(f"  {name}: cleaning up")


async def run(args: argparse.Namespace) -> int:
    settings = Settings()
    plans = QUICK_PLANS if args.quick else PLANS
    selected = list(dict.fromkeys(args.hop or HOP_NAMES))
    prefix = f"bench.{uuid.uuid4().hex[:8]}."
    started = datetime.now(UTC)
    problems = await preflight(settings, selected)
    if problems:
        for problem in problems:
            log(f"cannot run: {problem}")
        log("the bench runs against the local stack: start it with `make stack-up`")
        return 2
    load_start = os.getloadavg()
    log(
        f"agentflux bench: {', '.join(selected)} ({'quick' if args.quick else 'full'}); "
        f"names under {prefix}; {os.cpu_count()} CPUs, load {load_start[0]:.2f}"
    )
    runs: list[list[HopResult]] = []
    failures: dict[str, str] = {}
    t_all = time.monotonic()
    for k in range(args.runs):
        if args.runs > 1:
            log(f"run {k + 1} of {args.runs}")
        results = []
        for name in selected:
            # Each run's names are its own: a run never meets the last one's records.
            where = f"{prefix}{name}." if args.runs == 1 else f"{prefix}r{k + 1}.{name}."
            result = await _run_hop(settings, name, plans[name], where, failures, k)
            if result is not None:
                results.append(result)
        runs.append(results)
    log(f"all hops in {time.monotonic() - t_all:.1f} s")

    for k, results in enumerate(runs):
        if args.runs > 1:
            print(f"{'' if k == 0 else chr(10)}## Run {k + 1} of {args.runs}\n")
        print(report(results))
    if args.runs > 1:
        print(f"\n## Across the {args.runs} runs\n")
        print(across_runs(runs))
    if failures:
        print("\nFailed hops: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    if args.json:
        load = (load_start, os.getloadavg())
        doc = to_json(runs[0], failures, args, plans, started, load)
        if args.runs > 1:
            doc["runs"] = [to_json(r, {}, args, plans, started, load) for r in runs]
            doc["across_runs"] = across_runs_json(runs)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"results written to {args.json}")
    return 1 if failures else 0


async def _run_hop(
    settings: Settings, name: str, plan: Plan, prefix: str, failures: dict[str, str], k: int
) -> HopResult | None:
    """One hop, logged; None (and the reason in `failures`) when it failed."""
    log(f"{name}: {plan.n} timed ops per variant in {plan.rounds} rounds (+{plan.warmup} warm-up)")
    t0 = time.monotonic()
    before = os.getloadavg()
    try:
        async with _hop_scope(name) as stack:
            result = await HOPS[name](settings, plan, stack, prefix)
    except Exception as exc:
        failures[name if k == 0 else f"{name} (run {k + 1})"] = repr(exc)
        log(f"{name}: FAILED: {exc!r}")
        return None
    result.seconds = time.monotonic() - t0
    result.loadavg = (before, os.getloadavg())
    log(f"{name}: done in {result.seconds:.1f} s")
    for row in result.rows:
        if row.kind == RAW:
            continue
        against = f", {_x(row.stock_ratio_p50)} stock" if row.stock else ""
        log(
            f"  {row.variant}: p50 {_ms(row.stats.p50)} ms vs raw {_ms(row.raw.p50)} ms "
            f"({row.ratio_p50:.2f}x{against})"
        )
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hops",
        description="Each agentflux hop beside the same hop done by bare clients and, for "
        "gRPC, Kafka, RabbitMQ and Redis, with the stock OpenTelemetry instrumentation, "
        "interleaved in one run; prints p50/p99, throughput and CPU per operation, and the "
        "ratios agentflux/raw and agentflux/stock.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer operations (about 20 s instead of a little over 1 min)",
    )
    parser.add_argument(
        "--hop",
        nargs="+",
        action="extend",
        choices=HOP_NAMES,
        metavar="NAME",
        help=f"hops to run (default all): {', '.join(HOP_NAMES)}",
    )
    parser.add_argument(
        "--runs",
        type=_positive,
        default=1,
        metavar="N",
        help="repeat the whole measurement N times and add a table of each agentflux "
        "row's ratios to stock in every run and their median (default 1)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # On the loop `agentflux serve` runs on (AGENTFLUX_EVENT_LOOP): what a service's
        # clients and consumers get.
        return lifecycle.run(run(args), Settings().event_loop)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
