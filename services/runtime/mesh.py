"""What the services of one `agentflux serve` process share, and how each one lives.

A `Mesh` holds the settings and one client per system (Redis, the Kafka producer,
RabbitMQ, Memcached), so five services in one process open five connections, not
twenty-five. It also names everything under the settings' namespace, so several meshes
(tests, teams) share one stack without seeing each other's topics, queues, groups or
keys.

A `Service` starts (connects, declares what it needs, warms its clients), then runs
until its stop event is set, then finishes or hands back its work and closes. The
process reports a service SERVING on gRPC health only once `start` returned, so the
first request is as fast as the rest."""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass, field
from typing import ClassVar

import redis.asyncio as aioredis

from services.runtime.adapters.kafka import KafkaProducer
from services.runtime.adapters.memcached import AsyncMemcached, connect_memcached_async
from services.runtime.adapters.rabbitmq import RabbitConnection
from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings
from services.runtime.contracts import ContractRegistry, registry
from services.runtime.topology import (
    declare_task_topology,
    ensure_kafka_topics,
    kafka_topics,
    task_topologies,
)

__all__ = ["Mesh", "Service"]


@dataclass
class Mesh:
    """Settings and shared clients of one process (see the module doc)."""

    settings: Settings
    redis: aioredis.Redis
    producer: KafkaProducer
    memcached: AsyncMemcached
    contracts: ContractRegistry = field(default_factory=registry)
    _rabbit: RabbitConnection | None = None
    _rabbit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def connect(cls, settings: Settings) -> Mesh:
        """Clients for `settings` (connections open lazily, on first use)."""
        return cls(
            settings=settings,
            redis=connect_redis(settings, max_connections=256),
            producer=KafkaProducer(settings, **{"linger.ms": 0}),
            memcached=connect_memcached_async(settings),
        )

    @property
    def namespace(self) -> str:
        """Prefix of every name this mesh uses."""
        return self.settings.namespace

    def topic(self, name: str) -> str:
        """A contract topic under the namespace."""
        return self.namespace + name

    def group(self, service: str) -> str:
        """The consumer group of a service."""
        return f"{self.namespace}agentflux.{service}"

    async def rabbit(self) -> RabbitConnection:
        """The RabbitMQ connection, opened on first use (not every service needs it)."""
        async with self._rabbit_lock:
            if self._rabbit is None:
                self._rabbit = await RabbitConnection.connect(self.settings)
            return self._rabbit

    async def declare(self) -> None:
        """Creates the namespace's topics and task queues if they are missing
        (idempotent: `stack up` made the un-namespaced ones already)."""
        settings = self.settings
        await ensure_kafka_topics(settings, kafka_topics(settings, self.contracts, self.namespace))
        rabbit = await self.rabbit()
        for topo in task_topologies(settings, self.contracts, self.namespace):
            await declare_task_topology(rabbit.channel, topo)

    async def close(self) -> None:
        """Closes every client (the producer flushes first)."""
        await self.producer.close()
        if self._rabbit is not None:
            await self._rabbit.close()
        await self.redis.aclose()
        self.memcached.close()


class Service(abc.ABC):
    """One service of the mesh (see the module doc)."""

    name: ClassVar[str]

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh

    @abc.abstractmethod
    async def start(self) -> None:
        """Connects, declares and warms what the service needs; raises when it cannot."""

    @abc.abstractmethod
    async def run(self, stop: asyncio.Event) -> None:
        """Serves until `stop` is set, then finishes or hands back in-flight work."""

    async def close(self) -> None:
        """Releases what `start` acquired beyond the mesh's shared clients."""
        return None
