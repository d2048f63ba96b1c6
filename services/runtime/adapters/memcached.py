"""Memcached client factory (pymemcache).

Memcached holds only disposable copies (prompt templates, tool metadata, feature
flags): every read has a source to fall back to. Timeouts are therefore tight, so an
unreachable memcached costs a request milliseconds, not seconds."""

from __future__ import annotations

from pymemcache.client.base import PooledClient

from services.runtime.config import Settings

__all__ = ["connect_memcached"]


def connect_memcached(settings: Settings, *, timeout: float = 0.25) -> PooledClient:
    """A thread-safe pooled client for `settings.memcached_address`; values are bytes."""
    return PooledClient(
        settings.memcached_address,
        connect_timeout=timeout,
        timeout=timeout,
        no_delay=True,
        max_pool_size=16,
    )
