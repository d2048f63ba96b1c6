"""Redis client factory (redis-py asyncio with the hiredis parser).

Idempotency records, session state, locks and rate limits live here, so timeouts are
short: a Redis that does not answer should fail the operation, not hang it."""

from __future__ import annotations

import redis.asyncio as aioredis

from services.runtime.config import Settings

__all__ = ["connect_redis"]


def connect_redis(settings: Settings, *, timeout: float = 5.0) -> aioredis.Redis:
    """A pooled asyncio client for `settings.redis_dsn` (hiredis parses replies when
    installed, which the `redis[hiredis]` dependency ensures)."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        settings.redis_dsn,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        health_check_interval=30,
        client_name="agentflux",
    )
    return client
