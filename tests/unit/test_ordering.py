"""Lanes and offset watermarks: order per key, concurrency across keys, and a commit
offset that never passes an unfinished record."""

from __future__ import annotations

import asyncio
import random

import pytest

from interceptors._ordering import Lanes, OffsetWatermarks


def test_committable_is_the_lowest_unfinished_offset() -> None:
    marks = OffsetWatermarks()
    assert marks.committable("p") is None
    for offset in (10, 11, 13, 14):  # a gap at 12: compaction or a transaction marker
        assert marks.fetched("p", offset)
    assert marks.committable("p") == 10
    marks.finished("p", 11)
    marks.finished("p", 13)
    assert marks.committable("p") == 10  # 10 still runs: nothing past it
    assert marks.in_flight == 2
    marks.finished("p", 10)
    assert marks.committable("p") == 14
    marks.finished("p", 14)
    assert marks.committable("p") == 15  # all done: one past the last fetched
    assert marks.in_flight == 0


def test_an_offset_fetched_again_is_refused_and_finishing_twice_is_harmless() -> None:
    marks = OffsetWatermarks()
    assert marks.fetched("p", 5)
    assert not marks.fetched("p", 5)
    assert not marks.fetched("p", 3)
    marks.finished("p", 5)
    marks.finished("p", 5)
    assert marks.in_flight == 0
    assert marks.committable("p") == 6


def test_forgetting_a_partition_drops_its_in_flight_count() -> None:
    marks = OffsetWatermarks()
    for offset in range(3):
        marks.fetched("a", offset)
        marks.fetched("b", offset)
    marks.finished("a", 1)
    marks.forget("a")
    assert marks.in_flight == 3
    assert marks.committable("a") is None
    marks.finished("a", 0)  # a late finish of a forgotten partition is ignored
    assert marks.in_flight == 3
    assert marks.fetched("a", 0)  # assigned again: starts afresh


def test_random_interleavings_never_commit_past_an_unfinished_offset() -> None:
    rng = random.Random(7)
    for _ in range(200):
        marks = OffsetWatermarks()
        offsets = sorted(rng.sample(range(1000), 40))
        for offset in offsets:
            marks.fetched("p", offset)
        pending = list(offsets)
        rng.shuffle(pending)
        done: set[int] = set()
        for offset in pending:
            marks.finished("p", offset)
            done.add(offset)
            unfinished = [o for o in offsets if o not in done]
            expected = unfinished[0] if unfinished else offsets[-1] + 1
            assert marks.committable("p") == expected
            assert marks.in_flight == len(unfinished)


async def test_lanes_keep_order_per_key_and_run_keys_concurrently() -> None:
    order: list[str] = []
    gates = {key: asyncio.Event() for key in "ab"}
    lanes = Lanes(on_error=lambda exc: None)

    def job(key: str, n: int) -> object:
        async def run() -> None:
            if n == 0:
                await gates[key].wait()
            order.append(f"{key}{n}")

        return run

    for n in range(3):
        lanes.submit("a", job("a", n))  # type: ignore[arg-type]
        lanes.submit("b", job("b", n))  # type: ignore[arg-type]
    gates["b"].set()
    assert await lanes.wait(["b"], timeout=5)
    assert order == ["b0", "b1", "b2"]  # b ran while a0 waited; a1 waits behind a0
    gates["a"].set()
    assert await lanes.wait(timeout=5)
    assert order == ["b0", "b1", "b2", "a0", "a1", "a2"]
    assert len(lanes) == 0


async def test_a_failing_job_is_reported_and_its_lane_goes_on() -> None:
    errors: list[BaseException] = []
    ran: list[int] = []
    lanes = Lanes(on_error=errors.append)

    async def boom() -> None:
        raise RuntimeError("boom")

    async def fine() -> None:
        ran.append(1)

    lanes.submit("k", boom)
    lanes.submit("k", fine)
    assert await lanes.wait(timeout=5)
    assert [str(e) for e in errors] == ["boom"]
    assert ran == [1]


async def test_cancelling_lanes_stops_the_running_job_and_drops_queued_ones() -> None:
    lanes = Lanes(on_error=lambda exc: None)
    cancelled = asyncio.Event()
    started = asyncio.Event()
    ran: list[str] = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def queued() -> None:
        ran.append("queued")

    lanes.submit("k", forever)
    lanes.submit("k", queued)
    await asyncio.wait_for(started.wait(), 5)
    assert not await lanes.wait(timeout=0.01)
    await lanes.cancel(["k"])
    assert cancelled.is_set()
    assert ran == []
    assert len(lanes) == 0


@pytest.mark.parametrize("n", [1, 50])
async def test_lanes_wait_with_nothing_busy_returns_at_once(n: int) -> None:
    lanes = Lanes(on_error=lambda exc: None)
    assert await lanes.wait(timeout=0)
    for i in range(n):

        async def nothing() -> None:
            return None

        lanes.submit(i, nothing)
    assert await lanes.wait(timeout=5)
