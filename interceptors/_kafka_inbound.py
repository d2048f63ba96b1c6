"""Kafka records in the consume core's terms, and how Kafka settles them.

A record's headers are read once and checked (a header name that is not UTF-8 must not
crash the process), and settling is by offsets, which the run loop tracks: of the
`Settler` calls only dead letters send anything."""

from __future__ import annotations

import gc
from typing import Any

from confluent_kafka import Message as Record

from interceptors._carriers import KAFKA
from interceptors._chain import Inbound
from interceptors._deadletter import KafkaDeadLetters

__all__ = ["KafkaSettler", "inbound_of", "read_headers"]


def read_headers(record: Record) -> tuple[list[tuple[str, bytes]] | None, str]:
    """The record's headers, or None and why they cannot be read.

    A header name that is not UTF-8 (any non-Python producer can write one) makes
    confluent-kafka's `headers()` fail half way: it raises SystemError, or returns the
    list with a NULL where the name should be and the UnicodeDecodeError still pending,
    and caches that list for every later call. Touching the NULL crashes the interpreter;
    `gc.get_referents` skips NULL slots (so counting them tells safely) and, being the
    next C call, surfaces the pending error instead of leaving it to some later one."""
    try:
        raw: Any = record.headers() or ()
        intact = len(gc.get_referents(*raw)) == 2 * len(raw)
    except (SystemError, UnicodeDecodeError, ValueError) as exc:
        cause = exc.__cause__ or exc.__context__ or exc
        return None, f"a header name is not UTF-8 ({type(cause).__name__}: {cause})"
    if not intact:
        return None, "a header name is not UTF-8"
    return [(k, v or b"") for k, v in raw], ""


class KafkaSettler:
    """Kafka settles by offsets, which the run loop tracks: only dead letters are sent."""

    def __init__(self, dead_letters: KafkaDeadLetters) -> None:
        self.dead_letters = dead_letters

    async def ack(self, inbound: Inbound) -> None:
        return None

    async def retry(self, inbound: Inbound, error: str) -> bool:
        return False  # a partition cannot requeue: attempts are made in place

    async def dead_letter(self, inbound: Inbound, reason: str, error: str) -> None:
        await self.dead_letters.send(inbound, reason, error)

    async def hand_back(self, inbound: Inbound) -> None:
        return None  # left unfinished: its offset is not committed


def inbound_of(record: Record, group: str) -> Inbound:
    """`record` in the consume core's terms."""
    topic = record.topic() or ""
    headers, error = read_headers(record)
    _, created_ms = record.timestamp()
    return Inbound(
        transport="kafka",
        destination=topic,
        body=record.value(),
        carrier=headers,
        getter=KAFKA,
        position=f"{topic}:{record.partition()}:{record.offset()}",
        raw=record,
        header_error=error,
        sent_at=created_ms / 1000 if created_ms > 0 else None,
        attributes={
            "messaging.destination.partition.id": str(record.partition()),
            "messaging.kafka.offset": record.offset(),
            "messaging.kafka.message.key": (record.key() or b"").decode("utf-8", "replace"),
            "messaging.consumer.group.name": group,
        },
    )
