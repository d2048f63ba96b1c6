"""The RabbitMQ adapter against the real local broker, on the ToolTask topology declared
under each test's prefix (deleted afterwards)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import aio_pika
import pytest
from agentflux.v1 import tasks_pb2, types_pb2
from aio_pika.abc import AbstractIncomingMessage

from services.runtime.adapters.rabbitmq import PROTOBUF, RabbitConnection
from services.runtime.config import Settings
from services.runtime.contracts import registry
from services.runtime.topology import TaskTopology, declare_task_topology, task_topology

pytestmark = pytest.mark.integration

CONTRACT = registry().task(tasks_pb2.ToolTask)
RETRY_DELAY_MS = 200


@pytest.fixture
async def topo(settings: Settings, prefix: str) -> AsyncIterator[TaskTopology]:
    """The ToolTask topology under this test's prefix, with one short retry tier."""
    fast = settings.model_copy(update={"tool_task_retry_delays_ms": [RETRY_DELAY_MS]})
    topo = task_topology(fast, CONTRACT, prefix)
    admin = await aio_pika.connect(settings.amqp_url, timeout=10)
    try:
        channel = await admin.channel()
        await declare_task_topology(channel, topo)
        yield topo
        channel = await admin.channel()  # a failed passive declare may have closed it
        for queue in topo.all_queues:
            await channel.queue_delete(queue)
        for exchange in [topo.exchange, topo.retry_exchange, topo.dead_letter_exchange]:
            await channel.exchange_delete(exchange)
    finally:
        await admin.close()


@pytest.fixture
async def rabbit(settings: Settings) -> AsyncIterator[RabbitConnection]:
    conn = await RabbitConnection.connect(settings)
    yield conn
    await conn.close()


def task(run_id: str, priority: types_pb2.Priority.ValueType) -> tasks_pb2.ToolTask:
    t = tasks_pb2.ToolTask(
        run_id=run_id,
        tenant_id="tenant-a",
        conversation_id="conv-1",
        step=0,
        step_tool_count=1,
        priority=priority,
        attempt=1,
        max_attempts=3,
    )
    t.call.tool_call_id = f"{run_id}.0"
    t.call.name = "calculator"
    t.call.arguments.update({"expression": "6 * 7"})
    t.timeout.FromSeconds(5)
    return t


async def publish_task(
    rabbit: RabbitConnection, topo: TaskTopology, t: tasks_pb2.ToolTask, **kwargs: object
) -> None:
    await rabbit.publish(
        topo.exchange,
        topo.routing_key,
        t.SerializeToString(),
        priority=registry().amqp_priority(t.priority),
        message_id=t.run_id,
        message_type=t.DESCRIPTOR.full_name,
        **kwargs,  # type: ignore[arg-type]
    )


async def receive(
    rabbit: RabbitConnection, queue: str, n: int = 1, timeout: float = 10.0
) -> list[AbstractIncomingMessage]:
    """The first `n` deliveries of `queue`, not yet acked."""
    out: list[AbstractIncomingMessage] = []
    async with contextlib.aclosing(rabbit.consume(queue)) as deliveries:
        async with asyncio.timeout(timeout):
            async for delivery in deliveries:
                out.append(delivery)
                if len(out) == n:
                    break
    return out


def x_death(message: AbstractIncomingMessage) -> list[dict[str, Any]]:
    """The broker's dead-letter history of a message (`x-death` header)."""
    deaths = message.headers["x-death"]
    assert isinstance(deaths, list)
    return [cast("dict[str, Any]", d) for d in deaths]


async def message_count(settings: Settings, queue: str) -> int:
    conn = await aio_pika.connect(settings.amqp_url, timeout=10)
    try:
        channel = await conn.channel()
        q = await channel.declare_queue(queue, passive=True)
        count = q.declaration_result.message_count
        assert count is not None
        return count
    finally:
        await conn.close()


async def test_publish_and_consume_with_manual_ack(settings: Settings, topo: TaskTopology) -> None:
    sent = task(f"run-{uuid.uuid4().hex[:8]}", types_pb2.PRIORITY_HIGH)
    headers = {"x-correlation-id": "corr-1", "x-attempt": 1}
    rabbit = await RabbitConnection.connect(settings)
    try:
        await publish_task(rabbit, topo, sent, headers=headers)
        assert await message_count(settings, topo.queue) == 1

        (got,) = await receive(rabbit, topo.queue)
        assert tasks_pb2.ToolTask.FromString(got.body) == sent
        assert got.headers == headers
        assert got.message_id == sent.run_id
        assert got.content_type == PROTOBUF
        assert got.type == "agentflux.v1.ToolTask"
        assert got.priority == 8  # PRIORITY_HIGH's AMQP priority
        assert got.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert got.redelivered is False
        await got.ack()
    finally:
        await rabbit.close()
    # Acked before the connection closed: not requeued (an unacked one would be).
    assert await message_count(settings, topo.queue) == 0


async def test_urgent_task_overtakes_waiting_low_tasks(
    topo: TaskTopology, rabbit: RabbitConnection
) -> None:
    for i in range(3):
        await publish_task(rabbit, topo, task(f"low-{i}", types_pb2.PRIORITY_LOW))
    await publish_task(rabbit, topo, task("urgent", types_pb2.PRIORITY_URGENT))
    await publish_task(rabbit, topo, task("normal", types_pb2.PRIORITY_NORMAL))

    got = await receive(rabbit, topo.queue, n=5)
    for delivery in got:
        await delivery.ack()
    assert [d.message_id for d in got] == ["urgent", "normal", "low-0", "low-1", "low-2"]
    assert [d.priority for d in got] == [10, 5, 1, 1, 1]


async def test_unacked_delivery_is_redelivered_after_connection_closes(
    settings: Settings, topo: TaskTopology
) -> None:
    first = await RabbitConnection.connect(settings)
    try:
        await publish_task(first, topo, task("crashy", types_pb2.PRIORITY_NORMAL))
        (got,) = await receive(first, topo.queue)
        assert got.redelivered is False
    finally:
        await first.close()  # the worker "crashed" before acking

    second = await RabbitConnection.connect(settings)
    try:
        (again,) = await receive(second, topo.queue)
        assert again.message_id == "crashy"
        assert again.redelivered is True
        assert again.body == task("crashy", types_pb2.PRIORITY_NORMAL).SerializeToString()
        await again.ack()
    finally:
        await second.close()


async def test_consumer_abandoned_while_connection_closes_is_quiet(
    settings: Settings, topo: TaskTopology
) -> None:
    # A caller that breaks out of `async for ... in rabbit.consume(q)` leaves the
    # generator to the event loop's finaliser, which may close it while the
    # connection is closing: that must neither raise nor lose the prefetched task.
    rabbit = await RabbitConnection.connect(settings)
    await publish_task(rabbit, topo, task("one", types_pb2.PRIORITY_NORMAL))
    await publish_task(rabbit, topo, task("two", types_pb2.PRIORITY_NORMAL))
    deliveries = rabbit.consume(topo.queue)
    first = await anext(deliveries)
    await first.ack()

    closing = asyncio.ensure_future(rabbit.close())
    await asyncio.sleep(0)  # the close is under way
    await deliveries.aclose()
    await closing

    deadline = time.monotonic() + 5
    while await message_count(settings, topo.queue) != 1:
        assert time.monotonic() < deadline, "prefetched task was not returned to the queue"
        await asyncio.sleep(0.05)


async def test_unroutable_publish_raises_and_connection_stays_usable(
    settings: Settings, topo: TaskTopology, rabbit: RabbitConnection
) -> None:
    with pytest.raises(aio_pika.exceptions.DeliveryError):
        await rabbit.publish(topo.exchange, "no.queue.bound.here", b"lost?", timeout=5)

    await publish_task(rabbit, topo, task("after", types_pb2.PRIORITY_NORMAL))
    (got,) = await receive(rabbit, topo.queue)
    assert got.message_id == "after"
    await got.ack()


async def test_publish_to_missing_exchange_raises(
    prefix: str, topo: TaskTopology, rabbit: RabbitConnection
) -> None:
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await rabbit.publish(prefix + "no.such.exchange", "k", b"x", timeout=5)

    # The failed check does not leave the connection unusable.
    await publish_task(rabbit, topo, task("after", types_pb2.PRIORITY_NORMAL))
    (got,) = await receive(rabbit, topo.queue)
    assert got.message_id == "after"
    await got.ack()


async def test_rejected_task_lands_in_dead_letter_queue(
    topo: TaskTopology, rabbit: RabbitConnection
) -> None:
    sent = task("poison", types_pb2.PRIORITY_NORMAL)
    await publish_task(rabbit, topo, sent, headers={"x-correlation-id": "corr-dead"})
    (got,) = await receive(rabbit, topo.queue)
    await got.reject(requeue=False)

    (dead,) = await receive(rabbit, topo.dead_letter_queue)
    assert dead.body == sent.SerializeToString()
    assert dead.message_id == "poison"
    assert dead.headers["x-correlation-id"] == "corr-dead"
    (death,) = x_death(dead)
    assert death["queue"] == topo.queue
    assert death["reason"] == "rejected"
    await dead.ack()


async def test_retry_queue_returns_task_to_work_queue_after_ttl(
    settings: Settings, topo: TaskTopology, rabbit: RabbitConnection
) -> None:
    retry_queue = topo.retry_queues[RETRY_DELAY_MS]
    sent = task("retry-me", types_pb2.PRIORITY_NORMAL)
    sent.attempt = 2
    began = time.monotonic()
    await rabbit.publish(
        topo.retry_exchange,
        retry_queue,
        sent.SerializeToString(),
        message_id=sent.run_id,
        priority=5,
    )
    assert await message_count(settings, topo.queue) == 0  # waiting out its delay

    (back,) = await receive(rabbit, topo.queue)
    waited = time.monotonic() - began
    assert waited >= RETRY_DELAY_MS / 1000 * 0.9
    assert waited < 5
    assert tasks_pb2.ToolTask.FromString(back.body) == sent
    assert back.message_id == "retry-me"
    (death,) = x_death(back)
    assert death["queue"] == retry_queue
    assert death["reason"] == "expired"
    await back.ack()
    assert await message_count(settings, retry_queue) == 0
