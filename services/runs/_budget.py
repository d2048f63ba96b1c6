"""Token budgets: a tenant's per period and a run's, reserved before each model call and
settled after it, atomically in Redis.

A model call first reserves an estimate of what it will spend (`reserve`): one Lua script
checks, in one step, that the tenant's tokens used and reserved this period plus the
estimate stay within `tenant_token_budget`, and the run's within its `max_tokens`, and
records the reservation; concurrent calls of any number of services can never overshoot
together. After the call, `settle` replaces the reservation with the actual usage (on the
tenant's period and the run's usage counters, which `GetRun` and `AgentCompleted` show).

Each reservation is named by a marker (`plan:<step>`, `compose:<step>`) kept in the run's
hash: a redelivered or retried step finds its marker and is let through without a second
reservation, and a second `settle` of the same marker changes nothing, so no step is ever
charged twice. Fail closed: when Redis cannot be reached the call raises, and the caller
makes no model call."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from agentflux.v1 import types_pb2

from services.runs._together import ScriptCall
from services.runtime.config import Settings
from services.runtime.keys import Keys

_REMEMBERED = 4096  # reservations whose period key a budget keeps in memory

__all__ = [
    "OUTPUT_ALLOWANCE",
    "BudgetExceededError",
    "TenantUsage",
    "TokenBudget",
    "estimate_tokens",
]

# What a call may write, beside what it reads: the part of an estimate no input shows.
OUTPUT_ALLOWANCE = 256

# KEYS: run hash, tenant period hash. ARGV: marker, estimate, tenant limit, run limit, ttl.
# {1, "ok"|"again"} reserved (or reserved before: a retried step), {0, "tenant"|"run",
# spent, limit} refused, {0, "unknown"} no such run.
RESERVE = """
local field = 'rsv:' .. ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 'unknown'} end
if redis.call('HEXISTS', KEYS[1], field) == 1 then return {1, 'again'} end
local estimate = tonumber(ARGV[2])
local t_used = tonumber(redis.call('HGET', KEYS[2], 'used') or '0')
local t_reserved = tonumber(redis.call('HGET', KEYS[2], 'reserved') or '0')
if t_used + t_reserved + estimate > tonumber(ARGV[3]) then
  return {0, 'tenant', t_used + t_reserved, tonumber(ARGV[3])}
end
local r_used = tonumber(redis.call('HGET', KEYS[1], 'u_prompt') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'u_completion') or '0')
local r_reserved = tonumber(redis.call('HGET', KEYS[1], 'tok_reserved') or '0')
if r_used + r_reserved + estimate > tonumber(ARGV[4]) then
  return {0, 'run', r_used + r_reserved, tonumber(ARGV[4])}
end
redis.call('HINCRBY', KEYS[2], 'reserved', estimate)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
redis.call('HINCRBY', KEYS[1], 'tok_reserved', estimate)
redis.call('HSET', KEYS[1], field, estimate, 'rsvk:' .. ARGV[1], KEYS[2])
return {1, 'ok'}
"""

# KEYS: run hash, the tenant period hash the reservation was made in.
# ARGV: marker, prompt tokens, completion tokens. 1 settled now, 0 already (or never).
SETTLE = """
local field = 'rsv:' .. ARGV[1]
local reserved = redis.call('HGET', KEYS[1], field)
if not reserved or reserved == 'settled' then return 0 end
reserved = tonumber(reserved)
local spent = tonumber(ARGV[2]) + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], field, 'settled')
redis.call('HINCRBY', KEYS[1], 'tok_reserved', -reserved)
redis.call('HINCRBY', KEYS[1], 'u_prompt', tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[1], 'u_completion', tonumber(ARGV[3]))
redis.call('HSETNX', KEYS[1], 'once:' .. ARGV[1], 1)
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'reserved', -reserved)
  redis.call('HINCRBY', KEYS[2], 'used', spent)
end
return 1
"""


def estimate_tokens(*parts: str | bytes) -> int:
    """A cautious estimate of a call's tokens: about one per four bytes of what it reads,
    plus what it may write."""
    read = sum(len(p.encode("utf-8") if isinstance(p, str) else p) for p in parts)
    return math.ceil(read / 4) + OUTPUT_ALLOWANCE


class BudgetExceededError(Exception):
    """A reservation would exceed a budget; `scope` is "tenant" or "run"."""

    def __init__(self, scope: str, tenant: str, spent: int, limit: int, estimate: int) -> None:
        self.scope, self.tenant = scope, tenant
        self.spent, self.limit, self.estimate = spent, limit, estimate
        if scope == "tenant":
            what = (
                f"tenant {tenant}'s token budget is spent: {spent} of {limit} tokens this "
                f"period (AGENTFLUX_TENANT_TOKEN_BUDGET), and the next model call needs "
                f"about {estimate}"
            )
        else:
            what = (
                f"the run's token budget is spent: {spent} of {limit} tokens "
                f"(limits.max_tokens), and the next model call needs about {estimate}"
            )
        super().__init__(what)

    @property
    def subject(self) -> str:
        """The quota's subject, as a QuotaFailure names it."""
        return f"tenant:{self.tenant}" if self.scope == "tenant" else "run"


@dataclass(frozen=True, slots=True)
class TenantUsage:
    used: int
    reserved: int
    limit: int


class TokenBudget:
    """The token budgets of one namespace (see the module doc)."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.keys = Keys(settings.namespace)
        self.tenant_limit = settings.tenant_token_budget
        self.period_s = settings.budget_period_s
        self.run_cap = settings.run_max_tokens
        self._reserve = redis.register_script(RESERVE)
        self._settle = redis.register_script(SETTLE)
        # The period key of each reservation made here and not yet settled, so settling
        # it needs no read first; a reservation made by another process (a redelivery
        # after a crash) is looked up in the run's record. Bounded: the oldest go first.
        self._periods: dict[tuple[str, str], str] = {}

    def _period_key(self, tenant: str) -> str:
        return self.keys.budget(tenant, int(time.time() // self.period_s))

    def run_limit(self, run: types_pb2.Run) -> int:
        """The run's token limit: its `limits.max_tokens`, within the deployment's cap."""
        asked = run.limits.max_tokens
        return min(asked, self.run_cap) if asked > 0 else self.run_cap

    async def reserve(self, run: types_pb2.Run, marker: str, estimate: int) -> None:
        """Reserves `estimate` tokens for the call `marker` of `run`, or raises
        `BudgetExceededError` (and LookupError for a run that is gone). A marker reserved
        before passes again without a second reservation."""
        period_key = self._period_key(run.tenant_id)
        got: Any = await self._reserve(
            keys=[self.keys.run(run.tenant_id, run.run_id), period_key],
            args=[marker, estimate, self.tenant_limit, self.run_limit(run), self.period_s * 2],
        )
        if int(got[0]):
            if got[1] in (b"ok", "ok"):  # reserved now ("again": before, maybe elsewhere)
                if len(self._periods) >= _REMEMBERED:
                    del self._periods[next(iter(self._periods))]
                self._periods[(run.run_id, marker)] = period_key
            return
        scope = got[1].decode() if isinstance(got[1], bytes) else str(got[1])
        if scope == "unknown":
            raise LookupError(run.run_id)
        raise BudgetExceededError(scope, run.tenant_id, int(got[2]), int(got[3]), estimate)

    async def settle(
        self,
        run: types_pb2.Run,
        marker: str,
        usage: types_pb2.Usage,
        *,
        period_key: str | bytes | None = None,
    ) -> bool:
        """Replaces the reservation of `marker` with the actual `usage`; True the first
        time, False for a marker settled before (a redelivery: never charged twice).
        `period_key`: where the reservation was counted, when the caller knows; else
        this budget remembers it (reserved here) or reads it from the run's record."""
        call = await self.settle_call(run, marker, usage, period_key=period_key)
        return False if call is None else bool(await call.run())

    async def settle_call(
        self,
        run: types_pb2.Run,
        marker: str,
        usage: types_pb2.Usage,
        *,
        period_key: str | bytes | None = None,
    ) -> ScriptCall | None:
        """`settle` to run with other writes (`run_together`: its answer is 1 when it
        settled now); None when there is no reservation of `marker` to settle. Only a
        reservation made by another process costs a read here."""
        run_key = self.keys.run(run.tenant_id, run.run_id)
        remembered = self._periods.pop((run.run_id, marker), None)
        period_key = period_key or remembered
        if period_key is None:
            period_key = await self.redis.hget(run_key, f"rsvk:{marker}")
        if period_key is None:
            return None
        return ScriptCall(
            self._settle,
            [run_key, period_key.decode() if isinstance(period_key, bytes) else period_key],
            [marker, usage.prompt_tokens, usage.completion_tokens],
        )

    async def release(self, run: types_pb2.Run, fields: Mapping[bytes, bytes] | None = None) -> int:
        """Gives back every reservation of `run` never settled (a model call that failed
        and was not retried before the run ended): an ended run holds no tokens of its
        tenant. Returns how many it released; a second call releases none. `fields`:
        the run's record when the caller just read it (as `RunStore.finish` returns it)."""
        record: Mapping[Any, Any] = (
            fields
            if fields is not None
            else await self.redis.hgetall(self.keys.run(run.tenant_id, run.run_id))
        )
        released = 0
        for name, value in (record or {}).items():
            field = name.decode() if isinstance(name, bytes) else str(name)
            if field.startswith("rsv:") and value not in (b"settled", "settled"):
                # Settled without a read: the record names the reservation's period.
                period = record.get(f"rsvk:{field[4:]}".encode())
                released += await self.settle(run, field[4:], types_pb2.Usage(), period_key=period)
        return released

    def gate(self, tenant: str) -> tuple[str, int]:
        """What `RunStore.create` checks a new run against: the tenant's budget key of
        this period, and the tokens used and reserved at which the budget is spent (no
        room left for even the smallest model call: its output allowance)."""
        return self._period_key(tenant), self.tenant_limit - OUTPUT_ALLOWANCE

    async def tenant_usage(self, tenant: str) -> TenantUsage:
        """The tenant's tokens used and reserved in the current period."""
        got: Any = await self.redis.hmget(self._period_key(tenant), ["used", "reserved"])
        used, reserved = (int(v or 0) for v in got)
        return TenantUsage(used, reserved, self.tenant_limit)
