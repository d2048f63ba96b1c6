"""The Redis adapter against the real local Redis; keys carry the test's prefix."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
import redis.exceptions
import redis.utils
from redis._parsers import _AsyncHiredisParser

from services.runtime.adapters.redis import LeanConnection, LeanPool, connect_redis
from services.runtime.config import Settings
from tests.integration.cache_kit import Relay

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
        assert isinstance(conn, LeanConnection)
        assert isinstance(client.connection_pool, LeanPool)
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


# -- the pool and connection (LeanPool, LeanConnection) -----------------------------------


@pytest.fixture
async def relay(settings: Settings) -> AsyncIterator[Relay]:
    """A relay to the real Redis (connection counts, replies held, reads stopped)."""
    dsn = urlsplit(settings.redis_dsn)
    relay = Relay((dsn.hostname or "127.0.0.1", dsn.port or 6379))
    await relay.start()
    yield relay
    await relay.stop()


def through(relay: Relay, **kwargs: Any) -> aioredis.Redis:
    """The project's client, connecting through `relay`."""
    return connect_redis(Settings(redis_url=f"redis://127.0.0.1:{relay.port}/0"), **kwargs)


async def test_pool_stays_within_its_bound_under_a_burst(relay: Relay, prefix: str) -> None:
    client = through(relay, max_connections=3)
    key = f"{prefix}burst"
    try:
        replies = await asyncio.gather(*(client.incr(key) for _ in range(300)))
        assert sorted(replies) == list(range(1, 301))
        # Callers beyond the third waited for a connection instead of opening one.
        assert relay.accepted <= 3
        assert await client.get(key) == b"300"
    finally:
        await client.delete(key)
        await client.aclose()


async def test_waiting_callers_are_served_and_an_exhausted_pool_times_out(
    settings: Settings, prefix: str
) -> None:
    client = connect_redis(settings, max_connections=1, timeout=0.5)
    pool = client.connection_pool
    assert isinstance(pool, LeanPool)
    key = f"{prefix}queued"
    try:
        held = await pool.get_connection()  # type: ignore[no-untyped-call]
        # Nobody gives the one connection back: a caller gets redis-py's error.
        with pytest.raises(redis.exceptions.ConnectionError, match="No connection available"):
            await client.get(key)
        waiting = [asyncio.create_task(client.incr(key)) for _ in range(20)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while pool.waiting < 20:  # every caller is in the waiting path
            assert loop.time() < deadline, "callers did not queue for the connection"
            await asyncio.sleep(0.01)
        # A newcomer while callers wait takes redis-py's waiting path too (which lets it
        # have a connection free at that moment, as redis-py's own pool does).
        late = asyncio.create_task(client.get(key))
        await pool.release(held)
        assert sorted(await asyncio.gather(*waiting)) == list(range(1, 21))
        assert await late in {None, *(str(i).encode() for i in range(1, 21))}
        assert await client.get(key) == b"20"
        assert pool.waiting == 0
    finally:
        await client.delete(key)
        await client.aclose()


async def test_a_cancelled_command_leaves_no_reply_for_the_next(relay: Relay, prefix: str) -> None:
    client = through(relay, max_connections=1)
    a, b = f"{prefix}a", f"{prefix}b"
    try:
        await client.mset({a: b"A", b: b"B"})
        relay.gate.clear()  # hold Redis's replies
        first = asyncio.create_task(client.get(a))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not relay.held:
            assert loop.time() < deadline, "the reply never reached the relay"
            await asyncio.sleep(0.01)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        relay.gate.set()  # the reply to the cancelled GET now arrives
        # The one connection of the pool: its next caller reads its own reply.
        assert await client.get(b) == b"B"
        assert await client.get(a) == b"A"
    finally:
        relay.gate.set()
        await client.delete(a, b)
        await client.aclose()


async def test_a_connection_the_server_closed_is_replaced(settings: Settings, prefix: str) -> None:
    client = connect_redis(settings, max_connections=1)
    admin = connect_redis(settings)
    key = f"{prefix}killed"
    try:
        await client.set(key, b"v")
        victim = await client.client_id()
        assert await admin.client_kill_filter(_id=str(victim)) == 1
        # The command that finds the connection closed fails (the client has no retry
        # policy, as redis-py's own pool); the pool then makes a new connection.
        with contextlib.suppress(redis.exceptions.ConnectionError):
            await client.get(key)
        assert await client.get(key) == b"v"
        assert await client.client_id() != victim
    finally:
        await admin.delete(key)
        await client.aclose()
        await admin.aclose()


async def test_a_write_that_cannot_drain_times_out_and_drops_the_connection(
    relay: Relay, prefix: str
) -> None:
    client = through(relay, max_connections=1, timeout=0.5)
    key = f"{prefix}big"
    try:
        assert await client.ping() is True
        relay.intake.clear()  # the relay stops reading what the client sends
        # Far more than loopback's socket buffers hold: the write cannot finish.
        with pytest.raises(redis.exceptions.TimeoutError, match="Timeout writing to socket"):
            await client.set(key, b"x" * (64 << 20))
        relay.intake.set()
        # The half-written connection was dropped (had it been reused, the rest of the
        # SET would go first and this GET would read its reply): a new one carries it.
        assert await client.get(key) is None
        assert relay.accepted == 2
        assert await client.set(key, b"small") is True
    finally:
        relay.intake.set()
        await client.delete(key)
        await client.aclose()
