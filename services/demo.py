"""`agentflux demo`: one run's messages through all four systems, then its trace.

The demo plays the parts the services will play: an edge emits the `AgentRequested`
contract to its Kafka topic; a planner (a consumer group) turns it into a `ToolTask`
on RabbitMQ with the run's priority; a worker reads the session from Redis and a prompt
template from Memcached and emits `ToolCalled`. Every hop goes through the interceptors,
so one correlation id, tenant and trace run through all of it, and the demo ends by
printing that trace as `agentflux trace` shows it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from agentflux.v1 import events_pb2, tasks_pb2, types_pb2
from google.protobuf import duration_pb2, struct_pb2

from interceptors import (
    EventConsumer,
    EventProducer,
    FluxContext,
    IdempotencyGuard,
    Incoming,
    TaskConsumer,
    TaskPublisher,
    Telemetry,
    bind,
    instrument_caches,
    new_id,
)
from services.runtime.adapters.kafka import KafkaConsumer, KafkaProducer
from services.runtime.adapters.memcached import connect_memcached
from services.runtime.adapters.rabbitmq import RabbitConnection
from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings
from services.runtime.contracts import registry
from services.runtime.topology import task_topology

__all__ = ["run_demo"]

Say = Callable[[str], None]
_GROUP = "agentflux-demo"


async def run_demo(settings: Settings, say: Say) -> str:
    """Runs one request through the four systems and returns its correlation id."""
    store = settings.span_store_dir
    tel = {
        name: Telemetry.create(name, span_store=store, batch_delay_ms=100)
        for name in ("edge", "planner", "worker")
    }
    instrument_caches(tel["worker"])
    contracts = registry()
    run_id = f"run-{new_id()[:12]}"
    conversation_id = f"conv-{new_id()[:8]}"
    request = events_pb2.AgentRequested(
        run_id=run_id,
        tenant_id="demo",
        conversation_id=conversation_id,
        prompt="What is 6 * 7?",
        priority=types_pb2.PRIORITY_HIGH,
    )
    request.request_time.GetCurrentTime()

    producer = KafkaProducer(settings)
    rabbit = await RabbitConnection.connect(settings)
    redis = connect_redis(settings)
    memcached = connect_memcached(settings)
    planner_kafka = KafkaConsumer(settings, _GROUP, [contracts.event(request).topic])
    done = asyncio.Event()
    marks: dict[str, float] = {}
    try:
        await redis.hset(f"agentflux:demo:session:{conversation_id}", "turns", 1)
        await redis.expire(f"agentflux:demo:session:{conversation_id}", 300)
        memcached.set("agentflux:demo:template:calculator", b"Compute {expression}", expire=300)

        tasks_out = TaskPublisher(rabbit, tel["planner"], source="/agentflux/demo/planner")
        results_out = EventProducer(producer, tel["worker"], source="/agentflux/demo/worker")

        async def plan(incoming: Incoming) -> bytes:
            event = incoming.event
            assert isinstance(event, events_pb2.AgentRequested)
            if event.run_id != run_id:  # an earlier demo's record: nothing left to do
                return b""
            marks["planned"] = time.perf_counter()
            task = tasks_pb2.ToolTask(
                run_id=event.run_id,
                tenant_id=event.tenant_id,
                conversation_id=event.conversation_id,
                step_tool_count=1,
                call=types_pb2.ToolCall(
                    tool_call_id="call-1",
                    name="calculator",
                    arguments=struct_pb2.Struct(
                        fields={"expression": struct_pb2.Value(string_value="6*7")}
                    ),
                ),
                priority=event.priority,
                attempt=1,
                max_attempts=3,
                timeout=duration_pb2.Duration(seconds=10),
            )
            await tasks_out.publish(task, idempotency_key=f"{run_id}:0:call-1")
            return b"planned"

        async def work(delivery: Incoming) -> bytes:
            task = delivery.event
            assert isinstance(task, tasks_pb2.ToolTask)
            if task.run_id != run_id:  # an earlier demo's task: nothing left to do
                return b""
            marks["worked"] = time.perf_counter()
            turns = await redis.hget(f"agentflux:demo:session:{task.conversation_id}", "turns")
            template = memcached.get("agentflux:demo:template:calculator")
            say(
                f"worker     got {task.call.name} (AMQP priority {delivery.inbound.raw.priority}); "
                f"session turns={turns!r} from Redis, template {template!r} from Memcached"
            )
            result = events_pb2.ToolCalled(
                run_id=task.run_id,
                tenant_id=task.tenant_id,
                conversation_id=task.conversation_id,
                step_tool_count=1,
                call=task.call,
                result=types_pb2.ToolResult(
                    tool_call_id=task.call.tool_call_id,
                    name=task.call.name,
                    status=types_pb2.TOOL_CALL_STATUS_SUCCEEDED,
                    output=struct_pb2.Value(number_value=42),
                    attempts=1,
                ),
            )
            await results_out.emit(result, idempotency_key=f"{run_id}:0:call-1:result")
            done.set()
            return b"42"

        planner = EventConsumer(
            planner_kafka,
            tel["planner"],
            dead_letters=producer,
            guard=IdempotencyGuard(redis, namespace="agentflux:demo:planner"),
        )
        task_contract = contracts.task(tasks_pb2.ToolTask)
        worker = TaskConsumer(
            rabbit,
            tel["worker"],
            task_contract,
            topology=task_topology(settings, task_contract),
            guard=IdempotencyGuard(redis, namespace="agentflux:demo:worker"),
        )

        stop = asyncio.Event()
        running = [
            asyncio.create_task(planner.run(plan, stop)),
            asyncio.create_task(worker.run(work, stop)),
        ]
        # Emit once the planner holds its partitions, so the queue wait shown is the
        # hop's own and not the group join.
        for _ in range(600):  # up to 30 s
            if await planner_kafka.assignment():
                break
            await asyncio.sleep(0.05)
        ctx = FluxContext.new(tenant_id="demo", run_id=run_id)
        began = time.perf_counter()
        with bind(ctx), tel["edge"].tracer.start_as_current_span("demo run"):
            delivered = await _emit_request(producer, tel["edge"], request)
        say(
            f"edge       {request.DESCRIPTOR.full_name} -> {delivered} "
            f"(correlation {ctx.correlation_id}, tenant demo)"
        )
        try:
            await asyncio.wait_for(done.wait(), timeout=60)
        finally:
            stop.set()  # both consumers finish what they hold, commit and return
            await asyncio.gather(*running, return_exceptions=True)
        say(
            f"timeline   planner got it after {_ms(began, marks['planned'])}, "
            f"worker after {_ms(began, marks['worked'])}"
        )
    finally:
        await planner_kafka.close()
        await producer.close()
        await rabbit.close()
        await redis.aclose()
        memcached.close()
    for t in tel.values():
        t.shutdown()
    return ctx.correlation_id


async def _emit_request(
    producer: KafkaProducer, telemetry: Telemetry, request: events_pb2.AgentRequested
) -> str:
    """Emits the request at the edge; returns where it landed."""
    edge = EventProducer(producer, telemetry, source="/agentflux/demo/edge")
    where = await edge.emit(request, idempotency_key=f"{request.run_id}:requested")
    return f"{where.topic}[{where.partition}]@{where.offset}"


def _ms(start: float, end: float) -> str:
    return f"{(end - start) * 1000:.0f} ms"
