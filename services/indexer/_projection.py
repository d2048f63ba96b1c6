"""`agent.completed` into the index: what is indexed, once, and what is counted.

Only runs that completed with an answer are indexed; failed and cancelled runs are
counted and skipped. A run is indexed once whatever happens upstream: the consumer's
guard drops redelivered records, and the store ignores a second copy of a run or of
its content (`run_id` and the content digest are unique there).

The content digest (sha256 of tenant, prompt and answer) also feeds a
`RotatingBloomFilter`, filled from the file at start. Its "no" skips the lookup by
digest before the write; its "maybe" is confirmed by that lookup, and a confirmed
answer is not written again (a re-run that gave the same answer to the same prompt,
in whichever conversation: it stays findable under the first run). A digest the filter
has forgotten (past two generations) is still caught by the unique digest in the file.

What it saves is small, and said so: one indexed lookup per new answer, measured at
~12 µs against ~3 µs for the filter at 100,000 answers, beside a ~0.5 ms commit. The
counters (`bloom_maybe`, `bloom_false_positives`) let that claim be checked."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace

from agentflux.v1 import events_pb2, types_pb2

from interceptors import InvalidArgument, RotatingBloomFilter
from services.indexer._schema import Answer
from services.indexer._store import IndexStore

__all__ = ["IndexStats", "Projection", "content_digest"]

log = logging.getLogger(__name__)

BLOOM_CAPACITY = 100_000  # per generation; two generations are kept
BLOOM_ERROR_RATE = 0.001


@dataclass(slots=True)
class IndexStats:
    """Counters of one indexer process since it started: answers `indexed`, answers
    `skipped_duplicates` (their run or their content was indexed already), events
    `not_indexed` (failed, cancelled, or no answer), Bloom `bloom_maybe` answers and,
    of those, `bloom_false_positives` (the content was not there after all)."""

    indexed: int = 0
    skipped_duplicates: int = 0
    not_indexed: int = 0
    bloom_maybe: int = 0
    bloom_false_positives: int = 0


def content_digest(tenant_id: str, prompt: str, answer: str) -> bytes:
    """sha256 of the three texts, each length-prefixed (no separator can be forged)."""
    h = hashlib.sha256()
    for part in (tenant_id, prompt, answer):
        data = part.encode()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.digest()


class Projection:
    """Applies `AgentCompleted` events to an `IndexStore` (see the module doc)."""

    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self.bloom = RotatingBloomFilter(BLOOM_CAPACITY, BLOOM_ERROR_RATE)
        self._stats = IndexStats()

    @property
    def stats(self) -> IndexStats:
        """A snapshot of the counters."""
        return replace(self._stats)

    async def fill(self) -> int:
        """Adds every indexed digest to the Bloom filter; returns how many."""
        digests = await self.store.digests()
        for digest in digests:
            self.bloom.add(digest)
        return len(digests)

    async def apply(self, event: events_pb2.AgentCompleted) -> str:
        """Indexes `event` when it should be; returns what happened (a short word)."""
        if event.status != types_pb2.COMPLETION_STATUS_COMPLETED or not event.answer.text.strip():
            self._stats.not_indexed += 1
            return "not_indexed"
        # Not retryable: these go to the dead-letter topic with the field named.
        for name in ("run_id", "tenant_id"):
            if not getattr(event, name):
                raise InvalidArgument(name, "required on a completed run")
        digest = content_digest(event.tenant_id, event.prompt, event.answer.text)
        maybe = digest in self.bloom
        if maybe:
            self._stats.bloom_maybe += 1
        answer = Answer(
            run_id=event.run_id,
            tenant_id=event.tenant_id,
            conversation_id=event.conversation_id,
            prompt=event.prompt,
            answer=event.answer.text,
            digest=digest,
            complete_time_ns=event.complete_time.ToNanoseconds()
            if event.HasField("complete_time")
            else 0,
        )
        put = await self.store.put(answer, check_first=maybe)
        if put.checked and not put.found:
            self._stats.bloom_false_positives += 1
        if put.indexed:
            self.bloom.add(digest)
            self._stats.indexed += 1
            log.debug("indexed run %s", event.run_id)
            return "indexed"
        self._stats.skipped_duplicates += 1
        log.debug("run %s: already indexed (run or content)", event.run_id)
        return "duplicate"
