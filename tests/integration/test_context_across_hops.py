"""One request across gRPC, Kafka, RabbitMQ, Redis and Memcached, on the real brokers.

A client calls a gateway over gRPC with its own correlation id and tenant; the
gateway emits `AgentRequested`; a planner consuming that topic publishes a `ToolTask`;
a worker consuming that queue reads Redis and Memcached and emits `ToolCalled`. The
test then checks, from what the brokers delivered and the spans exported: one
correlation id and tenant on every hop, each causation id equal to its cause's id,
one trace with the right parent/child shape and span kinds, queue wait recorded, and
a duplicate delivery on each broker handled once. `agentflux trace` renders it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from agentflux.v1 import events_pb2, gateway_pb2, gateway_pb2_grpc, tasks_pb2, types_pb2
from confluent_kafka.admin import AdminClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_trace_id
from typer.testing import CliRunner

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
    current,
    instrument_caches,
    uninstrument_caches,
)
from services.runtime.adapters.kafka import KafkaConsumer, KafkaProducer
from services.runtime.adapters.memcached import connect_memcached
from services.runtime.adapters.rabbitmq import RabbitConnection
from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings
from services.runtime.contracts import registry
from services.runtime.topology import (
    declare_task_topology,
    ensure_kafka_topics,
    kafka_topics,
    task_topology,
)

pytestmark = pytest.mark.integration


@dataclass
class Seen:
    """What each hop observed, for the assertions."""

    gateway: list[FluxContext] = field(default_factory=list)
    planner: list[Incoming] = field(default_factory=list)
    worker: list[Incoming] = field(default_factory=list)
    worker_reads: list[tuple[Any, Any]] = field(default_factory=list)


class Gateway(gateway_pb2_grpc.AgentGatewayServicer):
    def __init__(self, events: EventProducer, seen: Seen) -> None:
        self.events = events
        self.seen = seen

    async def Submit(  # noqa: N802 - generated method name
        self, request: gateway_pb2.SubmitRequest, context: Any
    ) -> gateway_pb2.SubmitResponse:
        ctx = current()
        assert ctx is not None
        self.seen.gateway.append(ctx)
        event = events_pb2.AgentRequested(
            run_id="run-1",
            tenant_id=ctx.tenant_id,
            conversation_id=request.conversation_id,
            prompt=request.prompt,
            priority=request.priority,
        )
        await self.events.emit(event, idempotency_key=f"{request.request_id}:requested")
        return gateway_pb2.SubmitResponse(run=types_pb2.Run(run_id="run-1"))


def _telemetry(name: str, store: Path) -> tuple[Telemetry, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    return Telemetry.create(name, span_store=store, exporters=[memory], batch_delay_ms=50), memory


async def _until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def topology(settings: Settings, prefix: str) -> AsyncIterator[None]:
    await ensure_kafka_topics(settings, kafka_topics(settings, prefix=prefix))
    topo = task_topology(settings, registry().task(tasks_pb2.ToolTask), prefix)
    async with await RabbitConnection.connect(settings) as rabbit:
        await declare_task_topology(rabbit.channel, topo)
    yield
    async with await RabbitConnection.connect(settings) as rabbit:
        for queue in topo.all_queues:
            await rabbit.channel.queue_delete(queue)
        for exchange in (topo.exchange, topo.retry_exchange, topo.dead_letter_exchange):
            await rabbit.channel.exchange_delete(exchange)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for fut in admin.delete_topics(
        [t.name for t in kafka_topics(settings, prefix=prefix)]
    ).values():
        await asyncio.wrap_future(fut)


async def test_one_request_across_five_systems(
    settings: Settings, prefix: str, topology: None, tmp_path: Path
) -> None:
    store = tmp_path / "traces"
    client_tel, client_spans = _telemetry("client", store)
    gw_tel, gw_spans = _telemetry("gateway", store)
    planner_tel, planner_spans = _telemetry("planner", store)
    worker_tel, worker_spans = _telemetry("worker", store)
    instrument_caches(worker_tel)
    contracts = registry()
    seen = Seen()

    producer = KafkaProducer(settings)
    redis = connect_redis(settings)
    memcached = connect_memcached(settings)
    rabbit = await RabbitConnection.connect(settings)
    group = f"{prefix}planner"
    planner_kafka = KafkaConsumer(settings, group, [prefix + "agent.requested"])
    results = KafkaConsumer(settings, f"{prefix}results", [prefix + "agent.tool_called"])
    server = grpc.aio.server(interceptors=[ServerContextInterceptor(gw_tel)])
    stop = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    try:
        # -- the mesh ----------------------------------------------------------------
        gateway_pb2_grpc.add_AgentGatewayServicer_to_server(
            Gateway(EventProducer(producer, gw_tel, source="/gateway", topic_prefix=prefix), seen),
            server,
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()

        tasks_out = TaskPublisher(rabbit, planner_tel, source="/planner", name_prefix=prefix)

        async def plan(incoming: Incoming) -> bytes:
            seen.planner.append(incoming)
            request = incoming.event
            assert isinstance(request, events_pb2.AgentRequested)
            task = tasks_pb2.ToolTask(
                run_id=request.run_id,
                tenant_id=request.tenant_id,
                conversation_id=request.conversation_id,
                call=types_pb2.ToolCall(tool_call_id="call-1", name="calculator"),
                priority=request.priority,
                attempt=1,
                max_attempts=3,
            )
            await tasks_out.publish(task, idempotency_key=f"{request.run_id}:0:call-1")
            return b"planned"

        planner = EventConsumer(
            planner_kafka,
            planner_tel,
            group=group,
            dead_letters=producer,
            guard=IdempotencyGuard(redis, namespace=f"{prefix}planner"),
            topic_prefix=prefix,
        )
        tasks.append(asyncio.create_task(planner.run(plan, stop)))

        await redis.set(f"{prefix}session", b"state")
        memcached.set(f"{prefix}template", b"Answer: {x}")
        results_out = EventProducer(producer, worker_tel, source="/worker", topic_prefix=prefix)

        async def work(incoming: Incoming) -> bytes:
            seen.worker.append(incoming)
            task = incoming.event
            assert isinstance(task, tasks_pb2.ToolTask)
            state = await redis.get(f"{prefix}session")
            template = memcached.get(f"{prefix}template")
            seen.worker_reads.append((state, template))
            done = events_pb2.ToolCalled(
                run_id=task.run_id,
                tenant_id=task.tenant_id,
                conversation_id=task.conversation_id,
                call=task.call,
                result=types_pb2.ToolResult(
                    tool_call_id=task.call.tool_call_id,
                    status=types_pb2.TOOL_CALL_STATUS_SUCCEEDED,
                ),
            )
            await results_out.emit(done, idempotency_key=f"{task.run_id}:0:call-1:done")
            return b"worked"

        tool_tasks = contracts.task(tasks_pb2.ToolTask)
        queue = prefix + tool_tasks.queue
        worker = TaskConsumer(
            rabbit,
            worker_tel,
            tool_tasks,
            topology=task_topology(settings, tool_tasks, prefix),
            guard=IdempotencyGuard(redis, namespace=f"{prefix}worker"),
        )
        tasks.append(asyncio.create_task(worker.run(work, stop)))

        # -- the call ----------------------------------------------------------------
        client_ctx = FluxContext.new(correlation_id="corr-e2e-42", tenant_id="acme")
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=client_interceptors(client_tel)
        ) as channel:
            stub = gateway_pb2_grpc.AgentGatewayStub(channel)
            with (
                bind(client_ctx),
                client_tel.tracer.start_as_current_span("client call"),
            ):
                call = stub.Submit(
                    gateway_pb2.SubmitRequest(
                        conversation_id="conv-1",
                        prompt="6*7?",
                        priority=types_pb2.PRIORITY_HIGH,
                        request_id="req-1",
                    )
                )
                await call
                echoed = dict(await call.initial_metadata())

        produced: list[Any] = []

        async def collect_results() -> None:
            while not stop.is_set():
                produced.extend(await results.consume(10, timeout=0.25))

        tasks.append(asyncio.create_task(collect_results()))
        await _until(lambda: produced, "ToolCalled on the result topic")

        # -- duplicates: the same record and the same message again ------------------
        first = seen.planner[0].inbound.raw
        await producer.produce(
            first.topic() or "", first.value() or b"", key=first.key(), headers=first.headers()
        )
        await _until(lambda: planner.counts[Outcome.DUPLICATE] == 1, "the Kafka duplicate")
        raw_task = seen.worker[0].inbound.raw
        await rabbit.publish(
            prefix + contracts.task(tasks_pb2.ToolTask).exchange,
            queue,
            raw_task.body,
            headers=dict(raw_task.headers or {}),
            priority=raw_task.priority,
            message_id=raw_task.message_id,
        )
        await _until(lambda: worker.counts[Outcome.DUPLICATE] == 1, "the AMQP duplicate")
        await asyncio.sleep(0.5)  # time for any wrong second handling to show up
    finally:
        stop.set()
        # The consumers stop gracefully; what does not within the grace is cancelled.
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.stop(None)
        await planner_kafka.close()
        await results.close()
        await rabbit.close()
        await producer.close()
        keys = [k async for k in redis.scan_iter(f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        memcached.close()
        uninstrument_caches()

    # -- handled once each ---------------------------------------------------------------
    assert planner.counts[Outcome.HANDLED] == 1
    assert worker.counts[Outcome.HANDLED] == 1
    assert len(seen.planner) == 1
    assert len(seen.worker) == 1
    assert len(produced) == 1
    assert seen.worker_reads == [(b"state", b"Answer: {x}")]

    # -- one correlation id and tenant on every hop; causation chain ---------------------
    gw = seen.gateway[0]
    requested = seen.planner[0]
    tool_task = seen.worker[0]
    tool_called = dict(produced[0].headers())
    assert echoed["x-correlation-id"] == "corr-e2e-42"
    assert gw.correlation_id == "corr-e2e-42"
    assert gw.tenant_id == "acme"
    assert gw.event_id == echoed["x-request-id"]
    for ctx in (requested.context, tool_task.context):
        assert ctx.correlation_id == "corr-e2e-42"
        assert ctx.tenant_id == "acme"
    assert tool_called["ce_correlationid"] == b"corr-e2e-42"
    assert tool_called["ce_tenantid"] == b"acme"
    # The client's call was caused by the client's own bound work.
    assert gw.causation_id == client_ctx.event_id
    assert requested.context.causation_id == gw.event_id
    assert tool_task.context.causation_id == requested.context.event_id
    assert tool_called["ce_causationid"].decode() == tool_task.context.event_id
    # CloudEvents attributes as delivered.
    rec_headers = dict(requested.inbound.raw.headers() or [])
    assert rec_headers["ce_type"] == b"agentflux.v1.AgentRequested"
    assert rec_headers["ce_specversion"] == b"1.0"
    assert rec_headers["content-type"] == b"application/protobuf"
    assert (tool_task.inbound.raw.headers or {})["ce_type"] == "agentflux.v1.ToolTask"
    assert tool_called["ce_type"] == b"agentflux.v1.ToolCalled"

    # -- one trace, right shape ---------------------------------------------------------
    for tel in (client_tel, gw_tel, planner_tel, worker_tel):
        tel.flush()
    spans: list[ReadableSpan] = [
        *client_spans.get_finished_spans(),
        *gw_spans.get_finished_spans(),
        *planner_spans.get_finished_spans(),
        *worker_spans.get_finished_spans(),
    ]
    client_span = next(s for s in spans if s.kind == SpanKind.CLIENT and s.name.endswith("Submit"))
    assert client_span.context is not None
    main_trace = client_span.context.trace_id
    # Every RPC and messaging span of the request, duplicates included, is in one trace
    # (cache commands of the test's own set-up and clean-up are not part of it).
    hops = [s for s in spans if "db.system" not in (s.attributes or {}) and s.name != "client call"]
    assert {s.context.trace_id for s in hops if s.context} == {main_trace}, [s.name for s in hops]
    in_trace = [s for s in spans if s.context is not None and s.context.trace_id == main_trace]
    first_trace = [s for s in in_trace if s.attributes.get("agentflux.duplicate") is not True]
    by_id = {s.context.span_id: s for s in in_trace if s.context is not None}

    def parent_of(span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None, span.name
        return by_id[span.parent.span_id]

    def one(name: str, kind: SpanKind, parent: ReadableSpan | None = None) -> ReadableSpan:
        found = [
            s
            for s in first_trace
            if s.name == name and s.kind == kind and (parent is None or parent_of(s) is parent)
        ]
        assert len(found) == 1, (name, [s.name for s in first_trace])
        return found[0]

    method = "agentflux.v1.AgentGateway/Submit"
    server_span = one(method, SpanKind.SERVER)
    publish_req = one(f"publish {prefix}agent.requested", SpanKind.PRODUCER)
    process_req = one(f"process {prefix}agent.requested", SpanKind.CONSUMER)
    publish_task = one(f"publish {queue}", SpanKind.PRODUCER)
    process_task = one(f"process {queue}", SpanKind.CONSUMER)
    redis_get = one("GET", SpanKind.CLIENT, parent=process_task)
    mc_get = one("get", SpanKind.CLIENT, parent=process_task)
    publish_done = one(f"publish {prefix}agent.tool_called", SpanKind.PRODUCER)
    assert parent_of(server_span) is client_span
    assert parent_of(publish_req) is server_span
    assert parent_of(process_req) is publish_req
    assert parent_of(publish_task) is process_req
    assert parent_of(process_task) is publish_task
    assert redis_get.attributes["db.system"] == "redis"
    # Cache instrumentation is process-wide, yet each command is the span of the service
    # whose work issued it: the worker's reads, and the planner's own dedupe claim.
    assert redis_get.resource.attributes["service.name"] == "worker"
    assert mc_get.resource.attributes["service.name"] == "worker"
    planner_claims = [s for s in first_trace if s.name == "SET" and parent_of(s) is process_req]
    assert planner_claims
    assert {s.resource.attributes["service.name"] for s in planner_claims} == {"planner"}
    assert mc_get.attributes["db.system"] == "memcached"
    assert parent_of(publish_done) is process_task
    assert process_req.attributes["messaging.consumer.group.name"] == group
    assert process_req.attributes["messaging.system"] == "kafka"
    assert process_task.attributes["messaging.system"] == "rabbitmq"
    for consumer_span in (process_req, process_task):
        wait = consumer_span.attributes["agentflux.queue_wait_ms"]
        assert isinstance(wait, float)
        assert 0.0 <= wait < 10_000
        assert consumer_span.attributes["agentflux.correlation_id"] == "corr-e2e-42"
    assert {
        s.resource.attributes["service.name"] for s in (server_span, process_req, process_task)
    } == {
        "gateway",
        "planner",
        "worker",
    }

    # -- the duplicates were seen, and did not start new work ------------------------------
    dupes = [s for s in in_trace if s.attributes.get("agentflux.duplicate") is True]
    assert sorted(s.name for s in dupes) == sorted(
        [f"process {prefix}agent.requested", f"process {queue}"]
    )

    # -- `agentflux trace` renders the trace from the local span store -------------------------
    from services.cli import app

    result = CliRunner().invoke(app, ["trace", "corr-e2e-42", "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert format_trace_id(main_trace) in result.output
    for shown in ("corr-e2e-42", "AgentGateway/Submit", "kafka", "rabbitmq", "redis", "memcached"):
        assert shown in result.output
    as_json = CliRunner().invoke(app, ["trace", "corr-e2e-42", "--store", str(store), "--json"])
    assert as_json.exit_code == 0, as_json.output
    names = {json.loads(line)["name"] for line in as_json.output.splitlines() if line.strip()}
    for span in (server_span, publish_req, process_req, publish_task, process_task, publish_done):
        assert span.name in names
