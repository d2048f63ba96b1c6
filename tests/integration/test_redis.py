"""The Redis adapter against the real local Redis; keys carry the test's prefix."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import redis.utils
from redis._parsers import _AsyncHiredisParser

from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(settings: Settings, prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A client from the adapter; every key under the prefix is deleted afterwards."""
    c = connect_redis(settings)
    yield c
    keys = [k async for k in c.scan_iter(match=f"{prefix}*")]
    if keys:
        await c.delete(*keys)
    await c.aclose()


async def test_connects_with_hiredis_parser(client: aioredis.Redis) -> None:
    assert redis.utils.HIREDIS_AVAILABLE
    assert await client.ping() is True
    conn = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        assert isinstance(conn._parser, _AsyncHiredisParser)
    finally:
        await client.connection_pool.release(conn)
    assert await client.client_getname() in ("agentflux", b"agentflux")


async def test_set_nx_with_ttl(client: aioredis.Redis, prefix: str) -> None:
    key = f"{prefix}idem:run-1:call-1"
    assert await client.set(key, b"first", nx=True, px=300) is True
    # The idempotency record exists: a second writer does not overwrite it.
    assert await client.set(key, b"second", nx=True, px=300) is None
    assert await client.get(key) == b"first"
    ttl = await client.pttl(key)
    assert 0 < ttl <= 300

    deadline = asyncio.get_running_loop().time() + 5
    while await client.exists(key):
        assert asyncio.get_running_loop().time() < deadline, "key did not expire"
        await asyncio.sleep(0.05)
    assert await client.get(key) is None
    # Expired: the next writer wins.
    assert await client.set(key, b"second", nx=True, px=300) is True
    assert await client.get(key) == b"second"


async def test_pipeline_runs_commands_atomically_in_order(
    client: aioredis.Redis, prefix: str
) -> None:
    counter, results = f"{prefix}step:1:count", f"{prefix}step:1:results"
    async with client.pipeline(transaction=True) as pipe:
        pipe.incr(counter)
        pipe.rpush(results, b"tool-a")
        pipe.incr(counter)
        pipe.rpush(results, b"tool-b")
        pipe.expire(counter, 60)
        replies = await pipe.execute()
    assert replies == [1, 1, 2, 2, True]
    assert await client.get(counter) == b"2"
    assert await client.lrange(results, 0, -1) == [b"tool-a", b"tool-b"]
    assert 0 < await client.ttl(counter) <= 60
