"""The RabbitMQ consumer runtime on the real broker: up to `prefetch` deliveries at once,
retries through the delay-tier queues, a dead-letter queue that says why, messages it
cannot read dead-lettered before any handler runs, the broker's redelivered flag never
counted as an attempt, a graceful stop on SIGTERM, links in the handling chain, and a
claim still held elsewhere handed back instead of acked as a duplicate.

Each test has its own exchanges, queues and Redis keys under its prefix, with delay
tiers of 200 and 400 ms; fault tests run the consumer as a process of its own and stop
it with real signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from agentflux.v1 import events_pb2, tasks_pb2, types_pb2
from aio_pika.abc import AbstractIncomingMessage
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from interceptors import (
    ATTEMPT_HEADER,
    ConsumeInterceptor,
    FluxContext,
    HandlerLink,
    IdempotencyGuard,
    Incoming,
    InvalidArgument,
    Outcome,
    PermissionDenied,
    TaskConsumer,
    TaskPublisher,
    Telemetry,
    Unavailable,
    current,
)
from services.runtime.adapters.rabbitmq import PROTOBUF, RabbitConnection
from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings
from services.runtime.contracts import registry
from services.runtime.topology import TaskTopology, declare_task_topology, task_topology
from tests.integration.runtime_kit import FaultProc, entries, eventually

pytestmark = pytest.mark.integration

TASK = registry().task(tasks_pb2.ToolTask)
DELAYS_MS = [200, 400]
MAX_ATTEMPTS = 1 + len(DELAYS_MS)


def tool_task(run_id: str, tenant: str = "") -> tasks_pb2.ToolTask:
    return tasks_pb2.ToolTask(
        run_id=run_id,
        tenant_id=tenant,
        conversation_id="conv-1",
        priority=types_pb2.PRIORITY_NORMAL,
        attempt=1,
        call=types_pb2.ToolCall(tool_call_id=f"{run_id}.0", name="calculator"),
    )


@dataclass
class Kit:
    settings: Settings
    prefix: str
    rabbit: RabbitConnection
    redis: aioredis.Redis
    telemetry: Telemetry
    topo: TaskTopology
    tmp: Path
    procs: list[FaultProc] = field(default_factory=list)
    runs: list[tuple[asyncio.Event, asyncio.Task[None]]] = field(default_factory=list)

    @property
    def queues(self) -> list[str]:
        topo = self.topo
        return topo.all_queues

    def guard(self, **kw: Any) -> IdempotencyGuard:
        return IdempotencyGuard(self.redis, namespace=f"{self.prefix}guard", **kw)

    def claim_key(self, idempotency_key: str) -> str:
        """Where the consumers' guard keeps the claim of a task with this key."""
        return f"{self.prefix}guard:idem:ik:{idempotency_key}"

    def consumer(self, **kw: Any) -> TaskConsumer:
        kw.setdefault("guard", self.guard())
        return TaskConsumer(self.rabbit, self.telemetry, TASK, topology=self.topo, **kw)

    async def publish(self, run_id: str, tenant: str = "") -> FluxContext:
        publisher = TaskPublisher(
            self.rabbit, self.telemetry, source="/test", name_prefix=self.prefix
        )
        return await publisher.publish(tool_task(run_id, tenant), idempotency_key=f"{run_id}:call")

    async def raw(
        self,
        body: bytes,
        headers: dict[str, Any],
        *,
        message_type: str | None = None,
        content_type: str = PROTOBUF,
    ) -> None:
        await self.rabbit.publish(
            self.topo.exchange,
            self.topo.routing_key,
            body,
            headers=headers,
            message_type=message_type,
            content_type=content_type,
        )

    async def depth(self, queue: str | None = None) -> int:
        """Messages ready in `queue` (the work queue by default), by a passive declare."""
        channel = await self.rabbit.connection.channel()
        try:
            declared = await channel.declare_queue(queue or self.topo.queue, passive=True)
            count = declared.declaration_result.message_count
            assert count is not None
            return count
        finally:
            await channel.close()

    async def depths(self) -> dict[str, int]:
        return {q: await self.depth(q) for q in self.queues}

    async def dead_letters(self, n: int) -> list[AbstractIncomingMessage]:
        """The next `n` messages of the dead-letter queue (taken: they are the evidence)."""
        got: list[AbstractIncomingMessage] = []
        channel = await self.rabbit.connection.channel()
        try:
            queue = await channel.get_queue(self.topo.dead_letter_queue, ensure=True)

            async def more() -> bool:
                message = await queue.get(no_ack=True, fail=False)
                if message is not None:
                    got.append(message)
                return len(got) >= n

            await eventually(more, what=f"{n} dead letter(s)")
            assert await queue.get(no_ack=True, fail=False) is None, "more dead letters"
        finally:
            await channel.close()
        return got

    def run(self, consumer: TaskConsumer, handler: Any) -> tuple[asyncio.Event, asyncio.Task[None]]:
        stop = asyncio.Event()
        run = (stop, asyncio.create_task(consumer.run(handler, stop)))
        self.runs.append(run)
        return run

    def proc(self, *args: str) -> FaultProc:
        argv = ["--transport", "amqp", "--prefix", self.prefix, "--delays", "200,400", *args]
        proc = FaultProc(argv, self.redis, self.prefix).start(self.tmp)
        self.procs.append(proc)
        return proc


@pytest.fixture
async def kit(settings: Settings, prefix: str, tmp_path: Path) -> AsyncIterator[Kit]:
    # `settings` (the session's) brings the stack up; these are the same, with short tiers.
    short = Settings(tool_task_retry_delays_ms=DELAYS_MS)
    topo = task_topology(short, TASK, prefix)
    rabbit = await RabbitConnection.connect(short)
    redis = connect_redis(short)
    # Spans stay in memory: these tests read what the brokers hold, not the traces.
    telemetry = Telemetry.create(
        "amqp-runtime-test", exporters=[InMemorySpanExporter()], batch_delay_ms=50
    )
    kit = Kit(short, prefix, rabbit, redis, telemetry, topo, tmp_path)
    try:
        await declare_task_topology(rabbit.channel, topo)
        yield kit
    finally:
        for proc in kit.procs:
            proc.kill()
        for stop, task in kit.runs:
            stop.set()
            await asyncio.wait([task], timeout=30)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await rabbit.close()
        telemetry.shutdown()
        async with await RabbitConnection.connect(short) as admin:
            for queue in kit.queues:
                await admin.channel.queue_delete(queue)
            for exchange in (topo.exchange, topo.retry_exchange, topo.dead_letter_exchange):
                await admin.channel.exchange_delete(exchange)
        keys = [k async for k in redis.scan_iter(f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def stopped(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait_for(task, 60)


async def _true(value: bool) -> bool:
    return value


def run_id(incoming: Incoming) -> str:
    assert isinstance(incoming.event, tasks_pb2.ToolTask)
    return incoming.event.run_id


@dataclass
class Call:
    """What one handler call saw of its delivery."""

    run: str
    attempt: int
    body: bytes
    headers: dict[str, Any]
    redelivered: bool


def call_of(incoming: Incoming) -> Call:
    message: AbstractIncomingMessage = incoming.inbound.raw
    return Call(
        run_id(incoming),
        incoming.attempt,
        message.body,
        hdrs(message),
        bool(message.redelivered),
    )


def hdrs(message: AbstractIncomingMessage) -> dict[str, Any]:
    """A delivery's headers, typed loosely for the assertions."""
    return dict(message.headers or {})


def deaths(headers: dict[str, Any]) -> list[dict[str, Any]]:
    """The broker's dead-letter history of a delivery (`x-death`), oldest last."""
    raw = headers.get("x-death", [])
    assert isinstance(raw, list)
    return [cast("dict[str, Any]", d) for d in raw]


async def handle_each(
    kit: Kit,
    consumer: TaskConsumer,
    handler: Any,
    *,
    until: Callable[[list[Outcome]], bool],
    timeout: float = 60.0,
) -> list[Outcome]:
    """Handles deliveries of the work queue one by one with `consumer.handle` (outside
    the run loop) until `until(outcomes so far)`; returns the outcomes in order."""
    out: list[Outcome] = []
    async with contextlib.aclosing(kit.rabbit.consume(kit.topo.queue)) as deliveries:
        async with asyncio.timeout(timeout):
            async for message in deliveries:
                out.append(await consumer.handle(message, handler))
                if until(out):
                    break
    return out


# -- concurrency -------------------------------------------------------------------------


async def test_prefetch_bounds_the_deliveries_handled_at_once(kit: Kit) -> None:
    prefetch, total = 3, 7
    for i in range(total):
        await kit.publish(f"run-{i}")
    release = asyncio.Event()
    active = peak = 0
    done: list[str] = []

    async def handle(incoming: Incoming) -> bytes:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await release.wait()
        finally:
            active -= 1
        done.append(run_id(incoming))
        return b"ok"

    consumer = kit.consumer(prefetch=prefetch, grace_s=1)
    stop, task = kit.run(consumer, handle)
    try:
        await eventually(lambda: _true(active == prefetch), what=f"{prefetch} handlers running")
        # The broker holds the rest back: they wait in the queue, not in the consumer.
        await eventually(lambda: _equals(kit.depth(), total - prefetch), what="the rest to wait")
        assert (active, peak, consumer.in_flight) == (prefetch, prefetch, prefetch)
    finally:
        release.set()
    await eventually(lambda: _true(len(done) == total), what="every task handled")
    await eventually(lambda: _equals(kit.depth(), 0), what="an empty queue")
    await stopped(stop, task)
    assert peak == prefetch
    assert sorted(done) == sorted(f"run-{i}" for i in range(total))
    assert consumer.counts[Outcome.HANDLED] == total
    assert await kit.depths() == dict.fromkeys(kit.queues, 0)


async def _equals(got: Awaitable[int], expected: int) -> bool:
    return await got == expected


async def test_acks_of_deliveries_finished_together_share_a_frame(kit: Kit) -> None:
    """Deliveries finishing in one turn of the loop are acked by one `multiple` ack; one
    still being handled is never covered by it (it stays unacked until it finishes, and
    the others are not held back by it); dead letters, settled on their own, mix in."""
    total, slow, bad = 40, "run-29", {"run-33", "run-36"}
    go, slow_go, later_go = asyncio.Event(), asyncio.Event(), asyncio.Event()
    arrived: list[Call] = []
    handled: list[str] = []

    async def handle(incoming: Incoming) -> bytes:
        call = call_of(incoming)
        arrived.append(call)
        await (later_go if call.run.startswith("later") else go).wait()
        if call.run in bad:
            raise InvalidArgument("call.arguments", "refused by the test")
        if call.run == slow:
            await slow_go.wait()
        handled.append(call.run)
        return b"ok"

    for i in range(total):
        await kit.publish(f"run-{i}")
    consumer = kit.consumer(prefetch=64)
    stop, task = kit.run(consumer, handle)
    await eventually(lambda: _true(len(arrived) == total), what="every task delivered")
    go.set()  # all but the slow one finish together
    quick = total - len(bad) - 1
    await eventually(lambda: _true(len(handled) == quick), what="the quick tasks handled")
    await eventually(
        lambda: _equals(kit.depth(kit.topo.dead_letter_queue), len(bad)), what="dead letters"
    )
    # The 29 before the slow delivery's tag in a frame or so; those after it one each
    # (a dead letter's own ack is not counted here).
    await eventually(lambda: _true(consumer.ack_frames > 0), what="acks sent")
    after = total - 30 - len(bad)
    assert consumer.ack_frames <= after + 3, consumer.ack_frames
    assert consumer.in_flight == 1  # the slow one, still unacked
    slow_go.set()
    await eventually(lambda: _true(slow in handled), what="the slow task handled")
    # Past the slow tag, the tags acked alone and the dead letters, a batch that finishes
    # together shares a frame again; the channel lives (a wrong ack would close it).
    for i in range(20):
        await kit.publish(f"later-{i}")
    await eventually(lambda: _true(len(arrived) == total + 20), what="the later tasks delivered")
    before = consumer.ack_frames
    later_go.set()
    await eventually(lambda: _true(len(handled) == quick + 21), what="the later tasks handled")
    assert consumer.ack_frames - before <= 4, consumer.ack_frames - before
    await stopped(stop, task)
    # Stopping closed the channel: anything left unacked would be back in the queue.
    assert await kit.depth() == 0
    assert len(arrived) == total + 20
    assert not any(c.redelivered for c in arrived)
    assert consumer.counts[Outcome.HANDLED] == quick + 21
    assert consumer.counts[Outcome.DEAD_LETTERED] == len(bad)
    dead = await kit.dead_letters(len(bad))
    assert {tasks_pb2.ToolTask.FromString(d.body).run_id for d in dead} == bad


# -- retries through the delay tiers -------------------------------------------------------


async def test_retryable_failures_go_through_the_delay_tiers_then_succeed(kit: Kit) -> None:
    ctx = await kit.publish("flaky")
    sent = tool_task("flaky").SerializeToString()
    calls: list[Call] = []
    at: list[float] = []

    async def handle(incoming: Incoming) -> bytes:
        calls.append(call_of(incoming))
        at.append(time.monotonic())
        if len(calls) <= 2:
            raise Unavailable("tool backend down")
        return b"ok"

    consumer = kit.consumer()
    outcomes = await handle_each(
        kit, consumer, handle, until=lambda out: out[-1] is not Outcome.RETRYING
    )
    assert outcomes == [Outcome.RETRYING, Outcome.RETRYING, Outcome.HANDLED]
    assert [c.attempt for c in calls] == [1, 2, 3]
    assert all(c.body == sent for c in calls)  # the original bytes, every time
    assert not any(c.redelivered for c in calls)  # each retry is a fresh message
    assert [c.headers.get(ATTEMPT_HEADER) for c in calls] == [None, 2, 3]
    assert all(c.headers["ce_id"] == ctx.event_id for c in calls)

    # Each retry waited out its tier's TTL and came back from that tier.
    assert deaths(calls[0].headers) == []
    for call, tier in zip(calls[1:], DELAYS_MS, strict=True):
        (death,) = deaths(call.headers)
        assert death["queue"] == f"{kit.topo.queue}.retry.{tier}ms"
        assert death["reason"] == "expired"
        assert death["count"] == 1
    assert at[1] - at[0] >= DELAYS_MS[0] / 1000
    assert at[2] - at[1] >= DELAYS_MS[1] / 1000

    assert await kit.depths() == dict.fromkeys(kit.queues, 0)
    # Handled in the end: the claim holds the outcome, a replay is a duplicate.
    assert await kit.redis.get(kit.claim_key("flaky:call")) == b"Dok"


async def test_a_task_that_keeps_failing_is_dead_lettered_with_why(kit: Kit) -> None:
    ctx = await kit.publish("doomed")
    calls: list[Call] = []

    async def handle(incoming: Incoming) -> bytes:
        calls.append(call_of(incoming))
        raise RuntimeError("tool exploded")

    consumer = kit.consumer()
    stop, task = kit.run(consumer, handle)
    await eventually(
        lambda: _equals(kit.depth(kit.topo.dead_letter_queue), 1), what="a dead letter"
    )
    await stopped(stop, task)
    assert [c.attempt for c in calls] == [1, 2, 3]
    assert (consumer.counts[Outcome.RETRYING], consumer.counts[Outcome.DEAD_LETTERED]) == (2, 1)

    (dead,) = await kit.dead_letters(1)
    got = hdrs(dead)
    assert got["dlq_reason"] == "RETRIES_EXHAUSTED"
    assert got["dlq_attempts"] == MAX_ATTEMPTS
    assert got["dlq_queue"] == kit.topo.queue
    assert "RuntimeError: tool exploded" in got["dlq_error"]
    assert got["dlq_time"]
    assert dead.body == tool_task("doomed").SerializeToString()
    assert dead.type == TASK.type_name
    original = {k: v for k, v in calls[0].headers.items() if k.startswith("ce_")}
    assert original["ce_id"] == ctx.event_id
    assert original["ce_idempotencykey"] == "doomed:call"
    assert {k: got.get(k) for k in original} == original  # every ce_* header kept
    assert await kit.depths() == dict.fromkeys(kit.queues, 0)
    # Failed, so released: a replay of the dead letter is handled again.
    assert not await kit.redis.exists(kit.claim_key("doomed:call"))


async def test_an_error_that_cannot_succeed_is_dead_lettered_at_once(kit: Kit) -> None:
    await kit.publish("invalid")
    calls: list[Call] = []

    async def handle(incoming: Incoming) -> bytes:
        calls.append(call_of(incoming))
        raise InvalidArgument("call.arguments", "expression is empty")

    consumer = kit.consumer()
    stop, task = kit.run(consumer, handle)
    await eventually(
        lambda: _equals(kit.depth(kit.topo.dead_letter_queue), 1), what="a dead letter"
    )
    await stopped(stop, task)
    assert [c.attempt for c in calls] == [1]
    assert consumer.counts[Outcome.RETRYING] == 0
    (dead,) = await kit.dead_letters(1)
    got = hdrs(dead)
    assert got["dlq_reason"] == "INVALID_ARGUMENT"
    assert got["dlq_attempts"] == 1
    assert "call.arguments: expression is empty" in got["dlq_error"]
    assert dead.body == tool_task("invalid").SerializeToString()
    assert await kit.depths() == dict.fromkeys(kit.queues, 0)


# -- messages that cannot be handled at all ------------------------------------------------

TOOL_TASK = TASK.type_name
BAD = [
    # (what, body, headers, AMQP type property, content type, the dead-letter reason)
    ("undecodable", b"\xff\xff\xff", {"ce_type": TOOL_TASK}, None, PROTOBUF, "UNDECODABLE"),
    (
        "another type",
        events_pb2.ToolCalled(run_id="x", conversation_id="c").SerializeToString(),
        {"ce_type": "agentflux.v1.ToolCalled"},
        None,
        PROTOBUF,
        "WRONG_TYPE",
    ),
    ("no type", tool_task("untyped").SerializeToString(), {}, None, PROTOBUF, "WRONG_TYPE"),
    (
        "xml",
        b"<runId>x</runId>",
        {"ce_type": TOOL_TASK},
        None,
        "text/xml",
        "UNSUPPORTED_CONTENT_TYPE",
    ),
    ("empty body", b"", {"ce_type": TOOL_TASK}, None, PROTOBUF, "EMPTY"),
    (
        "json of another shape",
        b'{"runId": ["x"]}',
        {"ce_type": TOOL_TASK},
        None,
        "application/json",
        "UNDECODABLE",
    ),
]


async def test_bad_messages_are_dead_lettered_at_once_with_reasons(kit: Kit) -> None:
    for i, (_, body, headers, type_, content_type, _) in enumerate(BAD):
        await kit.raw(
            body,
            {**headers, "x-origin": f"bad-{i}"},
            message_type=type_,
            content_type=content_type,
        )
    # Good ones beside them: typed by the ce_type header, or by the AMQP type property.
    await kit.publish("good")
    await kit.raw(tool_task("typed").SerializeToString(), {}, message_type=TOOL_TASK)
    # Proto3 JSON, as other languages' producers send it, is read like the binary form.
    await kit.raw(b'{"runId": "json"}', {"ce_type": TOOL_TASK}, content_type="application/json")
    handled: list[str] = []

    async def handle(incoming: Incoming) -> bytes:
        handled.append(run_id(incoming))
        return b"ok"

    consumer = kit.consumer()
    stop, task = kit.run(consumer, handle)
    await eventually(
        lambda: _equals(kit.depth(kit.topo.dead_letter_queue), len(BAD)),
        what="every bad message dead-lettered",
    )
    await eventually(lambda: _true(len(handled) == 3), what="the good ones handled")
    await stopped(stop, task)
    assert sorted(handled) == ["good", "json", "typed"]  # never called for a bad one
    assert consumer.counts[Outcome.DEAD_LETTERED] == len(BAD)

    dead = {str(hdrs(m)["x-origin"]): m for m in await kit.dead_letters(len(BAD))}
    for i, (what, body, _, _, content_type, reason) in enumerate(BAD):
        message = dead[f"bad-{i}"]
        got = hdrs(message)
        assert got["dlq_reason"] == reason, what
        assert got["dlq_attempts"] == 1, what
        assert got["dlq_queue"] == kit.topo.queue, what
        assert got["dlq_error"], what
        assert message.body == body, what
        assert message.content_type == content_type, what
        assert "x-death" not in got, what  # published by the consumer, not rejected
    assert "ToolCalled" in hdrs(dead["bad-1"])["dlq_error"]
    assert "text/xml" in hdrs(dead["bad-3"])["dlq_error"]
    assert "application/json" in hdrs(dead["bad-5"])["dlq_error"]
    assert await kit.depths() == dict.fromkeys(kit.queues, 0)


async def test_a_header_name_that_is_not_utf8_is_dead_lettered_and_the_connection_lives(
    kit: Kit,
) -> None:
    # Python clients cannot write such a name; amqp-publish (librabbitmq, as any C, Go or
    # Java producer) can. Unpatched, pamqp closed the connection on it, and the robust
    # connection got it redelivered and closed again, for ever.
    url = kit.settings.amqp_url.rstrip("/")  # librabbitmq reads a trailing "/" as vhost ""
    argv: list[str | bytes] = ["amqp-publish", "--url", url, "-e", kit.topo.exchange]
    argv += ["-r", kit.topo.routing_key, "-C", PROTOBUF, "-H", b"\xffbad: 1"]
    argv += ["-H", f"ce_type: {TOOL_TASK}", "-b", b"\x08\x01"]
    await asyncio.to_thread(subprocess.run, argv, check=True, timeout=30)
    await kit.publish("after")
    handled: list[str] = []

    async def handle(incoming: Incoming) -> bytes:
        handled.append(run_id(incoming))
        return b"ok"

    consumer = kit.consumer()
    stop, task = kit.run(consumer, handle)
    await eventually(lambda: _true(handled == ["after"]), what="the task behind it handled")
    await eventually(lambda: _equals(kit.depth(kit.topo.dead_letter_queue), 1))
    await stopped(stop, task)
    (dead,) = await kit.dead_letters(1)
    got = hdrs(dead)
    assert got["dlq_reason"] == "UNREADABLE_HEADERS"
    assert "not UTF-8" in str(got["dlq_error"])
    assert got["\\xffbad"] == "1"  # the name kept, made printable
    assert got["ce_type"] == TOOL_TASK
    assert dead.body == b"\x08\x01"
    assert await kit.depths() == dict.fromkeys(kit.queues, 0)


# -- links in the chain --------------------------------------------------------------------


class TenantCheck(ConsumeInterceptor):
    """What a service adds without forking the consumer: refuse a tenant, count calls."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.bound: list[FluxContext | None] = []

    def intercept(self, next: HandlerLink) -> HandlerLink:
        outer = self

        class Link(HandlerLink):
            async def handle(self, incoming: Incoming) -> bytes | None:
                outer.seen.append(incoming.context.tenant_id)
                outer.bound.append(current())
                if incoming.context.tenant_id == "blocked":
                    raise PermissionDenied("tenant blocked is suspended")
                return await super().handle(incoming)

        return Link(next)


async def test_an_interceptor_link_sees_the_bound_context_and_can_refuse(kit: Kit) -> None:
    sent = {
        "acme": await kit.publish("ok-run", tenant="acme"),
        "blocked": await kit.publish("blocked-run", tenant="blocked"),
    }
    check = TenantCheck()
    handled: list[str] = []

    async def handle(incoming: Incoming) -> bytes:
        handled.append(run_id(incoming))
        return b"ok"

    consumer = kit.consumer(interceptors=[check])
    stop, task = kit.run(consumer, handle)
    await eventually(
        lambda: _equals(kit.depth(kit.topo.dead_letter_queue), 1), what="a dead letter"
    )
    await eventually(lambda: _true(handled == ["ok-run"]), what="the other task handled")
    await stopped(stop, task)
    assert sorted(check.seen) == ["acme", "blocked"]  # one call each
    # The link ran under the task's own context, bound for it.
    for tenant, bound in zip(check.seen, check.bound, strict=True):
        assert bound is not None
        assert (bound.tenant_id, bound.event_id) == (tenant, sent[tenant].event_id)
        assert bound.correlation_id == sent[tenant].correlation_id
    (dead,) = await kit.dead_letters(1)
    got = hdrs(dead)
    assert got["dlq_reason"] == "PERMISSION_DENIED"
    assert "tenant blocked is suspended" in got["dlq_error"]
    assert dead.body == tool_task("blocked-run", tenant="blocked").SerializeToString()
    assert await kit.depths() == dict.fromkeys(kit.queues, 0)


# -- a claim held elsewhere ----------------------------------------------------------------


async def test_a_claim_held_elsewhere_is_handed_back_then_acked_as_a_duplicate(
    kit: Kit,
) -> None:
    # Another worker holds the task's key and is alive: it renews its lease, which is
    # shorter than the consumer's wait, so only the renewals keep the claim pending.
    lease = 1.5
    holder = kit.guard(lease_s=lease)
    key = "ik:held:call"
    assert (await holder.begin(key)).new
    finished = asyncio.Event()

    async def hold() -> None:
        async with holder.heartbeat(key):
            await finished.wait()
        await holder.complete(key, b"done elsewhere")

    holding = asyncio.create_task(hold())
    try:
        await kit.publish("held")
        calls: list[Call] = []

        async def handle(incoming: Incoming) -> bytes:
            calls.append(call_of(incoming))
            return b"again"

        # pending_wait_s defaults to two of the guard's leases.
        consumer = kit.consumer(guard=kit.guard(lease_s=lease))
        channel = await kit.rabbit.connection.channel()
        try:
            queue = await channel.get_queue(kit.topo.queue, ensure=True)
            first = await queue.get(no_ack=False, timeout=10)
            assert first is not None
            began = time.monotonic()
            assert await consumer.handle(first, handle) == Outcome.HANDED_BACK
            waited = time.monotonic() - began
            assert 2 * lease <= waited < 2 * lease + 15, waited
            # Requeued, not acked: the task is in the queue again, the claim still held.
            await eventually(lambda: _equals(kit.depth(), 1), what="the task requeued")
            assert (await kit.redis.get(kit.claim_key("held:call")) or b"")[:1] == b"P"

            finished.set()
            await holding
            again = await queue.get(no_ack=False, timeout=10)
            assert again is not None
            assert again.redelivered
            assert consumer.inbound(again).attempt == 1  # a hand-back uses no attempt
            assert await consumer.handle(again, handle) == Outcome.DUPLICATE
        finally:
            await channel.close()
        # Acked: closing the channel returned nothing to the queue.
        assert await kit.depths() == dict.fromkeys(kit.queues, 0)
        assert calls == []
        assert await kit.redis.get(kit.claim_key("held:call")) == b"Ddone elsewhere"
    finally:
        finished.set()
        await asyncio.gather(holding, return_exceptions=True)


# -- faults, with real processes and signals ------------------------------------------------


async def test_redelivered_flag_is_not_an_attempt_and_sigterm_hands_back(kit: Kit) -> None:
    await kit.publish("block:x")
    started, redelivered = f"{kit.prefix}started", f"{kit.prefix}redelivered"
    first = kit.proc("--lease", "1")
    await first.ready()
    await eventually(lambda: _len(kit.redis, started, 1), what="the handler to start")
    first.signal(signal.SIGKILL)
    await first.exited()
    # Killed mid-handler: the broker put the unacked task back.
    await eventually(lambda: _equals(kit.depth(), 1), what="the task back in the queue")

    # A long lease here: after the stop, a claim gone at once was released, not expired.
    second = kit.proc("--lease", "30", "--grace", "0.5")
    await second.ready()
    await eventually(lambda: _len(kit.redis, started, 2), what="the second handler to start")
    assert await entries(kit.redis, started) == [
        f"block:x|{first.pid}|1",
        f"block:x|{second.pid}|1",  # redelivered by the broker, still attempt 1
    ]
    assert await entries(kit.redis, redelivered) == [f"block:x|{second.pid}|1"]

    second.signal(signal.SIGTERM)
    assert await second.exited() == 0, second.output()
    assert "handing them back" in second.output()
    # Handed back: nacked with requeue and its claim released.
    await eventually(lambda: _equals(kit.depth(), 1), what="the task back in the queue")
    assert not await kit.redis.exists(kit.claim_key("block:x:call"))

    # The next consumer takes it at once, as attempt 1 again.
    calls: list[Call] = []

    async def handle(incoming: Incoming) -> bytes:
        calls.append(call_of(incoming))
        return b"ok"

    consumer = kit.consumer()
    outcomes = await handle_each(kit, consumer, handle, until=lambda out: True)
    assert outcomes == [Outcome.HANDLED]
    assert [(c.run, c.attempt, c.redelivered) for c in calls] == [("block:x", 1, True)]
    assert await kit.depths() == dict.fromkeys(kit.queues, 0)


async def test_sigterm_lets_in_flight_tasks_finish_and_exits(kit: Kit) -> None:
    proc = kit.proc("--grace", "30")
    await proc.ready()
    runs = [f"slow:4000:{i}" for i in range(4)]
    for run in runs:
        await kit.publish(run)
    started, handled = f"{kit.prefix}started", f"{kit.prefix}handled"
    await eventually(lambda: _len(kit.redis, started, 4), what="four handlers running")
    assert await kit.redis.llen(handled) < 4  # still in flight when the signal comes
    proc.signal(signal.SIGTERM)
    assert await proc.exited() == 0, proc.output()
    assert "stopping gracefully" in proc.output()
    got = await entries(kit.redis, handled)
    assert sorted(e.split("|")[0] for e in got) == sorted(runs)  # each once
    assert len(await entries(kit.redis, started)) == 4  # none started twice
    assert await kit.depths() == dict.fromkeys(kit.queues, 0), proc.output()


async def _len(redis: aioredis.Redis, key: str, n: int) -> bool:
    return bool(await redis.llen(key) >= n)
