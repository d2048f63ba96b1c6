"""A lease lock with a fencing token, for tools that must run one at a time.

`acquire` is one Lua script: when the lock key is free it `INCR`s `<lock>:token` and
sets the lock (`SET key "<token>:<owner>" PX lease`), so taking the lock and drawing its
token are one atomic step. Release is compare-and-delete and renewal compare-and-pexpire
on that value: a holder whose lease expired cannot release or extend the lock of the one
who took it next. `hold()` renews every lease/3 while its block runs and releases on
exit, cancellation included.

The fencing-token contract. A lease can expire while its holder still works (a pause, a
slow network, a partition from Redis), and the holder cannot know in time. So the lock
alone does not keep two holders apart: the protected resource must. Each acquisition of
a name gets a strictly larger token; pass `lease.token` with every write to the resource,
and the resource must reject a token lower than the highest it has seen (and record the
new highest). A stale holder's writes then fail instead of overwriting. The counter key
never expires, so tokens never go back, and it is never deleted by this module.

Both keys of a name must live on one Redis (one shard: a cluster needs a hash tag in
`Keys.lock`)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.runtime.keys import Keys

__all__ = ["FencedLock", "Lease", "LockTimeout"]

log = logging.getLogger(__name__)

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('PTTL', KEYS[1])}
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], string.format('%d:%s', token, ARGV[1]), 'PX', ARGV[2])
return {1, token}
"""
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

_FIRST_PAUSE_S = 0.005
_MAX_PAUSE_S = 0.1


class LockTimeout(TimeoutError):  # noqa: N818 - the name the issue asked for
    """`hold()` did not get the lock within `wait_s`."""

    def __init__(self, name: str, wait_s: float) -> None:
        super().__init__(f"lock {name!r} not acquired within {wait_s:g} s")
        self.name = name
        self.wait_s = wait_s


@dataclass(frozen=True, slots=True)
class Lease:
    """One acquisition of a lock. `token` is its fencing token: pass it to the protected
    resource with every write (see the module doc). `lost` is set when a renewal found
    the lock gone or taken (or could not reach Redis for a whole lease)."""

    name: str
    token: int
    lease_s: float
    value: bytes = field(repr=False)
    lost: asyncio.Event = field(default_factory=asyncio.Event, compare=False, repr=False)


class FencedLock:
    """Locks named under `Keys(namespace).lock(name)` on one Redis."""

    def __init__(self, redis: aioredis.Redis, namespace: str = "") -> None:
        self._redis = redis
        self._keys = Keys(namespace)
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)
        self._releasing: set[asyncio.Task[Any]] = set()  # strong refs to shielded releases

    def key(self, name: str) -> str:
        """The lock's Redis key (its token counter is `<key>:token`)."""
        if not name:
            raise ValueError("a lock needs a name")
        return self._keys.lock(name)

    async def acquire(self, name: str, *, lease_s: float, wait_s: float) -> Lease | None:
        """Takes the lock for `lease_s`, waiting up to `wait_s` (0: one try); None when
        another holder kept it. Waiting polls with jittered backoff (5 ms doubling to
        100 ms, never past the holder's remaining lease)."""
        self.key(name)  # a bad name fails here, not after the wait
        lease_ms = _ms(lease_s)
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + max(wait_s, 0.0)
        pause = _FIRST_PAUSE_S
        while True:
            won, number = await self._try(name, owner, lease_ms)
            if won:
                return Lease(name, number, lease_s, f"{number}:{owner}".encode())
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            step = pause * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not secrets
            if number > 0:  # the holder's remaining lease, in ms
                step = min(step, number / 1000)
            await asyncio.sleep(max(min(step, left), 0.001))
            pause = min(pause * 2, _MAX_PAUSE_S)

    async def _try(self, name: str, owner: str, lease_ms: int) -> tuple[bool, int]:
        key = self.key(name)
        attempt = asyncio.ensure_future(
            self._acquire(keys=[key, f"{key}:token"], args=[owner, lease_ms])
        )
        try:
            reply = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            # The script may still take the lock: hand it back instead of leaving it
            # held for a whole lease by nobody.
            attempt.add_done_callback(partial(self._undo, name, owner))
            raise
        won, number = cast("list[int]", reply)
        return bool(won), int(number)

    async def release(self, lease: Lease) -> bool:
        """Deletes the lock if `lease` still holds it; False when it expired (and perhaps
        was taken by another holder, whose lock is left alone)."""
        return bool(await self._release(keys=[self.key(lease.name)], args=[lease.value]))

    async def renew(self, lease: Lease, lease_s: float | None = None) -> bool:
        """Extends the lock to `lease_s` (default: the lease's) from now if `lease` still
        holds it; else sets `lease.lost` and returns False."""
        ms = _ms(lease.lease_s if lease_s is None else lease_s)
        held = bool(await self._renew(keys=[self.key(lease.name)], args=[lease.value, ms]))
        if not held:
            lease.lost.set()
        return held

    @asynccontextmanager
    async def hold(self, name: str, *, lease_s: float, wait_s: float) -> AsyncIterator[Lease]:
        """`async with lock.hold(name, lease_s=..., wait_s=...) as lease:` holds the lock
        for the block, renewing it every lease/3, and releases it on exit (on
        cancellation too, shielded). Raises `LockTimeout` when not acquired in `wait_s`.
        The block should check `lease.lost` before a write that needs the lock, and
        pass `lease.token` to the resource in any case."""
        lease = await self.acquire(name, lease_s=lease_s, wait_s=wait_s)
        if lease is None:
            raise LockTimeout(name, wait_s)
        beat = asyncio.create_task(self._heartbeat(lease), name=f"lock heartbeat {name}")
        try:
            yield lease
        finally:
            beat.cancel()
            await asyncio.shield(self._release_in_background(lease.name, lease.value))

    async def _heartbeat(self, lease: Lease) -> None:
        every = lease.lease_s / 3
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(every)
            sent = time.monotonic()
            try:
                held = await self.renew(lease)
            except (RedisError, OSError) as exc:
                if time.monotonic() - renewed < lease.lease_s:
                    log.debug("renewing lock %s failed, retrying: %r", lease.name, exc)
                    continue
                lease.lost.set()
                log.warning("lock %s: Redis unreachable for a whole lease: lost", lease.name)
                return
            if not held:
                log.warning("lock %s (token %d) expired while held", lease.name, lease.token)
                return
            renewed = sent

    def _release_in_background(self, name: str, value: bytes) -> asyncio.Task[None]:
        task = asyncio.create_task(self._release_quietly(name, value))
        self._releasing.add(task)  # a strong reference until it is done
        task.add_done_callback(self._releasing.discard)
        return task

    async def _release_quietly(self, name: str, value: bytes) -> None:
        try:
            await self._release(keys=[self.key(name)], args=[value])
        except (RedisError, OSError) as exc:
            # It expires within one lease anyway.
            log.warning("releasing lock %s failed: %r", name, exc)

    def _undo(self, name: str, owner: str, attempt: asyncio.Future[Any]) -> None:
        """Releases what an acquire attempt abandoned by its caller took, if anything."""
        if attempt.cancelled() or attempt.exception() is not None:
            return
        won, number = cast("list[int]", attempt.result())
        if won:
            self._release_in_background(name, f"{number}:{owner}".encode())


def _ms(seconds: float) -> int:
    if not seconds > 0:
        raise ValueError(f"lease_s must be positive, got {seconds}")
    return max(1, round(seconds * 1000))
