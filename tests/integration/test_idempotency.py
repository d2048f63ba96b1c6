"""The idempotency guard against the real Redis, Kafka and RabbitMQ.

Every key, topic and queue carries the test's prefix and is deleted afterwards. Leases
are short here, so the tests wait on what Redis holds (polling it, with generous
deadlines for a loaded 2-core machine) rather than on fixed sleeps wherever they can."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from agentflux.v1 import events_pb2, tasks_pb2
from aiormq.exceptions import ChannelInvalidStateError
from confluent_kafka import Message
from confluent_kafka.admin import AdminClient

from interceptors import EventConsumer, Incoming, Outcome, TaskConsumer, Telemetry
from interceptors._idempotency import MAX_KEY_LENGTH, IdempotencyGuard
from services.runtime.adapters.kafka import KafkaConsumer, KafkaProducer
from services.runtime.adapters.rabbitmq import RabbitConnection
from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings
from services.runtime.contracts import registry
from services.runtime.topology import (
    TopicSpec,
    declare_task_topology,
    ensure_kafka_topics,
    task_topology,
)

pytestmark = pytest.mark.integration

IDEMPOTENCY_HEADER = "ce_idempotencykey"  # where agentflux carries the key on messages


@pytest.fixture
async def client(settings: Settings, prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A Redis client; every key under the test's prefix is deleted afterwards."""
    c = connect_redis(settings)
    yield c
    batch: list[bytes] = []
    async for key in c.scan_iter(match=f"{prefix}*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            await c.unlink(*batch)
            batch.clear()
    if batch:
        await c.unlink(*batch)
    await c.aclose()


def make_guard(client: aioredis.Redis, prefix: str, **kw: Any) -> IdempotencyGuard:
    """A guard of "another process" when called again: same store, its own claims."""
    return IdempotencyGuard(client, namespace=f"{prefix}svc", **kw)


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 10.0
) -> float:
    """Polls `check` until it holds; returns the seconds it took."""
    began = time.monotonic()
    while not await check():
        assert time.monotonic() - began < timeout_s, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.01)
    return time.monotonic() - began


async def stored(client: aioredis.Redis, guard: IdempotencyGuard, key: str) -> bytes | None:
    """What Redis holds for `key`: b"P..." pending, b"D..." done, None nothing."""
    return cast("bytes | None", await client.get(guard.redis_key(key)))


async def count_records(client: aioredis.Redis, prefix: str) -> int:
    return len([k async for k in client.scan_iter(match=f"{prefix}svc:idem:*", count=10_000)])


async def test_100k_distinct_keys_are_all_claimed_in_batches(
    client: aioredis.Redis, prefix: str
) -> None:
    n, chunk = 100_000, 1_000  # one pipelined round trip per chunk
    # Leases outlive the test: every claim must still be there when they are counted.
    guard = make_guard(client, prefix, lease_s=600)
    keys = [f"run-{i}:step-0:{uuid.uuid4().hex[:8]}" for i in range(n)]
    for start in range(0, n, chunk):
        claims = await guard.begin_many(keys[start : start + chunk])
        assert [c.key for c in claims] == keys[start : start + chunk]  # answers in order
        assert all(c.new for c in claims), [c for c in claims if not c.new][:3]
    assert (guard.stats.new, guard.stats.duplicates) == (n, 0)
    # Nothing dropped: each key holds its pending claim in the exact store.
    assert await count_records(client, prefix) == n

    # Another process of the group sees every one of them as taken, none as new.
    other = make_guard(client, prefix)
    sample = keys[:: n // 1_000]
    assert all(c.pending and not c.new for c in await other.begin_many(sample))


async def test_100k_distinct_keys_are_all_claimed_by_concurrent_begins(
    client: aioredis.Redis, prefix: str
) -> None:
    # More in flight than the pool of `connect_redis` (64): its pool makes them wait.
    n, in_flight = 100_000, 200
    guard = make_guard(client, prefix, lease_s=600)
    keys = [f"run-{i}:step-0:{uuid.uuid4().hex[:8]}" for i in range(n)]
    for start in range(0, n, in_flight):
        claims = await asyncio.gather(*(guard.begin(k) for k in keys[start : start + in_flight]))
        assert all(c.new for c in claims), [c for c in claims if not c.new][:3]
    assert (guard.stats.new, guard.stats.duplicates) == (n, 0)
    assert await count_records(client, prefix) == n


async def test_concurrent_begins_of_one_key_claim_it_once(
    client: aioredis.Redis, prefix: str
) -> None:
    guards = [make_guard(client, prefix) for _ in range(20)]
    claims = await asyncio.gather(*(g.begin("run-3:step-1") for g in guards))
    assert sum(c.new for c in claims) == 1
    assert all(c.pending for c in claims if not c.new)


async def test_duplicate_is_answered_with_stored_outcome(
    client: aioredis.Redis, prefix: str
) -> None:
    guard = make_guard(client, prefix, ttl_s=3600, lease_s=30)
    claim = await guard.begin("run-1:step-1")
    assert (claim.new, claim.outcome, claim.pending) == (True, None, False)
    assert 25_000 < await client.pttl(guard.redis_key("run-1:step-1")) <= 30_000
    await guard.complete("run-1:step-1", b"answer: 42")
    assert 3_590_000 < await client.pttl(guard.redis_key("run-1:step-1")) <= 3_600_000

    again = await guard.begin("run-1:step-1")  # this process
    assert (again.new, again.outcome, again.pending) == (False, b"answer: 42", False)
    other = make_guard(client, prefix)  # another process
    elsewhere = await other.begin("run-1:step-1")
    assert (elsewhere.new, elsewhere.outcome, elsewhere.pending) == (False, b"answer: 42", False)
    assert (guard.stats.duplicates, other.stats.duplicates) == (1, 1)
    # A duplicate leaves the record alone: same outcome, TTL not reset to a lease.
    assert await stored(client, guard, "run-1:step-1") == b"Danswer: 42"
    assert await client.pttl(guard.redis_key("run-1:step-1")) > 3_500_000

    # Claimed but not finished: a duplicate that is still pending, without an outcome.
    assert (await guard.begin("run-1:step-2")).new
    busy = await other.begin("run-1:step-2")
    assert (busy.new, busy.outcome, busy.pending) == (False, None, True)


async def test_begin_many_answers_new_done_and_pending_keys_in_one_call(
    client: aioredis.Redis, prefix: str
) -> None:
    holder, guard = make_guard(client, prefix), make_guard(client, prefix)
    assert (await holder.begin("done-1")).new
    await holder.complete("done-1", b"sent")
    assert (await holder.begin("pending-1")).new

    keys = ["new-1", "done-1", "pending-1", "new-2", "new-1"]
    claims = await guard.begin_many(keys)
    answers = [(c.key, c.new, c.pending, c.outcome) for c in claims]
    assert answers == [
        ("new-1", True, False, None),
        ("done-1", False, False, b"sent"),
        ("pending-1", False, True, None),
        ("new-2", True, False, None),
        # The same key twice in a batch (a redelivery inside it): claimed once, by the
        # first; the second sees that claim pending.
        ("new-1", False, True, None),
    ]
    assert (guard.stats.new, guard.stats.duplicates) == (2, 1)
    assert await stored(client, guard, "done-1") == b"Dsent"
    # The new claims are this guard's own: it completes or releases them like `begin`'s.
    await guard.complete("new-1", b"ok")
    assert await guard.release("new-2") is True
    assert await guard.release("pending-1") is False  # the holder's, left alone
    assert await stored(client, guard, "new-1") == b"Dok"
    assert await stored(client, guard, "new-2") is None
    assert (await stored(client, guard, "pending-1") or b"")[:1] == b"P"


async def test_released_claim_is_claimed_again(client: aioredis.Redis, prefix: str) -> None:
    guard, other = make_guard(client, prefix), make_guard(client, prefix)
    assert (await guard.begin("task-1")).new
    assert await other.release("task-1") is False  # not its claim: left alone
    assert (await other.begin("task-1")).pending
    assert await guard.release("task-1") is True
    assert await client.exists(guard.redis_key("task-1")) == 0
    assert await guard.release("task-1") is False  # released already
    assert (await other.begin("task-1")).new


async def test_expired_lease_can_be_claimed_again(client: aioredis.Redis, prefix: str) -> None:
    crashed = make_guard(client, prefix, lease_s=0.2)
    assert (await crashed.begin("task-2")).new

    async def gone() -> bool:
        return await client.exists(crashed.redis_key("task-2")) == 0

    await eventually(gone, "the lease expired")
    successor = make_guard(client, prefix)
    assert (await successor.begin("task-2")).new
    # The crashed handler, back to life, cannot release the successor's claim.
    assert await crashed.release("task-2") is False
    assert (await stored(client, successor, "task-2") or b"")[:1] == b"P"


async def test_renew_extends_the_lease_until_the_claim_is_no_longer_its_own(
    client: aioredis.Redis, prefix: str
) -> None:
    guard, other = make_guard(client, prefix, lease_s=1), make_guard(client, prefix)
    assert (await guard.begin("job-r")).new
    rkey = guard.redis_key("job-r")

    async def lease_half_gone() -> bool:
        return 0 < await client.pttl(rkey) < 500

    await eventually(lease_half_gone, "half the lease elapsed")
    assert await guard.renew("job-r") is True
    assert await client.pttl(rkey) > 800  # a whole lease again
    assert (guard.stats.renewals, guard.stats.lost_leases) == (1, 0)

    # Completed or released: the guard gave the claim up itself, so renewing fails
    # without touching the record, and that is no lost lease.
    await guard.complete("job-r", b"done")
    assert await guard.renew("job-r") is False
    assert await stored(client, guard, "job-r") == b"Ddone"
    assert (await guard.begin("job-s")).new
    assert await guard.release("job-s") is True
    assert await guard.renew("job-s") is False
    assert await client.exists(guard.redis_key("job-s")) == 0
    assert (guard.stats.renewals, guard.stats.lost_leases) == (1, 0)

    # Expired and taken by another guard: the renewal must not extend the new owner's
    # claim; it fails and counts as a lost lease (another handler may run the work too).
    short = make_guard(client, prefix, lease_s=0.2)
    assert (await short.begin("job-t")).new

    async def expired() -> bool:
        return await client.exists(short.redis_key("job-t")) == 0

    await eventually(expired, "the short lease expired")
    assert (await other.begin("job-t")).new
    owner_marker = await stored(client, other, "job-t")
    assert await short.renew("job-t") is False
    assert (short.stats.renewals, short.stats.lost_leases) == (0, 1)
    assert await stored(client, other, "job-t") == owner_marker
    assert await client.pttl(other.redis_key("job-t")) > 9_000  # other's lease, untouched


async def test_heartbeat_keeps_a_claim_alive_past_its_lease(
    client: aioredis.Redis, prefix: str
) -> None:
    lease = 0.3
    guard, other = make_guard(client, prefix, lease_s=lease), make_guard(client, prefix)
    assert (await guard.begin("job-h")).new
    rkey = guard.redis_key("job-h")
    async with guard.heartbeat("job-h"):
        began = time.monotonic()
        while time.monotonic() - began < 1.5:  # five leases
            busy = await other.begin("job-h")
            assert (busy.new, busy.pending) == (False, True), time.monotonic() - began
            await asyncio.sleep(0.05)
        left = await client.pttl(rkey)
    assert guard.stats.renewals >= 5  # one every lease / 3: about 15 in 1.5 s
    assert guard.stats.lost_leases == 0
    assert 0 < left <= 300

    # The block ended without `complete`: nothing renews the claim any more, and it
    # expires within one lease of the last renewal.
    assert 0 < await client.pttl(rkey) <= 300
    ended = time.monotonic()

    async def gone() -> bool:
        return await client.exists(rkey) == 0

    await eventually(gone, "the claim expired after the heartbeat stopped")
    assert time.monotonic() - ended < lease + 1.0  # one lease, plus slack for a busy box
    assert (await other.begin("job-h")).new


async def test_settle_waits_while_the_holder_renews(client: aioredis.Redis, prefix: str) -> None:
    holder = make_guard(client, prefix, lease_s=0.3)
    waiter = make_guard(client, prefix, lease_s=0.3)
    assert (await holder.begin("job-w")).new
    async with holder.heartbeat("job-w"):
        began = time.monotonic()
        claim = await waiter.settle("job-w", max_wait_s=1.0)
        waited = time.monotonic() - began
    assert (claim.new, claim.pending) == (False, True)
    assert 1.0 <= waited < 5.0
    assert waiter.stats.pending_waits >= 3  # it polled, backing off to lease / 4
    assert waiter.stats.new == 0
    await holder.complete("job-w", b"late")
    done = await waiter.settle("job-w", max_wait_s=1.0)  # finished: answered at once
    assert (done.new, done.pending, done.outcome) == (False, False, b"late")


async def test_settle_claims_promptly_when_the_holder_dies(
    client: aioredis.Redis, prefix: str
) -> None:
    lease = 1.0
    holder = make_guard(client, prefix, lease_s=lease)
    waiter = make_guard(client, prefix, lease_s=lease)
    assert (await holder.begin("job-d")).new
    alive = asyncio.Event()

    async def handler() -> None:
        async with holder.heartbeat("job-d"):
            alive.set()
            await asyncio.Event().wait()  # works until it dies

    holding = asyncio.create_task(handler())
    await alive.wait()
    settling = asyncio.create_task(waiter.settle("job-d"))
    await asyncio.sleep(lease)  # the waiter waits while the holder renews
    assert not settling.done()
    # The holder dies: its heartbeat stops and nothing releases the claim.
    holding.cancel()
    died = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await holding
    claim = await asyncio.wait_for(settling, timeout=30)
    took = time.monotonic() - died
    assert (claim.new, claim.pending) == (True, False)
    # The last renewal left at most one lease; the waiter polls at most every lease / 4.
    assert took < 2 * lease, took
    assert holder.stats.lost_leases == 0
    assert await holder.renew("job-d") is False  # the claim is the waiter's now
    assert holder.stats.lost_leases == 1


async def test_once_completes_releases_and_skips(client: aioredis.Redis, prefix: str) -> None:
    guard = make_guard(client, prefix)
    async with guard.once("job-1") as claim:
        assert claim.new
        claim.outcome = b"done"
    async with guard.once("job-1") as claim:
        assert (claim.new, claim.outcome) == (False, b"done")

    seen: list[bool] = []

    async def failing(key: str, error: Exception) -> None:
        async with guard.once(key) as claim:
            seen.append(claim.new)
            raise error

    with pytest.raises(RuntimeError, match="tool failed"):
        await failing("job-2", RuntimeError("tool failed"))
    async with guard.once("job-2") as claim:
        assert claim.new  # released on failure: the retry handles it
    assert await stored(client, guard, "job-2") == b"D"

    # A duplicate's block leaves the record alone, even when it raises.
    with pytest.raises(KeyError):
        await failing("job-1", KeyError("job-1"))
    assert seen == [True, False]
    assert await stored(client, guard, "job-1") == b"Ddone"


async def test_once_releases_when_cancelled(client: aioredis.Redis, prefix: str) -> None:
    guard, other = make_guard(client, prefix), make_guard(client, prefix)
    inside = asyncio.Event()

    async def handler() -> None:
        async with guard.once("job-c") as claim:
            assert claim.new
            inside.set()
            await asyncio.Event().wait()  # a slow tool call, cancelled (shutdown, deadline)

    task = asyncio.create_task(handler())
    await inside.wait()
    assert (await other.begin("job-c")).pending
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Released before the cancellation finished: the redelivery is handled at once.
    assert await client.exists(guard.redis_key("job-c")) == 0
    assert (await other.begin("job-c")).new


async def test_malformed_keys_are_refused(client: aioredis.Redis, prefix: str) -> None:
    guard = make_guard(client, prefix)
    for bad in ("", "k" * (MAX_KEY_LENGTH + 1)):
        with pytest.raises(ValueError, match="idempotency key must be"):
            await guard.begin(bad)
        # A batch with one bad key claims none of its keys.
        with pytest.raises(ValueError, match="idempotency key must be"):
            await guard.begin_many(["fine-1", bad])
    assert await client.exists(guard.redis_key("fine-1")) == 0
    assert (await guard.begin("k" * MAX_KEY_LENGTH)).new
    with pytest.raises(ValueError, match="namespace"):
        IdempotencyGuard(client, namespace="")
    with pytest.raises(ValueError, match="lease_s"):
        IdempotencyGuard(client, namespace=f"{prefix}svc", lease_s=0)


async def _consume_one(consumer: KafkaConsumer, deadline_s: float = 20.0) -> Message:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        records = await consumer.consume(max_records=1, timeout=0.5)
        if records:
            return records[0]
    raise AssertionError("no record within the deadline")


async def test_redelivered_kafka_record_is_handled_once(
    settings: Settings, client: aioredis.Redis, prefix: str
) -> None:
    contract = registry().event(events_pb2.AgentRequested)
    topic, group, effects = prefix + contract.topic, f"{prefix}group", f"{prefix}effects"
    topics = [topic, prefix + registry().dead_letter_topic]
    await ensure_kafka_topics(settings, [TopicSpec(t, 1) for t in topics])
    producer = KafkaProducer(settings)
    telemetry = Telemetry.create("idempotency-test")

    async def charge(incoming: Incoming) -> bytes:
        await client.incr(effects)  # the side effect that must happen once
        return b"charged"

    def consumer(kafka: KafkaConsumer) -> EventConsumer:
        # Each consumer is another process of the group: its own guard, the same store.
        return EventConsumer(
            kafka,
            telemetry,
            dead_letters=producer,
            guard=make_guard(client, prefix),
            topic_prefix=prefix,
        )

    try:
        charge_5 = events_pb2.AgentRequested(run_id="run-7", conversation_id="acct-1")
        await producer.produce(
            topic,
            charge_5.SerializeToString(),
            key=b"acct-1",
            headers=[
                ("ce_type", contract.type_name.encode()),
                (IDEMPOTENCY_HEADER, b"run-7:charge"),
            ],
        )
        first = KafkaConsumer(settings, group, [topic])
        try:
            record = await _consume_one(first)
            assert await consumer(first).handle(record, charge) == Outcome.HANDLED
            # Crash after the work, before store/commit: close() has nothing to commit.
        finally:
            await first.close()

        second = KafkaConsumer(settings, group, [topic])
        try:
            again = await _consume_one(second)
            assert (again.partition(), again.offset()) == (record.partition(), record.offset())
            assert await consumer(second).handle(again, charge) == Outcome.DUPLICATE
            second.store(again)  # a duplicate is finished work: commit and move on
            await second.commit()
        finally:
            await second.close()

        # The group's committed offset moved past the duplicate: a newcomer starts at
        # the next record.
        await producer.produce(topic, b"next", key=b"acct-1")
        third = KafkaConsumer(settings, group, [topic])
        try:
            after = await _consume_one(third)
        finally:
            await third.close()
        assert (after.offset(), after.value()) == ((record.offset() or 0) + 1, b"next")
        assert await client.get(effects) == b"1"
    finally:
        await producer.close()
        telemetry.shutdown()
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
        for fut in admin.delete_topics(topics, operation_timeout=30).values():
            await asyncio.wrap_future(fut)


async def test_requeued_amqp_message_is_handled_once(
    settings: Settings, client: aioredis.Redis, prefix: str
) -> None:
    contract = registry().task(tasks_pb2.ToolTask)
    topo = task_topology(settings, contract, prefix)
    effects = f"{prefix}effects"
    guard = make_guard(client, prefix)
    telemetry = Telemetry.create("idempotency-test")
    conn = await RabbitConnection.connect(settings)
    worker = TaskConsumer(conn, telemetry, contract, topology=topo, guard=guard)
    try:
        await declare_task_topology(conn.channel, topo)
        mail = tasks_pb2.ToolTask(run_id="run-8", conversation_id="conv-8")
        await conn.publish(
            topo.exchange,
            topo.routing_key,
            mail.SerializeToString(),
            headers={IDEMPOTENCY_HEADER: "run-8:mail"},
            message_type=contract.type_name,
        )
        queue = await conn.channel.get_queue(topo.queue)

        # A worker takes the message, does the work and dies before acking.
        crashing = await conn.connection.channel()
        delivery = await (await crashing.get_queue(topo.queue)).get(no_ack=False, timeout=5)
        assert delivery is not None
        assert not delivery.redelivered

        async def send_mail_then_die(incoming: Incoming) -> bytes:
            await client.incr(effects)
            await crashing.close()  # unacked: the broker requeues it
            return b"sent"

        # The outcome was recorded before the ack, which found the channel gone.
        with pytest.raises(ChannelInvalidStateError):
            await worker.handle(delivery, send_mail_then_die)

        async def send_mail(incoming: Incoming) -> bytes:
            await client.incr(effects)
            return b"sent"

        taking = await conn.connection.channel()
        redelivery = await (await taking.get_queue(topo.queue)).get(no_ack=False, timeout=5)
        assert redelivery is not None
        assert redelivery.redelivered
        assert redelivery.body == mail.SerializeToString()
        assert await worker.handle(redelivery, send_mail) == Outcome.DUPLICATE
        await taking.close()  # acked, so nothing goes back to the queue

        assert await queue.get(no_ack=False, fail=False, timeout=5) is None
        assert await client.get(effects) == b"1"
        assert (guard.stats.new, guard.stats.duplicates) == (1, 1)
    finally:
        telemetry.shutdown()
        for name in topo.all_queues:
            await conn.channel.queue_delete(name)
        for exchange in (topo.exchange, topo.retry_exchange, topo.dead_letter_exchange):
            await conn.channel.exchange_delete(exchange)
        await conn.close()


class CountingGuard(IdempotencyGuard):
    """A guard that counts its round trips (batches sent) and their sizes."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.sent: list[int] = []

    async def _send(self, batch: Any) -> list[Any]:
        self.sent.append(len(batch))
        return await super()._send(batch)


async def test_concurrent_claims_and_outcomes_share_round_trips(
    client: aioredis.Redis, prefix: str
) -> None:
    guard = CountingGuard(client, namespace=f"{prefix}svc")
    other = make_guard(client, prefix)
    keys = [f"job-{i}" for i in range(300)]

    claims = await asyncio.gather(*(guard.begin(k) for k in keys))
    assert all(c.new for c in claims)
    # 300 callers in one turn of the loop: one pipelined round trip, not 300.
    assert sum(guard.sent) == 300, guard.sent
    assert len(guard.sent) <= 2, guard.sent
    seen = await asyncio.gather(*(other.begin(k) for k in keys))
    assert all(c.pending and not c.new for c in seen)

    guard.sent.clear()
    await asyncio.gather(*(guard.complete(k, k.encode()) for k in keys))
    assert sum(guard.sent) == 300, guard.sent
    assert len(guard.sent) <= 2, guard.sent
    done = await asyncio.gather(*(other.begin(k) for k in keys))
    assert [c.outcome for c in done] == [k.encode() for k in keys]
    assert guard.stats.new == 300


async def test_a_lone_call_is_not_held_back_for_a_batch(
    client: aioredis.Redis, prefix: str
) -> None:
    guard = CountingGuard(client, namespace=f"{prefix}svc")
    for i in range(5):
        assert (await guard.begin(f"solo-{i}")).new
        await guard.complete(f"solo-{i}")
    assert guard.sent == [1] * 10  # each went out on its own, at once


async def test_one_bad_command_in_a_batch_fails_only_its_caller(
    client: aioredis.Redis, prefix: str
) -> None:
    guard = make_guard(client, prefix)
    await client.rpush(guard.redis_key("a-list"), b"x")  # SET ... GET on a list: WRONGTYPE
    results = await asyncio.gather(
        guard.begin("fine-1"), guard.begin("a-list"), guard.begin("fine-2"), return_exceptions=True
    )
    assert isinstance(results[1], aioredis.ResponseError)
    assert "WRONGTYPE" in str(results[1])
    assert [r.new for r in (results[0], results[2])] == [True, True]  # type: ignore[union-attr]


async def test_a_batch_of_every_kind_answers_each_in_one_round_trip(
    client: aioredis.Redis, prefix: str
) -> None:
    guard = CountingGuard(client, namespace=f"{prefix}svc")
    other = make_guard(client, prefix)
    for key in ("held-1", "held-2", "renewed", "taken-1", "taken-2"):
        assert (await guard.begin(key)).new
    # Held here, but expired and taken by another handler meanwhile.
    for key in ("taken-1", "taken-2"):
        await client.set(guard.redis_key(key), b"Pnot-this-guards-token")
    assert (await other.begin("theirs")).new
    await other.complete("done-before", b"kept")
    guard.sent.clear()
    # Claims (new, finished, pending), an outcome, releases (own and not own) and
    # renewals (own and not own) asked for in one turn of the loop.
    results = await asyncio.gather(
        guard.begin("fresh"),
        guard.begin("done-before"),
        guard.begin("theirs"),
        guard.complete("held-1", b"out"),
        guard.release("held-2"),
        guard.renew("renewed"),
        guard.renew("taken-1"),
        guard.release("taken-2"),
    )
    assert guard.sent == [8], guard.sent  # all eight together
    fresh, done, theirs, _, released, renewed, renewed_taken, released_taken = results
    assert (fresh.new, fresh.pending) == (True, False)
    assert (done.new, done.outcome) == (False, b"kept")
    assert (theirs.new, theirs.pending) == (False, True)
    assert (released, renewed, renewed_taken, released_taken) == (True, True, False, False)
    for key in ("taken-1", "taken-2"):  # left as the other handler wrote them
        assert await stored(client, guard, key) == b"Pnot-this-guards-token"
    assert await stored(client, guard, "held-1") == b"Dout"
    assert await stored(client, guard, "held-2") is None
    assert 0 < await client.pttl(guard.redis_key("renewed")) <= guard.lease_s * 1000


async def test_a_batch_after_redis_lost_its_scripts(client: aioredis.Redis, prefix: str) -> None:
    guard = make_guard(client, prefix)
    await client.script_flush()  # a restarted Redis has no scripts cached
    claims = await asyncio.gather(*(guard.begin(f"after-flush-{i}") for i in range(10)))
    assert all(c.new for c in claims)
    await asyncio.gather(*(guard.complete(f"after-flush-{i}", b"ok") for i in range(10)))
    assert [await stored(client, guard, f"after-flush-{i}") for i in range(10)] == [b"Dok"] * 10


async def test_a_claim_cancelled_on_the_wire_is_given_back(
    client: aioredis.Redis, prefix: str
) -> None:
    guard = CountingGuard(client, namespace=f"{prefix}svc")
    other = make_guard(client, prefix)
    # Cancelled after its claim was queued but before the answer came back: the claim
    # is made in Redis, and nobody would know of it for a whole lease.
    task = asyncio.create_task(guard.begin("job-c"))
    await asyncio.sleep(0)  # the claim is queued now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def released() -> bool:  # the claim's round trip, then the release's
        return len(guard.sent) >= 2

    await eventually(released, "the abandoned claim was released")
    assert await stored(client, guard, "job-c") is None
    assert (await other.begin("job-c")).new


async def test_one_ticker_renews_every_held_key(client: aioredis.Redis, prefix: str) -> None:
    lease = 0.3
    guard = CountingGuard(client, namespace=f"{prefix}svc", lease_s=lease)
    other = make_guard(client, prefix)
    keys = [f"job-{i}" for i in range(20)]
    assert all(c.new for c in await asyncio.gather(*(guard.begin(k) for k in keys)))
    async with contextlib.AsyncExitStack() as stack:
        for k in keys:
            await stack.enter_async_context(guard.heartbeat(k))
        guard.sent.clear()
        began = time.monotonic()

        async def renewed() -> bool:
            return guard.stats.renewals >= 5 * len(keys)  # five rounds: past several leases

        await eventually(renewed, "every key renewed five times")
        assert time.monotonic() - began > lease  # outlived its lease
        seen = await asyncio.gather(*(other.begin(k) for k in keys))
        assert all(c.pending for c in seen), "a held key's claim expired"
        # Each round renews all 20 keys in one round trip.
        assert max(guard.sent) == len(keys)
        assert len(guard.sent) <= guard.stats.renewals // 10
    assert guard.stats.lost_leases == 0
    await asyncio.gather(*(guard.complete(k) for k in keys))


async def test_a_lease_lost_while_the_handler_works_ends_its_block_cleanly(
    client: aioredis.Redis, prefix: str
) -> None:
    guard = make_guard(client, prefix, lease_s=0.3)
    assert (await guard.begin("job-l")).new
    async with guard.heartbeat("job-l"):
        # Another handler took the key over (as after a lease that ran out): the ticker
        # finds the claim no longer this guard's and stops renewing it.
        await client.set(guard.redis_key("job-l"), b"P-someone-else", px=10_000)

        async def lost() -> bool:
            return guard.stats.lost_leases == 1

        await eventually(lost, "the ticker noticed the lost claim")
    # The block ended without an error of its own; the other claim is untouched.
    assert await stored(client, guard, "job-l") == b"P-someone-else"
    assert await guard.release("job-l") is False  # compare-and-delete: not ours
