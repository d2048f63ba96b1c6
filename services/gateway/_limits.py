"""Per-tenant sliding-window rate limit: one Redis sorted set per tenant, one Lua script.

Each admitted call adds a member scored with the time it was admitted; a call is admitted
when fewer than `rate_limit` members are younger than `rate_window_s`. The script trims,
counts and adds in one atomic step, so any number of gateways share one exact limit (no
window edge lets through twice the limit, as fixed windows do). The time is Redis's own
(`TIME`), not each gateway's clock: gateways whose clocks disagree still agree on the
window. A refused call is not recorded, so a client that keeps retrying too early does not
push its own window further out, and the answer says when the oldest call leaves the
window: the earliest moment a retry can succeed."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from interceptors import ResourceExhausted, Unavailable, new_id
from services.runtime.config import Settings
from services.runtime.keys import Keys

__all__ = ["RateLimiter"]

# KEYS[1] the tenant's window; ARGV: limit, window (ms), a unique member.
# Returns {1, 0} when admitted, {0, ms until a retry can succeed} when not.
SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = tonumber(oldest[2]) + window - now
if wait < 1 then wait = 1 end
return {0, wait}
"""


class RateLimiter:
    """Admits or refuses each call of a tenant (see the module doc)."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.keys = Keys(settings.namespace)
        self.limit = settings.rate_limit
        self.window_ms = settings.rate_window_s * 1000
        self._script = redis.register_script(SLIDING_WINDOW)

    async def admit(self, tenant: str) -> None:
        """Returns when the call may go on; RESOURCE_EXHAUSTED with RetryInfo when the
        tenant is over its limit. Fails closed: no Redis, no call (UNAVAILABLE)."""
        try:
            got: Any = await self._script(
                keys=[self.keys.rate(tenant)],
                args=[self.limit, self.window_ms, new_id()],
            )
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise Unavailable("the rate limiter (Redis) is unreachable", retry_after=1.0) from exc
        admitted, wait_ms = int(got[0]), int(got[1])
        if admitted:
            return
        raise ResourceExhausted(
            f"tenant {tenant} made {self.limit} calls in the last {self.window_ms // 1000} s, "
            f"its limit (AGENTFLUX_RATE_LIMIT per AGENTFLUX_RATE_WINDOW_S); retry in "
            f"{wait_ms / 1000:.3f} s",
            reason="RATE_LIMITED",
            retry_after=wait_ms / 1000,
            quota=[(f"tenant:{tenant}", f"{self.limit} calls per {self.window_ms // 1000} s")],
            metadata={"limit": str(self.limit), "window_s": str(self.window_ms // 1000)},
        )
