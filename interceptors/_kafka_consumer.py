"""Kafka consumer middleware: the consume core run concurrently over a group's records.

Records of one key (one conversation) are handled one after the other, records of
different keys at once, up to `max_in_flight` unfinished records; past it the assigned
partitions are paused while polling goes on, so the member stays in its group. A
record is finished when it was handled, found a duplicate or dead-lettered; the offset
committed for a partition is its lowest unfinished one, so a crash redelivers exactly
what was not finished (and the guard turns what was finished but not yet committed into
duplicates).

Rebalances are cooperative: only moving partitions are revoked; their in-flight records
get `revoke_grace_s` to finish, then are cancelled (their claims released) and the
finished offsets committed before the partitions go. Eviction (a handler that blocked
the event loop past `max.poll.interval.ms`) loses the partitions: in-flight handlers
finish and record their outcome, nothing is committed, and the member rejoins. `run()`
returns when `stop` is set: no more records are taken, in-flight ones get `grace_s`,
the rest are handed back (cancelled, left uncommitted), and the offsets are committed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Hashable, Sequence
from typing import Any

from confluent_kafka import Message as Record
from confluent_kafka import TopicPartition
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from interceptors._carriers import KAFKA
from interceptors._chain import ConsumeInterceptor, Handler, HandlerLink, Inbound, Outcome, chain
from interceptors._consume import ConsumeCore
from interceptors._deadletter import KafkaDeadLetters
from interceptors._idempotency import IdempotencyGuard
from interceptors._kafka_inbound import KafkaSettler, inbound_of, read_headers
from interceptors._ordering import Lanes, OffsetWatermarks
from interceptors._propagation import extract
from interceptors._spans import messaging_attributes
from interceptors._telemetry import Telemetry
from services.runtime.adapters.kafka import KafkaConsumer, KafkaProducer
from services.runtime.contracts import ContractRegistry, EventContract, registry

__all__ = ["EventConsumer"]

log = logging.getLogger(__name__)

Partition = tuple[str, int]


class EventConsumer:
    """Runs a handler over the records of a `KafkaConsumer` (see the module doc)."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        telemetry: Telemetry,
        *,
        dead_letters: KafkaProducer,
        group: str | None = None,
        guard: IdempotencyGuard | None = None,
        contracts: ContractRegistry | None = None,
        topic_prefix: str = "",
        attempts: int = 3,
        backoff_s: float = 0.1,
        max_in_flight: int = 256,
        grace_s: float = 10.0,
        revoke_grace_s: float = 5.0,
        pause_after_s: float = 5.0,
        commit_interval_s: float = 0.2,
        interceptors: Sequence[ConsumeInterceptor] = (),
    ) -> None:
        self.consumer = consumer
        self.telemetry = telemetry
        self.group = group or consumer.group_id
        self.contracts = contracts or registry()
        self.topic_prefix = topic_prefix
        self.max_in_flight = max_in_flight
        self.grace_s = grace_s
        self.revoke_grace_s = revoke_grace_s
        self.interceptors = list(interceptors)
        self.dead_letters = KafkaDeadLetters(
            dead_letters,
            topic=topic_prefix + self.contracts.dead_letter_topic,
            group=self.group,
        )
        self.core = ConsumeCore(
            telemetry,
            KafkaSettler(self.dead_letters),
            self._contract,
            system="kafka",
            guard=guard,
            local_attempts=attempts,
            backoff_s=backoff_s,
        )
        self._lanes = Lanes(on_error=lambda exc: log.error("lane failed", exc_info=exc))
        self._marks = OffsetWatermarks()
        self._committed: dict[Partition, int] = {}
        self._paused = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pause_after_s = pause_after_s
        self.commit_interval_s = commit_interval_s
        self._last_commit = 0.0
        self.rounds = 0  # turns of the run loop: shows it is alive while full or paused
        self._room = asyncio.Event()
        self._early: list[Record] = []

    @property
    def counts(self) -> dict[Outcome, int]:
        """How many records ended in each outcome."""
        return self.core.counts

    @property
    def in_flight(self) -> int:
        """Records fetched and not finished."""
        return self._marks.in_flight

    def _contract(self, inbound: Inbound) -> EventContract:
        topic = inbound.destination
        if self.topic_prefix and topic.startswith(self.topic_prefix):
            topic = topic[len(self.topic_prefix) :]
        return self.contracts.event_for_topic(topic)

    def inbound(self, record: Record) -> Inbound:
        """`record` in the consume core's terms."""
        return inbound_of(record, self.group)

    async def handle(self, record: Record, handler: Handler) -> Outcome:
        """Handles one record outside the run loop (no offsets are stored)."""
        return await self.core.process(self.inbound(record), chain(handler, self.interceptors))

    async def handle_batch(self, records: Sequence[Record], handler: Handler) -> list[Outcome]:
        """Handles records in order under one CONSUMER span linked to each producer's."""
        if not records:
            return []
        links = []
        for record in records:
            headers, _ = read_headers(record)
            parent = extract(KAFKA, headers or [], "kafka", strict=False).trace_parent
            span_context = trace.get_current_span(parent).get_span_context()
            if span_context.is_valid:
                links.append(Link(span_context))
        topic = records[0].topic() or ""
        with self.telemetry.tracer.start_as_current_span(
            f"process {topic}",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                **messaging_attributes("kafka", topic, "process", ""),
                "messaging.batch.message_count": len(records),
                "messaging.consumer.group.name": self.group,
            },
        ):
            return [await self.handle(r, handler) for r in records]

    # -- the run loop ----------------------------------------------------------------

    async def run(
        self, handler: Handler, stop: asyncio.Event, *, max_records: int = 100, poll_s: float = 0.5
    ) -> None:
        """Consumes until `stop` is set, then shuts down gracefully (module doc)."""
        link = chain(handler, self.interceptors)
        self._loop = asyncio.get_running_loop()
        await self.consumer.start(listener=self)
        full_since: float | None = None
        for record in self._early:  # fetched while `join` waited for the assignment
            self._dispatch(record, link)
        self._early.clear()
        try:
            while not stop.is_set():
                self.rounds += 1
                if self._marks.in_flight >= self.max_in_flight:
                    full_since = full_since or time.monotonic()
                    await self._wait_for_room(full_since, poll_s, link)
                else:
                    full_since = None
                    if self._paused:
                        await self.consumer.resume(await self.consumer.assignment())
                        self._paused = False
                    # Never take more than the room left: the bound is on records in hand.
                    room = min(max_records, self.max_in_flight - self._marks.in_flight)
                    for record in await self.consumer.consume(room, timeout=poll_s):
                        self._dispatch(record, link)
                await self._commit()
        finally:
            await self._shutdown()

    async def _wait_for_room(self, full_since: float, poll_s: float, link: HandlerLink) -> None:
        """Full: wait for a record to finish instead of fetching more. librdkafka keeps
        prefetching meanwhile, so the next records are at hand the moment there is room
        (pausing would drop them and cost a refetch of up to a second). Only a stall
        longer than `pause_after_s` pauses the partitions and polls, so the group's
        rebalances are still served while the handlers are stuck."""
        self._room.clear()
        if self._marks.in_flight < self.max_in_flight:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), timeout=poll_s)
            return
        if time.monotonic() - full_since < self.pause_after_s:
            return
        if not self._paused:
            log.warning(
                "group %s: %d records in hand for %.0f s; pausing fetches",
                self.group,
                self._marks.in_flight,
                time.monotonic() - full_since,
            )
        # Re-applied each round: partitions assigned while paused are paused too.
        await self.consumer.pause(await self.consumer.assignment())
        self._paused = True
        for record in await self.consumer.consume(1, timeout=0.05):
            self._dispatch(record, link)  # fetched before the pause took effect

    async def join(self, timeout: float = 10.0) -> bool:
        """Joins the group and waits until partitions are assigned (or `timeout`), so
        a service reports ready only once it can take work at once. Records fetched
        meanwhile are kept for `run`. False when nothing was assigned in time (more
        members than partitions leaves some idle: that is not an error)."""
        self._loop = asyncio.get_running_loop()
        await self.consumer.start(listener=self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._early += await self.consumer.consume(100, timeout=0.1)
            if await self.consumer.assignment():
                return True
        return False

    def _dispatch(self, record: Record, link: HandlerLink) -> None:
        partition: Partition = (record.topic() or "", record.partition() or 0)
        offset: int = record.offset() or 0
        if not self._marks.fetched(partition, offset):
            log.debug("%s[%d]@%d fetched again while tracked; skipped", *partition, offset)
            return
        key = record.key()
        # A record without a key has no order to keep: a lane of its own.
        lane: Hashable = (partition, key if key is not None else offset)
        inbound = self.inbound(record)

        async def job() -> None:
            outcome = await self._process(inbound, link)
            if outcome is not Outcome.HANDED_BACK:
                self._marks.finished(partition, offset)
                if self._marks.in_flight < self.max_in_flight:
                    self._room.set()

        self._lanes.submit(lane, job)

    async def _process(self, inbound: Inbound, link: HandlerLink) -> Outcome:
        # The core raises only when Redis or the broker failed around the handler (the
        # guard could not claim or record). Skipping the record would lose it: retry it
        # in its lane, which holds back only its own key.
        delay = 0.1
        while True:
            try:
                return await self.core.process(inbound, link)
            except Exception:
                log.exception("%s: not settled; retrying in %.1f s", inbound.position, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _offsets(self, partitions: Sequence[Partition] | None = None) -> list[TopicPartition]:
        out = []
        chosen: list[Any] = self._marks.partitions() if partitions is None else list(partitions)
        for p in chosen:
            offset = self._marks.committable(p)
            if offset is not None and offset > self._committed.get(p, -1):
                out.append(TopicPartition(p[0], p[1], offset))
        return out

    async def _commit(self, *, now: bool = False) -> None:
        # A commit is a broker round trip on the polling thread: at most one per
        # `commit_interval_s` while records are in flight (a crash then redelivers at
        # most that much finished work, which the guard turns into duplicates).
        if (
            not now
            and self._marks.in_flight
            and time.monotonic() - self._last_commit < self.commit_interval_s
        ):
            return
        offsets = self._offsets()
        if not offsets:
            return
        self._last_commit = time.monotonic()
        self.consumer.store_offsets(offsets)
        if await self.consumer.commit():
            for tp in offsets:
                self._committed[(tp.topic, tp.partition)] = tp.offset

    async def _shutdown(self) -> None:
        if not await self._lanes.wait(timeout=self.grace_s):
            log.warning(
                "group %s: %d record(s) unfinished after %.0f s; handing them back",
                self.group,
                self._marks.in_flight,
                self.grace_s,
            )
            await self._lanes.cancel()
        await self._commit(now=True)

    # -- rebalance listener: called on the consumer's thread, inside consume() ---------

    def assigned(self, partitions: list[TopicPartition]) -> None:
        log.info("group %s: assigned %s", self.group, _names(partitions))

    def revoked(self, partitions: list[TopicPartition]) -> None:
        log.info("group %s: revoked %s", self.group, _names(partitions))
        offsets = self._on_loop(self._let_go(_parts(partitions), self.revoke_grace_s))
        if offsets:
            # Committed by the adapter right after this returns, before the partitions go.
            self.consumer.store_offsets(offsets)

    def lost(self, partitions: list[TopicPartition]) -> None:
        self._on_loop(self._let_go(_parts(partitions), None))

    def _on_loop(self, coro: Any) -> list[TopicPartition]:
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            # No loop to finish work on (closed from elsewhere): nothing is in flight.
            coro.close()
            return []
        result: list[TopicPartition] = asyncio.run_coroutine_threadsafe(coro, loop).result()
        return result

    async def _let_go(self, parts: set[Partition], grace_s: float | None) -> list[TopicPartition]:
        """Revoked (`grace_s` given): finishes the work of `parts` within the grace, cancels
        the rest and returns the final offsets to commit. Lost (None): commits are no
        longer possible, so only the offsets are dropped; in-flight handlers run on and
        record their outcomes, which makes the new owner's redelivery a duplicate instead
        of work cancelled and redone (a handler slower than `max.poll.interval.ms` would
        otherwise be cancelled on every rejoin, for ever)."""
        offsets: list[TopicPartition] = []
        if grace_s is not None:
            lanes = [k for k in self._lanes.busy() if isinstance(k, tuple) and k[0] in parts]
            await self._lanes.wait(lanes, timeout=grace_s)
            await self._lanes.cancel(lanes)
            offsets = self._offsets(sorted(parts))
        for p in parts:
            self._marks.forget(p)
            self._committed.pop(p, None)
        return offsets


def _parts(partitions: list[TopicPartition]) -> set[Partition]:
    return {(tp.topic, tp.partition) for tp in partitions}


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
