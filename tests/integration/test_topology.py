"""Topology from the contracts, declared on the real brokers under a test prefix."""

from __future__ import annotations

import asyncio

import pytest
from agentflux.v1 import tasks_pb2
from confluent_kafka import TopicCollection
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._resource import ResourceType

from services.runtime.adapters.rabbitmq import RabbitConnection
from services.runtime.config import Settings
from services.runtime.contracts import registry
from services.runtime.topology import (
    declare_task_topology,
    ensure_kafka_topics,
    kafka_topics,
    task_topology,
)

pytestmark = pytest.mark.integration


async def test_ensure_kafka_topics_is_idempotent_with_configured_layout(
    settings: Settings, prefix: str
) -> None:
    # Values that differ from the broker's defaults, so the topics must carry them.
    custom = settings.model_copy(update={"kafka_partitions": 2, "kafka_retention_ms": 3_600_000})
    specs = kafka_topics(custom, prefix=prefix)
    names = [s.name for s in specs]
    contracts = registry()
    assert sorted(names) == sorted(
        prefix + t for t in [*contracts.topics, contracts.dead_letter_topic]
    )

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    try:
        assert await ensure_kafka_topics(custom, specs) == dict.fromkeys(names, True)
        # Usable on return: another client's metadata already has every topic with a
        # leader per partition (a consumer subscribing now is not told "unknown topic").
        other = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
        metadata = await asyncio.to_thread(other.list_topics, timeout=10)
        for name in names:
            assert metadata.topics[name].error is None, name
            leaders = [p.leader for p in metadata.topics[name].partitions.values()]
            assert len(leaders) == 2, (name, leaders)
            assert min(leaders) >= 0, (name, leaders)
        assert await ensure_kafka_topics(custom, specs) == dict.fromkeys(names, False)

        described = admin.describe_topics(TopicCollection(names), request_timeout=10)
        for name, fut in described.items():
            desc = await asyncio.wrap_future(fut)
            assert len(desc.partitions) == 2, name

        resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
        for resource, fut in admin.describe_configs(resources, request_timeout=10).items():
            configs = await asyncio.wrap_future(fut)
            assert configs["retention.ms"].value == "3600000", resource.name
            # Not left to the broker's default: set on the topic itself.
            assert not configs["retention.ms"].is_default, resource.name
    finally:
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            await asyncio.wrap_future(fut)


async def test_declare_task_topology_is_idempotent(settings: Settings, prefix: str) -> None:
    contract = registry().task(tasks_pb2.ToolTask)
    topo = task_topology(settings, contract, prefix)
    assert topo.exchange == prefix + contract.exchange
    assert topo.queue == topo.routing_key == prefix + contract.queue
    assert topo.retry_exchange == f"{prefix}{contract.exchange}.retry"
    assert topo.dead_letter_exchange == f"{prefix}{contract.exchange}.dlx"
    assert topo.dead_letter_queue == prefix + contract.dead_letter_queue
    assert topo.retry_queues == {
        d: f"{prefix}{contract.queue}.retry.{d}ms" for d in settings.tool_task_retry_delays_ms
    }

    queues = topo.all_queues
    exchanges = [topo.exchange, topo.retry_exchange, topo.dead_letter_exchange]
    rabbit = await RabbitConnection.connect(settings)
    try:
        await declare_task_topology(rabbit.channel, topo)
        await declare_task_topology(rabbit.channel, topo)  # same arguments: no error
        for name in queues:
            q = await rabbit.channel.get_queue(name, ensure=True)  # passive: must exist
            assert q.name == name
        for name in exchanges:
            await rabbit.channel.get_exchange(name, ensure=True)
    finally:
        channel = await rabbit.connection.channel()
        for name in queues:
            await channel.queue_delete(name)
        for name in exchanges:
            await channel.exchange_delete(name)
        await rabbit.close()
