"""RabbitMQ publisher and consumer on aio-pika.

Publishing waits for the broker's confirm and uses `mandatory`, so a message that no
queue accepts raises instead of vanishing. Consuming uses manual acks with a prefetch
window: a message is removed only when the handler acks it after its work is done.

Importing this module makes pamqp (aio-pika's codec) read header names and short
strings that are not UTF-8 instead of failing the whole frame: any non-Python producer
can write such a message, and pamqp's strict decode closed the connection on it, which
reconnected, got the same message redelivered and closed again, for ever, stopping the
queue and everything else on the connection. The undecodable bytes arrive as lone
surrogates (`surrogateescape`); `unreadable()` finds them, so a consumer dead-letters the
message instead of handling it.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncGenerator, Mapping
from types import TracebackType
from typing import Any, Self

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
    DeliveryMode,
)
from pamqp import common, decode

from services.runtime.config import Settings

__all__ = ["PROTOBUF", "RabbitConnection", "printable", "unreadable"]

PROTOBUF = "application/protobuf"


_LENGTH = struct.Struct(">I")
_LONG_STRING = ord("S")


def _lenient_table(value: bytes) -> tuple[int, common.FieldTable]:
    # pamqp.decode.field_table, but a key that is not UTF-8 is kept (surrogateescape).
    # Long strings (type S: nearly every header, the context ones included) are read in
    # place; pamqp decodes each value from two copies of the rest of the table, which
    # made the headers about 6% of a delivery's CPU on the consume path.
    unpack = _LENGTH.unpack_from
    try:
        length = unpack(value, 0)[0]
        offset, end = 4, 4 + length
        if end > len(value):
            raise ValueError("Field table length exceeds available data")
        data: dict[str, common.FieldValue] = {}
        while offset < end:
            key_length = value[offset]
            offset += 1
            if offset + key_length > end:
                raise ValueError("Field table key length exceeds data")
            key = value[offset : offset + key_length].decode("utf-8", "surrogateescape")
            offset += key_length
            if offset >= end:  # a name without a value: its type would be read past the end
                raise ValueError("Field table value length exceeds data")
            if value[offset] == _LONG_STRING:
                size = unpack(value, offset + 1)[0]
                start = offset + 5
                if start + size > end:
                    raise ValueError("Field table value length exceeds data")
                raw = value[start : start + size]
                try:
                    data[key] = raw.decode("utf-8")
                except UnicodeDecodeError:
                    data[key] = raw  # as pamqp: the bytes, for the consumer to refuse
                offset = start + size
                continue
            consumed, data[key] = decode.embedded_value(value[offset:end])
            offset += consumed
        if offset != end:
            raise ValueError("Field table value length exceeds data")
        return end, data
    except (struct.error, TypeError, IndexError) as err:
        raise ValueError("Could not unpack data") from err


def _lenient_short_str(value: bytes) -> tuple[int, str]:
    # pamqp.decode.short_str (message_id, type, content_type, ...), kept the same way.
    try:
        length = common.Struct.byte.unpack(value[0:1])[0]
        return length + 1, value[1 : length + 1].decode("utf-8", "surrogateescape")
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack short string value") from err


decode.field_table = _lenient_table
decode.METHODS["table"] = _lenient_table
decode.TABLE_MAPPING[b"F"] = _lenient_table
decode.short_str = _lenient_short_str
decode.METHODS["shortstr"] = _lenient_short_str


def unreadable(text: str | None) -> bool:
    """Whether `text` (a header name or property) arrived with bytes that are not UTF-8."""
    if not text or text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def printable(text: str) -> str:
    """`text` with the bytes that were not UTF-8 shown as `\\xNN`: safe to send again."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class RabbitConnection:
    """One robust connection and one confirming channel; reconnects on its own."""

    def __init__(self, connection: AbstractRobustConnection, channel: AbstractChannel) -> None:
        self.connection = connection
        self.channel = channel
        self._exchanges: dict[str, AbstractExchange] = {}

    @classmethod
    async def connect(
        cls, settings: Settings, *, prefetch: int = 64, timeout: float = 10.0
    ) -> Self:
        """Connects to `settings.amqp_url` and opens a channel with publisher confirms.

        `prefetch` bounds the unacknowledged deliveries a consumer holds at once; well
        above 1 so a worker is not idle while an ack travels."""
        connection = await aio_pika.connect_robust(
            settings.amqp_url, timeout=timeout, client_properties={"connection_name": "agentflux"}
        )
        # on_return_raises: without it aio-pika resolves the publish of a returned
        # (unroutable) mandatory message as if it had been delivered.
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.set_qos(prefetch_count=prefetch)
        return cls(connection, channel)

    async def _exchange(self, name: str) -> AbstractExchange:
        if not name:
            return self.channel.default_exchange
        exchange = self._exchanges.get(name)
        if exchange is None:
            # Passive: the topology is declared by `stack up`/the services, never
            # implied by a publish with a typo in it. The check runs on a channel of
            # its own because the broker closes the channel a failed check ran on,
            # and that must not be the one this connection publishes and consumes on.
            async with aio_pika.Channel(self.connection, publisher_confirms=False) as probe:
                await probe.get_exchange(name, ensure=True)
            exchange = await self.channel.get_exchange(name, ensure=False)
            self._exchanges[name] = exchange
        return exchange

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        priority: int | None = None,
        message_id: str | None = None,
        message_type: str | None = None,
        content_type: str | None = PROTOBUF,
        expiration_s: float | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Publishes a persistent message and waits for the broker's confirm;
        `expiration_s` is the message's TTL (it then dead-letters as its queue says).

        Raises `aio_pika.exceptions.DeliveryError` when the broker nacks it or no queue
        is bound for `routing_key` (the message is returned, not dropped)."""
        message = aio_pika.Message(
            body,
            headers=dict(headers or {}),
            content_type=content_type,
            delivery_mode=DeliveryMode.PERSISTENT,
            priority=priority,
            message_id=message_id,
            type=message_type,
            expiration=expiration_s,
        )
        target = await self._exchange(exchange)
        await target.publish(message, routing_key, mandatory=True, timeout=timeout)

    async def consume(self, queue: str) -> AsyncGenerator[AbstractIncomingMessage, None]:
        """Yields deliveries of `queue` (which must exist) until the connection closes.

        Each delivery must be acked, nacked or rejected by the caller. To stop early,
        `aclose()` the generator (e.g. `contextlib.aclosing`): that cancels the consumer
        and returns the deliveries it prefetched but did not yield to the queue."""
        q = await self.channel.get_queue(queue, ensure=True)
        deliveries = q.iterator()
        try:
            async for delivery in deliveries:
                yield delivery
        finally:
            try:
                await deliveries.close()
            except (Exception, asyncio.CancelledError):
                # A generator left suspended (a `break` without aclose()) is finalised
                # on the event loop's schedule, possibly while close() tears the
                # connection down (which cancels the consumer's cancel): then there is
                # no consumer left to cancel. A cancellation of this task still wins.
                task = asyncio.current_task()
                if not self.connection.close_called or (task and task.cancelling()):
                    raise

    async def close(self) -> None:
        """Closes the channel and the connection."""
        await self.connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
