"""The Bloom filters in front of the idempotency store: sizing, no false negatives,
a false-positive rate that matches the configuration, and bits that do not depend on
the process (Python's `hash()` is salted per process)."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from interceptors import _bloom
from interceptors._bloom import BloomFilter, RotatingBloomFilter, optimal_size

N = 100_000
# Where this process imported `interceptors` from: the child must run the same code.
SOURCE_ROOT = str(Path(_bloom.__file__).parents[1])


def inserted(i: int) -> str:
    return f"run-{i}:step-3:call-{i % 7}"


def absent(i: int) -> str:
    return f"never-{i}"


def false_positive_rate(bloom: BloomFilter | RotatingBloomFilter, n: int = N) -> float:
    return sum(absent(i) in bloom for i in range(n)) / n


@pytest.mark.parametrize(
    ("capacity", "rate", "bits", "hashes"),
    [
        # The textbook figures: m = -n ln p / (ln 2)^2, k = (m / n) ln 2.
        (1_000, 0.01, 9_586, 7),
        (1_000_000, 0.001, 14_377_588, 10),
        (100_000, 0.5, 144_270, 1),
    ],
)
def test_optimal_size(capacity: int, rate: float, bits: int, hashes: int) -> None:
    assert optimal_size(capacity, rate) == (bits, hashes)
    bloom = BloomFilter(capacity, rate)
    assert (bloom.m, bloom.k) == (bits, hashes)
    assert len(bloom.to_bytes()) == math.ceil(bits / 8)
    assert len(bloom) == 0
    assert bloom.expected_error_rate() == 0.0


@pytest.mark.parametrize(("capacity", "rate"), [(0, 0.01), (10, 0.0), (10, 1.0), (10, -0.1)])
def test_invalid_sizes_are_refused(capacity: int, rate: float) -> None:
    with pytest.raises(ValueError, match=r"capacity|error_rate"):
        BloomFilter(capacity, rate)
    with pytest.raises(ValueError, match=r"capacity|error_rate"):
        RotatingBloomFilter(capacity, rate)


@pytest.fixture(scope="module", params=[0.01, 0.001], ids=["1%", "0.1%"])
def full(request: pytest.FixtureRequest) -> BloomFilter:
    """A filter holding exactly its capacity of keys."""
    bloom = BloomFilter(N, request.param)
    for i in range(N):
        bloom.add(inserted(i))
    return bloom


def test_no_false_negatives(full: BloomFilter) -> None:
    missing = [i for i in range(N) if inserted(i) not in full]
    assert missing == []
    # str keys are their UTF-8 bytes.
    assert inserted(42).encode() in full


def test_false_positive_rate_matches_configuration(full: BloomFilter) -> None:
    measured = false_positive_rate(full)
    # Within 2x of the configured rate, and not far below it either: a filter that
    # answered "no" too often would have degenerate (correlated) indexes.
    assert full.error_rate / 2 <= measured <= full.error_rate * 2, measured
    assert full.error_rate / 2 <= full.expected_error_rate() <= full.error_rate * 1.05


def test_add_reports_keys_it_may_have_seen() -> None:
    bloom = BloomFilter(1_000, 0.01)
    assert bloom.add("k-1") is True
    assert bloom.add("k-1") is False
    assert bloom.add(b"k-1") is False
    assert len(bloom) == 1  # re-adding does not make the filter look fuller
    assert "k-2" not in bloom
    assert 1 not in bloom


def test_rotation_keeps_rate_bounded() -> None:
    capacity, rate = 20_000, 0.01
    rotating = RotatingBloomFilter(capacity, rate)
    plain = BloomFilter(capacity, rate)
    for i in range(3 * capacity):
        rotating.add(inserted(i))
        plain.add(inserted(i))
    assert rotating.rotations >= 2
    # A plain filter at 3x its capacity says "maybe" to almost anything.
    assert false_positive_rate(plain) > 0.3
    measured = false_positive_rate(rotating)
    assert measured <= 2 * rate, measured
    assert rotating.expected_error_rate() <= rate
    # The most recent `capacity` keys are always remembered.
    assert all(inserted(i) in rotating for i in range(2 * capacity, 3 * capacity))


_BITS_OF = """
import hashlib, sys
from interceptors._bloom import BloomFilter
bloom = BloomFilter(10_000, 0.01)
for i in range(1_000):
    bloom.add(f"key-{i}")
sys.stdout.write(hashlib.sha256(bloom.to_bytes()).hexdigest())
"""


def test_same_bits_in_every_process() -> None:
    bloom = BloomFilter(10_000, 0.01)
    for i in range(1_000):
        bloom.add(f"key-{i}")
    here = hashlib.sha256(bloom.to_bytes()).hexdigest()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": SOURCE_ROOT}
        done = subprocess.run(
            [sys.executable, "-c", _BITS_OF],
            capture_output=True,
            text=True,
            cwd=SOURCE_ROOT,
            env=env,
            timeout=60,
            check=True,
        )
        assert done.stdout == here
