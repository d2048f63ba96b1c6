"""The Kafka and RabbitMQ middleware on the real brokers, where messages go wrong.

Malformed context headers are dropped, replaced and recorded, never propagated;
undecodable payloads are dead-lettered with their original bytes and a reason and do
not block the partition or queue; failing handlers are retried (in place on Kafka,
through the delay-tier queues on RabbitMQ), then dead-lettered, and release their
idempotency claim; a batch span links every producer; a message whose idempotency key
another handler still holds is neither skipped nor acked until that claim is decided.

Every test runs on topics, queues, groups and Redis keys under its own prefix; the task
queue's delay tiers are 200 and 400 ms."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest
from agentflux.v1 import events_pb2, tasks_pb2, types_pb2
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import Message as Record
from confluent_kafka.admin import AdminClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from interceptors import (
    ATTEMPT_HEADER,
    EventConsumer,
    EventProducer,
    FluxContext,
    IdempotencyGuard,
    Incoming,
    Outcome,
    TaskConsumer,
    TaskPublisher,
    Telemetry,
    current,
)
from services.runtime.adapters.kafka import KafkaConsumer, KafkaProducer
from services.runtime.adapters.rabbitmq import RabbitConnection
from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings
from services.runtime.contracts import registry
from services.runtime.topology import (
    TaskTopology,
    declare_task_topology,
    ensure_kafka_topics,
    kafka_topics,
    task_topology,
)

pytestmark = pytest.mark.integration

CONTRACTS = registry()
TASK = CONTRACTS.task(tasks_pb2.ToolTask)
REQUESTED = CONTRACTS.event(events_pb2.AgentRequested).type_name
POISON = b"\xff\xff\xff"
DELAYS_MS = [200, 400]

BAD_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
# Each value is malformed in its own way: too long, a space, not a number, a zero span id.
BAD_HEADERS = {
    "ce_correlationid": "c" * 200,
    "ce_tenantid": "acme corp",
    "ce_deadline": "tomorrow",
    "traceparent": f"00-{BAD_TRACE_ID}-{'0' * 16}-01",
}
FRESH_ID = re.compile(r"[0-9a-f]{32}")
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


@dataclass
class Kit:
    """Clients and names of one test; everything here is removed afterwards."""

    settings: Settings
    prefix: str
    producer: KafkaProducer
    rabbit: RabbitConnection
    telemetry: Telemetry
    memory: InMemorySpanExporter
    topo: TaskTopology
    groups: list[str] = field(default_factory=list)
    consumers: list[KafkaConsumer] = field(default_factory=list)

    def topic(self, name: str = "agent.requested") -> str:
        return self.prefix + name

    def consumer(self, name: str, topic: str) -> KafkaConsumer:
        group = f"{self.prefix}{name}"
        if group not in self.groups:
            self.groups.append(group)
        consumer = KafkaConsumer(self.settings, group, [topic])
        self.consumers.append(consumer)
        return consumer

    def spans(self) -> list[ReadableSpan]:
        self.telemetry.flush()
        return list(self.memory.get_finished_spans())


@pytest.fixture
async def kit(settings: Settings, prefix: str) -> AsyncIterator[Kit]:
    topics = kafka_topics(settings, prefix=prefix)
    await ensure_kafka_topics(settings, topics)
    topo = task_topology(Settings(tool_task_retry_delays_ms=DELAYS_MS), TASK, prefix)
    rabbit = await RabbitConnection.connect(settings)
    await declare_task_topology(rabbit.channel, topo)
    memory = InMemorySpanExporter()
    telemetry = Telemetry.create("middleware", exporters=[memory], batch_delay_ms=50)
    kit = Kit(settings, prefix, KafkaProducer(settings), rabbit, telemetry, memory, topo)
    try:
        yield kit
    finally:
        for consumer in kit.consumers:
            await consumer.close()
        await kit.producer.close()
        await rabbit.close()
        telemetry.shutdown()
        async with await RabbitConnection.connect(settings) as admin:
            for queue in topo.all_queues:
                await admin.channel.queue_delete(queue)
            for exchange in (topo.exchange, topo.retry_exchange, topo.dead_letter_exchange):
                await admin.channel.exchange_delete(exchange)
        kafka = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
        for fut in kafka.delete_topics([t.name for t in topics]).values():
            await asyncio.wrap_future(fut)
        await delete_groups(kafka, kit.groups)


async def delete_groups(admin: AdminClient, groups: list[str]) -> None:
    """Deletes `groups`. A consumer's close sends its LeaveGroup without waiting for the
    coordinator, so a group can still look non-empty for a moment: that one is retried
    until the leave went through. A group that never joined has nothing to delete."""
    deadline = time.monotonic() + 30
    left = list(groups)
    while left:
        retry = []
        for group, fut in admin.delete_consumer_groups(left).items():
            try:
                await asyncio.wrap_future(fut)
            except KafkaException as exc:
                code = exc.args[0].code()
                if code == KafkaError.NON_EMPTY_GROUP and time.monotonic() < deadline:
                    retry.append(group)
                elif code != KafkaError.GROUP_ID_NOT_FOUND:
                    raise
        left = retry
        if left:
            await asyncio.sleep(0.1)  # polling for the condition: the leave went through


@pytest.fixture
async def redis(settings: Settings, prefix: str) -> AsyncIterator[Any]:
    client = connect_redis(settings)
    yield client
    keys = [k async for k in client.scan_iter(f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def requested(conversation_id: str, run_id: str = "run-1") -> events_pb2.AgentRequested:
    return events_pb2.AgentRequested(
        run_id=run_id,
        conversation_id=conversation_id,
        prompt="6*7?",
        priority=types_pb2.PRIORITY_NORMAL,
    )


def tool_task(run_id: str = "run-1") -> tasks_pb2.ToolTask:
    task = tasks_pb2.ToolTask(
        run_id=run_id, conversation_id="conv-1", priority=types_pb2.PRIORITY_HIGH, attempt=1
    )
    task.call.tool_call_id = f"{run_id}.0"
    task.call.name = "calculator"
    return task


def claim_key(idempotency_key: str) -> str:
    """The guard's key of a message carrying `idempotency_key` (the consumers' identity
    of it: an idempotency key is namespaced apart from event ids and positions)."""
    return "ik:" + idempotency_key


def headers_of(record: Record) -> list[tuple[str, bytes]]:
    """A consumed record's headers (confluent-kafka's stubs allow more shapes)."""
    raw: Any = record.headers() or []
    return [(k, v or b"") for k, v in raw]


async def consume_n(consumer: KafkaConsumer, n: int, timeout: float = 20.0) -> list[Record]:
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"got {len(out)} of {n} records"
        out.extend(await consumer.consume(n - len(out), timeout=0.25))
    return out


async def handle_deliveries(
    kit: Kit, consumer: TaskConsumer, handler: Any, *, until: set[Outcome], timeout: float = 20.0
) -> list[Outcome]:
    """Handles deliveries of the work queue until one ends as one of `until`."""
    out: list[Outcome] = []
    async with contextlib.aclosing(kit.rabbit.consume(kit.topo.queue)) as deliveries:
        async with asyncio.timeout(timeout):
            async for message in deliveries:
                out.append(await consumer.handle(message, handler))
                if out[-1] in until:
                    break
    return out


async def queue_count(kit: Kit, queue: str) -> int:
    async with await RabbitConnection.connect(kit.settings) as conn:
        declared = await conn.channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        assert count is not None
        return count


async def dead_letters(kit: Kit, n: int = 1) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """The next `n` messages of the dead-letter queue (acked: they are the evidence)."""
    got: list[aio_pika.abc.AbstractIncomingMessage] = []
    queue = await kit.rabbit.channel.get_queue(kit.topo.dead_letter_queue, ensure=True)
    deadline = time.monotonic() + 10
    while len(got) < n:
        assert time.monotonic() < deadline, f"got {len(got)} of {n} dead letters"
        message = await queue.get(no_ack=True, fail=False)
        if message is None:
            await asyncio.sleep(0.05)
        else:
            got.append(message)
    return got


def one_span(spans: list[ReadableSpan], name: str, kind: SpanKind) -> ReadableSpan:
    found = [s for s in spans if s.name == name and s.kind == kind]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


# -- 1. malformed context headers ---------------------------------------------------------


@dataclass
class Observed:
    bound: list[FluxContext] = field(default_factory=list)
    calls: int = 0


def emitting_handler(kit: Kit, seen: Observed) -> Any:
    """A handler that records its bound context and emits ToolCalled under it."""
    events = EventProducer(kit.producer, kit.telemetry, source="/test", topic_prefix=kit.prefix)

    async def handle(incoming: Incoming) -> bytes:
        ctx = current()
        assert ctx is not None
        seen.bound.append(ctx)
        done = events_pb2.ToolCalled(run_id="run-1", conversation_id="conv-bad")
        await events.emit(done, idempotency_key="run-1:0:done")
        return b"ok"

    return handle


async def assert_bad_context_contained(
    kit: Kit, seen: Observed, consumer_span_name: str, emitted: Record
) -> None:
    # The handler ran under a fresh, well-formed context with nothing of the bad one.
    (bound,) = seen.bound
    assert FRESH_ID.fullmatch(bound.correlation_id)
    assert bound.tenant_id == ""
    assert bound.deadline is None

    spans = kit.spans()
    consumer = one_span(spans, consumer_span_name, SpanKind.CONSUMER)
    rejected = [e for e in consumer.events if e.name == "agentflux.context.rejected"]
    assert sorted(str(e.attributes["key"]) for e in rejected if e.attributes) == sorted(BAD_HEADERS)
    assert all(e.attributes and e.attributes["reason"] for e in rejected)
    # A new root: no parent, and not the trace the broken traceparent named.
    assert consumer.parent is None
    assert consumer.context is not None
    assert f"{consumer.context.trace_id:032x}" != BAD_TRACE_ID
    assert consumer.attributes is not None
    assert consumer.attributes["agentflux.correlation_id"] == bound.correlation_id
    assert "agentflux.tenant_id" not in consumer.attributes

    # What the handler emitted carries the fresh context, none of the bad values, and
    # continues the consumer's new trace.
    headers = {k: v.decode() for k, v in headers_of(emitted)}
    assert not set(headers.values()) & set(BAD_HEADERS.values()), headers
    assert headers["ce_correlationid"] == bound.correlation_id
    assert headers["ce_causationid"] == bound.event_id
    assert "ce_tenantid" not in headers
    assert "ce_deadline" not in headers
    tp = TRACEPARENT.fullmatch(headers["traceparent"])
    assert tp is not None
    assert tp.group(1) == f"{consumer.context.trace_id:032x}"
    publish = one_span(spans, f"publish {kit.topic('agent.tool_called')}", SpanKind.PRODUCER)
    assert publish.parent is not None
    assert publish.context is not None
    assert publish.parent.span_id == consumer.context.span_id
    assert tp.group(2) == f"{publish.context.span_id:016x}"


async def test_malformed_kafka_headers_are_dropped_replaced_and_recorded(kit: Kit) -> None:
    seen = Observed()
    topic = kit.topic()
    await kit.producer.produce(
        topic,
        requested("conv-bad").SerializeToString(),
        key=b"conv-bad",
        headers=[("ce_type", REQUESTED.encode())]
        + [(k, v.encode()) for k, v in BAD_HEADERS.items()],
    )
    kafka = kit.consumer("planner", topic)
    (record,) = await consume_n(kafka, 1)
    consumer = EventConsumer(
        kafka, kit.telemetry, group="planner", dead_letters=kit.producer, topic_prefix=kit.prefix
    )
    assert await consumer.handle(record, emitting_handler(kit, seen)) == Outcome.HANDLED

    (emitted,) = await consume_n(kit.consumer("results", kit.topic("agent.tool_called")), 1)
    await assert_bad_context_contained(kit, seen, f"process {topic}", emitted)


async def test_malformed_amqp_headers_are_dropped_replaced_and_recorded(kit: Kit) -> None:
    seen = Observed()
    await kit.rabbit.publish(
        kit.topo.exchange,
        kit.topo.routing_key,
        tool_task().SerializeToString(),
        headers=BAD_HEADERS,
        message_type=TASK.type_name,
    )
    worker = TaskConsumer(kit.rabbit, kit.telemetry, TASK, topology=kit.topo)
    settled = await handle_deliveries(kit, worker, emitting_handler(kit, seen), until=set(Outcome))
    assert settled == [Outcome.HANDLED]

    (emitted,) = await consume_n(kit.consumer("results", kit.topic("agent.tool_called")), 1)
    await assert_bad_context_contained(kit, seen, f"process {kit.topo.queue}", emitted)


# -- 2. undecodable payloads ----------------------------------------------------------------


async def test_undecodable_kafka_record_is_dead_lettered_and_passed(kit: Kit) -> None:
    topic = kit.topic()
    original = [("ce_type", REQUESTED.encode()), ("x-origin", b"fuzzer")]
    await kit.producer.produce(topic, POISON, key=b"conv-poison", headers=original)
    events = EventProducer(kit.producer, kit.telemetry, source="/test", topic_prefix=kit.prefix)
    await events.emit(requested("conv-poison", run_id="run-after"), idempotency_key="after")
    kafka = kit.consumer("planner", topic)
    group = f"{kit.prefix}planner"
    consumer = EventConsumer(
        kafka, kit.telemetry, group=group, dead_letters=kit.producer, topic_prefix=kit.prefix
    )
    handled: list[tuple[str, Record]] = []
    passed = asyncio.Event()

    async def plan(incoming: Incoming) -> bytes:
        assert isinstance(incoming.event, events_pb2.AgentRequested)
        handled.append((incoming.event.run_id, incoming.inbound.raw))
        passed.set()
        return b"planned"

    # The run loop: it passes the poison, handles the record behind it, and commits both.
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(plan, stop))
    try:
        await asyncio.wait_for(passed.wait(), 30)
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)
    ((run, after),) = handled  # never called for the poison
    assert run == "run-after"
    assert (consumer.counts[Outcome.DEAD_LETTERED], consumer.counts[Outcome.HANDLED]) == (1, 1)
    poison_offset = (after.offset() or 0) - 1

    # The dead-letter topic has the record as it arrived, plus where it came from and why.
    (dead,) = await consume_n(kit.consumer("dlq-reader", kit.topic("agent.dlq")), 1)
    assert dead.value() == POISON
    assert dead.key() == b"conv-poison"
    headers = headers_of(dead)
    assert headers[: len(original)] == original
    dlq = dict(headers)
    assert dlq["dlq_topic"] == topic.encode()
    assert dlq["dlq_partition"] == str(after.partition()).encode()
    assert dlq["dlq_offset"] == str(poison_offset).encode()
    assert dlq["dlq_group"] == group.encode()
    assert dlq["dlq_reason"] == b"UNDECODABLE"
    assert REQUESTED.encode() in dlq["dlq_error"]
    spans = [
        s
        for s in kit.spans()
        if s.name == f"process {topic}"
        and s.kind == SpanKind.CONSUMER
        and (s.attributes or {}).get("messaging.kafka.offset") == poison_offset
    ]
    assert [s.status.status_code for s in spans] == [StatusCode.ERROR]

    # The partition moved on: a new consumer of the group starts after both records.
    nxt = requested("conv-poison", run_id="run-next")
    await kit.producer.produce(topic, nxt.SerializeToString(), key=b"conv-poison")
    await kafka.close()
    kit.consumers.remove(kafka)
    (next_record,) = await consume_n(kit.consumer("planner", topic), 1)
    assert next_record.partition() == after.partition()
    assert next_record.offset() == (after.offset() or 0) + 1
    assert next_record.value() == nxt.SerializeToString()


async def test_undecodable_task_is_dead_lettered_at_once(kit: Kit) -> None:
    await kit.rabbit.publish(
        kit.topo.exchange,
        kit.topo.routing_key,
        POISON,
        headers={"x-origin": "fuzzer", "ce_type": TASK.type_name},
    )
    seen = Observed()

    async def never(incoming: Incoming) -> None:
        seen.calls += 1

    worker = TaskConsumer(kit.rabbit, kit.telemetry, TASK, topology=kit.topo)
    assert await handle_deliveries(kit, worker, never, until=set(Outcome)) == [
        Outcome.DEAD_LETTERED
    ]
    assert seen.calls == 0
    (dead,) = await dead_letters(kit)
    assert dead.body == POISON
    headers: dict[str, Any] = dict(dead.headers or {})
    assert headers["x-origin"] == "fuzzer"
    # Published to the dead-letter queue by the consumer, with why; not rejected into it.
    assert headers["dlq_reason"] == "UNDECODABLE"
    assert TASK.type_name in headers["dlq_error"]
    assert headers["dlq_queue"] == kit.topo.queue
    assert headers["dlq_attempts"] == 1
    assert "x-death" not in headers
    assert await queue_count(kit, kit.topo.queue) == 0
    span = one_span(kit.spans(), f"process {kit.topo.queue}", SpanKind.CONSUMER)
    assert span.status.status_code == StatusCode.ERROR


# -- 3. handler failures ---------------------------------------------------------------------


async def test_failing_kafka_handler_is_retried_then_dead_lettered(kit: Kit, redis: Any) -> None:
    topic = kit.topic()
    events = EventProducer(kit.producer, kit.telemetry, source="/test", topic_prefix=kit.prefix)
    sent = requested("conv-fail")
    await events.emit(sent, idempotency_key="run-1:requested")
    kafka = kit.consumer("planner", topic)
    (record,) = await consume_n(kafka, 1)
    guard = IdempotencyGuard(redis, namespace=f"{kit.prefix}planner")
    consumer = EventConsumer(
        kafka,
        kit.telemetry,
        group="planner",
        dead_letters=kit.producer,
        guard=guard,
        topic_prefix=kit.prefix,
        attempts=2,
    )
    seen = Observed()

    async def boom(incoming: Incoming) -> None:
        seen.calls += 1
        raise RuntimeError("tool exploded")

    assert await consumer.handle(record, boom) == Outcome.DEAD_LETTERED
    assert seen.calls == 2

    (dead,) = await consume_n(kit.consumer("dlq-reader", kit.topic("agent.dlq")), 1)
    assert dead.value() == sent.SerializeToString()
    assert dict(headers_of(dead))["dlq_reason"] == b"RETRIES_EXHAUSTED"
    error = dict(headers_of(dead))["dlq_error"].decode()
    assert "RuntimeError" in error
    assert "tool exploded" in error
    span = one_span(kit.spans(), f"process {topic}", SpanKind.CONSUMER)
    attempts = [e.attributes["agentflux.attempt"] for e in span.events if e.attributes]
    assert attempts == [1, 2]

    # The claim was released: the key is free, a redelivery would be handled again.
    assert await redis.exists(guard.redis_key(claim_key("run-1:requested"))) == 0
    again = await guard.begin(claim_key("run-1:requested"))
    assert again.new


async def test_failing_task_handler_is_retried_through_the_delay_tiers_then_dead_lettered(
    kit: Kit, redis: Any
) -> None:
    publisher = TaskPublisher(kit.rabbit, kit.telemetry, source="/test", name_prefix=kit.prefix)
    sent = tool_task()
    await publisher.publish(sent, idempotency_key="run-1:0:call")
    guard = IdempotencyGuard(redis, namespace=f"{kit.prefix}worker")
    worker = TaskConsumer(kit.rabbit, kit.telemetry, TASK, topology=kit.topo, guard=guard)
    attempts: list[tuple[int, Any]] = []

    async def boom(incoming: Incoming) -> None:
        headers = incoming.inbound.raw.headers or {}
        attempts.append((incoming.attempt, headers.get(ATTEMPT_HEADER)))
        raise RuntimeError("tool exploded")

    settled = await handle_deliveries(
        kit, worker, boom, until={Outcome.DEAD_LETTERED, Outcome.HANDLED, Outcome.DUPLICATE}
    )
    # One attempt, then one more per delay tier.
    assert settled == [Outcome.RETRYING, Outcome.RETRYING, Outcome.DEAD_LETTERED]
    assert attempts == [(1, None), (2, 2), (3, 3)]
    (dead,) = await dead_letters(kit)
    assert dead.body == sent.SerializeToString()
    headers: dict[str, Any] = dict(dead.headers or {})
    assert headers["dlq_reason"] == "RETRIES_EXHAUSTED"
    assert headers["dlq_attempts"] == 1 + len(DELAYS_MS)
    assert "RuntimeError: tool exploded" in headers["dlq_error"]
    for queue in (kit.topo.queue, *kit.topo.retry_queues.values()):
        assert await queue_count(kit, queue) == 0
    assert (await guard.begin(claim_key("run-1:0:call"))).new


# -- 4. batches ------------------------------------------------------------------------------


async def test_batch_span_links_every_producer_and_handles_each_once(kit: Kit, redis: Any) -> None:
    topic = kit.topic()
    events = EventProducer(kit.producer, kit.telemetry, source="/test", topic_prefix=kit.prefix)
    runs = [f"run-{i}" for i in range(3)]
    for run in runs:  # no span is current: each emit starts a trace of its own
        await events.emit(requested(f"conv-{run}", run_id=run), idempotency_key=f"{run}:req")
    kafka = kit.consumer("planner", topic)
    records = await consume_n(kafka, 3)
    consumer = EventConsumer(
        kafka,
        kit.telemetry,
        group="planner",
        dead_letters=kit.producer,
        guard=IdempotencyGuard(redis, namespace=f"{kit.prefix}planner"),
        topic_prefix=kit.prefix,
    )
    handled: list[str] = []

    async def plan(incoming: Incoming) -> bytes:
        assert isinstance(incoming.event, events_pb2.AgentRequested)
        handled.append(incoming.event.run_id)
        return b"planned"

    assert await consumer.handle_batch(records, plan) == [Outcome.HANDLED] * 3
    assert sorted(handled) == runs
    # The same batch again (a redelivery after a crash) is three duplicates.
    assert await consumer.handle_batch(records, plan) == [Outcome.DUPLICATE] * 3
    assert sorted(handled) == runs

    spans = kit.spans()
    producers = [s for s in spans if s.kind == SpanKind.PRODUCER]
    assert len(producers) == 3
    assert len({s.context.trace_id for s in producers if s.context}) == 3
    batches = [
        s
        for s in spans
        if s.kind == SpanKind.CONSUMER and "messaging.batch.message_count" in (s.attributes or {})
    ]
    assert len(batches) == 2
    for batch in batches:
        assert batch.attributes is not None
        assert batch.attributes["messaging.batch.message_count"] == 3
        assert {(link.context.trace_id, link.context.span_id) for link in batch.links} == {
            (s.context.trace_id, s.context.span_id) for s in producers if s.context
        }
        assert len(batch.links) == 3


# -- 5. a claim another handler still holds --------------------------------------------------

# (lease of the other handler's claim, lease of the consumer's own guard): with the second,
# a task consumer's wait (two of its own leases) ends while the other claim is still
# pending, so it hands the task back; a Kafka consumer waits until the claim is decided.
LEASES = [pytest.param(0.5, 60.0, id="waits-out-lease"), pytest.param(2.0, 0.2, id="longer-lease")]


@pytest.mark.parametrize(("held_s", "own_s"), LEASES)
async def test_kafka_record_with_pending_claim_waits_then_is_handled(
    kit: Kit, redis: Any, held_s: float, own_s: float
) -> None:
    namespace = f"{kit.prefix}planner"
    other = IdempotencyGuard(redis, namespace=namespace, lease_s=held_s)
    assert (await other.begin(claim_key("run-1:requested"))).new  # ...and that handler dies
    claimed_at = time.monotonic()
    events = EventProducer(kit.producer, kit.telemetry, source="/test", topic_prefix=kit.prefix)
    await events.emit(requested("conv-pending"), idempotency_key="run-1:requested")
    kafka = kit.consumer("planner", kit.topic())
    (record,) = await consume_n(kafka, 1)
    consumer = EventConsumer(
        kafka,
        kit.telemetry,
        group="planner",
        dead_letters=kit.producer,
        guard=IdempotencyGuard(redis, namespace=namespace, lease_s=own_s),
        topic_prefix=kit.prefix,
    )
    seen = Observed()

    async def plan(incoming: Incoming) -> bytes:
        seen.calls += 1
        return b"planned"

    assert await consumer.handle(record, plan) == Outcome.HANDLED
    # Not decided before the other claim's lease ran out.
    assert time.monotonic() - claimed_at >= held_s * 0.9
    assert seen.calls == 1
    decided = await other.begin(claim_key("run-1:requested"))
    assert (decided.new, decided.pending, decided.outcome) == (False, False, b"planned")


@pytest.mark.parametrize(("held_s", "own_s"), LEASES)
async def test_task_with_pending_claim_is_not_acked_then_is_handled(
    kit: Kit, redis: Any, held_s: float, own_s: float
) -> None:
    namespace = f"{kit.prefix}worker"
    other = IdempotencyGuard(redis, namespace=namespace, lease_s=held_s)
    assert (await other.begin(claim_key("run-1:0:call"))).new  # ...and that handler dies
    claimed_at = time.monotonic()
    publisher = TaskPublisher(kit.rabbit, kit.telemetry, source="/test", name_prefix=kit.prefix)
    await publisher.publish(tool_task(), idempotency_key="run-1:0:call")
    worker = TaskConsumer(
        kit.rabbit,
        kit.telemetry,
        TASK,
        topology=kit.topo,
        guard=IdempotencyGuard(redis, namespace=namespace, lease_s=own_s),
    )
    seen = Observed()

    async def work(incoming: Incoming) -> bytes:
        seen.calls += 1
        return b"worked"

    settled = await handle_deliveries(
        kit, worker, work, until={Outcome.HANDLED, Outcome.DUPLICATE, Outcome.DEAD_LETTERED}
    )
    assert time.monotonic() - claimed_at >= held_s * 0.9
    # Handed back (requeued) while pending, if at all; never acked as a duplicate.
    assert settled[-1] == Outcome.HANDLED
    assert set(settled[:-1]) <= {Outcome.HANDED_BACK}
    if 2 * own_s < held_s:  # the consumer stopped waiting before the other lease ran out
        assert Outcome.HANDED_BACK in settled
    assert seen.calls == 1
    assert await queue_count(kit, kit.topo.queue) == 0
    decided = await other.begin(claim_key("run-1:0:call"))
    assert (decided.new, decided.pending, decided.outcome) == (False, False, b"worked")


# -- 4. what other producers may send -------------------------------------------------------


async def test_a_foreign_producers_cloud_event_keeps_its_id_and_trace_and_dedupes(
    kit: Kit, redis: Any
) -> None:
    # A producer in another language: only the CloudEvents attributes, an id in its own
    # format and a traceparent of a later W3C version. Delivered twice (a redelivery).
    trace_id, span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    topic = kit.topic()
    foreign = [
        ("ce_specversion", b"1.0"),
        ("ce_type", REQUESTED.encode()),
        ("ce_source", b"/billing/orders"),
        ("ce_id", b"orders/2026/7"),
        ("content-type", b"application/protobuf"),
        ("traceparent", f"01-{trace_id}-{span_id}-01-future".encode()),
    ]
    payload = requested("conv-foreign").SerializeToString()
    for _ in range(2):
        await kit.producer.produce(topic, payload, key=b"conv-foreign", headers=foreign)
    kafka = kit.consumer("planner", topic)
    records = await consume_n(kafka, 2)
    consumer = EventConsumer(
        kafka,
        kit.telemetry,
        group="planner",
        dead_letters=kit.producer,
        guard=IdempotencyGuard(redis, namespace=f"{kit.prefix}planner"),
        topic_prefix=kit.prefix,
    )
    seen = Observed()

    async def plan(incoming: Incoming) -> bytes:
        ctx = current()
        assert ctx is not None
        seen.bound.append(ctx)
        seen.calls += 1
        return b"planned"

    outcomes = [await consumer.handle(record, plan) for record in records]
    assert outcomes[0] == Outcome.HANDLED
    assert seen.calls == 1  # the second copy is the same event (source + id): not re-run
    (ctx,) = seen.bound
    assert ctx.event_id == "orders/2026/7"
    process = [s for s in kit.spans() if s.name == f"process {topic}"]
    assert process
    assert all(f"{s.context.trace_id:032x}" == trace_id for s in process if s.context)


async def test_tenant_and_run_come_from_the_payload_and_a_conflict_is_dead_lettered(
    kit: Kit,
) -> None:
    topic = kit.topic()
    base = [("ce_type", REQUESTED.encode()), ("ce_source", b"/go/producer")]
    event = requested("conv-payload", run_id="run-from-payload")
    event.tenant_id = "acme"
    payload = event.SerializeToString()
    await kit.producer.produce(topic, payload, key=b"conv-payload", headers=base)
    conflicting = [*base, ("ce_tenantid", b"globex")]
    await kit.producer.produce(topic, payload, key=b"conv-payload", headers=conflicting)
    kafka = kit.consumer("planner", topic)
    first, second = await consume_n(kafka, 2)
    consumer = EventConsumer(
        kafka, kit.telemetry, group="planner", dead_letters=kit.producer, topic_prefix=kit.prefix
    )
    seen = Observed()

    async def plan(incoming: Incoming) -> bytes:
        ctx = current()
        assert ctx is not None
        seen.bound.append(ctx)
        return b"planned"

    assert await consumer.handle(first, plan) == Outcome.HANDLED
    (ctx,) = seen.bound
    assert (ctx.tenant_id, ctx.run_id) == ("acme", "run-from-payload")
    assert await consumer.handle(second, plan) == Outcome.DEAD_LETTERED
    assert len(seen.bound) == 1
    (dead,) = await consume_n(kit.consumer("dlq", kit.topic("agent.dlq")), 1)
    got = dict(headers_of(dead))
    assert got["dlq_reason"] == b"CONTEXT_CONFLICT"
    assert b"globex" in got["dlq_error"]
    assert b"acme" in got["dlq_error"]
    assert dead.value() == payload
