"""`agentflux demo`: one message through each of the four systems, with agentflux's adapters.

A run request travels as the `AgentRequested` contract through its Kafka topic, a
`ToolTask` through its RabbitMQ queue with the run's priority, the run's session
state through Redis and a prompt template through Memcached. Each hop is read back
and timed. (The reference agent flow replaces this once the services exist.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from contextlib import aclosing

from agentflux.v1 import events_pb2, tasks_pb2, types_pb2
from google.protobuf import duration_pb2, struct_pb2

from services.runtime.adapters.kafka import KafkaConsumer, KafkaProducer
from services.runtime.adapters.memcached import connect_memcached
from services.runtime.adapters.rabbitmq import PROTOBUF, RabbitConnection
from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings
from services.runtime.contracts import registry

__all__ = ["run_demo"]

Say = Callable[[str], None]


def _ms(since: float) -> str:
    return f"{(time.perf_counter() - since) * 1000:.1f} ms"


async def run_demo(settings: Settings, say: Say) -> None:
    """Runs the four hops and prints what travelled and how long each took."""
    contracts = registry()
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    conversation_id = f"conv-{uuid.uuid4().hex[:8]}"
    request = events_pb2.AgentRequested(
        run_id=run_id,
        tenant_id="demo",
        conversation_id=conversation_id,
        prompt="What is 6 * 7?",
        priority=types_pb2.PRIORITY_HIGH,
    )
    request.request_time.GetCurrentTime()
    say(f"run {run_id} (conversation {conversation_id}, tenant demo)")

    # Kafka: the contract says which topic and which key.
    event = contracts.event(request)
    producer = KafkaProducer(settings)
    consumer = KafkaConsumer(settings, "agentflux-demo", [event.topic])
    try:
        t = time.perf_counter()
        delivered = await producer.produce(
            event.topic,
            request.SerializeToString(),
            key=event.key(request),
            headers=[("ce_type", request.DESCRIPTOR.full_name.encode())],
        )
        produced = _ms(t)
        t = time.perf_counter()
        got = await _consume_run(consumer, run_id)
        say(
            f"kafka      {event.type_name} -> {delivered.topic}[{delivered.partition}]"
            f"@{delivered.offset} key={event.key(request).decode()}: produced (acked) in "
            f"{produced} (first record: connects and acquires the idempotent producer id), "
            f"consumed back in {_ms(t)} (includes joining the consumer group)"
        )
        assert got.prompt == request.prompt
    finally:
        await consumer.close()
        await producer.close()

    # RabbitMQ: a tool task with the run's priority, published with a confirm.
    task = tasks_pb2.ToolTask(
        run_id=run_id,
        tenant_id="demo",
        conversation_id=conversation_id,
        step=0,
        step_tool_count=1,
        call=types_pb2.ToolCall(
            tool_call_id="call-1",
            name="calculator",
            arguments=struct_pb2.Struct(
                fields={"expression": struct_pb2.Value(string_value="6*7")}
            ),
        ),
        priority=request.priority,
        attempt=1,
        max_attempts=3,
        timeout=duration_pb2.Duration(seconds=10),
    )
    route = contracts.task(task)
    priority = contracts.amqp_priority(task.priority)
    async with await RabbitConnection.connect(settings) as rabbit:
        t = time.perf_counter()
        await rabbit.publish(
            route.exchange,
            route.routing_key,
            task.SerializeToString(),
            priority=priority,
            message_id=f"{run_id}/call-1",
            message_type=task.DESCRIPTOR.full_name,
        )
        published = _ms(t)
        t = time.perf_counter()
        async with aclosing(rabbit.consume(route.queue)) as deliveries:
            async for delivery in deliveries:
                if delivery.message_id != f"{run_id}/call-1":
                    await delivery.reject(requeue=True)  # not ours: leave it for its worker
                    continue
                assert delivery.content_type == PROTOBUF
                back = tasks_pb2.ToolTask.FromString(delivery.body)
                await delivery.ack()
                break
        say(
            f"rabbitmq   {route.type_name} -> {route.exchange} -> {route.queue} priority "
            f"{delivery.priority}: published (confirmed) in {published}, consumed and acked "
            f"in {_ms(t)}; tool {back.call.name}({back.call.arguments['expression']})"
        )

    # Redis: the run's session state, with a TTL like all short-lived memory.
    r = connect_redis(settings)
    try:
        key = f"agentflux:demo:session:{conversation_id}"
        t = time.perf_counter()
        async with r.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"last_run": run_id, "turns": 1})
            pipe.expire(key, 300)
            pipe.hgetall(key)
            *_, state = await pipe.execute()
        say(f"redis      HSET+EXPIRE+HGETALL {key} (one round trip) in {_ms(t)}: {state}")
    finally:
        await r.aclose()

    # Memcached: a hot, disposable prompt template.
    mc = connect_memcached(settings)
    try:
        key = "agentflux:demo:template:answer"
        t = time.perf_counter()
        mc.set(key, b"Answer briefly: {question}", expire=60)
        template = mc.get(key)
        say(f"memcached  SET+GET {key} in {_ms(t)}: {template!r}")
    finally:
        mc.close()
    say("all four systems carried the run. `agentflux stack status` shows them.")


async def _consume_run(consumer: KafkaConsumer, run_id: str) -> events_pb2.AgentRequested:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for record in await consumer.consume(max_records=500, timeout=0.5):
            consumer.store(record)
            event = events_pb2.AgentRequested.FromString(record.value() or b"")
            if event.run_id == run_id:
                await consumer.commit()
                return event
        await consumer.commit()
        await asyncio.sleep(0)
    raise TimeoutError(f"run {run_id} was produced but not consumed back within 30 s")
