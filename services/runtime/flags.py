"""Feature flags, read through the Memcached read-through cache.

The source of truth is `Settings.feature_flags` (the names that are on). Reads go
through `ReadThroughCache` with the cache's TTL (`Settings.cache_ttl_s`) because several
services (gateway, planner, worker, composer) check flags on their hot paths: they read
one shared copy per flag, stampede-protected, and a source that later moves out of the
process (a flag service, a file, a database) changes only `_source` below.

What the cache means for the settings: the copy in Memcached is shared by every process
of one namespace, so a process may see a flag as another process's settings had it for
up to one TTL. Processes of one namespace must run with the same flags, and a change of
`AGENTFLUX_FEATURE_FLAGS` takes effect everywhere within `cache_ttl_s` after the restart
(sooner with a new namespace). With Memcached down, each process reads its own settings.
"""

from __future__ import annotations

from services.runtime.cache import ReadThroughCache
from services.runtime.config import Settings

__all__ = ["FeatureFlags"]

_ON, _OFF = b"1", b"0"


class FeatureFlags:
    """`await flags.enabled("name")`: whether a feature flag is on."""

    def __init__(self, cache: ReadThroughCache, settings: Settings) -> None:
        self._cache = cache
        self._on = frozenset(settings.feature_flags)

    async def enabled(self, name: str) -> bool:
        """Whether `name` is on (an unknown flag is off)."""
        if not name:
            raise ValueError("a flag needs a name")
        return await self._cache.get(f"flag:{name}", lambda: self._source(name)) == _ON

    async def _source(self, name: str) -> bytes:
        return _ON if name in self._on else _OFF
