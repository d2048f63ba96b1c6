"""FencedLock against the real local Redis. Two FencedLock instances on two clients stand
for two processes; every key under the test's namespace is deleted afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings
from services.runtime.locks import FencedLock, Lease, LockTimeout

pytestmark = pytest.mark.integration


@pytest.fixture
async def clients(settings: Settings, prefix: str) -> AsyncIterator[list[aioredis.Redis]]:
    made = [connect_redis(settings), connect_redis(settings)]
    yield made
    keys = [k async for k in made[0].scan_iter(match=f"{prefix}*")]
    if keys:
        await made[0].delete(*keys)
    for c in made:
        await c.aclose()


@pytest.fixture
def locks(clients: list[aioredis.Redis], prefix: str) -> tuple[FencedLock, FencedLock]:
    """Two "processes": each its own client and FencedLock, one namespace."""
    return FencedLock(clients[0], prefix), FencedLock(clients[1], prefix)


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_mutual_exclusion_across_processes_with_increasing_tokens(
    locks: tuple[FencedLock, FencedLock],
) -> None:
    inside = 0
    most_inside = 0
    tokens: list[int] = []

    async def worker(lock: FencedLock) -> None:
        nonlocal inside, most_inside
        for _ in range(5):
            async with lock.hold("exclusive-tool", lease_s=5, wait_s=30) as lease:
                inside += 1
                most_inside = max(most_inside, inside)
                tokens.append(lease.token)
                for _ in range(3):  # let the other tasks run while the lock is held
                    await asyncio.sleep(0.002)
                inside -= 1

    await asyncio.gather(*(worker(locks[i % 2]) for i in range(8)))
    assert most_inside == 1
    assert len(tokens) == 40
    # In the order holders got in, each token is the next one: strictly increasing.
    assert tokens == list(range(tokens[0], tokens[0] + 40))


async def test_acquire_gives_up_after_wait_s_and_hold_raises(
    locks: tuple[FencedLock, FencedLock],
) -> None:
    a, b = locks
    lease = await a.acquire("busy", lease_s=10, wait_s=0)
    assert lease is not None
    assert await b.acquire("busy", lease_s=10, wait_s=0) is None
    assert await b.acquire("busy", lease_s=10, wait_s=0.2) is None
    with pytest.raises(LockTimeout, match="busy"):
        async with b.hold("busy", lease_s=10, wait_s=0.1):
            pytest.fail("entered a held lock")
    assert await a.release(lease) is True
    assert await b.acquire("busy", lease_s=10, wait_s=0) is not None


async def test_a_waiter_gets_the_lock_when_it_is_released(
    locks: tuple[FencedLock, FencedLock],
) -> None:
    a, b = locks
    first = await a.acquire("handover", lease_s=30, wait_s=0)
    assert first is not None
    waiter = asyncio.create_task(b.acquire("handover", lease_s=30, wait_s=20))
    await asyncio.sleep(0.05)  # the waiter is polling
    assert not waiter.done()
    assert await a.release(first) is True
    second = await waiter
    assert second is not None
    assert second.token > first.token


async def test_an_expired_holder_cannot_release_or_renew_the_next_holders_lock(
    locks: tuple[FencedLock, FencedLock], clients: list[aioredis.Redis]
) -> None:
    a, b = locks
    stale = await a.acquire("tool", lease_s=0.1, wait_s=0)
    assert stale is not None
    key = a.key("tool")
    # Time is the subject: the lease runs out.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while await clients[0].exists(key):
        assert loop.time() < deadline, "lease did not expire"
        await asyncio.sleep(0.02)
    fresh = await b.acquire("tool", lease_s=30, wait_s=0)
    assert fresh is not None
    assert fresh.token > stale.token

    assert await a.release(stale) is False
    assert await a.renew(stale) is False
    assert stale.lost.is_set()
    # The new holder's lock is untouched: still there, still its, with its lease.
    assert await clients[0].get(key) == fresh.value
    assert await clients[0].pttl(key) > 20_000
    assert await b.renew(fresh) is True
    assert await b.release(fresh) is True
    assert not await clients[0].exists(key)


async def test_hold_renews_past_the_lease_while_working(
    locks: tuple[FencedLock, FencedLock], clients: list[aioredis.Redis]
) -> None:
    a, b = locks
    async with a.hold("long-tool", lease_s=0.6, wait_s=0) as lease:
        # Time is the subject: work for well over two leases.
        await asyncio.sleep(1.5)
        assert await b.acquire("long-tool", lease_s=1, wait_s=0) is None
        assert await clients[0].get(a.key("long-tool")) == lease.value
        assert not lease.lost.is_set()
    assert not await clients[0].exists(a.key("long-tool"))
    assert await b.acquire("long-tool", lease_s=1, wait_s=0) is not None


async def test_cancelling_the_holder_releases_the_lock(
    locks: tuple[FencedLock, FencedLock], clients: list[aioredis.Redis]
) -> None:
    a, b = locks
    entered = asyncio.Event()

    async def holder() -> None:
        async with a.hold("cancel-me", lease_s=30, wait_s=0):
            entered.set()
            await asyncio.Event().wait()  # works until cancelled

    task = asyncio.create_task(holder())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Released at once, not after the 30 s lease.
    assert not await clients[0].exists(a.key("cancel-me"))
    assert await b.acquire("cancel-me", lease_s=1, wait_s=0) is not None


async def test_an_acquire_cancelled_in_flight_hands_the_lock_back(
    locks: tuple[FencedLock, FencedLock], clients: list[aioredis.Redis]
) -> None:
    a, b = locks
    attempt = asyncio.create_task(a.acquire("in-flight", lease_s=30, wait_s=0))
    await asyncio.sleep(0)  # the script is on its way
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    # Whatever the script took is released, not left held for 30 s by nobody.
    free = await b.acquire("in-flight", lease_s=1, wait_s=5)
    assert free is not None
    assert await clients[0].pttl(a.key("in-flight")) <= 1000


async def test_tokens_keep_increasing_across_expiries_and_instances(
    locks: tuple[FencedLock, FencedLock],
) -> None:
    seen: list[Lease] = []
    for i in range(6):
        lease = await locks[i % 2].acquire("counter", lease_s=5, wait_s=0)
        assert lease is not None
        seen.append(lease)
        assert await locks[i % 2].release(lease)
    assert [s.token for s in seen] == list(range(seen[0].token, seen[0].token + 6))


def test_bad_arguments_fail_loudly(locks: tuple[FencedLock, FencedLock]) -> None:
    with pytest.raises(ValueError, match="name"):
        locks[0].key("")
