"""RabbitMQ consumer middleware: the consume core over a task queue, up to the prefetch
at once, with delay-tier retries and a dead-letter queue that says why.

A delivery is acked only once it is finished: handled (the handler returned, its result
recorded), a duplicate, moved to a retry tier or dead-lettered. A handler failure that
may succeed later is republished to the next delay tier (`<queue>.retry.<N>ms`, whose
TTL dead-letters it back onto the work queue) with the attempt count in the
`agentflux-attempt` header; after the last attempt, or at once for an error that cannot
succeed (invalid input, a task that cannot be decoded or is of the wrong type), it is
published to the dead-letter queue with `dlq_*` headers (reason, error, queue, attempts)
beside its original bytes and headers. The broker's `redelivered` flag (set on every
unacked delivery after a crash or a hand-back) never uses up an attempt.

Acks of deliveries that finish in the same turn of the event loop go out together: one
`multiple` ack for those whose delivery tags run on unbroken from the last one settled,
one ack each for the rest (`_Acks`). A frame costs a system call, which on a small VM is
a good part of a delivery's cost.

`run()` returns when `stop` is set: the consumer is cancelled so no new deliveries
arrive, in-flight ones get `grace_s` to finish, the rest are handed back (nacked with
requeue, their claims released) and the channel is closed."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import AMQPError

from interceptors._carriers import AMQP
from interceptors._chain import ConsumeInterceptor, Handler, HandlerLink, Inbound, Outcome, chain
from interceptors._consume import ConsumeCore
from interceptors._idempotency import IdempotencyGuard
from interceptors._propagation import rfc3339
from interceptors._telemetry import Telemetry
from services.runtime.adapters.rabbitmq import RabbitConnection, printable, unreadable
from services.runtime.contracts import TaskContract
from services.runtime.topology import TaskTopology

__all__ = ["ATTEMPT_HEADER", "TaskConsumer"]

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "agentflux-attempt"
# Set by the broker when it dead-letters; a republished copy starts its own history.
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-")


def attempt_of(headers: dict[str, Any]) -> int:
    """The attempt a delivery is (1 when the header is missing or not a positive int)."""
    raw = headers.get(ATTEMPT_HEADER)
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    try:
        value = int(raw) if isinstance(raw, int | str) else 1
    except ValueError:
        return 1
    return value if 1 <= value <= 1000 else 1


class _Acks:
    """Acks the deliveries of one channel in as few frames as it safely can.

    An ack asked for waits for the end of the loop's turn. Then the tags asked for that
    run on unbroken from `settled_to` (every tag up to it acked, handed back or moved on)
    go in one `multiple` ack, which can therefore never cover a delivery still being
    handled, nor one not seen yet; each other tag asked for is acked alone, so a slow
    delivery never holds the others' acks back. A tag acked alone, or settled some other
    way (`done`), lets a later run go on past it. Tags are the channel's own and start at
    1, so a channel the connection reopened gets an `_Acks` of its own."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.settled_to = 0
        self.asked: dict[int, asyncio.Future[None]] = {}
        self.elsewhere: set[int] = set()  # settled otherwise, above `settled_to`
        self.frames = 0  # ack frames sent (a `multiple` one counts once)
        self._sending: asyncio.Future[None] | None = None  # the last flush's frames

    async def ack(self, tag: int) -> None:
        """Returns once the ack of `tag` is written (raises if it could not be)."""
        if not self.asked:
            asyncio.get_running_loop().call_soon(self._flush)
        future = asyncio.get_running_loop().create_future()
        self.asked[tag] = future
        await future

    def done(self, tag: int) -> None:
        """`tag` was settled other than through `ack` (or is gone with its channel)."""
        if tag > self.settled_to and tag not in self.asked:
            self.elsewhere.add(tag)

    def _flush(self) -> None:
        asked, self.asked = self.asked, {}
        top = self.settled_to
        while top + 1 in asked or top + 1 in self.elsewhere:
            top += 1
        run = [t for t in asked if t <= top]
        alone = [t for t in asked if t > top]
        # Those acked alone are settled too: a later run goes on past them.
        self.elsewhere = {t for t in self.elsewhere if t > top}.union(alone)
        self.settled_to = top
        sending = asyncio.ensure_future(
            self._send(self._sending, max(run, default=0), len(run), alone)
        )
        sending.add_done_callback(lambda done: _answer(list(asked.values()), done))
        self._sending = sending

    async def _send(
        self, before: asyncio.Future[None] | None, run_top: int, run_length: int, alone: list[int]
    ) -> None:
        if before is not None:
            # The earlier flush's frames first: its tags acked alone count as settled
            # already, and a `multiple` ack written ahead of theirs would ack them twice
            # (the broker closes the channel on an unknown tag). Its failure is its own.
            await asyncio.wait([before])
        if run_length:
            await self.channel.basic_ack(delivery_tag=run_top, multiple=run_length > 1)
            self.frames += 1
        for tag in alone:
            await self.channel.basic_ack(delivery_tag=tag)
            self.frames += 1


def _answer(futures: list[asyncio.Future[None]], sending: asyncio.Future[None]) -> None:
    """Passes how the sending went on to each asker still waiting."""
    error = None if sending.cancelled() else sending.exception()
    for future in futures:
        if future.done():  # its asker was cancelled
            continue
        if sending.cancelled():
            future.cancel()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(None)


class _Settler:
    """Acks, retries through the delay tiers and dead-letters with reasons."""

    def __init__(self, rabbit: RabbitConnection, topology: TaskTopology, max_attempts: int) -> None:
        self.rabbit = rabbit
        self.topology = topology
        self.max_attempts = max_attempts
        self.delays = sorted(topology.retry_queues)
        # The run loop's channels (a reopened one is a new object), dropped when the run
        # ends: acks there go in batches; a delivery handled outside the run loop is
        # acked alone.
        self.batches: dict[Any, _Acks] = {}
        self.frames_before = 0  # ack frames of the channels dropped

    async def ack(self, inbound: Inbound) -> None:
        message: AbstractIncomingMessage = inbound.raw
        acks = self.batches.get(message.channel)
        if acks is None or message.delivery_tag is None:
            await message.ack()
        else:
            await acks.ack(message.delivery_tag)

    async def retry(self, inbound: Inbound, error: str) -> bool:
        if inbound.attempt >= self.max_attempts or not self.delays:
            return False
        delay = self.delays[min(inbound.attempt, len(self.delays)) - 1]
        headers = {**_copyable(inbound.carrier), ATTEMPT_HEADER: inbound.attempt + 1}
        headers["retry_error"] = error[:500]
        await self._republish(
            inbound, self.topology.retry_exchange, self.topology.retry_queues[delay], headers
        )
        return True

    async def dead_letter(self, inbound: Inbound, reason: str, error: str) -> None:
        headers = {
            **_copyable(inbound.raw.headers),
            "dlq_queue": self.topology.queue,
            "dlq_reason": reason,
            "dlq_error": error[:1000],
            "dlq_attempts": inbound.attempt,
            "dlq_time": rfc3339(time.time()),
        }
        await self._republish(
            inbound, self.topology.dead_letter_exchange, self.topology.dead_letter_queue, headers
        )

    async def _republish(
        self, inbound: Inbound, exchange: str, routing_key: str, headers: dict[str, Any]
    ) -> None:
        message: AbstractIncomingMessage = inbound.raw
        # Confirmed before the ack: a crash in between leaves two copies, and the guard
        # makes the second a duplicate. Acking first could lose the task.
        await self.rabbit.publish(
            exchange,
            routing_key,
            message.body,
            headers=headers,
            priority=message.priority,
            message_id=_sendable(message.message_id),
            message_type=_sendable(message.type),
            content_type=_sendable(message.content_type),  # as it came: it is checked
        )
        await message.ack()

    async def hand_back(self, inbound: Inbound) -> None:
        try:
            await inbound.raw.nack(requeue=True)
        except (AMQPError, RuntimeError, ConnectionError) as exc:
            # The channel is gone: the broker requeues every unacked delivery by itself.
            log.debug("hand-back of %s left to the broker: %s", inbound.position, exc)


def _copyable(headers: Any) -> dict[str, Any]:
    """The headers to send again: without the broker's own, and with any name that
    arrived not UTF-8 made printable (it could not be encoded again as it is)."""
    return {
        printable(k): _table(v)
        for k, v in dict(headers or {}).items()
        if not k.startswith(_BROKER_HEADERS)
    }


def _table(value: Any) -> Any:
    if isinstance(value, dict):
        return {printable(k): _table(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_table(v) for v in value]
    return value


def _sendable(text: str | None) -> str | None:
    return printable(text) if text and unreadable(text) else text


def _unreadable_names(message: AbstractIncomingMessage) -> list[str]:
    props = {"type": message.type, "message_id": message.message_id}
    props["content_type"] = message.content_type
    bad = [f"header {printable(k)!r}" for k in message.headers or {} if unreadable(k)]
    return bad + [f"{name} {printable(v)!r}" for name, v in props.items() if v and unreadable(v)]


class TaskConsumer:
    """Runs a handler over the deliveries of one task queue (see the module doc)."""

    def __init__(
        self,
        rabbit: RabbitConnection,
        telemetry: Telemetry,
        contract: TaskContract,
        *,
        topology: TaskTopology,
        guard: IdempotencyGuard | None = None,
        prefetch: int = 16,
        max_attempts: int | None = None,
        grace_s: float = 10.0,
        pending_wait_s: float | None = None,
        interceptors: Sequence[ConsumeInterceptor] = (),
    ) -> None:
        self.rabbit = rabbit
        self.telemetry = telemetry
        self.contract = contract
        self.topology = topology
        self.queue = topology.queue
        self.prefetch = prefetch
        self.grace_s = grace_s
        self.interceptors = list(interceptors)
        attempts = max_attempts or 1 + len(topology.retry_queues)
        if pending_wait_s is None and guard is not None:
            pending_wait_s = 2 * guard.lease_s
        self._settler = _Settler(rabbit, topology, attempts)
        self.core = ConsumeCore(
            telemetry,
            self._settler,
            lambda inbound: contract,
            system="rabbitmq",
            guard=guard,
            pending_wait_s=pending_wait_s,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        # Set once the broker has registered this consumer: deliveries can arrive.
        self.consuming = asyncio.Event()

    @property
    def counts(self) -> dict[Outcome, int]:
        """How many deliveries ended in each outcome."""
        return self.core.counts

    @property
    def in_flight(self) -> int:
        """Deliveries being handled now."""
        return len(self._tasks)

    @property
    def ack_frames(self) -> int:
        """Ack frames the run loop has sent (one `multiple` ack counts once)."""
        settler = self._settler
        return settler.frames_before + sum(acks.frames for acks in settler.batches.values())

    def inbound(self, message: AbstractIncomingMessage) -> Inbound:
        """`message` in the consume core's terms."""
        headers = dict(message.headers or {})
        bad = _unreadable_names(message)
        # Without ce_id or message id, the body is the only stable identity of a task.
        digest = hashlib.blake2b(message.body, digest_size=16).hexdigest()
        sent = message.timestamp.timestamp() if message.timestamp else None
        return Inbound(
            transport="amqp",
            destination=self.queue,
            body=message.body,
            carrier=None if bad else headers,
            getter=AMQP,
            position=f"amqp-{digest}",
            raw=message,
            header_error=f"not UTF-8: {', '.join(bad)}" if bad else "",
            type_hint=message.type or "",
            content_type=message.content_type or "",
            attempt=attempt_of(headers),
            sent_at=sent,
            attributes={
                "messaging.rabbitmq.message.delivery_tag": message.delivery_tag,
                "messaging.rabbitmq.destination.routing_key": message.routing_key,
                "agentflux.redelivered": bool(message.redelivered),
                "agentflux.priority": message.priority,
            },
        )

    async def handle(self, message: AbstractIncomingMessage, handler: Handler) -> Outcome:
        """Handles and settles one delivery outside the run loop."""
        return await self.core.process(self.inbound(message), chain(handler, self.interceptors))

    async def run(self, handler: Handler, stop: asyncio.Event) -> None:
        """Consumes with up to `prefetch` deliveries at once until `stop` is set, then
        shuts down gracefully (module doc)."""
        link = chain(handler, self.interceptors)
        # A channel of its own: the prefetch is per channel, and publishing (retries,
        # dead letters, the handler's own) stays on the connection's confirming channel.
        channel = await self.rabbit.connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        try:
            queue = await channel.get_queue(self.queue, ensure=True)

            async def deliver(message: AbstractIncomingMessage) -> None:
                acks = self._acks_of(message.channel)
                try:
                    if self._stopping:
                        # Sent by the broker before it saw the cancel: not ours to start.
                        await self.core.settler.hand_back(self.inbound(message))
                        return
                    # aiormq runs each delivery in a task of its own; keep it for shutdown.
                    task = asyncio.current_task()
                    assert task is not None
                    self._tasks.add(task)
                    try:
                        await self._process(message, link)
                    finally:
                        self._tasks.discard(task)
                finally:
                    # Settled by now one way or another (or gone with the channel).
                    if message.delivery_tag is not None:
                        acks.done(message.delivery_tag)

            tag = await queue.consume(deliver)
            self.consuming.set()
            await stop.wait()
            self._stopping = True
            await queue.cancel(tag)
            await self._drain()
        finally:
            self.consuming.clear()
            await channel.close()
            settler = self._settler
            settler.frames_before += sum(acks.frames for acks in settler.batches.values())
            settler.batches.clear()

    def _acks_of(self, channel: Any) -> _Acks:
        batches = self._settler.batches
        acks = batches.get(channel)
        if acks is None:
            acks = batches[channel] = _Acks(channel)
        return acks

    async def _process(self, message: AbstractIncomingMessage, link: HandlerLink) -> None:
        inbound = self.inbound(message)
        try:
            await self.core.process(inbound, link)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Redis or the broker failed around the handler: give the delivery back after
            # a pause (not at once: that would spin while Redis is down).
            log.exception("%s: not settled; handing it back in 1 s", self.queue)
            await asyncio.sleep(1.0)
            await self.core.settler.hand_back(inbound)

    async def _drain(self) -> None:
        # Let deliveries that reached the client before the cancel-ok start (or be
        # handed back), so the snapshot below misses none of them.
        await asyncio.sleep(0)
        tasks = list(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.grace_s)
        if pending:
            log.warning(
                "queue %s: %d delivery(ies) unfinished after %.0f s; handing them back",
                self.queue,
                len(pending),
                self.grace_s,
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
