"""The Kafka dead-letter topic: every record that cannot be handled ends there.

A dead letter keeps the original key, value and headers, and adds where the record came
from and why (`dlq_*` headers). Nothing may stop a partition, so a record too large for
the dead-letter topic's `max.message.bytes` (or the producer's `message.max.bytes`) is
truncated to fit, with its original size and SHA-256 digest, and as a last resort sent
with the reason alone. A dead-letter topic that cannot be written for another reason
(the broker is down) is retried with backoff: the record is never dropped, and its
partition waits, since committing past it would lose it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource  # not re-exported in the stubs

from interceptors._chain import Inbound
from interceptors._propagation import rfc3339
from services.runtime.adapters.kafka import KafkaProducer

__all__ = ["KafkaDeadLetters"]

log = logging.getLogger(__name__)

# The same code whether the broker refused the record or librdkafka did, locally.
_TOO_LARGE = {KafkaError.MSG_SIZE_TOO_LARGE}
# Room for the record batch's own framing and the dlq_* headers added after truncation.
_OVERHEAD = 4096


def _too_large(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.code() in _TOO_LARGE


class KafkaDeadLetters:
    """Writes dead letters of one consumer group to `topic`."""

    def __init__(self, producer: KafkaProducer, *, topic: str, group: str) -> None:
        self.producer = producer
        self.topic = topic
        self.group = group
        self._limit: int | None = None
        self.sent = 0
        self.truncated = 0

    async def send(self, inbound: Inbound, reason: str, error: str) -> None:
        """Dead-letters `inbound` (a consumed record) and returns once Kafka has it."""
        record = inbound.raw
        value: bytes | None = inbound.body  # None: a tombstone, kept as one
        key: bytes | None = record.key()
        original: list[tuple[str, bytes]] = list(inbound.carrier or ())
        where = [
            ("dlq_topic", (record.topic() or "").encode()),
            ("dlq_partition", str(record.partition()).encode()),
            ("dlq_offset", str(record.offset()).encode()),
            ("dlq_group", self.group.encode()),
            ("dlq_reason", reason.encode()),
            ("dlq_error", error[:1000].encode("utf-8", "replace")),
            ("dlq_time", rfc3339(time.time()).encode()),
        ]
        delay = 0.1
        while True:
            try:
                await self._send(key, value, original, where)
                self.sent += 1
                return
            except KafkaException as exc:
                # Not a size problem: the topic is unreachable for now. Retry; never drop.
                log.error(
                    "dead-letter topic %s not writable (%s); retrying in %.1f s",
                    self.topic,
                    exc.args[0] if exc.args else exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _send(
        self,
        key: bytes | None,
        value: bytes | None,
        original: list[tuple[str, bytes]],
        where: list[tuple[str, bytes]],
    ) -> None:
        try:
            await self.producer.produce(self.topic, value, key=key, headers=[*original, *where])
            return
        except KafkaException as exc:
            if not _too_large(exc) or value is None:
                raise
        digest = [
            ("dlq_truncated", b"true"),
            ("dlq_original_size", str(len(value)).encode()),
            ("dlq_sha256", hashlib.sha256(value).hexdigest().encode()),
        ]
        headers = [*original, *where, *digest]
        budget = await self.limit() - _OVERHEAD - len(key or b"")
        budget -= sum(len(k) + len(v) for k, v in headers)
        # Compression and framing make the exact fit unknowable: shrink until it fits.
        size = min(max(budget, 0), len(value) // 2)
        while size > 0:
            try:
                await self.producer.produce(self.topic, value[:size], key=key, headers=headers)
                self.truncated += 1
                log.warning("dead letter of %d bytes truncated to %d", len(value), size)
                return
            except KafkaException as exc:
                if not _too_large(exc):
                    raise
                size //= 2
        # Even the headers do not fit: keep the reason, the size and the digest.
        await self.producer.produce(self.topic, b"", key=None, headers=[*where, *digest])
        self.truncated += 1

    async def limit(self) -> int:
        """The largest record the topic and the producer accept (read once)."""
        if self._limit is None:
            self._limit = min(await self._topic_limit(), self.producer.max_message_bytes)
        return self._limit

    async def _topic_limit(self) -> int:
        admin = AdminClient({"bootstrap.servers": self.producer.bootstrap_servers})
        resource = ConfigResource(ConfigResource.Type.TOPIC, self.topic)
        try:
            futures: dict[Any, Any] = admin.describe_configs([resource], request_timeout=10)
            configs = await asyncio.wrap_future(futures[resource])
            return int(configs["max.message.bytes"].value)
        except (KafkaException, KeyError, ValueError) as exc:
            log.warning("max.message.bytes of %s unknown (%s); halving instead", self.topic, exc)
            return self.producer.max_message_bytes
