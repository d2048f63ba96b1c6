"""Broker topology derived from the contracts: Kafka topics and RabbitMQ exchanges/queues.

`stack up` declares it on the local stack, services declare it on start (both are
idempotent), and tests declare a copy under their own name prefix.

RabbitMQ, per task contract (names from its `(agentflux.v1.task)` option):

    <exchange>        direct  --<queue>-->        <queue>   (x-max-priority, DLX -> <exchange>.dlx)
    <exchange>.retry  direct  --<queue>.retry.<N>ms--> <queue>.retry.<N>ms
                              (x-message-ttl N, dead-letters back to <exchange> / <queue>)
    <exchange>.dlx    direct  --<dead_letter_queue>--> <dead_letter_queue>
    (default)                 --<queue>.approval-->  <queue>.approval
                              (per-message expiration, dead-letters to <exchange> / <queue>)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from services.runtime.config import Settings
from services.runtime.contracts import ContractRegistry, TaskContract, registry

__all__ = [
    "TaskTopology",
    "TopicSpec",
    "declare_task_topology",
    "ensure_kafka_topics",
    "kafka_topics",
    "task_topologies",
]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A Kafka topic to create."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def kafka_topics(
    settings: Settings, contracts: ContractRegistry | None = None, prefix: str = ""
) -> list[TopicSpec]:
    """Every event topic of the contracts plus the dead-letter topic."""
    contracts = contracts or registry()
    config = {"retention.ms": str(settings.kafka_retention_ms)}
    names = [*contracts.topics, contracts.dead_letter_topic]
    return [TopicSpec(prefix + name, settings.kafka_partitions, dict(config)) for name in names]


async def ensure_kafka_topics(
    settings: Settings, specs: Sequence[TopicSpec], timeout: float = 30.0
) -> dict[str, bool]:
    """Creates the topics that do not exist yet; returns name -> created (False: existed).

    Returns once the broker's metadata shows every topic with a leader for each of its
    partitions: the controller confirms a creation before the brokers' metadata caches
    have it, and a client subscribing in that gap is told "unknown topic or partition"."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, config=s.config) for s in specs],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    result: dict[str, bool] = {}
    for name, fut in futures.items():
        try:
            await asyncio.wrap_future(fut)
            result[name] = True
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            result[name] = False
    await _await_leaders(admin, [s.name for s in specs], timeout)
    return result


async def _await_leaders(admin: AdminClient, names: Sequence[str], timeout: float) -> None:
    """Waits until the metadata shows each of `names` with a leader for every partition;
    TimeoutError (naming the topics still missing) after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pause = 0.01
    while True:
        # All topics, not by name: a metadata request naming a topic the broker does not
        # know may create it where auto-creation is on.
        left = deadline - loop.time()
        metadata = await asyncio.to_thread(admin.list_topics, timeout=max(0.5, left))
        missing = []
        for name in names:
            topic = metadata.topics.get(name)
            if (
                topic is None
                or topic.error is not None
                or not topic.partitions
                or any(p.leader < 0 or p.error is not None for p in topic.partitions.values())
            ):
                missing.append(name)
        if not missing:
            return
        if loop.time() + pause > deadline:
            raise TimeoutError(
                f"Kafka topics without a leader for every partition after {timeout:g} s: "
                + ", ".join(missing)
            )
        await asyncio.sleep(pause)  # the broker's metadata cache catches up in milliseconds
        pause = min(pause * 2, 0.5)


@dataclass(frozen=True, slots=True)
class TaskTopology:
    """Names of everything one task contract needs on RabbitMQ."""

    exchange: str
    queue: str
    max_priority: int
    retry_exchange: str
    retry_queues: dict[int, str]  # delay in ms -> queue
    dead_letter_exchange: str
    dead_letter_queue: str
    approval_queue: str

    @property
    def routing_key(self) -> str:
        """Routing key of `queue` on `exchange`."""
        return self.queue

    @property
    def all_queues(self) -> list[str]:
        """Every queue of the topology (to inspect or delete them all)."""
        return [
            self.queue,
            *self.retry_queues.values(),
            self.approval_queue,
            self.dead_letter_queue,
        ]


def task_topology(settings: Settings, contract: TaskContract, prefix: str = "") -> TaskTopology:
    """The topology of one task contract, names optionally prefixed (tests)."""
    exchange = prefix + contract.exchange
    queue = prefix + contract.queue
    return TaskTopology(
        exchange=exchange,
        queue=queue,
        max_priority=contract.max_priority,
        retry_exchange=f"{exchange}.retry",
        retry_queues={d: f"{queue}.retry.{d}ms" for d in settings.tool_task_retry_delays_ms},
        dead_letter_exchange=f"{exchange}.dlx",
        dead_letter_queue=prefix + contract.dead_letter_queue,
        approval_queue=f"{queue}.approval",
    )


def task_topologies(
    settings: Settings, contracts: ContractRegistry | None = None, prefix: str = ""
) -> list[TaskTopology]:
    """Topologies of every task contract."""
    contracts = contracts or registry()
    return [task_topology(settings, c, prefix) for c in contracts.tasks.values()]


async def declare_task_topology(channel: AbstractChannel, topo: TaskTopology) -> None:
    """Declares (idempotently) exchanges, queues and bindings of `topo`.

    Queues are classic: quorum queues in the RabbitMQ shipped by Debian have no
    priorities, and priorities are what lets urgent runs overtake background work."""
    work = await channel.declare_exchange(topo.exchange, ExchangeType.DIRECT, durable=True)
    retry = await channel.declare_exchange(topo.retry_exchange, ExchangeType.DIRECT, durable=True)
    dlx = await channel.declare_exchange(
        topo.dead_letter_exchange, ExchangeType.DIRECT, durable=True
    )

    main = await channel.declare_queue(
        topo.queue,
        durable=True,
        arguments={
            "x-queue-type": "classic",
            "x-max-priority": topo.max_priority,
            "x-dead-letter-exchange": topo.dead_letter_exchange,
            "x-dead-letter-routing-key": topo.dead_letter_queue,
        },
    )
    await main.bind(work, routing_key=topo.routing_key)

    for delay_ms, name in topo.retry_queues.items():
        # A retry waits out its TTL here, then dead-letters back onto the work queue.
        q = await channel.declare_queue(
            name,
            durable=True,
            arguments={
                "x-queue-type": "classic",
                "x-message-ttl": delay_ms,
                "x-dead-letter-exchange": topo.exchange,
                "x-dead-letter-routing-key": topo.routing_key,
            },
        )
        await q.bind(retry, routing_key=name)

    # Tasks waiting for a person's approval sit here until their own expiration (the
    # approval timeout), then dead-letter onto the work queue: the timer needs no process.
    await channel.declare_queue(
        topo.approval_queue,
        durable=True,
        arguments={
            "x-queue-type": "classic",
            "x-dead-letter-exchange": topo.exchange,
            "x-dead-letter-routing-key": topo.routing_key,
        },
    )

    dead = await channel.declare_queue(
        topo.dead_letter_queue, durable=True, arguments={"x-queue-type": "classic"}
    )
    await dead.bind(dlx, routing_key=topo.dead_letter_queue)
