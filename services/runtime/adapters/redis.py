"""Redis client factory (redis-py asyncio with the hiredis parser).

Idempotency records, session state, locks and rate limits live here, so timeouts are
short: a Redis that does not answer should fail the operation, not hang it."""

from __future__ import annotations

import redis.asyncio as aioredis

from services.runtime.config import Settings

__all__ = ["connect_redis"]


def connect_redis(
    settings: Settings, *, timeout: float = 5.0, max_connections: int = 64
) -> aioredis.Redis:
    """A pooled asyncio client for `settings.redis_dsn` (hiredis parses replies when
    installed, which the `redis[hiredis]` dependency ensures)."""
    # A blocking pool: a burst of concurrent handlers waits for a connection instead
    # of failing with MaxConnectionsError once the pool is exhausted.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_dsn,
        max_connections=max_connections,
        timeout=timeout,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        health_check_interval=30,
        client_name="agentflux",
    )
    client: aioredis.Redis = aioredis.Redis.from_pool(pool)  # owns and closes the pool
    return client
