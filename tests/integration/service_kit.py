"""Shared pieces of the service tests (test_worker.py, test_planner.py, test_composer.py):
one namespace of the shared stack per test, services run in-process on it, the test
playing the rest of the mesh, and everything the namespace made deleted afterwards.

The test plays the gateway (`Rig.new_run`, `Rig.request`), the planner
(`Rig.publish_task`) and the worker (`Rig.called`) with the real producers, and
observes what a user would: run records and events (`RunStore`), records on the topics
(`Reader`, a plain confluent_kafka consumer), queue depths and the dead-letter queue."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aio_pika
from agentflux.v1 import events_pb2, gateway_pb2, tasks_pb2, types_pb2
from aio_pika.abc import AbstractIncomingMessage
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from google.protobuf import duration_pb2, struct_pb2
from google.protobuf.message import Message

from interceptors import EventProducer, Outcome, TaskPublisher, Telemetry, new_id
from services.runs import TERMINAL, RunStore
from services.runtime.adapters.memcached import connect_memcached_async
from services.runtime.adapters.rabbitmq import RabbitConnection
from services.runtime.adapters.redis import connect_redis
from services.runtime.cache import ReadThroughCache
from services.runtime.config import Settings
from services.runtime.mesh import Mesh, Service
from services.runtime.topology import TaskTopology, kafka_topics, task_topologies, task_topology
from tests.integration.runtime_kit import eventually

TENANT = "acme"
WAIT_S = 60.0  # a loaded 2-core machine runs Kafka, RabbitMQ and the suite at once
# Short delay tiers: a task gets three attempts within a fraction of a second.
RETRY_DELAYS_MS = [100, 200]
# Memcached copies the services make (read through `ReadThroughCache`), deleted afterwards.
CACHED = ("flag:capture_content", "template:compose")

Event = gateway_pb2.StreamRunResponse
M = TypeVar("M", bound=Message)
S = TypeVar("S", bound=Service)


def limits(steps: int = 4, per_step: int = 8, calls: int = 16) -> types_pb2.RunLimits:
    """A run's limits, as the gateway resolves them."""
    return types_pb2.RunLimits(max_steps=steps, max_tools_per_step=per_step, max_tool_calls=calls)


def tool_call(
    run: types_pb2.Run, step: int, index: int, name: str, **args: Any
) -> types_pb2.ToolCall:
    """A call as the planner writes it (`<run>.<step>.<index>`, zero-padded)."""
    arguments = struct_pb2.Struct()
    arguments.update(args)
    return types_pb2.ToolCall(
        tool_call_id=f"{run.run_id}.{step}.{index:03d}", name=name, arguments=arguments, step=step
    )


def succeeded(call: types_pb2.ToolCall, number: float) -> types_pb2.ToolResult:
    """A successful result with a number as its output (what the calculator returns)."""
    return types_pb2.ToolResult(
        tool_call_id=call.tool_call_id,
        name=call.name,
        status=types_pb2.TOOL_CALL_STATUS_SUCCEEDED,
        output=struct_pb2.Value(number_value=number),
        attempts=1,
    )


def kinds(events: Sequence[Event]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


def deltas(events: Sequence[Event]) -> list[str]:
    return [e.answer_delta.text for e in events if e.WhichOneof("event") == "answer_delta"]


def settled(counts: dict[Outcome, int]) -> int:
    """Messages a consumer finished with, whatever became of them."""
    return sum(counts[o] for o in (Outcome.HANDLED, Outcome.DUPLICATE, Outcome.DEAD_LETTERED))


@dataclass(frozen=True)
class Record(Generic[M]):
    """One record of a topic: the event, and the record as it is (to copy it exactly)."""

    event: M
    headers: dict[str, bytes]
    key: bytes
    value: bytes

    @property
    def idempotency_key(self) -> str:
        return self.headers.get("ce_idempotencykey", b"").decode()


class Reader(Generic[M]):
    """Every record of one topic, from the beginning, read by a plain consumer with no
    group membership (it assigns the partitions itself and commits nothing)."""

    def __init__(self, settings: Settings, topic: str, message: type[M]) -> None:
        self.topic = topic
        self.message = message
        self.records: list[Record[M]] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "group.id": f"{settings.namespace}reader",
                "enable.auto.commit": False,
            }
        )
        metadata = self._consumer.list_topics(topic, timeout=10)
        self._partitions = sorted(metadata.topics[topic].partitions)
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in self._partitions]
        )
        self._next = dict.fromkeys(self._partitions, 0)

    def _catch_up(self) -> None:
        ends = {
            p: self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
            for p in self._partitions
        }
        deadline = time.monotonic() + 20
        while any(self._next[p] < end for p, end in ends.items()):
            assert time.monotonic() < deadline, f"could not read {self.topic} to its end"
            got = self._consumer.poll(0.2)
            if got is None or got.error() is not None:
                continue
            partition, offset = got.partition(), got.offset()
            assert partition is not None
            assert offset is not None
            self._next[partition] = offset + 1
            raw: Any = got.headers() or []
            headers = {k: v or b"" for k, v in raw}
            value = got.value() or b""
            event = self.message.FromString(value)
            self.records.append(Record(event, headers, got.key() or b"", value))

    async def all(self) -> list[Record[M]]:
        """Every record the topic holds now."""
        await asyncio.to_thread(self._catch_up)
        return list(self.records)

    async def at_least(self, n: int) -> list[Record[M]]:
        """Every record, once the topic holds `n` or more."""

        async def enough() -> list[Record[M]] | None:
            got = await self.all()
            return got if len(got) >= n else None

        found: list[Record[M]] = await eventually(
            enough, timeout=WAIT_S, what=f"{n} record(s) on {self.topic}"
        )
        return found

    def close(self) -> None:
        self._consumer.close()


@dataclass
class _Running:
    service: Service
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@dataclass
class Rig:
    """One test's namespace: its settings and clients, its services, what it observes."""

    settings: Settings
    mesh: Mesh
    store: RunStore
    events: EventProducer
    tasks: TaskPublisher
    telemetry: Telemetry
    topology: TaskTopology
    running: list[_Running] = field(default_factory=list)
    meshes: list[Mesh] = field(default_factory=list)
    readers: list[Reader[Any]] = field(default_factory=list)
    cached: set[str] = field(default_factory=lambda: set(CACHED))

    @property
    def ns(self) -> str:
        return self.settings.namespace

    # -- services ---------------------------------------------------------------------

    def mesh_with(self, **changes: Any) -> Mesh:
        """A mesh of its own on this namespace, with some settings changed."""
        mesh = Mesh.connect(settings_for(self.ns, **changes))
        self.meshes.append(mesh)
        return mesh

    async def start(self, service: S) -> S:
        """Starts `service` and runs it until the test ends."""
        running = _Running(service)
        self.running.append(running)  # closed afterwards even when `start` fails
        await service.start()
        running.task = asyncio.create_task(service.run(running.stop))
        return service

    # -- playing the rest of the mesh ---------------------------------------------------

    async def new_run(
        self, prompt: str, *, run_limits: types_pb2.RunLimits | None = None
    ) -> types_pb2.Run:
        """A PENDING run with its `accepted` event, as the gateway's Submit stores it."""
        run = types_pb2.Run(
            run_id=new_id(),
            tenant_id=TENANT,
            conversation_id=new_id(),
            prompt=prompt,
            priority=types_pb2.PRIORITY_NORMAL,
            limits=run_limits or limits(),
        )
        stored, _ = await self.store.create(run)
        return stored

    async def request(
        self,
        run: types_pb2.Run,
        step: int = 0,
        previous: Sequence[types_pb2.ToolResult] = (),
        *,
        key: str = "",
    ) -> None:
        """`AgentRequested` for `step`, with the key the gateway (step 0) or the composer
        (later steps) gives it, unless `key` says otherwise."""
        event = events_pb2.AgentRequested(
            run_id=run.run_id,
            tenant_id=run.tenant_id,
            conversation_id=run.conversation_id,
            prompt=run.prompt,
            priority=run.priority,
            step=step,
            limits=run.limits,
            previous_results=previous,
            request_time=run.create_time,
        )
        default = f"{run.run_id}:requested" + (f":{step}" if step else "")
        await self.events.emit(event, idempotency_key=key or default)

    async def publish_task(
        self,
        run: types_pb2.Run,
        call: types_pb2.ToolCall,
        *,
        count: int = 1,
        timeout_s: float = 10.0,
    ) -> None:
        """A `ToolTask` of `call`, as the planner publishes it."""
        timeout = duration_pb2.Duration()
        timeout.FromNanoseconds(int(timeout_s * 1e9))
        task = tasks_pb2.ToolTask(
            run_id=run.run_id,
            tenant_id=run.tenant_id,
            conversation_id=run.conversation_id,
            step=call.step,
            step_tool_count=count,
            call=call,
            priority=run.priority,
            attempt=1,
            max_attempts=1 + len(self.settings.tool_task_retry_delays_ms),
            timeout=timeout,
        )
        await self.tasks.publish(task, idempotency_key=f"{call.tool_call_id}:task")

    async def called(
        self,
        run: types_pb2.Run,
        result: types_pb2.ToolResult,
        *,
        step: int = 0,
        count: int = 1,
        key: str = "",
    ) -> None:
        """`ToolCalled` with `result`, as the worker emits it (its key unless `key`)."""
        event = events_pb2.ToolCalled(
            run_id=run.run_id,
            tenant_id=run.tenant_id,
            conversation_id=run.conversation_id,
            step=step,
            step_tool_count=count,
            call=types_pb2.ToolCall(tool_call_id=result.tool_call_id, name=result.name, step=step),
            result=result,
        )
        await self.events.emit(event, idempotency_key=key or f"{result.tool_call_id}:called")

    # -- observing ----------------------------------------------------------------------

    def reader(self, topic: str, message: type[M]) -> Reader[M]:
        """A reader of the namespace's `topic` (say "agent.completed")."""
        reader = Reader(self.settings, self.ns + topic, message)
        self.readers.append(reader)
        return reader

    def completed(self) -> Reader[events_pb2.AgentCompleted]:
        return self.reader("agent.completed", events_pb2.AgentCompleted)

    async def run_now(self, run: types_pb2.Run) -> types_pb2.Run:
        got = await self.store.get(run.tenant_id, run.run_id)
        assert got is not None, f"run {run.run_id} is gone"
        return got

    async def ended(self, run: types_pb2.Run) -> types_pb2.Run:
        """The run once it reached a terminal status."""

        async def done() -> types_pb2.Run | None:
            now = await self.run_now(run)
            return now if now.status in TERMINAL else None

        ended: types_pb2.Run = await eventually(done, timeout=WAIT_S, what="the run to end")
        return ended

    async def run_events(self, run: types_pb2.Run) -> list[Event]:
        return await self.store.read_events(run.tenant_id, run.run_id, "", count=1000)

    async def queue_depth(self, queue: str = "") -> int:
        """Tasks waiting in the work queue (or `queue`)."""
        rabbit = await self.mesh.rabbit()
        # A plain channel of its own: a robust channel answers a passive declare of a
        # queue it knows from its cache, with the count of that first declare.
        async with aio_pika.Channel(rabbit.connection, publisher_confirms=False) as channel:
            declared = await channel.declare_queue(queue or self.topology.queue, passive=True)
        return int(declared.declaration_result.message_count or 0)

    async def take(self, queue: str) -> list[AbstractIncomingMessage]:
        """Every message waiting in `queue`, taken off it."""
        rabbit = await self.mesh.rabbit()
        got = await rabbit.channel.get_queue(queue, ensure=False)
        out = []
        while (message := await got.get(no_ack=True, fail=False)) is not None:
            out.append(message)
        return out

    async def dead_letters(self, n: int = 1) -> list[AbstractIncomingMessage]:
        """The tasks in the dead-letter queue, once there are `n` (taken off it)."""
        taken: list[AbstractIncomingMessage] = []

        async def enough() -> bool:
            taken.extend(await self.take(self.topology.dead_letter_queue))
            return len(taken) >= n

        await eventually(enough, timeout=WAIT_S, what=f"{n} dead-lettered task(s)")
        return taken


def settings_for(namespace: str, **changes: Any) -> Settings:
    """The settings of a test's namespace: short retry tiers, no span store, a grace
    period that keeps shutdown quick; `changes` on top."""
    values: dict[str, Any] = {
        "namespace": namespace,
        "span_store": False,
        "tool_task_retry_delays_ms": RETRY_DELAYS_MS,
        "grace_s": 2.0,
        "cache_ttl_s": 60,
        **changes,
    }
    return Settings(**values)


@contextlib.asynccontextmanager
async def rig_on_stack() -> AsyncIterator[Rig]:
    """A fresh namespace with its topics and queues declared; on the way out (failure
    included) its services are stopped and its topics, groups, queues, exchanges, Redis
    keys and Memcached copies are deleted."""
    settings = settings_for(f"t{uuid.uuid4().hex[:10]}.")
    mesh = Mesh.connect(settings)
    telemetry = Telemetry.create("service-test", batch_delay_ms=50)
    store = RunStore(mesh.redis, namespace=settings.namespace)
    events = EventProducer(
        mesh.producer, telemetry, source="/test", topic_prefix=settings.namespace
    )
    topology = task_topology(settings, mesh.contracts.task(tasks_pb2.ToolTask), settings.namespace)
    try:
        await mesh.declare()
        tasks = TaskPublisher(
            await mesh.rabbit(), telemetry, source="/test", name_prefix=settings.namespace
        )
        rig = Rig(settings, mesh, store, events, tasks, telemetry, topology)
    except BaseException:
        await mesh.close()
        await _wipe(settings, set(CACHED))
        raise
    try:
        yield rig
    finally:
        await _stop(rig)
        await mesh.close()
        telemetry.shutdown()
        await _wipe(settings, rig.cached)


async def _stop(rig: Rig) -> None:
    for running in rig.running:
        running.stop.set()
    for running in rig.running:
        if running.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(running.task, 30)
        with contextlib.suppress(Exception):
            await running.service.close()
    for reader in rig.readers:
        reader.close()
    for mesh in rig.meshes:
        await mesh.close()


async def _wipe(settings: Settings, cached: set[str]) -> None:
    """Deletes the namespace's topics, groups, queues, exchanges, keys and cache copies."""
    ns = settings.namespace
    redis = connect_redis(settings)
    try:
        keys = [k async for k in redis.scan_iter(f"{ns}*", count=1000)]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()
    memcached = connect_memcached_async(settings)
    naming = ReadThroughCache(memcached, namespace=ns, ttl_s=60)
    try:
        for key in cached:
            with contextlib.suppress(Exception):
                await memcached.delete(naming.memcached_key(key))
    finally:
        naming.close()
        memcached.close()
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    topics = [t.name for t in kafka_topics(settings, prefix=ns)]
    listed = await asyncio.wrap_future(admin.list_consumer_groups())
    groups = [g.group_id for g in listed.valid if g.group_id.startswith(ns)]
    futures = list(admin.delete_topics(topics).values())
    if groups:
        futures += admin.delete_consumer_groups(groups).values()
    for fut in futures:
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(fut)
    async with await RabbitConnection.connect(settings) as rabbit:
        for topo in task_topologies(settings, prefix=ns):
            for queue in topo.all_queues:
                with contextlib.suppress(Exception):
                    await rabbit.channel.queue_delete(queue)
            for exchange in (topo.exchange, topo.retry_exchange, topo.dead_letter_exchange):
                with contextlib.suppress(Exception):
                    await rabbit.channel.exchange_delete(exchange)
