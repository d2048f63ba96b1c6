"""Effectively-once handling at a consumer boundary under at-least-once delivery.

Every message carries an idempotency key. The exact record of a key lives in Redis at
`<namespace>:idem:<key>`: a *pending* claim with a short lease while a handler works on
it, then the handler's *outcome* with a long TTL. A per-process Bloom filter routes the
check:

- Bloom "no" (the key was surely never seen here): claim at once with one
  `SET NX GET PX lease` (NX with GET needs Redis 7.0). Another process may hold the key
  already; then the same reply carries its record and the message is a duplicate.
- Bloom "maybe": read the record first (`GET`), so a duplicate is answered with its
  outcome without a write. No record means the "maybe" was a false positive and the key
  is claimed as above: the Bloom filter can only cost a round trip, never drop a message.

A failed handler releases its claim (compare-and-delete, so a claim that expired and was
taken by another handler is left alone) and a redelivery is handled again; a handler
that crashed leaves a lease that expires after `lease_s`, with the same effect."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import cast

import redis.asyncio as aioredis

from interceptors._bloom import RotatingBloomFilter

__all__ = ["MAX_KEY_LENGTH", "Claim", "GuardStats", "IdempotencyGuard"]

MAX_KEY_LENGTH = 256

# Record values: a tag byte, then the claim's token (pending) or the outcome (done). The
# token makes a release delete only the claim it made.
_PENDING = b"P"
_DONE = b"D"

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(slots=True)
class Claim:
    """The answer for one key.

    `new`: this caller owns the key and must handle the message, then `complete` (or
    `release` on failure). Otherwise the message is a duplicate: with `pending` False it
    was handled and `outcome` is what the handler recorded, so ack/commit and skip it.
    With `pending` True another handler holds a live lease and has not finished; acking
    then would lose the message if that handler dies, so a consumer that cannot wait
    should hand it back for a later redelivery (nack/requeue) instead.

    Inside `IdempotencyGuard.once`, set `outcome` on a new claim to have it recorded."""

    key: str
    new: bool
    outcome: bytes | None = None
    pending: bool = False


@dataclass(slots=True)
class GuardStats:
    """Counters of one guard (one process): `new` claims won, `duplicates` found;
    `fast_path`: Bloom "no", claimed with one `SET NX` and no read; `exact_checks`: Bloom
    "maybe", the record read first; `false_positives`: exact checks that found no record,
    so the key was claimed as new after all."""

    new: int = 0
    duplicates: int = 0
    fast_path: int = 0
    exact_checks: int = 0
    false_positives: int = 0
    pending_waits: int = 0


def check_key(key: str) -> str:
    """Returns `key` if it can be an idempotency key, else raises `ValueError`."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
        got = f"{len(key)} characters" if isinstance(key, str) else type(key).__name__
        raise ValueError(
            f"idempotency key must be a str of 1..{MAX_KEY_LENGTH} characters, got {got}"
        )
    return key


def _ms(seconds: float, name: str) -> int:
    if not seconds > 0:
        raise ValueError(f"{name} must be positive, got {seconds}")
    return max(1, round(seconds * 1000))


class IdempotencyGuard:
    """Claims idempotency keys for one consumer (see the module doc).

    `redis` must return bytes (`decode_responses=False`, as `connect_redis` makes it);
    `capacity` and `error_rate` size the Bloom filter, which remembers the last
    `capacity` to `2 * capacity` keys of this process."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        namespace: str,
        ttl_s: float = 86400,
        lease_s: float = 60,
        capacity: int = 1_000_000,
        error_rate: float = 0.001,
    ) -> None:
        if not namespace:
            raise ValueError("namespace must not be empty")
        if redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the Redis client must return bytes (decode_responses=False)")
        self._redis = redis
        self._prefix = f"{namespace}:idem:"
        self._ttl_ms = _ms(ttl_s, "ttl_s")
        self._lease_ms = _ms(lease_s, "lease_s")
        self._bloom = RotatingBloomFilter(capacity, error_rate)
        self._release = redis.register_script(_RELEASE)
        # The pending marker of each claim this guard holds, for compare-and-delete; an
        # entry lives until `complete` or `release`, which every `new` claim must reach.
        self._held: dict[str, bytes] = {}
        self._stats = GuardStats()

    @property
    def stats(self) -> GuardStats:
        """A snapshot of the counters."""
        return replace(self._stats)

    @property
    def bloom(self) -> RotatingBloomFilter:
        """The Bloom filter in front of the exact store (read it, do not add to it)."""
        return self._bloom

    def redis_key(self, key: str) -> str:
        """Where the record of `key` lives."""
        return self._prefix + check_key(key)

    async def begin(self, key: str) -> Claim:
        """Claims `key`, or reports it as a duplicate with its record."""
        rkey = self.redis_key(key)
        stats = self._stats
        if key in self._bloom:
            stats.exact_checks += 1
            # bytes: decode_responses is refused in __init__.
            record = cast("bytes | None", await self._redis.get(rkey))
            if record is None:
                stats.false_positives += 1
                record = await self._claim(key, rkey)
        else:
            stats.fast_path += 1
            record = await self._claim(key, rkey)
        self._bloom.add(key)
        if record is None:
            stats.new += 1
            return Claim(key, new=True)
        stats.duplicates += 1
        if record[:1] == _PENDING:
            return Claim(key, new=False, pending=True)
        # A value this guard did not write counts as a finished outcome: never handle twice.
        return Claim(key, new=False, outcome=record[1:] if record[:1] == _DONE else record)

    async def settle(self, key: str, poll_s: float = 0.1) -> Claim:
        """Like `begin`, but a pending claim (another handler still working) is waited
        out: the holder finishes (a finished duplicate) or its lease expires (claimed
        here). Consumers use this, so a message is never acked while only a handler
        that may still crash has it."""
        claim = await self.begin(key)
        deadline = time.monotonic() + self._lease_ms / 1000 + 1
        while claim.pending and time.monotonic() < deadline:
            self._stats.pending_waits += 1
            self._stats.duplicates -= 1  # not decided yet: counted once it is
            await asyncio.sleep(poll_s)
            claim = await self.begin(key)
        return claim

    async def _claim(self, key: str, rkey: str) -> bytes | None:
        """SET NX GET: None when claimed, else the record that was there (one round trip)."""
        marker = _PENDING + uuid.uuid4().bytes
        old = cast(
            "bytes | None",
            await self._redis.set(rkey, marker, nx=True, get=True, px=self._lease_ms),
        )
        if old is None:
            self._held[key] = marker
        return old

    async def complete(self, key: str, outcome: bytes = b"") -> None:
        """Records `outcome` for `key` for `ttl_s`: later deliveries are duplicates.

        Unconditional: the work is done, so even a claim whose lease expired meanwhile
        is better replaced by the outcome than left to be handled again."""
        rkey = self.redis_key(key)
        self._held.pop(key, None)
        await self._redis.set(rkey, _DONE + outcome, px=self._ttl_ms)

    async def release(self, key: str) -> bool:
        """Drops this guard's pending claim of `key` so a redelivery is handled again;
        False when there was none (never claimed here, completed, or lease taken over)."""
        rkey = self.redis_key(key)
        marker = self._held.pop(key, None)
        if marker is None:
            return False
        deleted = await self._release(keys=[rkey], args=[marker])
        return bool(deleted)

    @asynccontextmanager
    async def once(self, key: str) -> AsyncIterator[Claim]:
        """`begin(key)`, then for a new claim: `complete` with `claim.outcome` when the
        block succeeds, `release` (and re-raise) when it fails or is cancelled. The block
        runs either way; it checks `claim.new` to skip duplicates."""
        claim = await self.begin(key)
        if not claim.new:
            yield claim
            return
        try:
            yield claim
        except BaseException:
            await self.release(key)
            raise
        await self.complete(key, claim.outcome or b"")
