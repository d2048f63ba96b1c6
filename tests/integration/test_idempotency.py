"""The idempotency guard against the real Redis, Kafka and RabbitMQ.

Every key, topic and queue carries the test's prefix and is deleted afterwards."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from confluent_kafka import Message
from confluent_kafka.admin import AdminClient

from interceptors._idempotency import MAX_KEY_LENGTH, IdempotencyGuard
from services.runtime.adapters.kafka import KafkaConsumer, KafkaProducer
from services.runtime.adapters.rabbitmq import RabbitConnection
from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings
from services.runtime.topology import TopicSpec, ensure_kafka_topics

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
    """A guard of "another process" when called again: same store, empty Bloom filter."""
    return IdempotencyGuard(client, namespace=f"{prefix}svc", **kw)


async def test_100k_distinct_keys_are_all_claimed(client: aioredis.Redis, prefix: str) -> None:
    # Chunks stay under the pool of `connect_redis` (redis-py: 100 connections, then an
    # error rather than a wait).
    n, chunk, capacity, rate = 100_000, 80, 25_000, 0.01
    # A Bloom filter four times smaller than the stream: it rotates, and plenty of its
    # "maybe" answers are wrong. Each one must cost an exact check, never a message.
    guard = make_guard(client, prefix, capacity=capacity, error_rate=rate)
    keys = [f"run-{i}:step-0:{uuid.uuid4().hex[:8]}" for i in range(n)]
    expected_fp = 0.0
    began = time.monotonic()
    for start in range(0, n, chunk):
        expected_fp += guard.bloom.expected_error_rate() * chunk
        claims = await asyncio.gather(*(guard.begin(k) for k in keys[start : start + chunk]))
        assert all(c.new for c in claims), [c for c in claims if not c.new][:3]
    elapsed = time.monotonic() - began

    stats = guard.stats
    assert (stats.new, stats.duplicates) == (n, 0)
    assert stats.fast_path + stats.exact_checks == n
    assert stats.false_positives == stats.exact_checks  # every "maybe" was wrong: all new
    assert guard.bloom.rotations >= 3
    assert expected_fp / 2 <= stats.false_positives <= expected_fp * 2, (stats, expected_fp)
    assert stats.false_positives / n <= 2 * rate
    # Nothing dropped: each key holds its pending claim in the exact store.
    stored = [k async for k in client.scan_iter(match=f"{prefix}svc:idem:*", count=10_000)]
    assert len(stored) == n
    assert elapsed < 30, elapsed


async def test_duplicate_is_answered_with_stored_outcome(
    client: aioredis.Redis, prefix: str
) -> None:
    guard = make_guard(client, prefix, ttl_s=3600, lease_s=30)
    claim = await guard.begin("run-1:step-1")
    assert (claim.new, claim.outcome, claim.pending) == (True, None, False)
    assert 25_000 < await client.pttl(guard.redis_key("run-1:step-1")) <= 30_000
    await guard.complete("run-1:step-1", b"answer: 42")
    assert 3_590_000 < await client.pttl(guard.redis_key("run-1:step-1")) <= 3_600_000

    again = await guard.begin("run-1:step-1")  # this process: Bloom "maybe", then GET
    assert (again.new, again.outcome, again.pending) == (False, b"answer: 42", False)
    assert (guard.stats.exact_checks, guard.stats.false_positives) == (1, 0)

    other = make_guard(client, prefix)  # another process: Bloom "no", SET NX loses
    elsewhere = await other.begin("run-1:step-1")
    assert (elsewhere.new, elsewhere.outcome, elsewhere.pending) == (False, b"answer: 42", False)
    assert (other.stats.fast_path, other.stats.duplicates) == (1, 1)

    # Claimed but not finished: a duplicate that is still pending, without an outcome.
    assert (await guard.begin("run-1:step-2")).new
    busy = await other.begin("run-1:step-2")
    assert (busy.new, busy.outcome, busy.pending) == (False, None, True)


async def test_released_claim_is_claimed_again(client: aioredis.Redis, prefix: str) -> None:
    guard, other = make_guard(client, prefix), make_guard(client, prefix)
    assert (await guard.begin("task-1")).new
    assert await other.release("task-1") is False  # not its claim: left alone
    assert not (await other.begin("task-1")).new
    assert await guard.release("task-1") is True
    assert await client.exists(guard.redis_key("task-1")) == 0
    retry = await guard.begin("task-1")
    assert retry.new
    assert guard.stats.false_positives == 1  # the Bloom remembers the key; Redis does not


async def test_expired_lease_can_be_claimed_again(client: aioredis.Redis, prefix: str) -> None:
    crashed = make_guard(client, prefix, lease_s=0.2)
    assert (await crashed.begin("task-2")).new
    deadline = time.monotonic() + 5
    while await client.exists(crashed.redis_key("task-2")):
        assert time.monotonic() < deadline, "lease did not expire"
        await asyncio.sleep(0.05)
    successor = make_guard(client, prefix)
    assert (await successor.begin("task-2")).new
    # The crashed handler, back to life, cannot release the successor's claim.
    assert await crashed.release("task-2") is False
    assert (await client.get(successor.redis_key("task-2")) or b"")[:1] == b"P"


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
    assert await client.get(guard.redis_key("job-2")) == b"D"

    # A duplicate's block leaves the record alone, even when it raises.
    with pytest.raises(KeyError):
        await failing("job-1", KeyError("job-1"))
    assert seen == [True, False]
    assert await client.get(guard.redis_key("job-1")) == b"Ddone"


async def test_malformed_keys_are_refused(client: aioredis.Redis, prefix: str) -> None:
    guard = make_guard(client, prefix)
    for bad in ("", "k" * (MAX_KEY_LENGTH + 1)):
        with pytest.raises(ValueError, match="idempotency key must be"):
            await guard.begin(bad)
    assert (await guard.begin("k" * MAX_KEY_LENGTH)).new
    with pytest.raises(ValueError, match="namespace"):
        IdempotencyGuard(client, namespace="")


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
    topic, group, effects = f"{prefix}idem.events", f"{prefix}group", f"{prefix}effects"
    await ensure_kafka_topics(settings, [TopicSpec(topic, 1)])
    producer = KafkaProducer(settings)

    async def handle(guard: IdempotencyGuard, record: Message) -> bool:
        value = dict(record.headers() or [])[IDEMPOTENCY_HEADER]
        key = value.decode() if isinstance(value, bytes) else str(value)
        async with guard.once(key) as claim:
            if claim.new:
                await client.incr(effects)  # the side effect that must happen once
                claim.outcome = b"charged"
        return claim.new

    try:
        await producer.produce(
            topic, b"charge 5", key=b"acct-1", headers=[(IDEMPOTENCY_HEADER, b"run-7:charge")]
        )
        first = KafkaConsumer(settings, group, [topic])
        try:
            record = await _consume_one(first)
            assert await handle(make_guard(client, prefix), record)
            # Crash after the work, before store/commit: close() has nothing to commit.
        finally:
            await first.close()

        second = KafkaConsumer(settings, group, [topic])  # another process of the group
        try:
            again = await _consume_one(second)
            assert (again.partition(), again.offset()) == (record.partition(), record.offset())
            assert not await handle(make_guard(client, prefix), again)
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
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
        for fut in admin.delete_topics([topic], operation_timeout=30).values():
            await asyncio.wrap_future(fut)


async def test_requeued_amqp_message_is_handled_once(
    settings: Settings, client: aioredis.Redis, prefix: str
) -> None:
    name, effects = f"{prefix}idem.tasks", f"{prefix}effects"
    guard = make_guard(client, prefix)
    conn = await RabbitConnection.connect(settings)
    try:
        queue = await conn.channel.declare_queue(name, durable=True)
        await conn.publish("", name, b"send mail", headers={IDEMPOTENCY_HEADER: "run-8:mail"})

        # A worker takes the message, does the work and dies before acking.
        crashing = await conn.connection.channel()
        delivery = await (await crashing.get_queue(name)).get(no_ack=False, timeout=5)
        assert delivery is not None
        assert not delivery.redelivered
        async with guard.once(str(delivery.headers[IDEMPOTENCY_HEADER])) as claim:
            assert claim.new
            await client.incr(effects)
        await crashing.close()  # unacked: the broker requeues it

        redelivery = await queue.get(no_ack=False, timeout=5)
        assert redelivery is not None
        assert redelivery.redelivered
        assert redelivery.body == b"send mail"
        async with guard.once(str(redelivery.headers[IDEMPOTENCY_HEADER])) as claim:
            assert not claim.new
            assert not claim.pending
        await redelivery.ack()

        assert await queue.get(no_ack=False, fail=False, timeout=5) is None
        assert await client.get(effects) == b"1"
        assert (guard.stats.new, guard.stats.duplicates, guard.stats.exact_checks) == (1, 1, 1)
    finally:
        await conn.channel.queue_delete(name)
        await conn.close()
