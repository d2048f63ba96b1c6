"""Effectively-once handling at a consumer boundary under at-least-once delivery.

Every message has an identity (its idempotency key, else CloudEvents source + id, else
where it sits in its partition). The exact record of an identity lives in Redis at
`<namespace>:idem:<key>`: a *pending* claim with a short lease while a handler works on
it, then the handler's *outcome* with a long TTL.

A claim is one `SET key marker NX GET PX lease` (NX with GET needs Redis 7.0): one round
trip either claims the key or returns the record already there, finished or pending.
No Bloom filter sits in front of it: a filter's "no" would save nothing (the claim is a
round trip either way) and its "maybe" costs an extra read; `bench/guard.py` measures
both. A batch claims all its keys in one round trip (`begin_many`: one script), and with
`batching` on (the default) so do concurrent callers: claims, outcomes and releases asked
for while a round trip is in flight go out together in the next one, so a consumer
handling many records at once pays one round trip per batch, not per record.

Leases are short and renewed while the handler works (`heartbeat`), so a handler that
crashed frees its key within one lease while a slow live one keeps it. One ticker per
guard renews every held key in one round trip, instead of a task per key. A
failed or cancelled handler releases its claim (compare-and-delete: a claim that expired
and was taken by another handler is left alone) and a redelivery is handled again."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, cast

import redis.asyncio as aioredis
from opentelemetry import context as otel_context
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY as _SUPPRESS

from interceptors._context import random_bytes16

__all__ = ["MAX_KEY_LENGTH", "Claim", "GuardStats", "IdempotencyGuard"]

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 256

# Record values: a tag byte, then the claim's token (pending) or the outcome (done). The
# token makes a release or a renewal touch only the claim it made.
_PENDING = b"P"
_DONE = b"D"

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# A batch of the operations above in one command: KEYS are the records; ARGV[1] the
# lease, ARGV[2] the outcome TTL (ms), then an (operation, value) pair per key. One
# EVALSHA instead of a pipeline of N commands: redis-py packs and parses each command
# of a pipeline in Python (~70 µs of CPU per command here), an argument costs ~2.
# `pcall`, so that a bad key (WRONGTYPE) fails only its own entry, as in a pipeline.
_BATCH = """
local out = {}
for i = 1, #KEYS do
  local key, op, value = KEYS[i], ARGV[2 * i + 1], ARGV[2 * i + 2]
  local r
  if op == 'c' then
    r = redis.pcall('SET', key, value, 'NX', 'GET', 'PX', ARGV[1])
  elseif op == 'd' then
    r = redis.pcall('SET', key, value, 'PX', ARGV[2])
  else
    r = redis.pcall('GET', key)
    if r == value then
      if op == 'r' then
        r = redis.pcall('DEL', key)
      else
        r = redis.pcall('PEXPIRE', key, ARGV[1])
      end
    elseif type(r) ~= 'table' or r.err == nil then
      r = 0
    end
  end
  out[i] = r
end
return out
"""


@dataclass(slots=True)
class Claim:
    """The answer for one key.

    `new`: this caller owns the key and must handle the message, then `complete` (or
    `release` on failure). Otherwise the message is a duplicate: with `pending` False it
    was handled and `outcome` is what the handler recorded, so settle it and skip it.
    With `pending` True another handler holds a live lease and has not finished; settling
    then would lose the message if that handler dies, so wait (`settle`) or hand it back.

    Inside `IdempotencyGuard.once`, set `outcome` on a new claim to have it recorded."""

    key: str
    new: bool
    outcome: bytes | None = None
    pending: bool = False


@dataclass(slots=True)
class GuardStats:
    """Counters of one guard (one process): `new` claims won, `duplicates` found
    (finished records), `pending_waits` (polls of a claim another handler held),
    `renewals` of leases and `lost_leases` (a renewal found the claim gone or taken)."""

    new: int = 0
    duplicates: int = 0
    pending_waits: int = 0
    renewals: int = 0
    lost_leases: int = 0


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


# Operations the pipeliner sends: (kind, redis key, value).
_CLAIM, _DONE_OP, _RELEASE_OP, _RENEW_OP = range(4)
_OP_NAMES = (b"c", b"d", b"r", b"n")  # each kind's name in `_BATCH`
_MAX_BATCH = 512
_Op = tuple[int, str, bytes, "asyncio.Future[Any]", "contextvars.Context | None"]


class _Pipeliner:
    """Sends the guard's commands in pipelines: commands asked for while a round trip
    is in flight wait for it and then go out together, so concurrent handlers share
    round trips and a lone command goes out at once (the next turn of the loop).

    Each batch runs in a task carrying the context of its first command's caller, so a
    traced Redis round trip appears in the trace of a message it served."""

    def __init__(self, guard: IdempotencyGuard) -> None:
        self._guard = guard
        self._queue: list[_Op] = []
        self._task: asyncio.Task[None] | None = None

    def submit(self, kind: int, rkey: str, value: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Only a batch's first command lends its context to the round trip.
        context = None if self._queue else contextvars.copy_context()
        self._queue.append((kind, rkey, value, future, context))
        if self._task is None:
            self._start()
        return future

    def _start(self) -> None:
        # A strong reference (the loop keeps only weak ones) until the batch is done.
        self._task = asyncio.get_running_loop().create_task(
            self._drain(), name="idempotency guard round trip", context=self._queue[0][4]
        )

    async def _drain(self) -> None:
        batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
        try:
            results = await self._guard._send([op[:3] for op in batch])
        except BaseException as exc:
            for _, _, _, future, _ in batch:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (kind, rkey, value, future, _), result in zip(batch, results, strict=True):
                if future.done():
                    # Its caller gave up (cancelled). A claim made for nobody would hold
                    # the key for a whole lease: give it back in the next round trip.
                    if kind == _CLAIM and result is None:
                        self._queue.append((_RELEASE_OP, rkey, value, _settled(), None))
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._task = None
            if self._queue:  # asked for during this round trip: the next one, now
                self._start()


def _settled() -> asyncio.Future[Any]:
    """A future nobody waits for (a release on behalf of a caller that left)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    # Retrieve its outcome whatever it is, so a failed release is not reported as an
    # exception never retrieved (the lease frees the key anyway).
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


class IdempotencyGuard:
    """Claims idempotency keys for one consumer (see the module doc).

    `redis` must return bytes (`decode_responses=False`, as `connect_redis` makes it).
    `lease_s` is how long a claim outlives a handler that stopped renewing it (crashed):
    the longest a redelivery waits for a dead handler's key. `batching` False sends
    every claim, outcome and release as a round trip of its own and renews each held
    key from a task of its own (the behaviour before batching; kept for comparison)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        namespace: str,
        ttl_s: float = 86400,
        lease_s: float = 10,
        batching: bool = True,
    ) -> None:
        if not namespace:
            raise ValueError("namespace must not be empty")
        if redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the Redis client must return bytes (decode_responses=False)")
        self._redis = redis
        self._prefix = f"{namespace}:idem:"
        self._ttl_ms = _ms(ttl_s, "ttl_s")
        self._lease_ms = _ms(lease_s, "lease_s")
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)
        self._batch = redis.register_script(_BATCH)
        # The pending marker of each claim this guard holds, for compare-and-delete; an
        # entry lives until `complete` or `release`, which every `new` claim must reach.
        self._held: dict[str, bytes] = {}
        self._stats = GuardStats()
        self.batching = batching
        self._pipeliner = _Pipeliner(self)
        # Keys under `heartbeat` (how many blocks hold each) and the one ticker renewing them.
        self._beating: dict[str, int] = {}
        self._ticker: asyncio.Task[None] | None = None

    @property
    def stats(self) -> GuardStats:
        """A snapshot of the counters."""
        return replace(self._stats)

    @property
    def lease_s(self) -> float:
        """Seconds a claim lives without renewal."""
        return self._lease_ms / 1000

    def redis_key(self, key: str) -> str:
        """Where the record of `key` lives."""
        return self._prefix + check_key(key)

    def _answer(self, key: str, marker: bytes, record: bytes | None) -> Claim:
        if record is None:
            self._held[key] = marker
            self._stats.new += 1
            return Claim(key, new=True)
        if record[:1] == _PENDING:
            return Claim(key, new=False, pending=True)
        self._stats.duplicates += 1
        # A value this guard did not write counts as a finished outcome: never handle twice.
        return Claim(key, new=False, outcome=record[1:] if record[:1] == _DONE else record)

    async def begin(self, key: str) -> Claim:
        """Claims `key`, or reports it as a duplicate (finished or pending) with its
        record: one `SET NX GET` round trip."""
        rkey = self.redis_key(key)
        marker = _PENDING + random_bytes16()
        if not self.batching:
            old = await self._redis.set(rkey, marker, nx=True, get=True, px=self._lease_ms)
            return self._answer(key, marker, cast("bytes | None", old))
        # A caller cancelled while its claim is on the wire cancels the future; the
        # pipeliner then gives back a claim that was made (see `_Pipeliner._drain`).
        old = await self._pipeliner.submit(_CLAIM, rkey, marker)
        return self._answer(key, marker, cast("bytes | None", old))

    async def _send(self, batch: Sequence[tuple[int, str, bytes]]) -> list[Any]:
        """One round trip for `batch` (a lone claim or outcome as a plain command, since
        a script costs more than one command); errors come back per operation, in order."""
        if len(batch) == 1:
            kind, rkey, value = batch[0]
            try:
                return [await self._command(kind, rkey, value)]
            except aioredis.ResponseError as exc:  # as in a batch
                return [exc]
        args: list[Any] = [self._lease_ms, self._ttl_ms]
        for kind, _, value in batch:
            args += (_OP_NAMES[kind], value)
        results: list[Any] = await self._batch(keys=[op[1] for op in batch], args=args)
        return results

    async def _command(self, kind: int, rkey: str, value: bytes) -> Any:
        """One operation as a command of its own."""
        if kind == _CLAIM:
            return await self._redis.set(rkey, value, nx=True, get=True, px=self._lease_ms)
        if kind == _DONE_OP:
            return await self._redis.set(rkey, value, px=self._ttl_ms)
        if kind == _RELEASE_OP:
            return await self._release(keys=[rkey], args=[value])
        return await self._renew(keys=[rkey], args=[value, self._lease_ms])

    async def begin_many(self, keys: Sequence[str]) -> list[Claim]:
        """`begin` for each key, in one round trip (a batch of records); raises the
        first key's error when Redis refused any claim (then none is taken here)."""
        if not keys:
            return []
        ops = [(_CLAIM, self.redis_key(k), _PENDING + random_bytes16()) for k in keys]
        olds = await self._send(ops)
        for old in olds:
            if isinstance(old, Exception):
                # Claims that were made are given back, so the batch can be asked again.
                made = [
                    (_RELEASE_OP, r, m) for (_, r, m), o in zip(ops, olds, strict=True) if o is None
                ]
                if made:
                    await self._send(made)
                raise old
        return [
            self._answer(k, marker, cast("bytes | None", o))
            for k, (_, _, marker), o in zip(keys, ops, olds, strict=True)
        ]

    async def settle(self, key: str, *, max_wait_s: float | None = None) -> Claim:
        """Like `begin`, but a pending claim (another handler still working) is waited
        out: the holder finishes (a finished duplicate) or stops renewing and its lease
        expires (claimed here). Returns a pending claim only when `max_wait_s` passed.

        Polls back off from 20 ms to a quarter of the lease, so a waiter costs little."""
        claim = await self.begin(key)
        began = time.monotonic()
        delay = 0.02
        warned = False
        while claim.pending:
            waited = time.monotonic() - began
            if max_wait_s is not None and waited >= max_wait_s:
                return claim
            if not warned and waited > 3 * self.lease_s:
                # The holder keeps renewing: alive, but slow or stuck.
                log.warning("key %s still held by another handler after %.0f s", key, waited)
                warned = True
            self._stats.pending_waits += 1
            pause = delay if max_wait_s is None else min(delay, max_wait_s - waited)
            await asyncio.sleep(max(pause, 0.001))
            delay = min(delay * 2, self.lease_s / 4)
            claim = await self.begin(key)
        return claim

    async def renew(self, key: str) -> bool:
        """Extends this guard's claim of `key` by one lease; False when the claim is no
        longer this guard's (completed, released, or expired and taken)."""
        marker = self._held.get(key)
        if marker is None:
            return False
        if self.batching:
            renewed = bool(await self._pipeliner.submit(_RENEW_OP, self.redis_key(key), marker))
        else:
            renewed = bool(
                await self._renew(keys=[self.redis_key(key)], args=[marker, self._lease_ms])
            )
        if renewed:
            self._stats.renewals += 1
        else:
            self._stats.lost_leases += 1
        return renewed

    @asynccontextmanager
    async def heartbeat(self, key: str) -> AsyncIterator[None]:
        """Renews the claim of `key` every third of a lease while the block runs, so
        a live handler keeps its key however long it works."""
        if not self.batching:
            task = asyncio.create_task(self._beat(key), name=f"lease {key}")
            try:
                yield
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            return
        self._beating[key] = self._beating.get(key, 0) + 1
        if self._ticker is None:
            # Outside any message's trace: a renewal serves every held key at once.
            self._ticker = asyncio.get_running_loop().create_task(
                self._tick(), name="idempotency guard leases", context=contextvars.Context()
            )
        try:
            yield
        finally:
            # Gone already when the ticker found the claim lost (and said so).
            left = self._beating.get(key, 0) - 1
            if left > 0:
                self._beating[key] = left
            else:
                self._beating.pop(key, None)

    async def _tick(self) -> None:
        """Renews every key under `heartbeat` each third of a lease, in one round trip;
        ends when none is left (the next `heartbeat` starts it again)."""
        # Renewals are lease upkeep, not work of any message: not traced.
        otel_context.attach(otel_context.set_value(_SUPPRESS, True, otel_context.Context()))
        try:
            while self._beating:
                await asyncio.sleep(self.lease_s / 3)
                held = [(k, m) for k in self._beating if (m := self._held.get(k)) is not None]
                results = await asyncio.gather(
                    *(self._pipeliner.submit(_RENEW_OP, self.redis_key(k), m) for k, m in held),
                    return_exceptions=True,
                )
                for (k, marker), ok in zip(held, results, strict=True):
                    if isinstance(ok, BaseException):
                        # Redis hiccup: the next tick tries again within the lease.
                        log.warning("could not renew the claim of %s: %s", k, ok)
                    elif ok:
                        self._stats.renewals += 1
                    elif k in self._beating and self._held.get(k) == marker:
                        # Still held here, yet gone or taken in Redis (finished meanwhile
                        # is not a loss: `complete` dropped it from `_held`).
                        self._stats.lost_leases += 1
                        log.warning("lost the claim of %s: another handler may run it too", k)
                        del self._beating[k]
        finally:
            self._ticker = None

    async def _beat(self, key: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                if not await self.renew(key):
                    log.warning("lost the claim of %s: another handler may run it too", key)
                    return
            except Exception:  # Redis hiccup: the next beat tries again within the lease
                log.warning("could not renew the claim of %s", key, exc_info=True)

    async def complete(self, key: str, outcome: bytes = b"") -> None:
        """Records `outcome` for `key` for `ttl_s`: later deliveries are duplicates.

        Unconditional: the work is done, so even a claim whose lease expired meanwhile
        is better replaced by the outcome than left to be handled again."""
        rkey = self.redis_key(key)
        self._held.pop(key, None)
        if self.batching:
            await self._pipeliner.submit(_DONE_OP, rkey, _DONE + outcome)
        else:
            await self._redis.set(rkey, _DONE + outcome, px=self._ttl_ms)

    async def release(self, key: str) -> bool:
        """Drops this guard's pending claim of `key` so a redelivery is handled again;
        False when there was none (never claimed here, completed, or lease taken over)."""
        rkey = self.redis_key(key)
        marker = self._held.pop(key, None)
        if marker is None:
            return False
        if self.batching:
            deleted = await self._pipeliner.submit(_RELEASE_OP, rkey, marker)
        else:
            deleted = await self._release(keys=[rkey], args=[marker])
        return bool(deleted)

    @asynccontextmanager
    async def once(self, key: str) -> AsyncIterator[Claim]:
        """`begin(key)`, then for a new claim: renew the lease while the block runs,
        `complete` with `claim.outcome` when it succeeds, `release` (and re-raise) when it
        fails or is cancelled. The block runs either way; it checks `claim.new` to skip
        duplicates."""
        claim = await self.begin(key)
        if not claim.new:
            yield claim
            return
        try:
            async with self.heartbeat(key):
                yield claim
        except BaseException:
            # Shielded: a cancelled handler must still free its key for the redelivery.
            await asyncio.shield(self.release(key))
            raise
        await self.complete(key, claim.outcome or b"")
