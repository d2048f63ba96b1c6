"""Feature flags from the settings, read through the Memcached cache of the local stack."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from pymemcache.client.base import PooledClient

from services.runtime.adapters.memcached import connect_memcached, connect_memcached_async
from services.runtime.cache import ReadThroughCache
from services.runtime.config import Settings
from services.runtime.flags import FeatureFlags

pytestmark = pytest.mark.integration

NAMES = ("streaming", "approvals", "retrieval")


def _settings(*on: str, **values: object) -> Settings:
    return Settings(_env_file=None, feature_flags=list(on), **values)  # type: ignore[arg-type]


@pytest.fixture
def client(settings: Settings) -> Iterator[PooledClient]:
    c = connect_memcached(settings)
    yield c
    c.close()


@pytest.fixture
def cache(client: PooledClient, settings: Settings, prefix: str) -> Iterator[ReadThroughCache]:
    services_client = connect_memcached_async(settings)
    c = ReadThroughCache(services_client, namespace=prefix, ttl_s=60)
    yield c
    c.close()
    services_client.close()
    for name in NAMES:
        client.delete(c.memcached_key(f"flag:{name}"), noreply=False)


async def test_flags_on_and_off_from_settings_through_the_cache(cache: ReadThroughCache) -> None:
    flags = FeatureFlags(cache, _settings("streaming", "approvals"))
    assert await flags.enabled("streaming") is True
    assert await flags.enabled("approvals") is True
    assert await flags.enabled("retrieval") is False
    assert (cache.stats.misses, cache.stats.loads) == (3, 3)
    # Hot-path reads are served by memcached, not recomputed.
    for _ in range(5):
        assert await flags.enabled("streaming") is True
        assert await flags.enabled("retrieval") is False
    assert (cache.stats.hits, cache.stats.loads) == (10, 3)
    with pytest.raises(ValueError, match="name"):
        await flags.enabled("")


async def test_processes_share_the_copy_until_it_expires(
    client: PooledClient, settings: Settings, prefix: str
) -> None:
    # What the module doc says: the copy in memcached is shared by the namespace's
    # processes, so one restarted with other flags sees them once the copy expires.
    services_client = connect_memcached_async(settings)
    old, new = (ReadThroughCache(services_client, namespace=prefix, ttl_s=1) for _ in range(2))
    try:
        assert await FeatureFlags(old, _settings("retrieval")).enabled("retrieval") is True
        restarted = FeatureFlags(new, _settings())
        assert await restarted.enabled("retrieval") is True  # the shared copy, for now
        # Time is the subject: memcached expires the 1 s copy, in whole seconds.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while await restarted.enabled("retrieval"):
            assert loop.time() < deadline, "the 1 s copy did not expire"
            await asyncio.sleep(0.1)
    finally:
        for c in (old, new):
            c.close()
        services_client.close()
        client.delete(old.memcached_key("flag:retrieval"), noreply=False)


async def test_memcached_down_reads_the_settings(prefix: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = connect_memcached_async(_settings(memcached_servers=f"127.0.0.1:{port}"))
    cache = ReadThroughCache(down, namespace=prefix, ttl_s=60)
    try:
        flags = FeatureFlags(cache, _settings("approvals"))
        assert await flags.enabled("approvals") is True
        assert await flags.enabled("streaming") is False
        assert cache.breaker == "open"
    finally:
        cache.close()
        down.close()
