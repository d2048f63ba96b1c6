"""Bloom filters for skipping lookups whose answer is almost always "not there", pure
Python.

A Bloom filter answers "surely new" or "maybe seen" in memory. In front of a read-only
lookup on a stream of mostly new items (is this tool output or embedding cached?), its
"no" skips the read: `bench/guard.py` measured 950 of 1000 reads skipped at 95% new
items. It never gives a false "new", so its "no" can be trusted; its "maybe" is wrong
with a bounded probability, and the caller confirms it against the exact store. It does
not belong in front of the idempotency claim: that claim is one `SET NX GET` round trip
whatever the answer, so a "no" saves nothing (measured in the same bench).

Indexes come from one 128-bit BLAKE2b digest by enhanced double hashing (Dillinger and
Manolios), so every process maps a key to the same bits (`hash()` is salted per
process) and a lookup costs one digest and `k` integer steps."""

from __future__ import annotations

import math
from hashlib import blake2b

__all__ = ["BloomFilter", "RotatingBloomFilter"]

_MASK64 = (1 << 64) - 1
_LN2_SQUARED = math.log(2) ** 2


def optimal_size(capacity: int, error_rate: float) -> tuple[int, int]:
    """(m bits, k hashes) that hold `capacity` keys at false-positive rate `error_rate`."""
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1, got {capacity}")
    if not 0.0 < error_rate < 1.0:
        raise ValueError(f"error_rate must be in (0, 1), got {error_rate}")
    m = math.ceil(-capacity * math.log(error_rate) / _LN2_SQUARED)
    k = max(1, round(m / capacity * math.log(2)))
    return m, k


class BloomFilter:
    """A fixed-size Bloom filter sized for `capacity` keys at `error_rate`.

    Past `capacity` keys the false-positive rate climbs towards 1; use
    `RotatingBloomFilter` when the stream of keys has no end."""

    __slots__ = ("_bits", "_count", "_m", "_rounds", "capacity", "error_rate", "k", "m")

    def __init__(self, capacity: int, error_rate: float) -> None:
        self.capacity = capacity
        self.error_rate = error_rate
        self.m, self.k = optimal_size(capacity, error_rate)
        self._m = self.m
        self._rounds = range(self.k)
        self._bits = bytearray((self.m + 7) // 8)
        self._count = 0

    def _probe(self, key: str | bytes) -> tuple[int, int]:
        """The first index and the step of `key`'s index sequence."""
        data = key.encode() if isinstance(key, str) else key
        h = int.from_bytes(blake2b(data, digest_size=16).digest(), "little")
        return (h & _MASK64) % self._m, (h >> 64) % self._m

    def _has(self, x: int, y: int) -> bool:
        bits, m = self._bits, self._m
        for i in self._rounds:
            if not bits[x >> 3] & (1 << (x & 7)):
                return False
            # Enhanced double hashing: the growing step keeps indexes apart even when
            # y shares a factor with m (plain x + i*y would then cycle early).
            x = (x + y) % m
            y = (y + i) % m
        return True

    def _set(self, x: int, y: int) -> bool:
        bits, m = self._bits, self._m
        fresh = False
        for i in self._rounds:
            byte, bit = x >> 3, 1 << (x & 7)
            if not bits[byte] & bit:
                bits[byte] |= bit
                fresh = True
            x = (x + y) % m
            y = (y + i) % m
        if fresh:
            self._count += 1
        return fresh

    def add(self, key: str | bytes) -> bool:
        """Adds `key`; False when all its bits were set already (it may have been seen).

        Only keys that set a bit are counted, so re-adding known keys does not make the
        filter look fuller than it is."""
        return self._set(*self._probe(key))

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str | bytes):
            return False
        return self._has(*self._probe(key))

    def __len__(self) -> int:
        return self._count

    def expected_error_rate(self) -> float:
        """The theoretical false-positive rate at the current fill."""
        return (1.0 - math.exp(-self.k * self._count / self.m)) ** self.k

    def to_bytes(self) -> bytes:
        """A copy of the bit array (for snapshots and comparisons)."""
        return bytes(self._bits)


class RotatingBloomFilter:
    """Two generations of `BloomFilter`, so the false-positive rate stays bounded on an
    endless stream: when the current generation holds `capacity` keys the previous one
    is dropped and a fresh current begins. It remembers the last `capacity` to
    `2 * capacity` keys; a forgotten key just takes the slower exact path.

    Each generation is sized for `error_rate / 2`, so a key absent from both is reported
    "maybe" with probability at most `error_rate` even when both are full."""

    __slots__ = ("_current", "_previous", "capacity", "error_rate", "rotations")

    def __init__(self, capacity: int, error_rate: float) -> None:
        optimal_size(capacity, error_rate)  # validates with the caller's numbers
        self.capacity = capacity
        self.error_rate = error_rate
        self.rotations = 0
        self._current = BloomFilter(capacity, error_rate / 2)
        self._previous: BloomFilter | None = None

    def add(self, key: str | bytes) -> bool:
        """Adds `key` to the current generation (a key seen again survives the next
        rotation); False when it may have been there already."""
        fresh = self._current.add(key)
        if len(self._current) >= self.capacity:
            self._previous = self._current
            self._current = BloomFilter(self.capacity, self.error_rate / 2)
            self.rotations += 1
        return fresh

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str | bytes):
            return False
        x, y = self._current._probe(key)  # both generations share m and k: one digest
        if self._current._has(x, y):
            return True
        return self._previous is not None and self._previous._has(x, y)

    def __len__(self) -> int:
        return len(self._current) + (len(self._previous) if self._previous else 0)

    def expected_error_rate(self) -> float:
        """The theoretical rate of "maybe" for a key in neither generation."""
        miss = 1.0 - self._current.expected_error_rate()
        if self._previous is not None:
            miss *= 1.0 - self._previous.expected_error_rate()
        return 1.0 - miss
