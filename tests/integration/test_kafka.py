"""The Kafka adapter against the real local broker.

Each test creates its own topics under its prefix (as `stack up` would, with
`ensure_kafka_topics`) and deletes them at the end."""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agentflux.v1 import events_pb2, types_pb2
from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka.admin import AdminClient

from services.runtime.adapters.kafka import (
    Delivered,
    KafkaConsumer,
    KafkaProducer,
    producer_config,
)
from services.runtime.config import Settings
from services.runtime.contracts import registry
from services.runtime.topology import ensure_kafka_topics, kafka_topics

pytestmark = pytest.mark.integration

EVENT = registry().event(events_pb2.AgentRequested)


async def delete_topics(settings: Settings, names: list[str]) -> None:
    """Deletes `names` and waits until the broker confirmed."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    futures = admin.delete_topics(names, operation_timeout=30, request_timeout=30)
    for fut in futures.values():
        await asyncio.wrap_future(fut)


@pytest.fixture
async def topic(settings: Settings, prefix: str) -> AsyncIterator[str]:
    """The `agent.requested` topic under this test's prefix, created from the contract
    topology and deleted afterwards."""
    specs = [s for s in kafka_topics(settings, prefix=prefix) if s.name == prefix + EVENT.topic]
    assert len(specs) == 1
    created = await ensure_kafka_topics(settings, specs)
    assert created == {specs[0].name: True}
    yield specs[0].name
    await delete_topics(settings, [specs[0].name])


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[KafkaProducer]:
    p = KafkaProducer(settings)
    yield p
    await p.close()


def request(conversation_id: str, prompt: str = "What is 6 * 7?") -> events_pb2.AgentRequested:
    msg = events_pb2.AgentRequested(
        run_id=f"run-{uuid.uuid4().hex[:12]}",
        tenant_id="tenant-a",
        conversation_id=conversation_id,
        prompt=prompt,
        priority=types_pb2.PRIORITY_HIGH,
        step=0,
    )
    msg.request_time.GetCurrentTime()
    return msg


async def consume_n(consumer: KafkaConsumer, n: int, deadline_s: float = 20.0) -> list[Message]:
    """Consumes until `n` records arrived or the deadline passed (then returns fewer)."""
    out: list[Message] = []
    deadline = time.monotonic() + deadline_s
    while len(out) < n and time.monotonic() < deadline:
        out.extend(await consumer.consume(max_records=n - len(out), timeout=0.5))
    return out


def group() -> str:
    return f"test-group-{uuid.uuid4().hex[:12]}"


async def test_record_round_trips_value_key_headers_and_offset(
    settings: Settings, topic: str, producer: KafkaProducer
) -> None:
    msg = request("conv-roundtrip")
    headers = [("ce_type", msg.DESCRIPTOR.full_name.encode()), ("x-trace", b"\x00\x01trace")]
    delivered = await producer.produce(
        topic, msg.SerializeToString(), key=EVENT.key(msg), headers=headers
    )
    assert delivered.topic == topic
    assert 0 <= delivered.partition < settings.kafka_partitions
    assert delivered.offset == 0  # first record of a fresh partition

    consumer = KafkaConsumer(settings, group(), [topic])
    try:
        (record,) = await consume_n(consumer, 1)
    finally:
        await consumer.close()

    assert record.key() == b"conv-roundtrip"
    assert record.headers() == headers
    assert (record.topic(), record.partition(), record.offset()) == (
        delivered.topic,
        delivered.partition,
        delivered.offset,
    )
    got = events_pb2.AgentRequested.FromString(record.value() or b"")
    assert got == msg
    assert EVENT.key(got) == record.key()


async def test_same_key_same_partition_in_order(
    settings: Settings, topic: str, producer: KafkaProducer
) -> None:
    keys = [f"conv-{i}" for i in range(6)]
    sent: list[tuple[str, int, int]] = []  # key, seq, partition
    for seq in range(5):
        for key in keys:
            msg = request(key, prompt=str(seq))
            d = await producer.produce(topic, msg.SerializeToString(), key=EVENT.key(msg))
            sent.append((key, seq, d.partition))
    for key in keys:
        assert len({p for k, _, p in sent if k == key}) == 1, f"{key} spread over partitions"

    consumer = KafkaConsumer(settings, group(), [topic])
    try:
        records = await consume_n(consumer, len(sent))
    finally:
        await consumer.close()
    assert len(records) == len(sent)
    for key in keys:
        mine = [r for r in records if r.key() == key.encode()]
        assert [events_pb2.AgentRequested.FromString(r.value() or b"").prompt for r in mine] == [
            str(seq) for seq in range(5)
        ]
        assert {r.partition() for r in mine} == {p for k, _, p in sent if k == key}
        offsets = [r.offset() or 0 for r in mine]
        assert offsets == sorted(offsets)


async def test_committed_record_is_not_delivered_again(
    settings: Settings, topic: str, producer: KafkaProducer
) -> None:
    gid = group()
    first = request("conv-commit", prompt="first")
    await producer.produce(topic, first.SerializeToString(), key=EVENT.key(first))

    consumer = KafkaConsumer(settings, gid, [topic])
    try:
        (record,) = await consume_n(consumer, 1)
        consumer.store(record)
        await consumer.commit()
    finally:
        await consumer.close()

    # A later record on the same key (same partition) marks where "nothing new" ends.
    second = request("conv-commit", prompt="second")
    await producer.produce(topic, second.SerializeToString(), key=EVENT.key(second))
    again = KafkaConsumer(settings, gid, [topic])
    try:
        records = await consume_n(again, 1)
        records += await again.consume(timeout=1.0)  # anything else would show up here
    finally:
        await again.close()
    prompts = [events_pb2.AgentRequested.FromString(r.value() or b"").prompt for r in records]
    assert prompts == ["second"]


async def test_unstored_record_is_delivered_again(
    settings: Settings, topic: str, producer: KafkaProducer
) -> None:
    gid = group()
    msg = request("conv-again")
    delivered = await producer.produce(topic, msg.SerializeToString(), key=EVENT.key(msg))

    consumer = KafkaConsumer(settings, gid, [topic])
    try:
        (record,) = await consume_n(consumer, 1)
        assert record.offset() == delivered.offset
        # Work "crashed": neither store() nor commit(); close() commits nothing.
    finally:
        await consumer.close()

    again = KafkaConsumer(settings, gid, [topic])
    try:
        (redelivered,) = await consume_n(again, 1)
    finally:
        await again.close()
    assert (redelivered.partition(), redelivered.offset()) == (
        delivered.partition,
        delivered.offset,
    )
    assert redelivered.value() == msg.SerializeToString()


def _record_batches(segment: Path) -> list[tuple[int, int, int, int]]:
    """(base offset, producer id, producer epoch, base sequence) of each v2 record batch
    in a Kafka log segment, read from the broker's own files."""
    data = segment.read_bytes()
    out = []
    pos = 0
    while pos + 61 <= len(data):
        base_offset, length = struct.unpack_from(">qi", data, pos)
        magic = data[pos + 16]
        assert magic == 2, f"record batch format v{magic}"
        producer_id, epoch, base_seq = struct.unpack_from(">qhi", data, pos + 43)
        out.append((base_offset, producer_id, epoch, base_seq))
        pos += 12 + length
    return out


async def test_producer_is_idempotent(
    settings: Settings, topic: str, producer: KafkaProducer
) -> None:
    assert producer_config(settings)["enable.idempotence"] is True
    assert producer_config(settings)["acks"] == "all"

    # What the broker stored: an idempotent producer's batches carry a producer id and
    # consecutive sequence numbers, which is how the broker drops retried duplicates.
    msg = request("conv-idem")
    delivered = [
        await producer.produce(topic, msg.SerializeToString(), key=EVENT.key(msg)) for _ in range(3)
    ]
    partition = delivered[0].partition
    segment = (
        settings.stack_dir / "kafka" / "data" / f"{topic}-{partition}" / "00000000000000000000.log"
    )
    if settings.kafka_bootstrap or not segment.is_file():
        pytest.skip("needs the local stack's Kafka data directory")
    batches = _record_batches(segment)
    assert [b[0] for b in batches] == [0, 1, 2]
    producer_ids = {b[1] for b in batches}
    assert len(producer_ids) == 1
    assert producer_ids.pop() >= 0  # -1 would mean "not idempotent"
    assert [b[3] for b in batches] == [0, 1, 2]


async def test_a_burst_of_produces_is_acknowledged_in_few_loop_wake_ups(
    settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reports of one poll() reach the loop in one hand-over (each is a self-pipe
    write), and a caller that gave up does not keep the others of its batch waiting."""
    # A linger far longer than the burst takes to produce: its records share a few
    # batches (so a few responses, each served by one poll()) however loaded the machine.
    producer = KafkaProducer(settings, **{"linger.ms": 200})
    try:
        await burst_with_few_wake_ups(producer, topic, monkeypatch)
    finally:
        await producer.close()


async def burst_with_few_wake_ups(
    producer: KafkaProducer, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await producer.produce(topic, b"warm", key=b"k-warm")  # connected, producer id known
    loop = asyncio.get_running_loop()
    wakes = 0
    real = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal wakes
        wakes += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    n = 300
    sends = [
        asyncio.ensure_future(producer.produce(topic, b"v%d" % i, key=b"k%d" % (i % 30)))
        for i in range(n)
    ]
    await asyncio.sleep(0)  # one turn of the loop: every send has produced its record
    sends[7].cancel()  # and this one gives up before its ack
    results = await asyncio.gather(*sends, return_exceptions=True)
    monkeypatch.undo()

    assert isinstance(results[7], asyncio.CancelledError)
    delivered = [r for r in results if not isinstance(r, BaseException)]
    assert len(delivered) == n - 1
    # Every record landed once: offsets are distinct within each partition.
    positions = {(d.partition, d.offset) for d in delivered if isinstance(d, Delivered)}
    assert len(positions) == n - 1
    assert 0 < wakes <= n // 2, f"{wakes} wake-ups for {n} reports"


async def test_produce_to_missing_topic_raises(settings: Settings, prefix: str) -> None:
    missing = prefix + "no.such.topic"
    producer = KafkaProducer(settings, **{"message.timeout.ms": 1500})
    try:
        began = time.monotonic()
        with pytest.raises(KafkaException) as caught:
            await asyncio.wait_for(producer.produce(missing, b"x", key=b"k"), timeout=15)
        assert time.monotonic() - began < 10
        assert caught.value.args[0].code() in (
            KafkaError.UNKNOWN_TOPIC_OR_PART,
            KafkaError._UNKNOWN_TOPIC,
            KafkaError._MSG_TIMED_OUT,
        )
    finally:
        await producer.close()
    # Auto-create is off: the failed produce did not create the topic.
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    assert missing not in admin.list_topics(timeout=10).topics


async def test_a_small_batch_is_returned_without_waiting_out_the_timeout(
    settings: Settings, topic: str, producer: KafkaProducer
) -> None:
    # consume(100, timeout) must hand over the one record that is there, not wait for 99
    # more until the timeout: that wait would be added to every lightly loaded hop.
    consumer = KafkaConsumer(settings, group(), [topic])
    try:
        for _ in range(200):  # join the group first (bounded: 200 x 0.1 s)
            if await consumer.assignment():
                break
            await consumer.consume(max_records=1, timeout=0.1)
        await producer.produce(topic, request("conv-batch").SerializeToString(), key=b"conv-batch")
        began = time.monotonic()
        records = await consumer.consume(max_records=100, timeout=30)
        waited = time.monotonic() - began
    finally:
        await consumer.close()
    assert [r.key() for r in records] == [b"conv-batch"]
    assert waited < 15  # far below the 30 s timeout: returned on the first record
