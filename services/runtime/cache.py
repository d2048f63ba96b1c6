"""A read-through cache on Memcached for hot disposable reads (prompt templates, tool
metadata, feature flags): every value has a source, so Memcached only saves work.

- Memcached calls run on the event loop (`AsyncMemcached`), at most `concurrency` at
  once, under the client's short timeouts and an overall bound, so a slow or dead
  Memcached never stalls the loop and costs a caller at most that bound.
- Single-flight: concurrent `get`s of one key in a process share one lookup and at most
  one `load`, so a miss of a hot key sends one request to the source, not one per caller.
- Early recomputation (XFetch, Vattani et al., "Optimal probabilistic cache stampede
  prevention", VLDB 2015): an item carries its compute time `delta` and its expiry; a
  reader recomputes early when `now - delta * beta * ln(rand) >= expiry`, a probability
  that grows as expiry nears and with the cost of the value. Across processes, one of
  them refreshes a hot key shortly before it expires instead of all of them after.
- Memcached down (refused, timed out, closed): the value is served from the source, one
  warning is logged for the outage, and a circuit breaker skips Memcached for a cool-down
  and then lets one call probe it; the first answer closes it again.

An item is one Memcached value: a 20-byte header (magic, delta, expiry as Unix time) and
the value's bytes. Keys are `<namespace>af:cache:<key>`; a key that is too long or not
printable ASCII becomes `<namespace>af:cache#<sha256 of key>` (no plain key can look
like it)."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import math
import random as _random
import re
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

from services.runtime.adapters.memcached import AsyncMemcached, MemcachedError

__all__ = ["CacheStats", "ReadThroughCache"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_KEY = 250  # memcached's limit
_PRINTABLE = re.compile(r"[\x21-\x7e]*")  # no spaces, no control or non-ASCII characters
_HEADER = struct.Struct("!4sdd")  # magic, delta (s), expiry (Unix s)
_MAGIC = b"AFc1"
_MAX_TTL = 30 * 86400  # beyond this memcached reads `expire` as a Unix time


@dataclass(slots=True)
class CacheStats:
    """Counters since the cache was made (a snapshot from `ReadThroughCache.stats`).

    A lookup is one Memcached read on behalf of one or more coalesced `get`s."""

    hits: int = 0
    """Lookups answered from Memcached."""
    misses: int = 0
    """Lookups Memcached answered without a usable item (absent, expired, unreadable)."""
    loads: int = 0
    """Calls of a `load` (the source)."""
    early_recomputes: int = 0
    """Hits XFetch chose to recompute before expiry (also counted in `loads`)."""
    errors: int = 0
    """Memcached calls that failed (unreachable, timed out, or an error reply)."""
    breaker_open: int = 0
    """Times the breaker opened (outages and failed probes)."""
    bypassed: int = 0
    """Memcached calls skipped because the breaker was open."""
    coalesced: int = 0
    """`get`s that joined a lookup already under way for their key (single-flight)."""
    memcached_calls: int = 0
    """Memcached calls attempted."""


class _Unavailable:
    """Memcached gave no answer (down, breaker open, or an error reply)."""


_UNAVAILABLE = _Unavailable()


class _SkippedError(Exception):
    """A waiting call found that another call failed since it began to wait."""


class _State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"  # one probe is in flight


class ReadThroughCache:
    """`get(key, load)`: the cached bytes of `key`, else `await load()` (then cached).

    `ttl_s` is the default lifetime of an item (1 s to 30 days); `beta` scales XFetch's
    eagerness (1.0 as in the paper; 0 turns early recomputation off). `cooldown_s` is how
    long the breaker skips Memcached after a failure before one call probes it.
    `concurrency` bounds the Memcached calls in flight at once; a call that waited for
    its turn while another one failed skips Memcached. `call_timeout_s` bounds one
    Memcached call, its wait for a turn included (default: the client's connect and
    read timeouts plus 0.25 s). `clock` (Unix time, for expiries shared between
    processes), `timer` (monotonic, for compute times and the breaker) and `random`
    (uniform on [0, 1)) are injectable for tests.

    The cache belongs to the event loop that uses it."""

    def __init__(
        self,
        client: AsyncMemcached,
        *,
        namespace: str,
        ttl_s: int,
        beta: float = 1.0,
        cooldown_s: float = 5.0,
        concurrency: int = 4,
        call_timeout_s: float | None = None,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not _PRINTABLE.fullmatch(namespace) or len(namespace) > 100:
            raise ValueError(f"namespace {namespace!r}: at most 100 printable ASCII characters")
        if beta < 0 or cooldown_s < 0 or concurrency < 1:
            raise ValueError("beta and cooldown_s must be >= 0 and concurrency >= 1")
        self._client = client
        self._prefix = f"{namespace}af:cache"
        self._ttl_s = _check_ttl(ttl_s)
        self._beta = beta
        self._cooldown_s = cooldown_s
        if call_timeout_s is None:
            call_timeout_s = client.connect_timeout + client.timeout + 0.25
        self._call_timeout_s = call_timeout_s
        self._clock, self._timer, self._random = clock, timer, random
        self._turns = asyncio.Semaphore(concurrency)
        self._flights: dict[str, asyncio.Task[bytes]] = {}
        self._stats = CacheStats()
        self._closed = False
        # The breaker; `_trips` counts the outage errors seen so far.
        self._trips = 0
        self._last_error: BaseException | None = None
        self._state = _State.CLOSED
        self._retry_at = 0.0
        self._down_since = 0.0

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        return replace(self._stats)

    @property
    def breaker(self) -> str:
        """`closed` (Memcached in use), `open` (skipped) or `half-open` (being probed)."""
        return self._state.value

    def memcached_key(self, key: str) -> str:
        """Where `key` lives in Memcached (hashed when too long or not printable)."""
        plain = f"{self._prefix}:{key}"
        if key and len(plain) <= _MAX_KEY and _PRINTABLE.fullmatch(key):
            return plain
        return f"{self._prefix}#{hashlib.sha256(key.encode()).hexdigest()}"

    async def get(
        self, key: str, load: Callable[[], Awaitable[bytes]], *, ttl_s: int | None = None
    ) -> bytes:
        """The value of `key`: from Memcached, else from `load()` (then stored for `ttl_s`).

        Concurrent calls for one key share the first call's lookup, `load` and `ttl_s`,
        so every `load` of a key must produce the same value. The shared lookup is not
        cancelled with a caller; an error of `load` reaches every caller sharing it."""
        if self._closed:
            raise RuntimeError("the cache is closed")
        mkey = self.memcached_key(key)
        ttl = self._ttl_s if ttl_s is None else _check_ttl(ttl_s)
        flight = self._flights.get(mkey)
        if flight is None:
            flight = asyncio.create_task(self._lookup(mkey, load, ttl))
            self._flights[mkey] = flight
            flight.add_done_callback(partial(self._landed, mkey))
        else:
            self._stats.coalesced += 1
        return await asyncio.shield(flight)

    def close(self) -> None:
        """Cancels lookups under way (the client is the caller's to close)."""
        self._closed = True
        for flight in list(self._flights.values()):
            flight.cancel()

    # -- one lookup ----------------------------------------------------------------

    def _landed(self, mkey: str, flight: asyncio.Task[bytes]) -> None:
        if self._flights.get(mkey) is flight:
            del self._flights[mkey]
        if not flight.cancelled():
            flight.exception()  # retrieved: every caller that still waits has it

    async def _lookup(self, mkey: str, load: Callable[[], Awaitable[bytes]], ttl: int) -> bytes:
        raw = await self._call(self._client.get, mkey)
        fresh: bytes | None = None  # a valid value XFetch chose to refresh early
        if isinstance(raw, bytes):
            item = _decode(raw)
            if item is not None:
                value, delta, expiry = item
                now = self._clock()
                # 1 - random() is in (0, 1]: ln is finite and <= 0.
                gap = -delta * self._beta * math.log(max(1.0 - self._random(), 1e-300))
                if now + gap < expiry:
                    self._stats.hits += 1
                    return value
                if now < expiry:
                    self._stats.early_recomputes += 1
                    fresh = value
            if fresh is None:
                self._stats.misses += 1
        elif raw is None:
            self._stats.misses += 1
        began = self._timer()
        self._stats.loads += 1
        try:
            value = await load()
        except Exception:
            if fresh is None:
                raise
            # The cached value has not expired yet: the refresh can wait for a later reader.
            log.debug("early refresh of %s failed; serving the cached value", mkey, exc_info=True)
            return fresh
        delta = max(self._timer() - began, 0.0)
        record = _HEADER.pack(_MAGIC, delta, self._clock() + ttl) + value
        await self._call(self._client.set, mkey, record, expire=ttl)
        return value

    # -- Memcached calls and the breaker ---------------------------------------------

    async def _call(
        self, op: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> T | _Unavailable:
        if not self._allow():
            self._stats.bypassed += 1
            return _UNAVAILABLE
        self._stats.memcached_calls += 1
        trips = self._trips
        try:
            async with asyncio.timeout(self._call_timeout_s):
                async with self._turns:
                    # A call that waited while another failed skips memcached, so only
                    # the calls already under way when it went away wait for its timeout.
                    if trips != self._trips:
                        raise _SkippedError
                    result = await op(*args, **kwargs)
        except _SkippedError:
            self._stats.memcached_calls -= 1
            self._stats.bypassed += 1
            self._failed(self._last_error, counted=False)
            return _UNAVAILABLE
        except asyncio.CancelledError:
            if self._state is _State.HALF_OPEN:
                self._state, self._retry_at = _State.OPEN, self._timer()  # probe again
            raise
        except MemcachedError as exc:  # an error reply (say, a value over the size limit)
            self._stats.errors += 1
            self._succeeded()
            log.debug("memcached refused %s: %s", getattr(op, "__name__", op), exc)
            return _UNAVAILABLE
        except (OSError, EOFError) as exc:  # refused, reset, closed, timed out
            self._trip(exc)
            self._failed(exc)
            return _UNAVAILABLE
        self._succeeded()
        return result

    def _trip(self, exc: BaseException) -> None:
        self._last_error = exc
        self._trips += 1

    def _allow(self) -> bool:
        if self._state is _State.CLOSED:
            return True
        if self._state is _State.OPEN and self._timer() >= self._retry_at:
            self._state = _State.HALF_OPEN  # this call is the probe
            return True
        return False

    def _failed(self, exc: BaseException | None, *, counted: bool = True) -> None:
        self._stats.errors += counted
        if self._state is _State.OPEN:
            return  # a call that started before the breaker opened
        if self._state is _State.CLOSED:
            self._down_since = self._timer()
            log.warning(
                "memcached %s unreachable (%r): serving from the source, probing every %.0f s",
                _server(self._client),
                exc,
                self._cooldown_s,
            )
        else:
            log.debug("memcached probe failed: %r", exc)
        self._stats.breaker_open += 1
        self._state, self._retry_at = _State.OPEN, self._timer() + self._cooldown_s

    def _succeeded(self) -> None:
        if self._state is not _State.CLOSED:
            self._state = _State.CLOSED
            log.info(
                "memcached %s reachable again after %.1f s",
                _server(self._client),
                self._timer() - self._down_since,
            )


def _check_ttl(ttl_s: int) -> int:
    if not 1 <= ttl_s <= _MAX_TTL:
        raise ValueError(f"ttl_s must be 1 to {_MAX_TTL} seconds, got {ttl_s}")
    return ttl_s


def _decode(raw: bytes) -> tuple[bytes, float, float] | None:
    if len(raw) < _HEADER.size or raw[:4] != _MAGIC:
        return None  # not written by this cache: a miss, overwritten by the next load
    _, delta, expiry = _HEADER.unpack_from(raw)
    if not (math.isfinite(delta) and math.isfinite(expiry)):
        return None
    return raw[_HEADER.size :], max(delta, 0.0), expiry


def _server(client: AsyncMemcached) -> str:
    host, port = client.server
    return f"{host}:{port}"
