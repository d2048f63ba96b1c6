"""The concurrent consumers beside one-at-a-time consuming, on the real brokers, in one run.

    .venv/bin/python -m bench.consumers [--quick] [--scenario NAME ...] [--json PATH]

Scenarios (`--scenario`):

- `kafka-io`: a backlog of N `AgentRequested` records over K conversation keys on a
  3-partition topic, guard on, a handler that awaits 5 ms (standing for a tool or model
  call). **one-at-a-time** (the baseline, what the runtime did before): a batch consumed,
  `EventConsumer.handle` for each record in turn, then a commit. **EventConsumer.run**:
  records of one key in order, different keys at once, commits below the lowest
  unfinished offset. Two diagnostic rows: `run` with a `max_in_flight` above the backlog
  (so its back-pressure never engages: what the bound costs), and one-at-a-time with a
  handler that returns at once (a reference for the CPU column).
- `kafka-cpu`: the same with a CPU-only handler (about 1 ms of pure Python, no await):
  concurrency cannot help there, and this shows what it costs.
- `rabbitmq-io`: a backlog of N `ToolTask`s, guard on, 5 ms of awaited I/O.
  **one-at-a-time**: iterate the queue (prefetch 64) and `TaskConsumer.handle` each
  delivery. **TaskConsumer.run** with prefetch 16 and 64.
- `kafka-backlog`, `rabbitmq-backlog`: the consumer's own cost per message. A backlog
  over many keys (200 on Kafka), guard on, a handler that returns at once (no sleep, no
  CPU), so what is left is context extraction, the span, decoding, the guard's Redis
  round trips (claim and outcome) and settling or committing. **one-at-a-time** as
  above; **EventConsumer.run** (**TaskConsumer.run** prefetch 64) with the guard's
  defaults; and, as a diagnostic, the same with the guard's batching switched off
  (`IdempotencyGuard(batching=False)`; the row is skipped with a note on a guard that
  has no such option). On RabbitMQ also the client's floor: a bare aio-pika consumer
  (prefetch 64) that decodes each task and acks it, nothing else.

Method of bench/hops.py, whose helpers it imports: a small untimed warm-up round per
variant, then interleaved rounds (order reversed every other round, gc before each).
Each round of each variant has names of its own (topic, group, queue, guard keys) under
`bench.<random>.`, so no round sees another's messages; everything is removed at the end,
also on failure. The backlog is produced (and, for Kafka, the group joined) before the
clock starts; the clock stops when the runtime has finished the last message. Per variant:
messages/s (median over the rounds) and its ratio to one-at-a-time, handler-to-settle
latency (handler returned -> offset commit confirmed, or delivery acked), process CPU per
1000 messages, the guard's Redis round trips and commands per message (counted by the
guard's client), the most handlers seen running at once, the share of the time no
handler was running, and (Kafka) how often `run` paused its partitions. Every round
checks that each message was handled exactly once and, on Kafka, that records of one
key never overlapped nor ran out of order: a violation fails the scenario. Exit codes:
0 all ran, 1 a scenario failed, 2 the stack is unreachable or not on loopback."""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import inspect
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from agentflux.v1 import events_pb2, tasks_pb2, types_pb2
from aio_pika.abc import AbstractIncomingMessage
from confluent_kafka import Message as Record
from confluent_kafka import TopicPartition
from redis.typing import EncodableT

from bench.hops import (
    CONTRACTS,
    EVENT,
    SOURCE,
    TASK,
    CountingExporter,
    _drop_kafka,
    _drop_rabbit,
    _markdown,
    counting_telemetry,
    exported,
    log,
    make_task,
    preflight,
    quietly,
    redis_for,
)
from interceptors import (
    EventConsumer,
    EventProducer,
    HandlerLink,
    IdempotencyGuard,
    Inbound,
    Incoming,
    Outcome,
    TaskConsumer,
    TaskPublisher,
    Telemetry,
)
from services.runtime import lifecycle
from services.runtime.adapters.kafka import KafkaConsumer, KafkaProducer
from services.runtime.adapters.rabbitmq import RabbitConnection
from services.runtime.adapters.redis import LeanConnection
from services.runtime.config import Settings
from services.runtime.topology import (
    TaskTopology,
    TopicSpec,
    declare_task_topology,
    ensure_kafka_topics,
    task_topology,
)


@dataclass(frozen=True, slots=True)
class Load:
    """How much to run, per variant."""

    n: int  # messages in each round's backlog
    keys: int  # Kafka keys (conversations) the backlog is spread over
    rounds: int  # timed rounds, interleaved
    warmup: int  # messages of the untimed warm-up round


# About 5 minutes in all (--quick: about 1 minute) on the shared 2-core machine at load 1
# to 3; the one-at-a-time rounds take most of it (N x (5 ms + the per-message cost)).
FULL = Load(n=2000, keys=50, rounds=3, warmup=100)
QUICK = Load(n=500, keys=50, rounds=2, warmup=50)
PARTITIONS = 3
IO_S = 0.005  # the awaited I/O of a handler: a tool or model call
CPU_MS = 1.0  # the CPU-only handler's work, calibrated at start-up
BATCH = 100  # records per poll: EventConsumer.run's default, and the baseline's
NO_PAUSE = 4096  # a max_in_flight above any backlog here: back-pressure never engages
# kafka-backlog: with 200 keys over 3 partitions, `run` always has records of idle keys
# to start, so the rows measure the runtime's own cost and not the wait for a key.
BACKLOG_KEYS = 200
BACKLOG_PREFETCH = 64
CHUNK = 250  # backlog messages produced or published at once
KEEP = {"retention.ms": str(3_600_000)}
BACKLOG_SCENARIOS = ("kafka-backlog", "rabbitmq-backlog")
SCENARIOS = ("kafka-io", "kafka-cpu", "rabbitmq-io", *BACKLOG_SCENARIOS)


def deadline_s(n: int) -> float:
    """Only to notice a stuck round: no healthy one comes near it."""
    return 60.0 + n * 0.05


def spin(n: int) -> int:
    """Pure-Python work that never yields: a parser, a validator, a prompt builder."""
    x = 0
    for i in range(n):
        x = (x * 31 + i) & 0xFFFFFFFF
    return x


def calibrate(target_ms: float) -> int:
    """Iterations of `spin` that take `target_ms` here (the fastest of a few tries)."""
    probe = 20_000
    best = min(_timed(spin, probe) for _ in range(7))
    return max(1, round(probe * target_ms / 1000 / best))


def _timed(fn: Callable[[int], Any], arg: int) -> float:
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


# -- what a round observes ----------------------------------------------------------------


class Probe:
    """The handler of one round, and what it saw: how often each message was handled,
    order and overlap per key (Kafka), handlers at once, idle time, and when each
    message's handler returned and when the runtime finished it."""

    def __init__(self, n: int, work: str, *, spins: int, ordered: bool) -> None:
        self.n = n
        self.work = work  # "io": awaits IO_S; "cpu": spin(spins), no await; "none"
        self.spins = spins
        self.ordered = ordered
        self.handled: Counter[str] = Counter()
        self.violations: list[str] = []
        self._last_seq: dict[str, int] = {}
        self._busy_keys: Counter[str] = Counter()
        self.active = 0
        self.peak = 0
        self.inside = 0  # messages between entering the consume core and leaving it
        self.peak_inside = 0
        self.idle_s = 0.0
        self._idle_since = 0.0
        self.returned: dict[Any, float] = {}  # where -> perf_counter at handler return
        self.settle_ms: list[float] = []  # RabbitMQ: handler return -> ack
        self.finished = 0
        self.done = asyncio.Event()
        self.started_at = (0.0, 0.0)
        self.done_at = (0.0, 0.0)

    def start(self) -> None:
        """Starts the clock (wall and process CPU)."""
        self.started_at = (time.perf_counter(), time.process_time())
        self._idle_since = self.started_at[0]

    @property
    def seconds(self) -> float:
        return self.done_at[0] - self.started_at[0]

    @property
    def cpu_s(self) -> float:
        return self.done_at[1] - self.started_at[1]

    async def handle(self, incoming: Incoming) -> bytes | None:
        event: Any = incoming.event
        run_id: str = event.run_id
        now = time.perf_counter()
        if self.active == 0:
            self.idle_s += now - self._idle_since
        key = event.conversation_id
        if self.ordered:
            seq = int(run_id.rsplit("-", 1)[1])
            if self._busy_keys[key]:
                self.violations.append(f"{run_id} started while {key} had one running")
            if seq <= self._last_seq.get(key, -1):
                self.violations.append(f"{run_id} after seq {self._last_seq[key]} of {key}")
            self._last_seq[key] = seq
        self._busy_keys[key] += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.work == "io":
                await asyncio.sleep(IO_S)
            elif self.work == "cpu":
                spin(self.spins)
        finally:
            self._busy_keys[key] -= 1
            self.active -= 1
            now = time.perf_counter()
            if self.active == 0:
                self._idle_since = now
        self.handled[run_id] += 1
        self.returned[_where(incoming.inbound)] = now
        return None

    def finish(self, inbound: Inbound, settled: bool) -> None:
        """The runtime finished a message (acked; for Kafka its commit comes later)."""
        now = time.perf_counter()
        if settled:
            began = self.returned.get(_where(inbound))
            if began is not None:
                self.settle_ms.append((now - began) * 1000)
        self.finished += 1
        if self.finished == self.n:
            self.done_at = (now, time.process_time())
            self.done.set()

    def check(self, expected: set[str]) -> list[str]:
        """What went wrong: order or overlap, a message handled twice, or not at all."""
        problems = list(self.violations[:5])
        twice = [r for r, c in self.handled.items() if c > 1]
        missing = expected - set(self.handled)
        extra = set(self.handled) - expected
        if twice:
            problems.append(f"{len(twice)} handled more than once, e.g. {twice[:3]}")
        if missing:
            problems.append(f"{len(missing)} never handled, e.g. {sorted(missing)[:3]}")
        if extra:
            problems.append(f"{len(extra)} handled that were not sent, e.g. {sorted(extra)[:3]}")
        return problems


def watch_core(consumer: EventConsumer | TaskConsumer, probe: Probe) -> None:
    """Counts the messages inside the consume core at once (guard, decode, span, handler,
    settling): with a handler that returns at once, handlers never overlap, and this is
    what shows how many messages the runtime really had going. Costs a coroutine per
    message, in every row alike."""
    core = consumer.core
    inner = core.process

    async def process(inbound: Inbound, link: HandlerLink) -> Outcome:
        probe.inside += 1
        probe.peak_inside = max(probe.peak_inside, probe.inside)
        try:
            return await inner(inbound, link)
        finally:
            probe.inside -= 1

    core.process = process  # type: ignore[method-assign]


def _where(inbound: Inbound) -> Any:
    raw = inbound.raw
    if inbound.transport == "kafka":
        return (raw.partition(), raw.offset())
    return raw.delivery_tag


class Finishing:
    """The consumer's own settler, telling the probe when each message is finished.
    (The settler is the runtime's transport seam: every outcome goes through it.)"""

    def __init__(self, inner: Any, probe: Probe, *, acks_settle: bool) -> None:
        self.inner = inner
        self.probe = probe
        self.acks_settle = acks_settle

    async def ack(self, inbound: Inbound) -> None:
        await self.inner.ack(inbound)
        self.probe.finish(inbound, self.acks_settle)

    async def retry(self, inbound: Inbound, error: str) -> bool:
        retried: bool = await self.inner.retry(inbound, error)
        return retried

    async def dead_letter(self, inbound: Inbound, reason: str, error: str) -> None:
        await self.inner.dead_letter(inbound, reason, error)
        self.probe.finish(inbound, False)

    async def hand_back(self, inbound: Inbound) -> None:
        await self.inner.hand_back(inbound)


class CommitLog(KafkaConsumer):
    """The adapter, noting when each stored offset was committed (confirmed) and how
    often the runtime paused its partitions (its back-pressure)."""

    def __init__(self, settings: Settings, group_id: str, topics: Sequence[str]) -> None:
        super().__init__(settings, group_id, topics)
        self._stored: dict[int, int] = {}
        self.commits: dict[int, list[tuple[int, float]]] = {}  # partition -> (offset, when)
        self.committed_some = asyncio.Event()
        self.pauses = 0

    async def pause(self, partitions: list[TopicPartition]) -> None:
        self.pauses += 1
        await super().pause(partitions)

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        super().store_offsets(offsets)
        self._stored.update({tp.partition: tp.offset for tp in offsets})

    async def commit(self) -> bool:
        ok = await super().commit()
        if ok:
            now = time.perf_counter()
            for partition, offset in self._stored.items():
                self.commits.setdefault(partition, []).append((offset, now))
            self._stored.clear()
            self.committed_some.set()
        return ok

    def covers(self, ends: dict[int, int]) -> bool:
        """Everything up to `ends` (partition -> next offset) is committed."""
        return all(self.commits.get(p, [(-1, 0.0)])[-1][0] >= end for p, end in ends.items())

    def settle_ms(self, returned: dict[Any, float]) -> list[float]:
        """Per record: its handler's return -> the first commit past its offset."""
        out = []
        index = {p: ([o for o, _ in c], [t for _, t in c]) for p, c in self.commits.items()}
        for (partition, offset), at in returned.items():
            offsets, times = index.get(partition, ([], []))
            i = bisect.bisect_right(offsets, offset)
            if i < len(offsets):
                out.append((times[i] - at) * 1000)
        return out


class Sent:
    """Round trips and commands the guards' Redis client sent."""

    def __init__(self) -> None:
        self.trips = 0
        self.commands = 0


class CountingConnection(LeanConnection):
    """The client's own connection class, counting as it packs: each command sent alone
    is one round trip, a pipeline (however many commands) is one. Counted at the client,
    not with Redis's `INFO`, whose counters are server-wide (other processes share the
    server) and count commands, not round trips. Costs an increment per command. The
    handshake of a new connection and the idle health-check PING are not the guard's
    work and are left out (the pool grows while the first rounds run)."""

    sent = Sent()  # one per process: only the guards' client uses this class
    _in_pipeline = False
    _upkeep = False

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        if not self._upkeep:
            self.sent.commands += 1
            if not self._in_pipeline:
                self.sent.trips += 1
        return super().pack_command(*args)

    def pack_commands(self, commands: Iterable[Iterable[EncodableT]]) -> list[bytes]:
        self.sent.trips += 1
        self._in_pipeline = True
        try:
            return super().pack_commands(commands)
        finally:
            self._in_pipeline = False

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        was, self._upkeep = self._upkeep, True
        try:
            await super().on_connect_check_health(check_health)
        finally:
            self._upkeep = was

    async def _send_ping(self) -> None:
        # Also runs inside the handshake, hence the restore rather than a reset.
        was, self._upkeep = self._upkeep, True
        try:
            await super()._send_ping()  # type: ignore[no-untyped-call]
        finally:
            self._upkeep = was


def count_round_trips(client: aioredis.Redis) -> Sent | None:
    """Makes `client`'s new connections count what they send (call it before the first
    command); None when its pool uses a connection class other than the project's plain
    TCP one."""
    pool = client.connection_pool
    if pool.connection_class is not LeanConnection:
        return None
    pool.connection_class = CountingConnection
    return CountingConnection.sent


# -- the environment of a run -------------------------------------------------------------


@dataclass(slots=True)
class Env:
    """Clients shared by every round, and every name made (for the clean-up)."""

    settings: Settings
    prefix: str
    telemetry: Telemetry
    counter: CountingExporter
    redis: aioredis.Redis
    spins: int
    sent: Sent | None = None  # the guards' Redis round trips, when they can be counted
    producer: KafkaProducer | None = None
    rabbit: RabbitConnection | None = None
    topics: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    topos: list[TaskTopology] = field(default_factory=list)
    rounds_made: int = 0

    def fresh(self, what: str) -> str:
        """A prefix of its own for one round of one variant."""
        self.rounds_made += 1
        return f"{self.prefix}{self.rounds_made}.{what}."

    def guard(self, prefix: str, options: dict[str, Any] | None = None) -> IdempotencyGuard:
        return IdempotencyGuard(self.redis, namespace=prefix + "guard", ttl_s=600, **options or {})

    def redis_sent(self) -> tuple[int, int] | None:
        """(round trips, commands) sent to Redis so far."""
        return None if self.sent is None else (self.sent.trips, self.sent.commands)

    def redis_since(self, before: tuple[int, int] | None) -> tuple[int | None, int | None]:
        after = self.redis_sent()
        if before is None or after is None:
            return None, None
        return after[0] - before[0], after[1] - before[1]


@dataclass(frozen=True, slots=True)
class Tally:
    """One timed round of one variant."""

    n: int
    seconds: float
    cpu_s: float
    settle_ms: list[float]
    peak: int
    idle_s: float
    pauses: int | None = None  # Kafka: pause() calls of the runtime's back-pressure
    redis_trips: int | None = None  # the guard's round trips to Redis on the clock
    redis_commands: int | None = None  # and the commands they carried
    peak_inside: int = 0  # the most messages inside the consume core at once

    @property
    def rate(self) -> float:
        return self.n / self.seconds


RoundFn = Callable[[Env, int], Awaitable[Tally]]


@dataclass(slots=True)
class Variant:
    name: str
    round: RoundFn
    tallies: list[Tally] = field(default_factory=list)


def _verdict(probe: Probe, expected: set[str], outcomes: dict[Outcome, int], what: str) -> None:
    problems = probe.check(expected)
    others = {o.value: c for o, c in outcomes.items() if c and o is not Outcome.HANDLED}
    if others:
        problems.append(f"outcomes other than handled: {others}")
    if problems:
        raise AssertionError(f"{what}: " + "; ".join(problems))


async def _first(done: asyncio.Event, task: asyncio.Task[None], n: int, what: str) -> None:
    """Waits for `done`; fails when the consumer's task ended first or time ran out."""
    waiter = asyncio.ensure_future(done.wait())
    try:
        finished, _ = await asyncio.wait(
            {waiter, task}, timeout=deadline_s(n), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiter.cancel()
    if waiter not in finished:
        if task in finished:
            task.result()  # raises what ended it
            raise RuntimeError(f"{what}: the consumer returned before finishing")
        raise TimeoutError(f"{what}: not finished after {deadline_s(n):.0f} s")


def _started(env: Env) -> None:
    # Backlog spans exported now, not on the clock; no round pays for another's garbage.
    env.telemetry.flush()
    gc.collect()


# -- Kafka ------------------------------------------------------------------------------


def request(i: int, keys: int) -> events_pb2.AgentRequested:
    return events_pb2.AgentRequested(
        run_id=f"run-{i:06d}",
        tenant_id="bench",
        conversation_id=f"conv-{i % keys:03d}",
        prompt="What is 6 * 7?",
        priority=types_pb2.PRIORITY_HIGH,
    )


async def _joined(kafka: KafkaConsumer, what: str) -> None:
    """Joins the group on the still empty topic, so the clock never times a join."""
    deadline = time.monotonic() + 30
    await kafka.start()
    while not await kafka.assignment():
        if await kafka.consume(1, timeout=0.1):
            raise RuntimeError(f"{what}: a record before the backlog was produced")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: no partitions assigned after 30 s")


async def _kafka_backlog(env: Env, prefix: str, n: int, keys: int) -> dict[int, int]:
    """Produces the backlog (in order per key); returns partition -> next offset."""
    assert env.producer is not None
    emitter = EventProducer(env.producer, env.telemetry, source=SOURCE, topic_prefix=prefix)
    ends: dict[int, int] = {}
    for start in range(0, n, CHUNK):
        # Each emit hands its record to librdkafka before its first await, so gather
        # keeps the order; the idempotent producer keeps it on the wire.
        sent = await asyncio.gather(
            *(emitter.emit(request(i, keys)) for i in range(start, min(n, start + CHUNK)))
        )
        for d in sent:
            ends[d.partition] = max(ends.get(d.partition, 0), d.offset + 1)
    return ends


def kafka_round(
    concurrent: bool,
    work: str,
    keys: int,
    max_in_flight: int | None = None,
    guard: dict[str, Any] | None = None,
) -> RoundFn:
    """`concurrent` False: one at a time through `handle`; else `EventConsumer.run`
    (with the runtime's default `max_in_flight` unless one is given). `guard`: options
    of the `IdempotencyGuard` beyond the bench's namespace and TTL."""
    tuning: dict[str, Any] = {} if max_in_flight is None else {"max_in_flight": max_in_flight}

    async def one_round(env: Env, n: int) -> Tally:
        prefix = env.fresh("kafka")
        topic, group = prefix + EVENT.topic, prefix + "group"
        # Nothing should be dead-lettered, but what is must land where it is cleaned up.
        dead = prefix + CONTRACTS.dead_letter_topic
        env.topics += [topic, dead]
        env.groups.append(group)
        await ensure_kafka_topics(
            env.settings, [TopicSpec(topic, PARTITIONS, KEEP), TopicSpec(dead, 1, KEEP)]
        )
        assert env.producer is not None
        kafka = CommitLog(env.settings, group, [topic])
        try:
            await _joined(kafka, topic)
            ends = await _kafka_backlog(env, prefix, n, keys)
            consumer = EventConsumer(
                kafka,
                env.telemetry,
                dead_letters=env.producer,
                guard=env.guard(prefix, guard),
                topic_prefix=prefix,
                **tuning,
            )
            probe = Probe(n, work, spins=env.spins, ordered=True)
            consumer.core.settler = Finishing(consumer.core.settler, probe, acks_settle=False)
            watch_core(consumer, probe)
            _started(env)
            sent = env.redis_sent()
            probe.start()
            if concurrent:
                await _kafka_run(consumer, kafka, probe, ends, topic)
            else:
                await _kafka_one_at_a_time(consumer, kafka, probe, topic)
            trips, commands = env.redis_since(sent)
            expected = {f"run-{i:06d}" for i in range(n)}
            _verdict(probe, expected, consumer.counts, topic)
            settle = kafka.settle_ms(probe.returned)
            if len(settle) != n:
                raise AssertionError(f"{topic}: {n - len(settle)} records never committed")
            return Tally(
                n,
                probe.seconds,
                probe.cpu_s,
                settle,
                probe.peak,
                probe.idle_s,
                kafka.pauses,
                trips,
                commands,
                probe.peak_inside,
            )
        finally:
            await kafka.close()

    return one_round


async def _kafka_one_at_a_time(
    consumer: EventConsumer, kafka: CommitLog, probe: Probe, what: str
) -> None:
    """What the runtime did before: a batch, each record handled in turn, a commit."""
    deadline = time.monotonic() + deadline_s(probe.n)
    while probe.finished < probe.n:
        records = await kafka.consume(BATCH, timeout=0.5)
        for record in records:
            outcome = await consumer.handle(record, probe.handle)
            if outcome is not Outcome.HANDLED:
                raise RuntimeError(f"{what}: a record was {outcome.value}, not handled")
        if records:
            kafka.store_offsets(_next_offsets(records))
            await kafka.commit()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {probe.finished} of {probe.n} after the deadline")


def _next_offsets(records: Sequence[Record]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for r in records:
        where = (r.topic() or "", r.partition() or 0)
        last[where] = max(last.get(where, -1), r.offset() or 0)
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


async def _kafka_run(
    consumer: EventConsumer, kafka: CommitLog, probe: Probe, ends: dict[int, int], what: str
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(probe.handle, stop))
    try:
        await _first(probe.done, task, probe.n, what)
        # Off the clock: the commit past the last record, for its settle latency.
        async with asyncio.timeout(30):
            while not kafka.covers(ends):
                kafka.committed_some.clear()
                await kafka.committed_some.wait()
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


# -- RabbitMQ ---------------------------------------------------------------------------


async def _rabbit_round_queue(
    env: Env, n: int
) -> tuple[RabbitConnection, str, TaskTopology, set[str]]:
    """A round's own task topology with a backlog of `n` tasks on it: the connection,
    the round's prefix, the topology and the run ids published."""
    assert env.rabbit is not None
    prefix = env.fresh("rabbitmq")
    topo = task_topology(env.settings, TASK, prefix)
    env.topos.append(topo)
    await declare_task_topology(env.rabbit.channel, topo)
    return env.rabbit, prefix, topo, await _rabbit_backlog(env, prefix, n)


async def _rabbit_backlog(env: Env, prefix: str, n: int) -> set[str]:
    assert env.rabbit is not None
    publisher = TaskPublisher(env.rabbit, env.telemetry, source=SOURCE, name_prefix=prefix)
    run_ids: set[str] = set()
    for start in range(0, n, CHUNK):
        tasks = [make_task() for _ in range(start, min(n, start + CHUNK))]
        await asyncio.gather(*(publisher.publish(t) for t in tasks))
        run_ids.update(t.run_id for t in tasks)
    if len(run_ids) != n:
        raise RuntimeError("two tasks drew the same run id")
    return run_ids


def rabbit_round(
    prefetch: int | None, work: str = "io", guard: dict[str, Any] | None = None
) -> RoundFn:
    """`prefetch` None: one at a time through `handle`; else `TaskConsumer.run`.
    `guard`: options of the `IdempotencyGuard`, as in `kafka_round`."""

    async def one_round(env: Env, n: int) -> Tally:
        rabbit, prefix, topo, expected = await _rabbit_round_queue(env, n)
        consumer = TaskConsumer(
            rabbit,
            env.telemetry,
            TASK,
            topology=topo,
            guard=env.guard(prefix, guard),
            prefetch=prefetch or 16,
        )
        probe = Probe(n, work, spins=env.spins, ordered=False)
        consumer.core.settler = Finishing(consumer.core.settler, probe, acks_settle=True)
        watch_core(consumer, probe)
        _started(env)
        sent = env.redis_sent()
        probe.start()
        if prefetch is None:
            await _rabbit_one_at_a_time(consumer, rabbit, probe, topo.queue)
        else:
            stop = asyncio.Event()
            task = asyncio.create_task(consumer.run(probe.handle, stop))
            try:
                await _first(probe.done, task, n, topo.queue)
            finally:
                stop.set()
                await asyncio.wait_for(task, 60)
        trips, commands = env.redis_since(sent)
        _verdict(probe, expected, consumer.counts, topo.queue)
        return Tally(
            n,
            probe.seconds,
            probe.cpu_s,
            probe.settle_ms,
            probe.peak,
            probe.idle_s,
            redis_trips=trips,
            redis_commands=commands,
            peak_inside=probe.peak_inside,
        )

    return one_round


def rabbit_floor_round() -> RoundFn:
    """The client's floor: a bare aio-pika consumer on a channel of its own (prefetch
    BACKLOG_PREFETCH, as `run`'s row) that decodes each task and acks it, and nothing
    else: no context, span, guard or settling logic. No consumer on this client can cost
    a message less; `TaskConsumer.run`'s target is read against it."""

    async def one_round(env: Env, n: int) -> Tally:
        rabbit, _, topo, expected = await _rabbit_round_queue(env, n)
        seen: Counter[str] = Counter()
        settle_ms: list[float] = []
        done = asyncio.Event()

        async def deliver(message: AbstractIncomingMessage) -> None:
            run_id = tasks_pb2.ToolTask.FromString(message.body).run_id
            returned = time.perf_counter()
            await message.ack()
            settle_ms.append((time.perf_counter() - returned) * 1e3)
            seen[run_id] += 1
            if len(settle_ms) == n:
                done.set()

        channel = await rabbit.connection.channel()
        try:
            await channel.set_qos(prefetch_count=BACKLOG_PREFETCH)
            queue = await channel.get_queue(topo.queue, ensure=True)
            _started(env)
            wall, cpu = time.perf_counter(), time.process_time()
            tag = await queue.consume(deliver)
            try:
                async with asyncio.timeout(deadline_s(n)):
                    await done.wait()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            finally:
                await queue.cancel(tag)
        finally:
            await channel.close()
        twice = sorted(r for r, c in seen.items() if c > 1)
        if set(seen) != expected or twice:
            missing = len(expected - set(seen))
            raise AssertionError(f"{topo.queue}: {missing} tasks not seen, {len(twice)} twice")
        return Tally(n, wall, cpu, settle_ms, peak=1, idle_s=0.0)

    return one_round


async def _rabbit_one_at_a_time(
    consumer: TaskConsumer, rabbit: RabbitConnection, probe: Probe, queue: str
) -> None:
    deliveries = rabbit.consume(queue)  # the connection's channel: prefetch 64
    try:
        async with asyncio.timeout(deadline_s(probe.n)):
            while probe.finished < probe.n:
                outcome = await consumer.handle(await anext(deliveries), probe.handle)
                if outcome is not Outcome.HANDLED:
                    raise RuntimeError(f"{queue}: a delivery was {outcome.value}, not handled")
    finally:
        await deliveries.aclose()


# -- scenarios ----------------------------------------------------------------------------


def guard_batches() -> bool:
    """The guard can coalesce concurrent calls into one pipelined round trip (and so
    can be told not to): `IdempotencyGuard(..., batching=...)`."""
    return "batching" in inspect.signature(IdempotencyGuard).parameters


UNBATCHED = {"batching": False}
RABBIT_FLOOR = f"bare aio-pika prefetch {BACKLOG_PREFETCH}: decode and ack only (floor)"
NO_BATCHING_NOTE = (
    "row '{row}' skipped: this IdempotencyGuard has no `batching` option, so the row "
    "above already runs the guard one round trip per call"
)


def variants_of(scenario: str, load: Load) -> tuple[list[Variant], list[str]]:
    """The rows of `scenario`, and notes on rows left out."""
    if scenario in BACKLOG_SCENARIOS:
        return _backlog_variants(scenario)
    if scenario in ("kafka-io", "kafka-cpu"):
        work = scenario.split("-")[1]
        variants = [
            Variant("one-at-a-time", kafka_round(False, work, load.keys)),
            Variant("EventConsumer.run", kafka_round(True, work, load.keys)),
            # A diagnostic, not a setting to copy: the same run loop when the backlog
            # never reaches max_in_flight, so it never pauses (see bench/README.md).
            Variant(
                f"EventConsumer.run, max_in_flight {NO_PAUSE}",
                kafka_round(True, work, load.keys, NO_PAUSE),
            ),
        ]
        if work == "io":
            # A reference for the CPU column: the same one-at-a-time path with nothing
            # to wait for, so no other process gets the core (and its caches) between
            # two messages. Its msgs/s ratio means nothing.
            variants.append(
                Variant(
                    "one-at-a-time, handler returns at once (ref.)",
                    kafka_round(False, "none", load.keys),
                )
            )
        return variants, []
    return [
        Variant("one-at-a-time", rabbit_round(None)),
        Variant("TaskConsumer.run prefetch 16", rabbit_round(16)),
        Variant("TaskConsumer.run prefetch 64", rabbit_round(64)),
    ], []


def _backlog_variants(scenario: str) -> tuple[list[Variant], list[str]]:
    """The consumer's own cost per message: the handler returns at once, so the rows
    differ only in how the runtime gets each message through its steps."""
    kafka = scenario == "kafka-backlog"

    def rows(concurrent: bool, guard: dict[str, Any] | None = None) -> RoundFn:
        if kafka:
            return kafka_round(concurrent, "none", BACKLOG_KEYS, guard=guard)
        return rabbit_round(BACKLOG_PREFETCH if concurrent else None, "none", guard)

    run = "EventConsumer.run" if kafka else f"TaskConsumer.run prefetch {BACKLOG_PREFETCH}"
    variants = [Variant("one-at-a-time", rows(False)), Variant(run, rows(True))]
    # The client's own cost, beside which `run`'s can be read (RabbitMQ: see bench/README.md).
    floor = [] if kafka else [Variant(RABBIT_FLOOR, rabbit_floor_round())]
    # A diagnostic: what the guard's coalescing of concurrent calls is worth to `run`.
    off = f"{run}, guard batching off"
    if not guard_batches():
        return [*variants, *floor], [NO_BATCHING_NOTE.format(row=off)]
    return [*variants, Variant(off, rows(True, UNBATCHED)), *floor], []


TITLES = {
    "kafka-io": "Kafka, {n} records over {keys} keys on 3 partitions, guard on, "
    "handler awaits 5 ms (a tool or model call)",
    "kafka-cpu": "Kafka, {n} records over {keys} keys on 3 partitions, guard on, "
    "CPU-only handler ({cpu:.1f} ms of pure Python, no await)",
    "rabbitmq-io": "RabbitMQ, {n} tasks, guard on, handler awaits 5 ms",
    "kafka-backlog": "Kafka, {n} records over {backlog_keys} keys on 3 partitions, guard on, "
    "handler returns at once (the consumer's own cost per message)",
    "rabbitmq-backlog": "RabbitMQ, {n} tasks, guard on, handler returns at once "
    "(the consumer's own cost per message)",
}


async def run_scenario(env: Env, variants: list[Variant], load: Load) -> list[Variant]:
    for v in variants:
        log(f"  {v.name}: warm-up ({load.warmup})")
        await v.round(env, load.warmup)
    for r in range(load.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            tally = await v.round(env, load.n)
            v.tallies.append(tally)
            log(
                f"  round {r + 1}/{load.rounds} {v.name}: {tally.rate:,.0f} msgs/s, "
                f"CPU {tally.cpu_s / tally.n * 1e6:,.0f} µs/msg, peak {tally.peak} at once "
                f"({tally.peak_inside} in the core)"
            )
    return variants


# -- report -------------------------------------------------------------------------------


def _q(samples: Sequence[float], p: int) -> float:
    if len(samples) < 2:
        return samples[0] if samples else float("nan")
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


ROUND_FIELDS = (
    "n",
    "seconds",
    "cpu_s",
    "peak",
    "idle_s",
    "pauses",
    "peak_inside",
    "redis_trips",
    "redis_commands",
)


def _per_msg(counts: Sequence[tuple[int | None, int]]) -> float | None:
    """The median per message over the rounds; None when a round could not count."""
    if not counts or any(c is None for c, _ in counts):
        return None
    return statistics.median((c or 0) / n for c, n in counts)


def summary(v: Variant) -> dict[str, Any]:
    settle = [s for t in v.tallies for s in t.settle_ms]
    pauses = [t.pauses for t in v.tallies if t.pauses is not None]
    return {
        "variant": v.name,
        "msgs_per_s": statistics.median(t.rate for t in v.tallies),
        "msgs_per_s_min": min(t.rate for t in v.tallies),
        "msgs_per_s_max": max(t.rate for t in v.tallies),
        "settle_p50_ms": _q(settle, 50),
        "settle_p99_ms": _q(settle, 99),
        "cpu_s_per_1000": statistics.median(t.cpu_s / t.n * 1000 for t in v.tallies),
        "peak_at_once": max(t.peak for t in v.tallies),
        "peak_in_core": max(t.peak_inside for t in v.tallies),
        "idle_share": statistics.median(t.idle_s / t.seconds for t in v.tallies),
        "pauses_per_round": statistics.median(pauses) if pauses else None,
        "redis_trips_per_msg": _per_msg([(t.redis_trips, t.n) for t in v.tallies]),
        "redis_commands_per_msg": _per_msg([(t.redis_commands, t.n) for t in v.tallies]),
        "rounds": [
            {k: getattr(t, k) for k in ROUND_FIELDS} | {"msgs_per_s": t.rate} for t in v.tallies
        ],
    }


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: Sequence[dict[str, Any]], *, in_core: bool = False) -> str:
    """`in_core`: the handler returns at once, so no two handlers ever run at the same
    moment and almost no time has one running; the table shows the messages inside the
    consume core at once instead of those two columns."""
    base = rows[0]
    kafka = any(r["pauses_per_round"] is not None for r in rows)
    at_once: tuple[str, ...] = (
        ("peak in core",) if in_core else ("peak at once", "no handler running")
    )
    header = (
        "variant",
        "msgs/s",
        "rounds min-max",
        "ratio",
        "settle p50 ms",
        "settle p99 ms",
        "CPU s/1000 msgs",
        "CPU ratio",
        "Redis trips/msg",
        "Redis cmds/msg",
        *at_once,
        *(("pauses/round",) if kafka else ()),
    )
    body = [
        (
            r["variant"],
            f"{r['msgs_per_s']:,.0f}",
            f"{r['msgs_per_s_min']:,.0f}-{r['msgs_per_s_max']:,.0f}",
            f"{r['msgs_per_s'] / base['msgs_per_s']:.2f}x",
            f"{r['settle_p50_ms']:.1f}",
            f"{r['settle_p99_ms']:.1f}",
            f"{r['cpu_s_per_1000']:.2f}",
            f"{r['cpu_s_per_1000'] / base['cpu_s_per_1000']:.2f}x",
            _num(r["redis_trips_per_msg"], ".2f"),
            _num(r["redis_commands_per_msg"], ".2f"),
            *(
                (str(r["peak_in_core"]),)
                if in_core
                else (str(r["peak_at_once"]), f"{r['idle_share']:.0%}")
            ),
            *((f"{r['pauses_per_round']:g}",) if kafka else ()),
        )
        for r in rows
    ]
    return _markdown(header, body)


# -- main ---------------------------------------------------------------------------------


async def _clean_up(env: Env) -> None:
    """Every topic, group, queue and exchange the rounds made (they read the lists now)."""
    if env.topics or env.groups:
        await quietly("Kafka topics and groups", _drop_kafka(env.settings, env.topics, env.groups))
    if env.topos:
        await quietly("RabbitMQ topology", _drop_rabbit(env.settings, env.topos))


async def run(args: argparse.Namespace) -> int:
    settings = Settings()
    load = QUICK if args.quick else FULL
    selected = list(dict.fromkeys(args.scenario or SCENARIOS))
    services = sorted({s.split("-")[0] for s in selected})
    problems = await preflight(settings, services)
    if problems:
        for problem in problems:
            log(f"cannot run: {problem}")
        log("the bench runs against the local stack: start it with `make stack-up`")
        return 2
    prefix = f"bench.{uuid.uuid4().hex[:8]}."
    started = datetime.now(UTC)
    load_start = os.getloadavg()
    spins = calibrate(CPU_MS)
    cpu_ms = statistics.median(_timed(spin, spins) for _ in range(9)) * 1000
    log(
        f"agentflux consumers bench: {', '.join(selected)} ({'quick' if args.quick else 'full'}, "
        f"{load.n} messages x {load.rounds} rounds); names under {prefix}; "
        f"{os.cpu_count()} CPUs, load {load_start[0]:.2f}; CPU handler {cpu_ms:.2f} ms"
    )
    results: dict[str, list[dict[str, Any]]] = {}
    notes: dict[str, list[str]] = {}
    failures: dict[str, str] = {}
    t_all = time.monotonic()
    async with AsyncExitStack() as stack:
        telemetry, counter = counting_telemetry(stack, "bench-consumers")
        env = Env(settings, prefix, telemetry, counter, redis_for(stack, settings, prefix), spins)
        env.sent = count_round_trips(env.redis)  # before its first command
        stack.push_async_callback(_clean_up, env)  # registered before anything is made
        if "kafka" in services:
            env.producer = KafkaProducer(settings)
            stack.push_async_callback(quietly, "Kafka producer", env.producer.close())
        if "rabbitmq" in services:
            env.rabbit = await RabbitConnection.connect(settings)
            stack.push_async_callback(quietly, "RabbitMQ connection", env.rabbit.close())
        for scenario in selected:
            log(f"{scenario}:")
            t0 = time.monotonic()
            try:
                variants, notes[scenario] = variants_of(scenario, load)
                for note in notes[scenario]:
                    log(f"  {note}")
                variants = await run_scenario(env, variants, load)
            except Exception as exc:
                failures[scenario] = repr(exc)
                log(f"{scenario}: FAILED: {exc!r}")
                continue
            results[scenario] = [summary(v) for v in variants]
            log(f"{scenario}: done in {time.monotonic() - t0:.1f} s")
        spans = exported(telemetry, counter)
        log("cleaning up")
    load_end = os.getloadavg()
    log(f"all scenarios in {time.monotonic() - t_all:.1f} s; load {load_end[0]:.2f}")

    title = {"n": load.n, "keys": load.keys, "backlog_keys": BACKLOG_KEYS, "cpu": cpu_ms}
    parts = [
        f"msgs/s: median over {load.rounds} rounds; ratio and CPU ratio against one-at-a-time; "
        "settle: handler returned -> offset commit confirmed (Kafka) or ack (RabbitMQ); "
        "Redis trips and cmds: what the guard sent, per message."
    ]
    for scenario, rows in results.items():
        backlog = scenario in BACKLOG_SCENARIOS
        parts += ["", TITLES[scenario].format(**title) + ":", "", table(rows, in_core=backlog)]
        parts += [f"\nNote: {note}" for note in notes.get(scenario, [])]
    if failures:
        parts += ["", "Failed: " + "; ".join(f"{k}: {v}" for k, v in failures.items())]
    print("\n".join(parts))
    if args.json:
        doc = {
            "started": started.isoformat(),
            "quick": args.quick,
            "load": asdict(load),
            "backlog_keys": BACKLOG_KEYS,
            "guard_batching": guard_batches(),
            "cpu_handler_ms": cpu_ms,
            "io_handler_ms": IO_S * 1000,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "loadavg_start": load_start,
                "loadavg_end": load_end,
            },
            "scenarios": results,
            "notes": {k: v for k, v in notes.items() if v},
            "spans": spans,
            "names": {"prefix": prefix, "topics": len(env.topics), "queues": len(env.topos)},
            "failures": failures,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"results written to {args.json}")
    return 1 if failures else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.consumers",
        description="The concurrent consumers (EventConsumer.run, TaskConsumer.run) beside "
        "one-at-a-time consuming, on the real brokers, interleaved in one run.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller backlogs and fewer rounds (about 1.5 minutes)"
    )
    parser.add_argument(
        "--scenario",
        nargs="+",
        action="extend",
        choices=SCENARIOS,
        metavar="NAME",
        help=f"scenarios to run (default all): {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # On the loop `agentflux serve` runs on (AGENTFLUX_EVENT_LOOP): what a service's
        # clients and consumers get.
        return lifecycle.run(run(args), Settings().event_loop)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
