"""Kafka producer and consumer on confluent-kafka, usable from asyncio.

librdkafka does its network work on its own threads; what blocks is waiting for
delivery reports (producer) and for records (consumer). The producer serves delivery
reports on one small thread and hands them to the event loop, all the reports of one
`poll()` at once; the consumer runs `consume()` batches on a single-thread executor so the
loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import Consumer as _Consumer
from confluent_kafka import (
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from services.runtime.config import Settings

__all__ = [
    "Delivered",
    "KafkaConsumer",
    "KafkaProducer",
    "RebalanceListener",
    "consumer_config",
    "producer_config",
]

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Producer defaults: idempotent (no duplicates or reordering on retry), acks=all,
    and a 1 ms linger because the request path is latency-bound, not throughput-bound."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 1,
        # Kafka's own partitioner (Java's default, and Go's franz-go and others): a
        # conversation's events share a partition whichever language produced them.
        # librdkafka's default (CRC-32) would split them from other producers'.
        "partitioner": "murmur2_random",
        "compression.type": "lz4",
        "message.timeout.ms": 30_000,
    }
    conf.update(overrides)
    return conf


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """Consumer defaults: nothing is committed until the application stored the offset
    of a record it finished, so a crash re-delivers instead of losing work."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        # Bounded waits keep shutdown and rebalances prompt; the broker still answers
        # a fetch as soon as one record arrives.
        "fetch.wait.max.ms": 100,
        "fetch.error.backoff.ms": 100,
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        # Only the partitions that move are revoked on a rebalance; the rest keep going.
        "partition.assignment.strategy": "cooperative-sticky",
    }
    conf.update(overrides)
    return conf


@dataclass(frozen=True, slots=True)
class Delivered:
    """Where the broker stored a produced record."""

    topic: str
    partition: int
    offset: int


class KafkaProducer:
    """An idempotent producer whose `produce` returns once the broker acknowledged."""

    def __init__(self, settings: Settings, **config: Any) -> None:
        conf = producer_config(settings, **config)
        self._producer = Producer(conf, logger=log)
        self.bootstrap_servers: str = conf["bootstrap.servers"]
        # librdkafka refuses larger records locally, before the broker's own limit.
        self.max_message_bytes = int(conf.get("message.max.bytes", 1_000_000))
        self._closed = threading.Event()
        # Reports the poller's poll() served but not yet handed to their loops. Each
        # hand-over wakes a loop through its self-pipe, a system call (tens of µs here),
        # so the reports of one poll() go in one hand-over instead of one each.
        self._reports: list[tuple[asyncio.Future[Delivered], KafkaError | None, Message]] = []
        self._reports_lock = threading.Lock()
        self._poller = threading.Thread(
            target=self._serve_reports, name="kafka-producer", daemon=True
        )
        self._poller.start()

    def _serve_reports(self) -> None:
        # poll() returns as soon as a report is ready, so the timeout only bounds how
        # long close() waits for this thread; it is not a busy loop.
        while not self._closed.is_set():
            self._producer.poll(0.2)
            self._hand_over()

    def _report(
        self, done: asyncio.Future[Delivered], err: KafkaError | None, msg: Message
    ) -> None:
        # librdkafka calls this from poll() or flush(), on the thread that called them.
        if threading.get_ident() != self._poller.ident:
            # flush() (on a worker thread) can run for seconds: no holding reports back.
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                done.get_loop().call_soon_threadsafe(_settle_all, [(done, err, msg)])
            return
        with self._reports_lock:
            self._reports.append((done, err, msg))

    def _hand_over(self) -> None:
        """Gives the reports served so far to the loops waiting on them: one wake-up per
        loop (a producer is normally used from one)."""
        with self._reports_lock:
            if not self._reports:
                return
            reports, self._reports = self._reports, []
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for report in reports:
            by_loop.setdefault(report[0].get_loop(), []).append(report)
        for loop, batch in by_loop.items():
            # A closed loop raises RuntimeError: nobody is waiting for these any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle_all, batch)

    async def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> Delivered:
        """Produces one record and waits for the broker's acknowledgement.

        Raises `KafkaException` when the record cannot be delivered (unknown topic,
        record too large, broker unreachable past `message.timeout.ms`)."""
        if self._closed.is_set():
            raise RuntimeError("producer is closed")
        done: asyncio.Future[Delivered] = asyncio.get_running_loop().create_future()
        report = functools.partial(self._report, done)
        while True:
            try:
                # The key by name, as confluent-kafka documents it: a wrapped producer
                # (the contrib instrumentation's proxy) takes the topic and value only.
                self._producer.produce(
                    topic, value, key=key, headers=list(headers or ()), on_delivery=report
                )
                break
            except BufferError:
                # The local queue is full: let delivery reports drain it, then retry.
                await asyncio.sleep(0.005)
        return await done

    async def warm(self, topics: Sequence[str], timeout: float = 10.0) -> None:
        """Fetches the metadata of `topics` now, which also connects and lets the
        idempotent producer get its producer id: the first real produce then takes
        milliseconds instead of the ~0.5 s a cold producer waits."""
        for topic in topics:
            await asyncio.to_thread(self._producer.list_topics, topic, timeout)

    async def flush(self, timeout: float = 10.0) -> int:
        """Waits for outstanding records; returns how many are still undelivered."""
        remaining: int = await asyncio.to_thread(self._producer.flush, timeout)
        return remaining

    async def close(self, timeout: float = 10.0) -> None:
        """Flushes and stops the report thread. Undelivered records fail their callers."""
        if self._closed.is_set():
            return
        await self.flush(timeout)
        self._closed.set()
        await asyncio.to_thread(self._poller.join)


def _settle_all(
    reports: list[tuple[asyncio.Future[Delivered], KafkaError | None, Message]],
) -> None:
    for done, err, msg in reports:
        if done.done():  # the caller gave up (cancelled); nothing to tell
            continue
        if err is not None:
            done.set_exception(KafkaException(err))
        else:
            done.set_result(Delivered(msg.topic() or "", msg.partition() or 0, msg.offset() or 0))


class RebalanceListener(Protocol):
    """Told about partitions coming and going; called on the consumer's own thread,
    inside `consume()`, before librdkafka changes the assignment (a revoke may block
    there to finish in-flight work and store its final offsets)."""

    def assigned(self, partitions: list[TopicPartition]) -> None:
        """`partitions` were assigned (incrementally, with the cooperative assignor)."""

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """`partitions` are being taken away; stored offsets are committed right after."""

    def lost(self, partitions: list[TopicPartition]) -> None:
        """`partitions` were lost (this member was evicted): committing is no longer
        possible, another member owns them already."""


# Commit errors that mean "this member is not (or no longer) the group's owner of these
# partitions": the work is redelivered to whoever owns them now, and this member rejoins
# on its next poll. Raising would kill the consumer for a routine event.
_NOT_OWNER = {
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError._STATE,
    KafkaError._ASSIGNMENT_LOST,
    KafkaError._UNKNOWN_PARTITION,
}


class KafkaConsumer:
    """A group consumer with manual offset storage and commits.

    The application stores the offset to resume from once the work before it is done
    (`store(record)` or `store_offsets(...)`), and `commit()`s when it wants stored
    offsets to be durable; stored offsets are also committed when partitions are revoked
    and on `close()`, so a rebalance does not redeliver finished work.

    Partitions are assigned with the cooperative-sticky assignor: a rebalance revokes
    only the partitions that move, so the others keep working through it. Only fatal
    client errors raise; eviction from the group, a failed commit or an unknown topic are
    logged and the consumer rejoins on its next `consume()`."""

    def __init__(
        self, settings: Settings, group_id: str, topics: Sequence[str], **config: Any
    ) -> None:
        conf = consumer_config(settings, group_id, **config)
        self._consumer = _Consumer(conf, logger=log)
        self._topics = list(topics)
        self.group_id = group_id
        # librdkafka wants one thread driving consume(); a single worker serialises it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kafka-{group_id}")
        self._started = False
        self._closed = False
        self._listener: RebalanceListener | None = None

    # -- rebalance callbacks: run on the consumer thread, inside poll() ---------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        if self._listener is not None:
            self._listener.assigned(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        if self._listener is not None:
            self._listener.revoked(partitions)
        self._commit_stored()

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        log.warning(
            "group %s: lost %d partition(s) (evicted from the group); rejoining",
            self.group_id,
            len(partitions),
        )
        if self._listener is not None:
            self._listener.lost(partitions)

    def _commit_stored(self) -> bool:
        """Commits what was stored; False (logged) when this member may not commit now."""
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() == KafkaError._NO_OFFSET:
                return True  # nothing stored since the last commit
            if err.fatal():
                raise
            level = logging.INFO if err.code() in _NOT_OWNER else logging.WARNING
            log.log(level, "group %s: commit failed (%s); will retry or rejoin", self.group_id, err)
            return False
        return True

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self, listener: RebalanceListener | None = None) -> None:
        """Joins the group and subscribes to the topics; `listener` hears rebalances."""
        if listener is not None:
            self._listener = listener
        if not self._started:
            await self._run(
                lambda: self._consumer.subscribe(
                    self._topics,
                    on_assign=self._on_assign,
                    on_revoke=self._on_revoke,
                    on_lost=self._on_lost,
                )
            )
            self._started = True

    async def consume(self, max_records: int = 100, timeout: float = 0.5) -> list[Message]:
        """Returns up to `max_records` records, or none after `timeout` seconds.

        Raises `KafkaException` on fatal errors only; the rest (partition notices, an
        unknown topic, `max.poll.interval.ms` exceeded) are logged and skipped."""
        await self.start()
        batch: list[Message] = await self._run(self._next_batch, max_records, timeout)
        out = []
        for record in batch:
            err = record.error()
            if err is None:
                out.append(record)
            elif err.fatal():
                raise KafkaException(err)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("group %s: %s", self.group_id, err)
        return out

    async def assignment(self) -> list[TopicPartition]:
        """Partitions currently assigned to this consumer (empty until it joined)."""
        parts: list[TopicPartition] = await self._run(self._consumer.assignment)
        return parts

    def _next_batch(self, max_records: int, timeout: float) -> list[Message]:
        # librdkafka's consume(n, timeout) waits for n records or the whole timeout, which
        # would add the timeout to every lightly loaded hop: wait for the first record
        # only, then take what else is already fetched without waiting.
        first = self._consumer.poll(timeout)
        if first is None:
            return []
        rest = self._consumer.consume(max_records - 1, 0) if max_records > 1 else []
        return [first, *rest]

    def store(self, record: Message) -> None:
        """Marks `record` finished: its offset + 1 is committed by the next commit."""
        self._consumer.store_offsets(message=record)

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        """Stores the offsets to resume from (the next record to handle) per partition;
        an offset of a partition no longer assigned is dropped (logged). Call it between
        `consume()` calls or from a rebalance callback: librdkafka makes it wait for a
        poll in flight, which would block the event loop for up to the poll timeout."""
        try:
            self._consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:
            if exc.args[0].fatal():
                raise
            log.info("group %s: offsets not stored (%s)", self.group_id, exc.args[0])

    async def commit(self) -> bool:
        """Commits the stored offsets and waits for the broker to confirm; False when
        this member may not commit now (evicted, rebalancing): see `_NOT_OWNER`."""
        committed: bool = await self._run(self._commit_stored)
        return committed

    async def committed(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The group's committed offsets of `partitions`, as the broker has them."""
        got: list[TopicPartition] = await self._run(self._consumer.committed, partitions, 10.0)
        return got

    async def pause(self, partitions: list[TopicPartition]) -> None:
        """Stops fetching `partitions` (back-pressure) while `consume()` keeps the member
        alive in its group."""
        await self._run(self._consumer.pause, partitions)

    async def resume(self, partitions: list[TopicPartition]) -> None:
        """Fetches `partitions` again, from the next record not yet returned."""
        await self._run(self._consumer.resume, partitions)

    async def close(self) -> None:
        """Commits stored offsets, leaves the group and stops the worker thread."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            await self._run(self._commit_stored)
        await self._run(self._consumer.close)
        self._executor.shutdown(wait=True)
