"""The read-through cache against the real local memcached (and against a memcached that
is down or does not answer). Every test has its own namespace; its keys are deleted."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import pytest
from pymemcache.client.base import PooledClient

from services.runtime.adapters.memcached import (
    AsyncMemcached,
    connect_memcached,
    connect_memcached_async,
)
from services.runtime.cache import ReadThroughCache
from services.runtime.config import Settings
from tests.integration.cache_kit import Relay

pytestmark = pytest.mark.integration

LOGGER = "services.runtime.cache"


class FakeClock:
    """Both clocks of a cache (Unix time and monotonic), moved by the test."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Source:
    """A `load` that counts its calls (its value ends in `#<call>`) and can be told to
    wait for a gate, take (fake) time, or fail."""

    value: bytes = b"value"
    calls: int = 0
    clock: FakeClock | None = None
    cost_s: float = 0.0
    gate: asyncio.Event | None = None
    fail: bool = False

    async def __call__(self) -> bytes:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.clock is not None:
            self.clock.now += self.cost_s
        if self.fail:
            raise RuntimeError("source down")
        return self.value + b"#%d" % self.calls


@pytest.fixture
def client(settings: Settings) -> Iterator[PooledClient]:
    c = connect_memcached(settings)
    yield c
    c.close()


@pytest.fixture
def caches(
    client: PooledClient, settings: Settings, prefix: str
) -> Iterator[Callable[..., ReadThroughCache]]:
    """Makes caches under the test's namespace, on the services' asyncio client unless
    given one; closes them and deletes what they wrote (through a pymemcache client,
    which also reads the items back in tests)."""
    made: list[ReadThroughCache] = []
    keys: set[str] = set()
    services_client = connect_memcached_async(settings)

    def make(mc: AsyncMemcached | None = None, **kwargs: object) -> ReadThroughCache:
        kwargs.setdefault("ttl_s", 60)
        cache = ReadThroughCache(mc or services_client, namespace=prefix, **kwargs)  # type: ignore[arg-type]
        made.append(cache)
        original = cache.memcached_key

        def tracked(key: str) -> str:
            keys.add(original(key))
            return original(key)

        cache.memcached_key = tracked  # type: ignore[method-assign]
        return cache

    yield make
    for cache in made:
        cache.close()
    services_client.close()
    for key in keys:
        client.delete(key, noreply=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _client_for(port: int, timeout: float = 0.25) -> AsyncMemcached:
    return connect_memcached_async(Settings(memcached_servers=f"127.0.0.1:{port}"), timeout=timeout)


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# -- hits, misses, keys ----------------------------------------------------------------


async def test_miss_loads_and_stores_then_hits(
    caches: Callable[..., ReadThroughCache], client: PooledClient
) -> None:
    cache = caches()
    source = Source(value=b"You are a planner.\x00\xff")
    first = await cache.get("prompt:planner:v1", source)
    assert first == b"You are a planner.\x00\xff#1"
    assert await cache.get("prompt:planner:v1", source) == first
    assert source.calls == 1
    stats = cache.stats
    assert (stats.misses, stats.hits, stats.loads, stats.errors) == (1, 1, 1, 0)
    # One memcached item: a small header, then the value's bytes.
    raw = client.get(cache.memcached_key("prompt:planner:v1"))
    assert raw.endswith(first)
    assert len(raw) - len(first) == 20
    assert cache.memcached_key("prompt:planner:v1").endswith("af:cache:prompt:planner:v1")


async def test_long_and_odd_keys_are_hashed_and_still_cached(
    caches: Callable[..., ReadThroughCache],
) -> None:
    cache = caches()
    odd = ["tool meta\n", "modèle", "x" * 300, "", "tab\there"]
    mkeys = [cache.memcached_key(k) for k in odd]
    assert len(set(mkeys)) == len(odd)
    for mkey in mkeys:
        assert len(mkey) <= 250
        assert all(0x21 <= ord(c) <= 0x7E for c in mkey)
    # A plain key spelled like a hashed one cannot collide with it.
    lookalike = cache.memcached_key(mkeys[0].rsplit("#", 1)[1])
    assert lookalike not in mkeys
    for key in odd:
        source = Source(value=key.encode())
        assert await cache.get(key, source) == key.encode() + b"#1"
        assert await cache.get(key, source) == key.encode() + b"#1"
        assert source.calls == 1


async def test_per_call_ttl_expires_the_item(caches: Callable[..., ReadThroughCache]) -> None:
    cache = caches()
    source = Source()
    assert await cache.get("short", source, ttl_s=1) == b"value#1"
    # memcached counts whole seconds: the item is gone within about two.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while await cache.get("short", source, ttl_s=1) == b"value#1":
        assert loop.time() < deadline, "item did not expire"
        await asyncio.sleep(0.1)
    assert source.calls == 2


async def test_a_value_memcached_refuses_is_served_and_keeps_the_breaker_closed(
    caches: Callable[..., ReadThroughCache],
) -> None:
    cache = caches()
    source = Source(value=b"x" * 3_000_000)  # over memcached's 1 MiB item limit
    assert len(await cache.get("huge", source)) == 3_000_002
    assert len(await cache.get("huge", source)) == 3_000_002
    assert source.calls == 2  # not cached, but served
    assert (cache.stats.errors, cache.stats.breaker_open, cache.breaker) == (2, 0, "closed")
    small = Source()
    await cache.get("small", small)
    assert await cache.get("small", small) == b"value#1"  # memcached still in use
    assert cache.stats.hits == 1


# -- single-flight ---------------------------------------------------------------------


async def test_concurrent_misses_of_one_key_load_once(
    caches: Callable[..., ReadThroughCache],
) -> None:
    cache = caches()
    source = Source(gate=asyncio.Event())
    gets = [asyncio.create_task(cache.get("tool:calculator", source)) for _ in range(100)]
    await _until(lambda: cache.stats.coalesced == 99 and source.calls == 1)
    source.gate.set()  # type: ignore[union-attr]
    values = await asyncio.gather(*gets)
    assert values == [b"value#1"] * 100
    assert source.calls == 1
    stats = cache.stats
    assert (stats.loads, stats.misses, stats.memcached_calls) == (1, 1, 2)  # one get, one set
    # Later readers are hits.
    assert await cache.get("tool:calculator", source) == b"value#1"
    assert source.calls == 1


async def test_a_failing_load_reaches_every_waiter_and_is_not_cached(
    caches: Callable[..., ReadThroughCache],
) -> None:
    cache = caches()
    source = Source(gate=asyncio.Event(), fail=True)
    gets = [asyncio.create_task(cache.get("flaky", source)) for _ in range(10)]
    await _until(lambda: cache.stats.coalesced == 9)
    source.gate.set()  # type: ignore[union-attr]
    results = await asyncio.gather(*gets, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    source.fail, source.gate = False, None
    assert await cache.get("flaky", source) == b"value#2"
    assert source.calls == 2


# -- early recomputation (XFetch) ------------------------------------------------------


def _draw(log_value: float) -> Callable[[], float]:
    """A random source whose draw r gives ln(1 - r) == log_value."""
    r = 1.0 - math.exp(log_value)
    return lambda: r


async def test_xfetch_recomputes_before_expiry(caches: Callable[..., ReadThroughCache]) -> None:
    clock = FakeClock()
    # ln(rand) == -1: a read recomputes once it is within delta * beta of expiry.
    cache = caches(ttl_s=60, beta=1.0, clock=clock, timer=clock, random=_draw(-1.0))
    source = Source(clock=clock, cost_s=2.0)  # the value takes 2 s to compute: delta == 2
    assert await cache.get("template", source) == b"value#1"
    expiry = clock.now + 60
    for before in (50.0, 20.0, 5.0, 2.5):  # further from expiry than delta: hits
        clock.now = expiry - before
        assert await cache.get("template", source) == b"value#1"
    assert source.calls == 1
    clock.now = expiry - 1.5  # within delta of expiry: this reader refreshes, early
    assert await cache.get("template", source) == b"value#2"
    assert clock.now < expiry + 2.0  # the refresh itself took the 2 s
    assert (cache.stats.early_recomputes, cache.stats.loads) == (1, 2)
    # The refreshed item has a new expiry: readers hit again.
    clock.now = expiry + 1.0
    assert await cache.get("template", source) == b"value#2"
    assert source.calls == 2


async def test_xfetch_under_repeated_reads_refreshes_once_before_expiry(
    caches: Callable[..., ReadThroughCache],
) -> None:
    clock = FakeClock()
    rng = random.Random(20150831)
    cache = caches(ttl_s=60, clock=clock, timer=clock, random=rng.random)
    source = Source(clock=clock, cost_s=3.0)
    await cache.get("hot", source)
    expiry = clock.now + 60
    refreshed_at = None
    while clock.now < expiry:  # a hot key: a read every 100 ms until expiry
        clock.now += 0.1
        if await cache.get("hot", source) == b"value#2":
            refreshed_at = clock.now - 3.0  # when the reader decided (before the load)
            break
    assert refreshed_at is not None, "no refresh before expiry"
    assert refreshed_at < expiry
    # Far from expiry the probability is negligible (e^-(40/3) at 40 s out).
    assert refreshed_at > expiry - 40
    assert (cache.stats.early_recomputes, source.calls) == (1, 2)


async def test_xfetch_off_with_beta_zero(caches: Callable[..., ReadThroughCache]) -> None:
    clock = FakeClock()
    cache = caches(ttl_s=60, beta=0.0, clock=clock, timer=clock, random=_draw(-20.0))
    source = Source(clock=clock, cost_s=2.0)
    await cache.get("k", source)
    clock.now += 59.0
    assert await cache.get("k", source) == b"value#1"
    assert cache.stats.early_recomputes == 0


async def test_a_failing_early_refresh_serves_the_cached_value(
    caches: Callable[..., ReadThroughCache],
) -> None:
    clock = FakeClock()
    cache = caches(ttl_s=60, clock=clock, timer=clock, random=_draw(-1.0))
    source = Source(clock=clock, cost_s=2.0)
    await cache.get("k", source)
    clock.now += 59.0
    source.fail = True
    assert await cache.get("k", source) == b"value#1"  # still valid: served
    assert (cache.stats.early_recomputes, source.calls) == (1, 2)


# -- Memcached down --------------------------------------------------------------------


@pytest.fixture
async def proxy(settings: Settings) -> AsyncIterator[Relay]:
    relay = Relay(settings.memcached_address, port=_closed_port())
    yield relay
    await relay.stop()


async def test_memcached_down_serves_from_source_and_the_breaker_skips_it(
    caches: Callable[..., ReadThroughCache],
    proxy: Relay,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    timer = FakeClock()
    down = _client_for(proxy.port)  # nothing listens there yet: connection refused
    try:
        cache = caches(down, cooldown_s=5.0, timer=timer)
        source = Source()
        for i in range(20):
            assert await cache.get(f"k{i}", source) == b"value#%d" % (i + 1)
        stats = cache.stats
        assert stats.memcached_calls == 1, "calls after the first must skip memcached"
        assert (stats.loads, stats.errors, stats.breaker_open) == (20, 1, 1)
        assert stats.bypassed == 39  # the first call's store, then 19 lookups and stores
        assert cache.breaker == "open"

        # After the cool-down one call probes: still down, so open again, no new warning.
        timer.now += 5.0
        assert await cache.get("k-probe", source) == b"value#21"
        assert (cache.stats.memcached_calls, cache.stats.breaker_open) == (2, 2)
        assert cache.breaker == "open"
        await cache.get("k-skip", source)
        assert cache.stats.memcached_calls == 2

        # memcached is back on that address: the next probe closes the breaker.
        await proxy.start()
        timer.now += 5.0
        assert await cache.get("k-back", source) == b"value#23"
        assert cache.breaker == "closed"
        assert cache.stats.memcached_calls == 4  # the probe's lookup and its store
        assert await cache.get("k-back", source) == b"value#23"  # a hit, through memcached
        assert (cache.stats.hits, source.calls) == (1, 23)
    finally:
        down.close()
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unreachable" in warnings[0].getMessage()
    assert any("reachable again" in r.getMessage() for r in caplog.records)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A server that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(128)
        yield int(silent.getsockname()[1])


async def test_calls_queued_behind_a_dead_memcached_skip_it(
    caches: Callable[..., ReadThroughCache], silent_port: int
) -> None:
    mc = _client_for(silent_port)
    try:
        cache = caches(mc, concurrency=4)
        source = Source()
        values = await asyncio.gather(*(cache.get(f"k{i}", source) for i in range(50)))
        assert sorted(values) == sorted(b"value#%d" % (i + 1) for i in range(50))
        # Only the calls already running when the first timed out waited for memcached.
        assert cache.stats.memcached_calls <= 4
        assert cache.stats.breaker_open == 1
    finally:
        mc.close()


async def test_a_non_answering_memcached_does_not_block_the_event_loop(
    caches: Callable[..., ReadThroughCache], silent_port: int
) -> None:
    mc = _client_for(silent_port, timeout=1.0)
    try:
        cache = caches(mc)
        loop = asyncio.get_running_loop()
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(loop.time())
                await asyncio.sleep(0.01)

        probe = asyncio.create_task(ticker())
        began = loop.time()
        value = await cache.get("k", Source())
        took = loop.time() - began
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        assert value == b"value#1"
        assert took >= 0.9, "the call should have waited out memcached's 1 s timeout"
        during = [t for t in ticks if began <= t <= began + took]
        gaps = [b - a for a, b in itertools.pairwise(during)]
        # A blocked loop would show one gap of about a second.
        assert len(during) >= 10
        assert max(gaps) < 0.5
        assert cache.stats.breaker_open == 1
    finally:
        mc.close()


async def test_a_closed_cache_refuses_gets(caches: Callable[..., ReadThroughCache]) -> None:
    cache = caches()
    await cache.get("k", Source())
    cache.close()
    with pytest.raises(RuntimeError):
        await cache.get("other", Source())
