"""Token budgets on the real Redis: reservations that never overshoot together, settled
once, a retried step never charged twice, and the run's usage as `GetRun` shows it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from agentflux.v1 import types_pb2

from services.runs import BudgetExceededError, RunStore, TokenBudget
from services.runtime.config import Settings
from tests.integration.test_runs import created, namespace, redis  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def usage(prompt: int, completion: int) -> types_pb2.Usage:
    return types_pb2.Usage(prompt_tokens=prompt, completion_tokens=completion)


def budget(redis: Any, namespace: str, **limits: Any) -> TokenBudget:  # noqa: F811
    return TokenBudget(redis, Settings(namespace=namespace, **limits))


@pytest.fixture
def store(redis: Any, namespace: str) -> RunStore:  # noqa: F811
    return RunStore(redis, namespace=namespace)


async def test_reserve_then_settle_charges_the_actual_usage_once(
    store: RunStore,
    redis: Any,  # noqa: F811
    namespace: str,  # noqa: F811
) -> None:
    tokens = budget(redis, namespace, tenant_token_budget=1000)
    run = await created(store)
    await tokens.reserve(run, "plan:0", 300)
    held = await tokens.tenant_usage(run.tenant_id)
    assert (held.used, held.reserved) == (0, 300)
    assert await tokens.settle(run, "plan:0", usage(40, 10))
    # A redelivered step settles again: nothing changes.
    assert not await tokens.settle(run, "plan:0", usage(40, 10))
    # A retried step reserves again: let through, not reserved twice.
    await tokens.reserve(run, "plan:0", 300)
    after = await tokens.tenant_usage(run.tenant_id)
    assert (after.used, after.reserved) == (50, 0)
    got = await store.get(run.tenant_id, run.run_id)
    assert got is not None
    assert (got.usage.prompt_tokens, got.usage.completion_tokens, got.usage.total_tokens) == (
        40,
        10,
        50,
    )


async def test_concurrent_reservations_never_overshoot_the_tenant_budget(
    store: RunStore,
    redis: Any,  # noqa: F811
    namespace: str,  # noqa: F811
) -> None:
    tokens = budget(redis, namespace, tenant_token_budget=1000)
    runs = [await created(store) for _ in range(8)]

    async def reserve(run: types_pb2.Run, i: int) -> str:
        try:
            await tokens.reserve(run, f"plan:{i}", 100)
        except BudgetExceededError as over:
            return over.subject
        return "reserved"

    got = await asyncio.gather(*(reserve(r, i) for r in runs for i in range(5)))
    assert got.count("reserved") == 10  # 40 tries of 100 against 1000: exactly ten fit
    assert got.count(f"tenant:{runs[0].tenant_id}") == 30
    held = await tokens.tenant_usage(runs[0].tenant_id)
    assert held.reserved == 1000


async def test_a_run_is_held_to_its_own_max_tokens_and_the_cap(
    store: RunStore,
    redis: Any,  # noqa: F811
    namespace: str,  # noqa: F811
) -> None:
    tokens = budget(redis, namespace, run_max_tokens=500)
    run = await created(store)
    run.limits.max_tokens = 300
    await tokens.reserve(run, "plan:0", 200)
    await tokens.settle(run, "plan:0", usage(150, 50))
    with pytest.raises(BudgetExceededError) as over:
        await tokens.reserve(run, "compose:0", 101)
    assert over.value.scope == "run"
    assert (over.value.spent, over.value.limit) == (200, 300)
    assert "limits.max_tokens" in str(over.value)
    await tokens.reserve(run, "compose:0", 100)  # exactly what is left fits
    # Zero asks for the deployment's cap; more than the cap is held to it.
    uncapped = await created(store)
    uncapped.limits.max_tokens = 10_000
    assert tokens.run_limit(uncapped) == 500
    uncapped.limits.max_tokens = 0
    assert tokens.run_limit(uncapped) == 500


async def test_an_unknown_run_reserves_nothing(
    store: RunStore,
    redis: Any,  # noqa: F811
    namespace: str,  # noqa: F811
) -> None:
    tokens = budget(redis, namespace)
    run = types_pb2.Run(run_id="gone", tenant_id="acme")
    with pytest.raises(LookupError):
        await tokens.reserve(run, "plan:0", 10)
    assert (await tokens.tenant_usage("acme")).reserved == 0


async def test_fail_closed_when_redis_is_unreachable(namespace: str) -> None:  # noqa: F811
    import redis.asyncio as aioredis
    import redis.exceptions

    # A port nothing listens on (loopback): the reservation raises, never lets through.
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    try:
        tokens = TokenBudget(dead, Settings(namespace=namespace))
        with pytest.raises(redis.exceptions.ConnectionError):
            await tokens.reserve(types_pb2.Run(run_id="r", tenant_id="acme"), "plan:0", 10)
    finally:
        await dead.aclose()


async def test_an_ended_run_gives_back_what_it_never_settled(
    store: RunStore,
    redis: Any,  # noqa: F811
    namespace: str,  # noqa: F811
) -> None:
    tokens = budget(redis, namespace, tenant_token_budget=1000)
    run = await created(store)
    await tokens.reserve(run, "plan:0", 300)
    await tokens.settle(run, "plan:0", usage(20, 5))
    await tokens.reserve(run, "compose:0", 400)  # its model call failed for good
    assert (await tokens.tenant_usage(run.tenant_id)).reserved == 400
    assert await tokens.release(run) == 1
    assert await tokens.release(run) == 0
    held = await tokens.tenant_usage(run.tenant_id)
    assert (held.used, held.reserved) == (25, 0)
