"""The Kafka consumer runtime on the real broker: concurrency that keeps order, commits
below the lowest unfinished record, nothing that can stop a partition, rejoining after
eviction, leases that free a crashed handler's key without stopping other keys, and a
graceful stop on SIGTERM.

Each test has its own topics, group and Redis keys under its prefix; fault tests run
the consumer as a process of its own and stop it with real signals."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from agentflux.v1 import events_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from interceptors import (
    ConsumeInterceptor,
    ContextFilter,
    EventConsumer,
    EventProducer,
    HandlerLink,
    IdempotencyGuard,
    Incoming,
    InvalidArgument,
    Outcome,
    PermissionDenied,
    Telemetry,
)
from services.runtime.adapters.kafka import KafkaConsumer, KafkaProducer
from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings
from services.runtime.topology import TopicSpec, ensure_kafka_topics
from tests.integration.runtime_kit import (
    FaultProc,
    committed,
    delete_kafka,
    entries,
    eventually,
    headers,
    read_all,
)

pytestmark = pytest.mark.integration

REQUESTED = "agentflux.v1.AgentRequested"


@dataclass
class Kit:
    settings: Settings
    prefix: str
    producer: KafkaProducer
    redis: aioredis.Redis
    telemetry: Telemetry
    memory: InMemorySpanExporter
    tmp: Path
    partitions: int = 1
    groups: list[str] = field(default_factory=list)
    consumers: list[KafkaConsumer] = field(default_factory=list)
    procs: list[FaultProc] = field(default_factory=list)
    runs: list[tuple[asyncio.Event, asyncio.Task[None]]] = field(default_factory=list)

    @property
    def topic(self) -> str:
        return self.prefix + "agent.requested"

    @property
    def dlq(self) -> str:
        return self.prefix + "agent.dlq"

    @property
    def group(self) -> str:
        return self.prefix + "group"

    def kafka(self, **config: Any) -> KafkaConsumer:
        consumer = KafkaConsumer(self.settings, self.group, [self.topic], **config)
        self.consumers.append(consumer)
        return consumer

    def consumer(self, kafka: KafkaConsumer | None = None, **kw: Any) -> EventConsumer:
        kw.setdefault("guard", IdempotencyGuard(self.redis, namespace=f"{self.prefix}guard"))
        return EventConsumer(
            kafka or self.kafka(),
            self.telemetry,
            dead_letters=self.producer,
            topic_prefix=self.prefix,
            **kw,
        )

    async def emit(self, run_id: str, conversation: str, **kw: Any) -> None:
        events = EventProducer(
            self.producer, self.telemetry, source="/test", topic_prefix=self.prefix
        )
        event = events_pb2.AgentRequested(run_id=run_id, conversation_id=conversation, **kw)
        await events.emit(event, idempotency_key=f"{run_id}:requested")

    async def raw(self, value: bytes | None, key: bytes, hdrs: dict[str, bytes]) -> None:
        await self.producer.produce(self.topic, value, key=key, headers=list(hdrs.items()))  # type: ignore[arg-type]

    def committed(self) -> list[int]:
        return committed(self.settings, self.group, self.topic, self.partitions)

    def proc(self, *args: str) -> FaultProc:
        proc = FaultProc(
            ["--transport", "kafka", "--prefix", self.prefix, *args], self.redis, self.prefix
        ).start(self.tmp)
        self.procs.append(proc)
        return proc


@pytest.fixture
async def kit(settings: Settings, prefix: str, tmp_path: Path) -> AsyncIterator[Kit]:
    # One partition: every key shares it, which is where ordering and commits get hard.
    specs = [TopicSpec(prefix + name, 1) for name in ("agent.requested", "agent.dlq")]
    await ensure_kafka_topics(settings, specs)
    redis = connect_redis(settings)
    memory = InMemorySpanExporter()
    telemetry = Telemetry.create("runtime-test", exporters=[memory], batch_delay_ms=50)
    kit = Kit(settings, prefix, KafkaProducer(settings), redis, telemetry, memory, tmp_path)
    try:
        yield kit
    finally:
        for proc in kit.procs:
            proc.kill()
        for stop, task in kit.runs:
            stop.set()
            await asyncio.wait([task], timeout=30)
        for consumer in kit.consumers:
            await consumer.close()
        await kit.producer.close()
        telemetry.shutdown()
        keys = [k async for k in redis.scan_iter(f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        await delete_kafka(settings, [s.name for s in specs], [kit.group])


async def running(
    consumer: EventConsumer, handler: Any, kit: Kit
) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    run = (stop, asyncio.create_task(consumer.run(handler, stop)))
    kit.runs.append(run)
    return run


async def stopped(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait_for(task, 60)


# -- concurrency with order ------------------------------------------------------------


async def test_keys_run_concurrently_in_order_and_commit_stays_below_unfinished(kit: Kit) -> None:
    # conv-a's first record is held; conv-b's records all finish meanwhile, after it in
    # the partition. The commit must not pass conv-a's record, and conv-a's next record
    # must wait behind it.
    for i in range(3):
        await kit.emit(f"a{i}", "conv-a")
        await kit.emit(f"b{i}", "conv-b")
    release = asyncio.Event()
    order: list[str] = []
    active = peak = 0

    async def handle(incoming: Incoming) -> bytes:
        nonlocal active, peak
        run: str = incoming.event.run_id  # type: ignore[attr-defined]
        active += 1
        peak = max(peak, active)
        try:
            if run == "a0":
                await release.wait()
            order.append(run)
        finally:
            active -= 1
        return b"ok"

    consumer = kit.consumer()
    stop, task = await running(consumer, handle, kit)
    await eventually(lambda: _true([r for r in order if r.startswith("b")] == ["b0", "b1", "b2"]))
    assert not [r for r in order if r.startswith("a")], order  # a1, a2 wait behind a0
    assert peak == 2

    async def commit_settled() -> bool:
        await asyncio.sleep(0)  # let the loop commit what is finished
        return kit.committed() == [0]

    # a0 is offset 0: nothing may be committed past it, though offsets 1, 3, 5 are done.
    await eventually(commit_settled, what="the commit to hold at the unfinished offset 0")
    assert consumer.in_flight == 3  # a0, a1, a2
    release.set()
    await eventually(lambda: _true(len(order) == 6))
    assert [r for r in order if r.startswith("a")] == ["a0", "a1", "a2"]
    await eventually(lambda: _true(kit.committed() == [6]), what="offset 6 committed")
    await stopped(stop, task)
    assert consumer.counts[Outcome.HANDLED] == 6


async def _true(value: bool) -> bool:
    return value


# -- nothing stops a partition ---------------------------------------------------------


POISON = [
    # (what, value, headers, the dead-letter reason)
    ("tombstone", None, {"ce_type": REQUESTED.encode()}, "EMPTY"),
    ("empty value", b"", {"ce_type": REQUESTED.encode()}, "EMPTY"),
    ("undecodable", b"\xff\xff\xff", {"ce_type": REQUESTED.encode()}, "UNDECODABLE"),
    (
        "another type",
        events_pb2.ToolCalled(run_id="x", conversation_id="c").SerializeToString(),
        {"ce_type": b"agentflux.v1.ToolCalled"},
        "WRONG_TYPE",
    ),
    (
        "no type",
        events_pb2.AgentRequested(run_id="x", conversation_id="c").SerializeToString(),
        {},
        "WRONG_TYPE",
    ),
    (
        "xml",
        b"<runId>x</runId>",
        {"ce_type": REQUESTED.encode(), "content-type": b"text/xml"},
        "UNSUPPORTED_CONTENT_TYPE",
    ),
    (
        "json of another shape",
        b'{"runId": {"not": "a string"}}',
        {"ce_type": REQUESTED.encode(), "content-type": b"application/json"},
        "UNDECODABLE",
    ),
]
# Proto3 JSON (what other languages' producers emit) is read like the binary form.
GOOD_JSON = b'{"runId": "json-good", "conversationId": "conv-p", "unknownLater": 1}'


async def test_poison_records_are_dead_lettered_with_reasons_and_the_partition_moves_on(
    kit: Kit,
) -> None:
    for i, (_, value, hdrs, _) in enumerate(POISON):
        await kit.raw(value, b"conv-p", {**hdrs, "x-origin": f"poison-{i}".encode()})
    await kit.raw(
        GOOD_JSON, b"conv-p", {"ce_type": REQUESTED.encode(), "content-type": b"application/json"}
    )
    await kit.emit("good", "conv-p")
    handled: list[str] = []

    async def handle(incoming: Incoming) -> bytes:
        handled.append(incoming.event.run_id)  # type: ignore[attr-defined]
        return b"ok"

    consumer = kit.consumer()
    stop, task = await running(consumer, handle, kit)
    await eventually(lambda: _true(handled == ["json-good", "good"]))
    await eventually(lambda: _true(kit.committed() == [len(POISON) + 2]))
    await stopped(stop, task)
    assert consumer.counts[Outcome.DEAD_LETTERED] == len(POISON)

    dead = read_all(kit.settings, kit.dlq, len(POISON))
    for i, ((what, value, _, reason), record) in enumerate(zip(POISON, dead, strict=True)):
        got = headers(record)
        assert got["dlq_reason"] == reason.encode(), what
        assert got["dlq_error"], what
        assert got["dlq_offset"] == str(i).encode()
        assert got["dlq_topic"] == kit.topic.encode()
        assert got["x-origin"] == f"poison-{i}".encode()  # the original headers kept
        assert record.value() == value, what  # a tombstone stays one
        assert record.key() == b"conv-p"
    assert b"ToolCalled" in headers(dead[3])["dlq_error"]
    assert b"text/xml" in headers(dead[5])["dlq_error"]
    assert b"proto3 JSON" in headers(dead[6])["dlq_error"]
    assert b"application/json" in headers(dead[6])["dlq_error"]


async def test_header_name_that_is_not_utf8_is_dead_lettered(kit: Kit) -> None:
    # Python clients cannot write such a header; kcat (librdkafka, as any C, Go or Rust
    # producer) can.
    argv: list[str | bytes] = ["kcat", "-P", "-b", kit.settings.kafka_bootstrap_servers]
    argv += ["-t", kit.topic, "-k", "conv-h", "-H", b"\xffbad=1", "-H", f"ce_type={REQUESTED}"]
    await asyncio.to_thread(subprocess.run, argv, input=b"\xff\xfe", check=True, timeout=30)
    await kit.emit("after", "conv-h")
    handled: list[str] = []

    async def handle(incoming: Incoming) -> bytes:
        handled.append(incoming.event.run_id)  # type: ignore[attr-defined]
        return b"ok"

    consumer = kit.consumer()
    stop, task = await running(consumer, handle, kit)
    await eventually(lambda: _true(handled == ["after"]))
    await eventually(lambda: _true(kit.committed() == [2]))
    await stopped(stop, task)
    (dead,) = read_all(kit.settings, kit.dlq, 1)
    got = headers(dead)
    assert got["dlq_reason"] == b"UNREADABLE_HEADERS"
    assert b"UTF-8" in got["dlq_error"]
    assert dead.value() == b"\xff\xfe"
    assert dead.key() == b"conv-h"


async def test_record_too_large_for_the_dead_letter_topic_is_truncated_with_its_digest(
    kit: Kit, settings: Settings
) -> None:
    small = kit.prefix + "agent.dlq"
    await delete_kafka(settings, [small], [])
    await eventually(lambda: _recreate(settings, small), what="a small dead-letter topic")
    original = os.urandom(200_000)  # incompressible, so lz4 cannot make it fit
    await kit.raw(original, b"conv-big", {"ce_type": b"agentflux.v1.ToolCalled"})
    await kit.emit("after", "conv-big")
    handled: list[str] = []

    async def handle(incoming: Incoming) -> bytes:
        handled.append(incoming.event.run_id)  # type: ignore[attr-defined]
        return b"ok"

    consumer = kit.consumer()
    stop, task = await running(consumer, handle, kit)
    await eventually(lambda: _true(handled == ["after"]))
    await eventually(lambda: _true(kit.committed() == [2]))
    await stopped(stop, task)
    (dead,) = read_all(kit.settings, small, 1)
    got = headers(dead)
    assert got["dlq_reason"] == b"WRONG_TYPE"
    assert got["dlq_truncated"] == b"true"
    assert got["dlq_original_size"] == b"200000"
    assert got["dlq_sha256"] == hashlib.sha256(original).hexdigest().encode()
    value = dead.value() or b""
    assert 0 < len(value) < 50_000
    assert original.startswith(value)


async def _recreate(settings: Settings, topic: str) -> bool:
    try:
        spec = TopicSpec(topic, 1, {"max.message.bytes": "50000"})
        created = await ensure_kafka_topics(settings, [spec])
    except Exception:
        return False  # still being deleted
    return created[topic]


# -- errors: retryable or not, and links in the chain --------------------------------------


async def test_invalid_input_is_dead_lettered_at_once_and_other_errors_are_retried(
    kit: Kit,
) -> None:
    await kit.emit("invalid", "conv-e")
    await kit.emit("flaky", "conv-f")
    calls: dict[str, int] = {}

    async def handle(incoming: Incoming) -> bytes:
        run: str = incoming.event.run_id  # type: ignore[attr-defined]
        calls[run] = calls.get(run, 0) + 1
        if run == "invalid":
            raise InvalidArgument("prompt", "must not be empty")
        raise ConnectionError("tool backend down")

    consumer = kit.consumer(attempts=3, backoff_s=0.01)
    stop, task = await running(consumer, handle, kit)
    await eventually(lambda: _true(kit.committed() == [2]))
    await stopped(stop, task)
    assert calls == {"invalid": 1, "flaky": 3}
    dead = {headers(r)["dlq_reason"]: headers(r) for r in read_all(kit.settings, kit.dlq, 2)}
    assert set(dead) == {b"INVALID_ARGUMENT", b"RETRIES_EXHAUSTED"}
    assert b"prompt: must not be empty" in dead[b"INVALID_ARGUMENT"]["dlq_error"]
    assert b"ConnectionError" in dead[b"RETRIES_EXHAUSTED"]["dlq_error"]
    # Released claims: the keys are free for a replay.
    assert not await kit.redis.exists(f"{kit.prefix}guard:idem:ik:flaky:requested")


class TenantCheck(ConsumeInterceptor):
    """What a service adds without forking the consumer: refuse a tenant, count calls."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def intercept(self, next: HandlerLink) -> HandlerLink:
        outer = self

        class Link(HandlerLink):
            async def handle(self, incoming: Incoming) -> bytes | None:
                outer.seen.append(incoming.context.tenant_id)
                if incoming.context.tenant_id == "blocked":
                    raise PermissionDenied("tenant blocked is suspended")
                return await super().handle(incoming)

        return Link(next)


async def test_an_interceptor_link_sees_the_bound_context_and_can_refuse(kit: Kit) -> None:
    await kit.emit("ok-run", "conv-t", tenant_id="acme")
    await kit.emit("blocked-run", "conv-t", tenant_id="blocked")
    check = TenantCheck()
    handled: list[str] = []

    async def handle(incoming: Incoming) -> bytes:
        handled.append(incoming.event.run_id)  # type: ignore[attr-defined]
        return b"ok"

    consumer = kit.consumer(interceptors=[check])
    stop, task = await running(consumer, handle, kit)
    await eventually(lambda: _true(kit.committed() == [2]))
    await stopped(stop, task)
    assert check.seen == ["acme", "blocked"]
    assert handled == ["ok-run"]
    (dead,) = read_all(kit.settings, kit.dlq, 1)
    assert headers(dead)["dlq_reason"] == b"PERMISSION_DENIED"


# -- dedupe identity ----------------------------------------------------------------------


async def test_dedupe_identity_is_source_and_id_or_the_records_position(kit: Kit) -> None:
    body = events_pb2.AgentRequested(run_id="r", conversation_id="conv-d").SerializeToString()
    base = {"ce_type": REQUESTED.encode()}
    await kit.raw(body, b"conv-d", {**base, "ce_id": b"evt-1", "ce_source": b"/orders"})
    await kit.raw(body, b"conv-d", {**base, "ce_id": b"evt-1", "ce_source": b"/billing"})
    await kit.raw(body, b"conv-d", {**base, "ce_id": b"evt-1", "ce_source": b"/orders"})
    await kit.raw(body, b"conv-d", base)  # no id at all
    await kit.raw(body, b"conv-d", {**base, "ce_id": b"not an id!"})  # an id we cannot use
    kafka = kit.kafka()
    records = await _consume(kafka, 5)
    consumer = kit.consumer(kafka)

    async def handle(incoming: Incoming) -> bytes:
        return incoming.context.event_id.encode()

    first = [await consumer.handle(r, handle) for r in records]
    # Two sources may use one id: both handled; the same source and id again: a duplicate.
    handled, dup = Outcome.HANDLED, Outcome.DUPLICATE
    assert first == [handled, handled, dup, handled, handled]
    # A redelivery of the id-less records (same position) is recognised.
    again = [await consumer.handle(r, handle) for r in records[3:]]
    assert again == [Outcome.DUPLICATE, Outcome.DUPLICATE]


async def _consume(kafka: KafkaConsumer, n: int) -> list[Any]:
    out: list[Any] = []

    async def more() -> bool:
        out.extend(await kafka.consume(n - len(out), timeout=0.25))
        return len(out) >= n

    await eventually(more, what=f"{n} records")
    return out


# -- faults, with real processes and signals ------------------------------------------------


async def test_crashed_handler_frees_its_key_within_a_lease_and_other_keys_go_on(
    kit: Kit,
) -> None:
    lease = 2.0
    await kit.emit("block:k1", "conv-1")
    first = kit.proc("--lease", str(lease))
    await first.ready()
    started = f"{kit.prefix}started"
    await eventually(lambda: _has(kit.redis, started, "block:k1"), what="the handler to start")
    first.signal(signal.SIGKILL)
    await first.exited()
    # Killed mid-handler: the claim is pending, nothing was committed.
    claim = f"{kit.prefix}guard:idem:ik:block:k1:requested"
    assert (await kit.redis.get(claim) or b"")[:1] == b"P"

    # The same record again, now one that finishes, and another key behind it.
    await kit.redis.delete(started)
    second = kit.proc("--lease", str(lease))
    await second.ready()
    await kit.emit("quick", "conv-2")
    handled = f"{kit.prefix}handled"
    await eventually(lambda: _has(kit.redis, handled, "quick"), what="the other key")
    # conv-2 was handled while conv-1's dead claim still blocked only conv-1.
    got = await entries(kit.redis, handled)
    assert [e.split("|")[0] for e in got] == ["quick"], got
    # ...and conv-1's key is free again within about one lease: the redelivered record
    # is claimed anew (its handler starts again, blocking as before).
    await eventually(
        lambda: _has(kit.redis, started, "block:k1"), timeout=lease * 5, what="the key freed"
    )
    second.signal(signal.SIGTERM)


async def _has(redis: aioredis.Redis, key: str, run: str) -> bool:
    return any(e.split("|")[0] == run for e in await entries(redis, key))


async def test_sigterm_finishes_in_flight_work_commits_and_exits(kit: Kit) -> None:
    proc = kit.proc("--grace", "20")
    await proc.ready()
    for i in range(4):
        await kit.emit(f"slow:1500:{i}", f"conv-{i}")
    started = f"{kit.prefix}started"
    await eventually(lambda: _len(kit.redis, started, 4), what="four handlers running")
    proc.signal(signal.SIGTERM)
    assert await proc.exited() == 0, proc.output()
    handled = await entries(kit.redis, f"{kit.prefix}handled")
    assert sorted(e.split("|")[0] for e in handled) == [f"slow:1500:{i}" for i in range(4)]
    assert kit.committed() == [4]  # all four committed before it left
    assert "stopping gracefully" in proc.output()


async def test_sigterm_hands_back_work_that_outlives_the_grace_period(kit: Kit) -> None:
    proc = kit.proc("--grace", "0.5", "--lease", "30")
    await proc.ready()
    await kit.emit("block:long", "conv-1")
    await kit.emit("quick", "conv-2")
    started = f"{kit.prefix}started"
    await eventually(lambda: _has(kit.redis, f"{kit.prefix}handled", "quick"))
    await eventually(lambda: _has(kit.redis, started, "block:long"))
    proc.signal(signal.SIGTERM)
    assert await proc.exited() == 0, proc.output()
    assert "handing them back" in proc.output()
    # Handed back: not committed, and its claim released (no 30 s lease to wait out).
    assert kit.committed() == [0]
    assert not await kit.redis.exists(f"{kit.prefix}guard:idem:ik:block:long:requested")
    # The next process takes it at once; the finished one is a duplicate, not redone.
    await kit.redis.delete(started)
    nxt = kit.proc("--grace", "0.5", "--lease", "30")
    await nxt.ready()
    await eventually(lambda: _has(kit.redis, started, "block:long"), timeout=20)
    assert [e.split("|")[0] for e in await entries(kit.redis, started)] == ["block:long"]
    nxt.signal(signal.SIGTERM)
    assert await nxt.exited() == 0


async def _len(redis: aioredis.Redis, key: str, n: int) -> bool:
    return bool(await redis.llen(key) >= n)


async def test_member_evicted_by_a_blocking_handler_rejoins_and_goes_on(kit: Kit) -> None:
    # A handler that blocks the event loop past max.poll.interval.ms gets the member
    # evicted; its commit then fails with UNKNOWN_MEMBER_ID / ILLEGAL_GENERATION. The
    # member must rejoin and go on, and nothing may be lost or handled twice.
    proc = kit.proc("--max-poll-ms", "7000", "--session-ms", "6000")
    await proc.ready()
    await kit.emit("hog:9000:a", "conv-a")
    await eventually(lambda: _has(kit.redis, f"{kit.prefix}handled", "hog:9000:a"), timeout=60)
    for i in range(3):
        await kit.emit(f"after-{i}", f"conv-{i}")
    handled_key = f"{kit.prefix}handled"
    await eventually(lambda: _len(kit.redis, handled_key, 4), timeout=90, what="the rest")
    await eventually(lambda: _true(kit.committed() == [4]), timeout=60, what="offset 4")
    assert proc.proc is not None
    assert proc.proc.poll() is None, proc.output()  # still running: it rejoined
    handled = [e.split("|")[0] for e in await entries(kit.redis, handled_key)]
    assert sorted(handled) == sorted(["hog:9000:a", "after-0", "after-1", "after-2"])
    proc.signal(signal.SIGTERM)
    assert await proc.exited() == 0, proc.output()


# -- logs that lead to the trace ---------------------------------------------------------


async def test_a_handlers_log_lines_carry_the_context_and_the_consumer_spans_trace(
    kit: Kit,
) -> None:
    # What an operator sees in a log line is enough to run `agentflux trace` on it.
    await kit.emit("logged", "conv-l", tenant_id="acme")
    records: list[logging.LogRecord] = []
    capture = logging.Handler()
    capture.emit = records.append  # type: ignore[method-assign]
    capture.addFilter(ContextFilter())
    logger = logging.getLogger(f"test.{kit.prefix}")
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)

    async def handle(incoming: Incoming) -> bytes:
        logger.info("planning %s", incoming.event.run_id)  # type: ignore[attr-defined]
        return b"ok"

    try:
        consumer = kit.consumer()
        stop, task = await running(consumer, handle, kit)
        await eventually(lambda: _true(kit.committed() == [1]))
        await stopped(stop, task)
    finally:
        logger.removeHandler(capture)
    (record,) = records
    kit.telemetry.flush()
    (span,) = [s for s in kit.memory.get_finished_spans() if s.name == f"process {kit.topic}"]
    assert span.context is not None
    assert span.attributes is not None
    assert record.__dict__["trace_id"] == f"{span.context.trace_id:032x}"
    assert record.__dict__["span_id"] == f"{span.context.span_id:016x}"
    assert record.__dict__["correlation_id"] == span.attributes["agentflux.correlation_id"]
    assert record.__dict__["tenant_id"] == "acme"
    assert record.__dict__["run_id"] == "logged"


async def test_records_in_hand_are_bounded_by_max_in_flight(kit: Kit) -> None:
    # Twenty keys could all run at once; max_in_flight=4 holds the consumer to four
    # records in hand (partitions paused while full), and it still finishes them all.
    for i in range(20):
        await kit.emit(f"r{i}", f"conv-{i}")
    release = asyncio.Event()
    active = peak = done = 0

    async def handle(incoming: Incoming) -> bytes:
        nonlocal active, peak, done
        active += 1
        peak = max(peak, active)
        await release.wait()
        active -= 1
        done += 1
        return b"ok"

    consumer = kit.consumer(max_in_flight=4, pause_after_s=1.0)
    stop, task = await running(consumer, handle, kit)
    await eventually(lambda: _true(active == 4), what="four handlers running")
    # Held there while the loop turns, waiting for room (and, past pause_after_s, pausing
    # the partitions while it polls, which keeps the member in its group).
    rounds = consumer.rounds
    await eventually(lambda: _true(consumer.rounds >= rounds + 4), what="four more turns")
    assert consumer.in_flight == 4
    assert peak == 4
    release.set()
    await eventually(lambda: _true(done == 20))
    await eventually(lambda: _true(kit.committed() == [20]))
    await stopped(stop, task)
    assert peak == 4


async def test_a_rebalance_lets_in_flight_work_finish_and_commits_it_before_moving(
    kit: Kit, settings: Settings
) -> None:
    # Three partitions, one member busy on all of them; a second member joins. The
    # cooperative assignor revokes only what moves; the first member finishes what it
    # holds of those partitions, commits, and lets go, so nothing is cancelled, lost or
    # handled twice, and the second member gets work.
    sub = kit.prefix + "rb."
    specs = [TopicSpec(sub + name, 3) for name in ("agent.requested", "agent.dlq")]
    await ensure_kafka_topics(settings, specs)
    group = sub + "group"
    emitted = 0
    try:
        events = EventProducer(kit.producer, kit.telemetry, source="/t", topic_prefix=sub)

        async def emit(n: int) -> None:
            nonlocal emitted
            for _ in range(n):
                run = f"r{emitted}"
                event = events_pb2.AgentRequested(
                    run_id=run, conversation_id=f"conv-{emitted % 12}"
                )
                await events.emit(event, idempotency_key=run)
                emitted += 1

        started: dict[str, int] = {}
        finished: dict[str, str] = {}

        def handler(member: str) -> Any:
            async def handle(incoming: Incoming) -> bytes:
                run: str = incoming.event.run_id  # type: ignore[attr-defined]
                started[run] = started.get(run, 0) + 1
                await asyncio.sleep(0.2)  # a tool call: records stay in flight a while
                finished[run] = member
                return b"ok"

            return handle

        def member() -> EventConsumer:
            kafka = KafkaConsumer(settings, group, [sub + "agent.requested"])
            kit.consumers.append(kafka)
            guard = IdempotencyGuard(kit.redis, namespace=f"{kit.prefix}guard")
            return EventConsumer(
                kafka, kit.telemetry, dead_letters=kit.producer, guard=guard, topic_prefix=sub
            )

        first = member()
        await running(first, handler("first"), kit)
        await emit(36)
        await eventually(lambda: _true(len(finished) >= 5), what="the first member working")
        second = member()
        await running(second, handler("second"), kit)

        async def keep_busy() -> bool:
            # Work keeps arriving until the second member has handled some: the rebalance
            # happens while the first member has records in flight.
            if "second" in finished.values():
                return True
            if emitted - len(finished) < 36:  # every key always has work queued
                await emit(12)
            return False

        await eventually(keep_busy, timeout=60, what="the second member to get work")
        await eventually(lambda: _true(len(finished) == emitted), timeout=60, what="all handled")
        assert all(n == 1 for n in started.values()), started  # none cancelled and redone
        offsets = await eventually(
            lambda: _committed_all(settings, group, sub + "agent.requested", emitted),
            what="every partition committed to its end",
        )
        assert sum(offsets) == emitted
        assert first.counts[Outcome.HANDED_BACK] == 0
        assert second.counts[Outcome.DUPLICATE] == 0
    finally:
        for stop, task in kit.runs:
            stop.set()
            await asyncio.wait([task], timeout=30)
        await delete_kafka(settings, [s.name for s in specs], [group])


async def _committed_all(settings: Settings, group: str, topic: str, n: int) -> list[int] | None:
    offsets = committed(settings, group, topic, 3)
    return offsets if sum(o for o in offsets if o > 0) == n else None
