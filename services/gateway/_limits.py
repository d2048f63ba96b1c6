"""Per-tenant sliding-window rate limit: one Redis sorted set per tenant, one Lua script.

Each admitted call adds a member scored with the time it was admitted; a call is admitted
when fewer than `rate_limit` members are younger than `rate_window_s`. The script trims,
counts and adds in one atomic step, so any number of gateways share one exact limit (no
window edge lets through twice the limit, as fixed windows do). The time is Redis's own
(`TIME`), not each gateway's clock: gateways whose clocks disagree still agree on the
window. A refused call is not recorded, so a client that keeps retrying too early does not
push its own window further out, and the answer says when the oldest call leaves the
window: the earliest moment a retry can succeed.

A call that presents an API key is usually read and counted in one round trip: once the
gateway knows which tenant a key belongs to, one script reads the key's record and, only
if it is still a live key of that tenant, counts the call (`admit_key`). A revoked or
unknown key is then refused from the record it read, and counted against nobody."""

from __future__ import annotations

from typing import Any, NoReturn

import redis.asyncio as aioredis
import redis.exceptions

from interceptors import ResourceExhausted, Unavailable, new_id
from services.runtime.config import Settings
from services.runtime.keys import Keys

__all__ = ["RateLimiter"]

# window(key, limit, window in ms, a unique member): {1, 0} when admitted (the member
# added), {0, ms until a retry can succeed} when not (nothing added).
_WINDOW = """
local function window(key, limit, span, member)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  limit = tonumber(limit)
  span = tonumber(span)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - span)
  if redis.call('ZCARD', key) < limit then
    redis.call('ZADD', key, now, member)
    redis.call('PEXPIRE', key, span)
    return {1, 0}
  end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  local wait = tonumber(oldest[2]) + span - now
  if wait < 1 then wait = 1 end
  return {0, wait}
end
"""

# KEYS[1] the tenant's window; ARGV: limit, window (ms), a unique member.
SLIDING_WINDOW = _WINDOW + "return window(KEYS[1], ARGV[1], ARGV[2], ARGV[3])\n"

# KEYS[1] an API key's record (a hash), KEYS[2] the window of tenant ARGV[4]; ARGV[1..3]
# as above. Reads the record and counts the call only when the record is a live key of
# that tenant: {record fields, 1, 0} admitted, {fields, 0, wait} refused, {fields, -1, 0}
# not counted (no record, revoked, or another tenant's key).
KEYED_WINDOW = (
    _WINDOW
    + """
local record = redis.call('HGETALL', KEYS[1])
local tenant, revoked
for i = 1, #record, 2 do
  if record[i] == 'tenant' then tenant = record[i + 1] end
  if record[i] == 'revoked' then revoked = record[i + 1] end
end
if tenant ~= ARGV[4] or revoked == '1' then
  return {record, -1, 0}
end
local got = window(KEYS[2], ARGV[1], ARGV[2], ARGV[3])
return {record, got[1], got[2]}
"""
)


class RateLimiter:
    """Admits or refuses each call of a tenant (see the module doc)."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.keys = Keys(settings.namespace)
        self.limit = settings.rate_limit
        self.window_ms = settings.rate_window_s * 1000
        self._script = redis.register_script(SLIDING_WINDOW)
        self._keyed = redis.register_script(KEYED_WINDOW)

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
        if not admitted:
            self.refuse(tenant, wait_ms)

    async def admit_key(
        self, record_key: str, tenant: str
    ) -> tuple[dict[bytes, bytes], int | None]:
        """One round trip for a call that presents an API key of `tenant`: the key's
        record (HGETALL) and, only when that record is a live key of `tenant`, the call
        counted in the tenant's window. Returns the record's fields and None when the
        call was not counted (no record, revoked, or another tenant's key: the caller
        decides from the record), 0 when it was admitted, else the ms until a retry can
        succeed (`refuse`). Fails closed: no Redis, no call (UNAVAILABLE)."""
        try:
            got: Any = await self._keyed(
                keys=[record_key, self.keys.rate(tenant)],
                args=[self.limit, self.window_ms, new_id(), tenant],
            )
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise Unavailable(
                "the key store and rate limiter (Redis) are unreachable", retry_after=1.0
            ) from exc
        flat, admitted, wait_ms = got[0], int(got[1]), int(got[2])
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        if admitted < 0:
            return fields, None
        return fields, 0 if admitted else wait_ms

    def refuse(self, tenant: str, wait_ms: int) -> NoReturn:
        """RESOURCE_EXHAUSTED for a call of `tenant`, retryable in `wait_ms`."""
        raise ResourceExhausted(
            f"tenant {tenant} made {self.limit} calls in the last {self.window_ms // 1000} s, "
            f"its limit (AGENTFLUX_RATE_LIMIT per AGENTFLUX_RATE_WINDOW_S); retry in "
            f"{wait_ms / 1000:.3f} s",
            reason="RATE_LIMITED",
            retry_after=wait_ms / 1000,
            quota=[(f"tenant:{tenant}", f"{self.limit} calls per {self.window_ms // 1000} s")],
            metadata={"limit": str(self.limit), "window_s": str(self.window_ms // 1000)},
        )
