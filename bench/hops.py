"""Per-hop benchmark: each hop done by bare clients and through agentflux, in one run.

    .venv/bin/python -m bench.hops [--quick] [--hop NAME ...] [--json PATH]

Hops (`--hop`): grpc, kafka, rabbitmq, redis, memcached, guard. Every hop measures its
raw baseline and its agentflux variants in interleaved rounds (raw, agentflux, ...,
then the reverse order, and so on) after a warm-up, so the noise of a shared machine
lands on all of them alike. The number to read is the ratio agentflux/raw from the same
run; absolute times on a shared 2-core machine prove little. Everything the bench
creates (topics, consumer groups, queues, exchanges, keys, span files) lives under a
`bench.<random>.` prefix or a temporary folder and is removed at the end, and every
client is closed. See bench/README.md for what each hop compares."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import grpc
import redis.asyncio as aioredis
from agentflux.v1 import events_pb2, gateway_pb2, gateway_pb2_grpc, tasks_pb2, types_pb2
from aio_pika.abc import AbstractIncomingMessage, DeliveryMode
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import Message as Record
from confluent_kafka.admin import AdminClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from interceptors import (
    EventConsumer,
    EventProducer,
    IdempotencyGuard,
    Incoming,
    Outcome,
    ServerContextInterceptor,
    TaskConsumer,
    TaskPublisher,
    Telemetry,
    client_interceptors,
    instrument_caches,
    uninstrument_caches,
)
from services.runtime.adapters.kafka import (
    KafkaConsumer,
    KafkaProducer,
    consumer_config,
    producer_config,
)
from services.runtime.adapters.memcached import connect_memcached
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


# Sized so that all hops take about 60 s (--quick: about 15 s) on a quiet 2-core machine.
PLANS: dict[str, Plan] = {
    "grpc": Plan(5000, 10, 300, burst=200, burst_rounds=6),
    "kafka": Plan(2000, 10, 30, burst=300, burst_rounds=6),
    "rabbitmq": Plan(2000, 10, 30, burst=300, burst_rounds=6),
    "redis": Plan(20000, 10, 500),
    "memcached": Plan(20000, 10, 500),
    "guard": Plan(10000, 10, 300),
}
QUICK_PLANS: dict[str, Plan] = {
    "grpc": Plan(1200, 6, 100, burst=100, burst_rounds=4),
    "kafka": Plan(400, 4, 10, burst=100, burst_rounds=2),
    "rabbitmq": Plan(400, 4, 10, burst=100, burst_rounds=2),
    "redis": Plan(3000, 6, 100),
    "memcached": Plan(3000, 6, 100),
    "guard": Plan(1800, 6, 50),
}
HOP_NAMES = tuple(PLANS)

Op = Callable[[], Awaitable[None]]
Burst = Callable[[int], Awaitable[None]]
Hook = Callable[[], None]


@dataclass(slots=True)
class Variant:
    """One way of doing a hop: `op` is one timed operation (a round trip, a GET);
    `burst(k)` puts k of them in flight at once; `enter`/`leave` run around each of
    its rounds, untimed (switching the cache instrumentation on and off)."""

    name: str
    op: Op
    burst: Burst | None = None
    enter: Hook | None = None
    leave: Hook | None = None


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


async def measure_bursts(variants: Sequence[Variant], plan: Plan) -> dict[str, list[float]]:
    """Operations per second of each variant with `plan.burst` in flight, per round."""
    bursty = [v for v in variants if v.burst is not None]
    if not plan.burst or not plan.burst_rounds or len(bursty) < 2:
        return {}
    for v in bursty:  # warm the batching paths too
        assert v.burst is not None
        with _round_of(v):
            await v.burst(min(plan.burst, 50))
    rates: dict[str, list[float]] = {v.name: [] for v in bursty}
    for order in _orders(bursty, plan.burst_rounds):
        for v in order:
            assert v.burst is not None
            with _round_of(v):
                t0 = time.perf_counter()
                await v.burst(plan.burst)
                rates[v.name].append(plan.burst / (time.perf_counter() - t0))
    return rates


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


@dataclass(frozen=True, slots=True)
class Row:
    """One agentflux variant of a hop beside the raw baseline of the same run."""

    hop: str
    variant: str
    raw: Stats
    flux: Stats

    @property
    def label(self) -> str:
        return f"{self.hop} [{self.variant}]"

    @property
    def ratio_p50(self) -> float:
        return self.flux.p50 / self.raw.p50

    @property
    def ratio_p99(self) -> float:
        return self.flux.p99 / self.raw.p99

    def to_json(self) -> dict[str, Any]:
        return {
            "hop": self.hop,
            "variant": self.variant,
            "raw": asdict(self.raw),
            "agentflux": asdict(self.flux),
            "ratio_p50": self.ratio_p50,
            "ratio_p99": self.ratio_p99,
        }


@dataclass(frozen=True, slots=True)
class RateRow:
    """Throughput of one agentflux variant beside the raw baseline (median of rounds)."""

    hop: str
    variant: str
    in_flight: int
    raw_rounds: list[float]
    flux_rounds: list[float]

    @property
    def raw(self) -> float:
        return statistics.median(self.raw_rounds)

    @property
    def flux(self) -> float:
        return statistics.median(self.flux_rounds)

    @property
    def ratio(self) -> float:
        return self.flux / self.raw

    def to_json(self) -> dict[str, Any]:
        return {
            "hop": self.hop,
            "variant": self.variant,
            "in_flight": self.in_flight,
            "raw_ops_per_s": self.raw,
            "agentflux_ops_per_s": self.flux,
            "ratio": self.ratio,
            "raw_rounds": self.raw_rounds,
            "agentflux_rounds": self.flux_rounds,
        }


@dataclass(slots=True)
class HopResult:
    name: str
    rows: list[Row]
    rates: list[RateRow] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    loadavg: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())


async def run_hop(
    name: str, label: str, variants: Sequence[Variant], plan: Plan, notes: dict[str, Any]
) -> HopResult:
    """Measures `variants` (the first is the raw baseline) and compares the others to it."""
    samples = await measure(variants, plan)
    rates = await measure_bursts(variants, plan)
    raw = variants[0].name
    result = HopResult(name, [], notes=notes)
    for v in variants[1:]:
        result.rows.append(Row(label, v.name, Stats.of(samples[raw]), Stats.of(samples[v.name])))
        if raw in rates and v.name in rates:
            result.rates.append(RateRow(label, v.name, plan.burst, rates[raw], rates[v.name]))
    return result


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


async def _grpc_pair(
    stack: AsyncExitStack,
    server_side: Sequence[grpc.aio.ServerInterceptor] = (),
    client_side: Sequence[grpc.aio.ClientInterceptor] = (),
) -> gateway_pb2_grpc.AgentGatewayStub:
    """A grpc.aio server on loopback and a client channel to it."""
    server = grpc.aio.server(interceptors=list(server_side))
    # Only GetRun is served; the stub's other methods are never called.
    gateway = _Gateway()  # type: ignore[abstract]
    gateway_pb2_grpc.add_AgentGatewayServicer_to_server(gateway, server)
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    await server.start()
    stack.push_async_callback(server.stop, None)
    channel = grpc.aio.insecure_channel(
        f"{LOOPBACK}:{port}", interceptors=list(client_side) or None
    )
    stack.push_async_callback(channel.close)
    return gateway_pb2_grpc.AgentGatewayStub(channel)


def _unary(stub: gateway_pb2_grpc.AgentGatewayStub) -> tuple[Op, Burst]:
    # grpc.aio calls are awaitables; the generated stubs type them as plain responses.
    get_run: Any = stub.GetRun
    request = gateway_pb2.GetRunRequest(run_id="run-bench")

    async def op() -> None:
        await get_run(request, timeout=TIMEOUT_S)

    async def burst(k: int) -> None:
        await asyncio.gather(*(get_run(request, timeout=TIMEOUT_S) for _ in range(k)))

    return op, burst


def _count_lines(folder: Path) -> int:
    """Span records in a span-store folder (a sanity check that spans were written)."""
    return sum(len(p.read_bytes().splitlines()) for p in folder.glob("*.jsonl"))


async def bench_grpc(
    settings: Settings, plan: Plan, stack: AsyncExitStack, prefix: str
) -> HopResult:
    """grpc.aio unary GetRun: bare server and client vs the same with the server and
    client interceptors, spans dropped (the tracing cost alone) and spans written to
    the JSON-lines span store (the development default) in a temporary folder."""
    dropped, counter = counting_telemetry(stack, "bench-grpc")
    store = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentflux-bench-")))
    stored = Telemetry.create("bench-grpc", span_store=store)
    stack.callback(stored.shutdown)  # before the folder goes (the stack unwinds LIFO)

    stubs = {
        "raw": await _grpc_pair(stack),
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
    variants = [Variant(name, *_unary(stub)) for name, stub in stubs.items()]
    notes: dict[str, Any] = {}
    result = await run_hop("grpc", "grpc unary", variants, plan, notes)
    notes["spans_dropped_variant"] = exported(dropped, counter)
    stored.flush()
    notes["spans_jsonl_variant"] = _count_lines(store)
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


def _run_id(record: Record) -> str:
    # Every variant decodes what it consumed, as any real consumer does.
    return events_pb2.AgentRequested.FromString(record.value() or b"").run_id


class RawKafka:
    """confluent-kafka used as a bare program would: blocking calls on this thread, the
    adapters' producer and consumer configs (linger 1 ms, manual offset store)."""

    def __init__(self, settings: Settings, topic: str, group: str) -> None:
        self.topic = topic
        self.producer = Producer(producer_config(settings))
        self.consumer = Consumer(consumer_config(settings, group))
        self.consumer.subscribe([topic])
        self.unacked = 0
        self.failed: list[KafkaError] = []

    def _report(self, err: KafkaError | None, _record: Record) -> None:
        self.unacked -= 1
        if err is not None:
            self.failed.append(err)

    def _produce(self, event: events_pb2.AgentRequested) -> None:
        while True:
            try:
                self.producer.produce(
                    self.topic,
                    event.SerializeToString(),
                    EVENT.key(event),
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
        seen = ""
        while seen != event.run_id:
            for record in self._take(1, deadline):
                seen = _run_id(record)
                self.consumer.store_offsets(message=record)
        self._acked(deadline)

    async def burst(self, k: int) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        for _ in range(k):
            self._produce(make_request())
        self.producer.poll(0)
        got = 0
        while got < k:
            for record in self._take(k - got, deadline):
                _run_id(record)
                self.consumer.store_offsets(message=record)
                got += 1
        self._acked(deadline)

    async def close(self) -> None:
        self.producer.flush(10)
        self.consumer.close()


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

    async def _receive(self, run_id: str, deadline: float) -> None:
        seen = ""
        while seen != run_id:
            for record in await self._take(1, deadline):
                seen = _run_id(record)
                self.consumer.store(record)

    async def _receive_many(self, k: int, deadline: float) -> None:
        got = 0
        while got < k:
            for record in await self._take(k - got, deadline):
                _run_id(record)
                self.consumer.store(record)
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


async def bench_kafka(
    settings: Settings, plan: Plan, stack: AsyncExitStack, prefix: str
) -> HopResult:
    """One record produced (acks=all, linger 1 ms) and consumed by a group consumer,
    one at a time: raw confluent-kafka vs the adapters vs the interceptors (without
    and with the idempotency guard). Each variant has its own topic and group."""
    names = ("raw", "adapters", "interceptors", "interceptors + guard")
    prefixes = {name: f"{prefix}{i}." for i, name in enumerate(names)}
    groups = [p + "group" for p in prefixes.values()]
    keep = {"retention.ms": str(3_600_000)}
    specs = [TopicSpec(p + EVENT.topic, settings.kafka_partitions, keep) for p in prefixes.values()]
    # The interceptors dead-letter to <prefix>agent.dlq; nothing should go there, but a
    # record that did must land in a topic that is cleaned up.
    specs += [TopicSpec(prefixes[n] + CONTRACTS.dead_letter_topic, 1, keep) for n in names[2:]]
    topics = [s.name for s in specs]
    stack.push_async_callback(_drop_kafka, settings, topics, groups)  # runs last
    await ensure_kafka_topics(settings, specs)

    telemetry, counter = counting_telemetry(stack, "bench-kafka")
    redis = redis_for(stack, settings, prefix)
    guard = IdempotencyGuard(redis, namespace=prefix + "guard", ttl_s=600)

    raw = RawKafka(settings, prefixes["raw"] + EVENT.topic, groups[0])
    stack.push_async_callback(quietly, "raw Kafka clients", raw.close())
    adapters = AdapterKafka(settings, prefixes["adapters"] + EVENT.topic, groups[1])
    stack.push_async_callback(quietly, "adapter Kafka clients", adapters.close())
    flux = FluxKafka(settings, prefixes["interceptors"], groups[2], telemetry, None)
    stack.push_async_callback(quietly, "interceptor Kafka clients", flux.close())
    guarded = FluxKafka(settings, prefixes["interceptors + guard"], groups[3], telemetry, guard)
    stack.push_async_callback(quietly, "guarded Kafka clients", guarded.close())
    await asyncio.gather(*(c.consumer.start() for c in (adapters, flux, guarded)))
    kafka_clients: tuple[RawKafka | AdapterKafka, ...] = (raw, adapters, flux, guarded)

    variants = [
        Variant(name, client.op, client.burst)
        for name, client in zip(names, kafka_clients, strict=True)
    ]
    notes: dict[str, Any] = {"topics": topics, "partitions": settings.kafka_partitions}
    result = await run_hop("kafka", "kafka produce->consume", variants, plan, notes)
    notes["spans"] = exported(telemetry, counter)
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
        tasks_pb2.ToolTask.FromString(message.body)
        await message.ack()
        self.got += 1
        if self.got >= self.want and self.done is not None and not self.done.done():
            self.done.set_result(None)

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
    aio-pika vs the adapter vs the interceptors (without and with the guard). Each
    variant has its own copy of the tool-task topology (classic priority queue)."""
    names = ("raw", "adapters", "interceptors", "interceptors + guard")
    prefixes = {name: f"{prefix}{i}." for i, name in enumerate(names)}
    topos = {name: task_topology(settings, TASK, p) for name, p in prefixes.items()}
    stack.push_async_callback(
        quietly, "RabbitMQ topology", _drop_rabbit(settings, [*topos.values()])
    )
    async with await RabbitConnection.connect(settings) as admin:
        for topo in topos.values():
            await declare_task_topology(admin.channel, topo)

    telemetry, counter = counting_telemetry(stack, "bench-rabbitmq")
    redis = redis_for(stack, settings, prefix)
    guard = IdempotencyGuard(redis, namespace=prefix + "guard", ttl_s=600)
    clients: tuple[RawRabbit | AdapterRabbit, ...] = (
        RawRabbit(topos["raw"]),
        AdapterRabbit(topos["adapters"]),
        FluxRabbit(topos["interceptors"], prefixes["interceptors"], telemetry, None),
        FluxRabbit(
            topos["interceptors + guard"], prefixes["interceptors + guard"], telemetry, guard
        ),
    )
    for name, client in zip(names, clients, strict=True):
        await client.start(settings)
        stack.push_async_callback(quietly, f"{name} RabbitMQ clients", client.close())

    variants = [
        Variant(name, client.op, client.burst) for name, client in zip(names, clients, strict=True)
    ]
    notes: dict[str, Any] = {"queues": [t.queue for t in topos.values()]}
    result = await run_hop("rabbitmq", "rabbitmq publish->consume->ack", variants, plan, notes)
    notes["spans"] = exported(telemetry, counter)
    notes["guard"] = asdict(guard.stats)
    return result


# -- 4. Redis and Memcached GET --------------------------------------------------------


def _instrumented(name: str, op: Op, telemetry: Telemetry) -> Variant:
    """`op` with the contrib instrumentation on during its rounds only (it patches the
    client libraries process-wide, so the raw rounds run without it)."""
    return Variant(name, op, enter=lambda: instrument_caches(telemetry), leave=uninstrument_caches)


async def bench_redis(
    settings: Settings, plan: Plan, stack: AsyncExitStack, prefix: str
) -> HopResult:
    """GET of a 256-byte value with the project's redis-py asyncio client (hiredis):
    bare vs with `instrument_caches` (a CLIENT span per command)."""
    telemetry, counter = counting_telemetry(stack, "bench-cache")
    stack.callback(uninstrument_caches)
    client = redis_for(stack, settings, prefix)
    key = prefix + "value"
    await client.set(key, VALUE, ex=600)

    async def get() -> None:
        if await client.get(key) is None:
            raise RuntimeError(f"{key} vanished")

    variants = [Variant("raw", get), _instrumented("instrument_caches", get, telemetry)]
    notes: dict[str, Any] = {}
    result = await run_hop("redis", "redis GET", variants, plan, notes)
    notes["spans"] = exported(telemetry, counter)
    return result


async def bench_memcached(
    settings: Settings, plan: Plan, stack: AsyncExitStack, prefix: str
) -> HopResult:
    """GET of a 256-byte value with the project's pymemcache pooled client: bare vs
    with `instrument_caches`."""
    telemetry, counter = counting_telemetry(stack, "bench-cache")
    stack.callback(uninstrument_caches)
    client = connect_memcached(settings)
    stack.callback(client.close)
    key = prefix + "value"
    client.set(key, VALUE, expire=600)

    async def forget() -> None:
        client.delete(key, noreply=False)

    stack.push_async_callback(quietly, f"memcached key {key}", forget())

    async def get() -> None:
        if client.get(key) is None:
            raise RuntimeError(f"{key} vanished")

    variants = [Variant("raw", get), _instrumented("instrument_caches", get, telemetry)]
    notes: dict[str, Any] = {}
    result = await run_hop("memcached", "memcached GET", variants, plan, notes)
    notes["spans"] = exported(telemetry, counter)
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

    variants = [Variant("raw", set_nx), Variant("begin+complete", begin_complete)]
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


def latency_table(rows: Sequence[Row]) -> str:
    header = (
        "hop",
        "raw p50",
        "agentflux p50",
        "ratio p50",
        "raw p99",
        "agentflux p99",
        "ratio p99",
        "n",
    )
    body = [
        (
            r.label,
            _ms(r.raw.p50),
            _ms(r.flux.p50),
            f"{r.ratio_p50:.2f}x",
            _ms(r.raw.p99),
            _ms(r.flux.p99),
            f"{r.ratio_p99:.2f}x",
            str(r.flux.n),
        )
        for r in rows
    ]
    return _markdown(header, body)


def rate_table(rates: Sequence[RateRow]) -> str:
    header = ("hop (ops in flight)", "raw ops/s", "agentflux ops/s", "ratio")
    body = [
        (
            f"{r.hop} [{r.variant}] ({r.in_flight})",
            f"{r.raw:,.0f}",
            f"{r.flux:,.0f}",
            f"{r.ratio:.2f}x",
        )
        for r in rates
    ]
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
        "Latency in ms, one operation at a time; ratio = agentflux / raw (1.00x: no cost).",
        latency_table(rows),
    ]
    if rates:
        parts += [
            "",
            "Throughput with many operations in flight; ratio = agentflux / raw "
            "(below 1.00x: slower).",
            rate_table(rates),
        ]
    return "\n".join(parts)


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
    results: list[HopResult] = []
    failures: dict[str, str] = {}
    t_all = time.monotonic()
    for name in selected:
        plan = plans[name]
        log(
            f"{name}: {plan.n} timed ops per variant in {plan.rounds} rounds "
            f"(+{plan.warmup} warm-up)"
        )
        t0 = time.monotonic()
        before = os.getloadavg()
        try:
            async with _hop_scope(name) as stack:
                result = await HOPS[name](settings, plan, stack, f"{prefix}{name}.")
        except Exception as exc:
            failures[name] = repr(exc)
            log(f"{name}: FAILED: {exc!r}")
            continue
        result.seconds = time.monotonic() - t0
        result.loadavg = (before, os.getloadavg())
        results.append(result)
        log(f"{name}: done in {result.seconds:.1f} s")
        for row in result.rows:
            log(
                f"  {row.variant}: p50 {_ms(row.flux.p50)} ms vs raw {_ms(row.raw.p50)} ms "
                f"({row.ratio_p50:.2f}x)"
            )
    log(f"all hops in {time.monotonic() - t_all:.1f} s")

    print(report(results))
    if failures:
        print("\nFailed hops: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    if args.json:
        doc = to_json(results, failures, args, plans, started, (load_start, os.getloadavg()))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"results written to {args.json}")
    return 1 if failures else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hops",
        description="Each agentflux hop beside the same hop done by bare clients, "
        "interleaved in one run; prints p50/p90/p99 and the ratio agentflux/raw.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer operations (about 15 s instead of about 1 min)"
    )
    parser.add_argument(
        "--hop",
        nargs="+",
        action="extend",
        choices=HOP_NAMES,
        metavar="NAME",
        help=f"hops to run (default all): {', '.join(HOP_NAMES)}",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
