"""The run records' guarantees (services.runs), on the real Redis.

Each test has its own key namespace, deleted afterwards. The guarantees are the package
doc's and the gateway contract's: what is written once stays written once under
concurrent callers (`asyncio.gather`) and redelivery (the same call again), a run's end
is final, readers see what was just written, and the records expire with the configured
retention. Waits are on conditions (what Redis holds), never on fixed sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast
from unittest import mock

import pytest
import redis.asyncio as aioredis
from agentflux.v1 import gateway_pb2, types_pb2
from google.protobuf import struct_pb2
from redis.exceptions import ResponseError

from services.runs import (
    BudgetSpentError,
    RunStore,
    StreamGapError,
    appended,
    completion_of,
    counted,
    finished,
    run_together,
)
from services.runtime.adapters.redis import LeanConnection, connect_redis
from services.runtime.config import Settings
from tests.integration.runtime_kit import eventually

pytestmark = pytest.mark.integration

TENANT = "acme"
PENDING = types_pb2.RUN_STATUS_PENDING
RUNNING = types_pb2.RUN_STATUS_RUNNING
COMPLETED = types_pb2.RUN_STATUS_COMPLETED
FAILED = types_pb2.RUN_STATUS_FAILED
CANCELLED = types_pb2.RUN_STATUS_CANCELLED
CANCELLING = types_pb2.RUN_STATUS_CANCELLING
SUCCEEDED = types_pb2.TOOL_CALL_STATUS_SUCCEEDED
Event = gateway_pb2.StreamRunResponse
MANY = 20  # concurrent callers


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = connect_redis(settings)
    yield client
    await client.aclose()


@pytest.fixture
async def namespace(redis: aioredis.Redis) -> AsyncIterator[str]:
    """The test's own key namespace; every key under it is deleted afterwards."""
    ns = f"t{uuid.uuid4().hex[:12]}."
    yield ns
    keys = [key async for key in redis.scan_iter(match=f"{ns}*", count=1000)]
    if keys:
        await redis.unlink(*keys)


@pytest.fixture
def store(redis: aioredis.Redis, namespace: str) -> RunStore:
    return RunStore(redis, namespace=namespace)


def new_run(run_id: str = "", conversation_id: str = "conv-1") -> types_pb2.Run:
    return types_pb2.Run(
        run_id=run_id or f"run-{uuid.uuid4().hex[:12]}",
        tenant_id=TENANT,
        conversation_id=conversation_id,
        prompt="what is 6*7",
        limits=types_pb2.RunLimits(max_steps=4),
    )


async def created(store: RunStore, run_id: str = "", **kw: Any) -> types_pb2.Run:
    run, new = await store.create(new_run(run_id, **kw))
    assert new
    return run


def delta(text: str) -> Event:
    return Event(answer_delta=gateway_pb2.AnswerDelta(text=text))


def kinds(events: list[Event]) -> list[str]:
    return [cast("str", e.WhichOneof("event")) for e in events]


def tool_result(run_id: str, step: int, index: int, value: float = 0) -> types_pb2.ToolResult:
    return types_pb2.ToolResult(
        tool_call_id=f"{run_id}.{step}.{index:03d}",
        name="calculator",
        status=SUCCEEDED,
        output=struct_pb2.Value(number_value=value),
    )


async def events_of(store: RunStore, run_id: str) -> list[Event]:
    return await store.read_events(TENANT, run_id, "")


@pytest.fixture
def frozen_ms() -> Iterator[list[int]]:
    """`_now_ms` of the store, patched: runs are created at the millisecond the test
    puts in the list (its last value), so several can share one."""
    now = [time.time_ns() // 1_000_000]
    with mock.patch("services.runs._store._now_ms", side_effect=lambda: now[-1]):
        yield now


# -- create ----------------------------------------------------------------------------


async def test_create_stores_the_run_and_its_accepted_event_and_reads_see_them(
    store: RunStore,
) -> None:
    run, new = await store.create(new_run())
    assert new
    assert run.status == PENDING
    # Read-your-writes: right after create, every read finds the run.
    got = await store.get(TENANT, run.run_id)
    assert got is not None
    assert (got.run_id, got.status, got.prompt) == (run.run_id, PENDING, run.prompt)
    assert got.create_time == run.create_time
    events = await events_of(store, run.run_id)
    assert kinds(events) == ["accepted"]
    assert events[0].accepted.run.run_id == run.run_id
    assert events[0].accepted.run.status == PENDING
    assert events[0].event_id
    listed, _ = await store.list_runs(TENANT, page_size=10, after=None)
    assert [r.run_id for r in listed] == [run.run_id]


async def test_a_reader_that_sees_the_run_sees_its_accepted_event(store: RunStore) -> None:
    run = new_run()

    async def observe() -> None:
        seen = None
        while seen is None:  # each read is a round trip to Redis: no busy loop
            seen = await store.get(TENANT, run.run_id)
        # Written at once: no reader finds the run without its event or its listing.
        assert kinds(await events_of(store, run.run_id)) == ["accepted"]
        listed, _ = await store.list_runs(TENANT, page_size=10, after=None)
        assert [r.run_id for r in listed] == [run.run_id]

    observers = [asyncio.create_task(observe()) for _ in range(5)]
    await asyncio.sleep(0)  # the observers are polling before the run exists
    await store.create(run)
    await asyncio.wait_for(asyncio.gather(*observers), 10)


async def test_a_retried_request_id_returns_the_first_run_and_appends_nothing(
    store: RunStore,
) -> None:
    first, new = await store.create(new_run(), "req-1")
    assert new
    retry = new_run()
    again, new = await store.create(retry, "req-1")
    assert not new
    assert again.run_id == first.run_id
    assert again.create_time == first.create_time
    assert kinds(await events_of(store, first.run_id)) == ["accepted"]
    assert await store.get(TENANT, retry.run_id) is None
    assert not await store.events_exist(TENANT, retry.run_id)
    listed, _ = await store.list_runs(TENANT, page_size=10, after=None)
    assert [r.run_id for r in listed] == [first.run_id]
    # Without a request id nothing is deduplicated.
    a, new_a = await store.create(new_run())
    b, new_b = await store.create(new_run())
    assert new_a
    assert new_b
    assert a.run_id != b.run_id


async def test_a_tenant_whose_budget_is_spent_gets_no_run_and_nothing_is_written(
    store: RunStore,
) -> None:
    period = store.keys.budget(TENANT, 1)
    await store.redis.hset(period, mapping={"used": 700, "reserved": 100})
    run = new_run()
    with pytest.raises(BudgetSpentError) as spent:
        await store.create(run, "req-spent", budget=(period, 800))
    assert (spent.value.used, spent.value.reserved) == (700, 100)
    assert await store.get(TENANT, run.run_id) is None
    assert await store.redis.exists(store.keys.request(TENANT, "req-spent")) == 0
    # One token below the mark: created, and the budget is only read.
    made, new = await store.create(run, "req-spent", budget=(period, 801))
    assert new
    assert made.status == PENDING
    assert await store.redis.hgetall(period) == {b"used": b"700", b"reserved": b"100"}
    # No budget key yet (nothing spent this period): created.
    _, new = await store.create(new_run(), budget=(store.keys.budget(TENANT, 2), 1))
    assert new


async def test_concurrent_creates_with_one_request_id_make_exactly_one_run(
    store: RunStore,
) -> None:
    runs = [new_run() for _ in range(MANY)]
    got = await asyncio.gather(*(store.create(run, "req-once") for run in runs))
    assert sum(new for _, new in got) == 1
    winner = next(run for run, new in got if new)
    assert {run.run_id for run, _ in got} == {winner.run_id}
    assert kinds(await events_of(store, winner.run_id)) == ["accepted"]
    listed, _ = await store.list_runs(TENANT, page_size=100, after=None)
    assert [r.run_id for r in listed] == [winner.run_id]
    for loser in runs:
        if loser.run_id != winner.run_id:
            assert await store.get(TENANT, loser.run_id) is None


# -- append_once -----------------------------------------------------------------------


async def test_one_marker_appends_once_even_from_concurrent_callers(store: RunStore) -> None:
    run = await created(store)
    ids = await asyncio.gather(
        *(
            store.append_once(TENANT, run.run_id, "delta:0", delta(f"piece {i}"))
            for i in range(MANY)
        )
    )
    appended = [(i, event_id) for i, event_id in enumerate(ids) if event_id is not None]
    assert len(appended) == 1
    [(winner, event_id)] = appended
    events = await events_of(store, run.run_id)
    assert kinds(events) == ["accepted", "answer_delta"]
    assert events[1].event_id == event_id
    assert events[1].answer_delta.text == f"piece {winner}"
    # The same call again (a redelivery) appends nothing; another marker does.
    assert await store.append_once(TENANT, run.run_id, "delta:0", delta("again")) is None
    assert await store.append_once(TENANT, run.run_id, "delta:1", delta("next")) is not None
    assert kinds(await events_of(store, run.run_id)) == ["accepted"] + ["answer_delta"] * 2


async def test_nothing_is_appended_after_the_run_finished(store: RunStore) -> None:
    run = await created(store)
    assert await store.append_once(TENANT, run.run_id, "delta:0", delta("The answer"))
    await store.finish(TENANT, run.run_id, COMPLETED, answer=types_pb2.Answer(text="The answer"))
    late = await asyncio.gather(
        *(store.append_once(TENANT, run.run_id, f"delta:{i}", delta("late")) for i in range(MANY))
    )
    assert late == [None] * MANY
    assert kinds(await events_of(store, run.run_id)) == ["accepted", "answer_delta", "finished"]
    assert await store.append_once(TENANT, "no-such-run", "delta:0", delta("x")) is None
    assert not await store.events_exist(TENANT, "no-such-run")


async def test_finished_stays_last_when_appends_race_the_end(store: RunStore) -> None:
    run = await created(store)
    appends = [
        store.append_once(TENANT, run.run_id, f"delta:{i}", delta(f"p{i}")) for i in range(MANY)
    ]
    half = MANY // 2  # the end is asked for in the middle of the appends
    got = await asyncio.gather(
        *appends[:half], store.finish(TENANT, run.run_id, FAILED, error="boom"), *appends[half:]
    )
    ids = [cast("str | None", i) for n, i in enumerate(got) if n != half]
    events = await events_of(store, run.run_id)
    assert kinds(events)[-1] == "finished"
    assert kinds(events).count("finished") == 1
    appended = [e.event_id for e in events if e.HasField("answer_delta")]
    assert sorted(appended) == sorted(i for i in ids if i is not None)  # none lost, none extra


# -- set_running -----------------------------------------------------------------------


async def test_set_running_moves_a_run_on_and_never_after_its_end(store: RunStore) -> None:
    run = await created(store)
    assert await store.set_running(TENANT, run.run_id, 0)
    got = await store.get(TENANT, run.run_id)
    assert got is not None
    assert (got.status, got.step_count) == (RUNNING, 1)
    assert await store.set_running(TENANT, run.run_id, 2)
    assert await store.set_running(TENANT, run.run_id, 1)  # an older step, redelivered
    got = await store.get(TENANT, run.run_id)
    assert got is not None
    assert (got.status, got.step_count) == (RUNNING, 3)  # the count never goes back
    await store.finish(TENANT, run.run_id, FAILED, error="boom", steps=3)
    assert not await store.set_running(TENANT, run.run_id, 3)
    got = await store.get(TENANT, run.run_id)
    assert got is not None
    assert (got.status, got.step_count) == (FAILED, 3)
    assert not await store.set_running(TENANT, "no-such-run", 0)
    assert await store.get(TENANT, "no-such-run") is None


# -- finish ----------------------------------------------------------------------------


async def test_one_of_many_concurrent_finishers_wins_and_all_see_its_end(
    store: RunStore,
) -> None:
    run = await created(store)
    await store.set_running(TENANT, run.run_id, 0)

    async def finisher(i: int) -> Any:
        if i % 2:
            return await store.finish(TENANT, run.run_id, FAILED, error=f"error {i}", steps=1)
        answer = types_pb2.Answer(text=f"answer {i}")
        return await store.finish(TENANT, run.run_id, COMPLETED, answer=answer, steps=1)

    ends = await asyncio.gather(*(finisher(i) for i in range(MANY)))
    stored = await store.get(TENANT, run.run_id)
    assert stored is not None
    assert stored.status in (COMPLETED, FAILED)
    claims = {f"answer {i}" if i % 2 == 0 else f"error {i}" for i in range(MANY)}
    said = stored.answer.text if stored.status == COMPLETED else stored.error_message
    assert said in claims
    if stored.status == COMPLETED:
        assert stored.error_message == ""
    else:
        assert stored.answer.text == ""
    for end in ends:  # every finisher learns the one stored end
        assert end is not None
        assert end.status == stored.status
        assert end.run == stored
    events = await events_of(store, run.run_id)
    assert kinds(events).count("finished") == 1
    assert kinds(events)[-1] == "finished"
    assert events[-1].finished.status == completion_of(stored.status)


async def test_a_cancellation_requested_before_the_end_wins_over_completed(
    store: RunStore,
) -> None:
    run = await created(store)
    await store.set_running(TENANT, run.run_id, 0)
    await store.request_cancel(TENANT, run.run_id, "changed my mind")
    end = await store.finish(
        TENANT, run.run_id, COMPLETED, answer=types_pb2.Answer(text="42"), steps=1
    )
    assert end is not None
    assert end.status == CANCELLED
    assert end.run.status == CANCELLED
    assert end.run.error_message == "changed my mind"
    assert end.run.answer.text == ""
    finished = (await events_of(store, run.run_id))[-1].finished
    assert finished.status == types_pb2.COMPLETION_STATUS_CANCELLED
    assert finished.error_message == "changed my mind"


async def test_finish_after_finish_returns_the_stored_end_unchanged(store: RunStore) -> None:
    run = await created(store)
    first = await store.finish(TENANT, run.run_id, FAILED, error="boom", steps=1)
    assert first is not None
    assert (first.status, first.run.error_message) == (FAILED, "boom")
    again = await store.finish(
        TENANT, run.run_id, COMPLETED, answer=types_pb2.Answer(text="late"), steps=5
    )
    assert again is not None
    assert again.status == FAILED
    assert again.run == first.run  # status, error, steps and update time: all as stored
    later = await store.finish(TENANT, run.run_id, FAILED, error="boom")  # a redelivery
    assert later is not None
    assert later.run == first.run
    assert kinds(await events_of(store, run.run_id)) == ["accepted", "finished"]


async def test_finishing_an_unknown_run_returns_none_and_writes_nothing(
    store: RunStore,
) -> None:
    assert await store.finish(TENANT, "no-such-run", COMPLETED) is None
    assert await store.get(TENANT, "no-such-run") is None
    assert not await store.events_exist(TENANT, "no-such-run")


# -- request_cancel --------------------------------------------------------------------


async def test_the_first_cancel_reason_wins_and_the_run_is_returned_as_it_is(
    store: RunStore,
) -> None:
    run = await created(store)
    await store.set_running(TENANT, run.run_id, 0)
    got = await store.request_cancel(TENANT, run.run_id, "first")
    assert got is not None
    assert got.status == CANCELLING  # not CANCELLED while the cancellation spreads
    assert "first" in got.error_message
    reasons = await asyncio.gather(
        *(store.request_cancel(TENANT, run.run_id, f"reason {i}") for i in range(MANY))
    )
    assert all(r is not None and r.status == CANCELLING for r in reasons)
    # A later step starting does not make it RUNNING again, nor can a tool call begin.
    await store.set_running(TENANT, run.run_id, 1)
    assert (await store.get(TENANT, run.run_id)).status == CANCELLING  # type: ignore[union-attr]
    assert not await store.begin_call(TENANT, run.run_id, f"{run.run_id}.1.000")
    assert await store.cancel_reason(TENANT, run.run_id) == "first"
    end = await store.finish(TENANT, run.run_id, FAILED, error="a tool failed")
    assert end is not None
    assert (end.status, end.run.error_message) == (CANCELLED, "first")
    assert await store.request_cancel(TENANT, "no-such-run", "x") is None
    assert await store.get(TENANT, "no-such-run") is None


async def test_cancelling_a_finished_run_leaves_it_unchanged(store: RunStore) -> None:
    run = await created(store)
    end = await store.finish(TENANT, run.run_id, COMPLETED, answer=types_pb2.Answer(text="42"))
    assert end is not None
    got = await store.request_cancel(TENANT, run.run_id, "too late")
    assert got == end.run
    assert await store.cancel_reason(TENANT, run.run_id) is None
    assert await store.get(TENANT, run.run_id) == end.run
    assert kinds(await events_of(store, run.run_id)) == ["accepted", "finished"]


# -- record_result ---------------------------------------------------------------------


async def test_exactly_one_caller_gathers_a_steps_results(store: RunStore) -> None:
    run = await created(store)
    n = 12  # past ten: the ids sort in plan order because they are zero-padded
    results = [tool_result(run.run_id, 0, i, value=i) for i in range(n)]
    got = await asyncio.gather(
        *(store.record_result(TENANT, run.run_id, 0, r, n) for r in reversed(results))
    )
    gathered = [(r, all_) for r, all_ in zip(reversed(results), got, strict=True) if all_]
    assert len(gathered) == 1
    completing, everything = gathered[0]
    assert everything == results  # all of them, in tool_call_id (plan) order
    assert [x.tool_call_id for x in everything] == sorted(x.tool_call_id for x in results)
    # The completing caller again (a redelivery) gets them again ...
    again = await store.record_result(TENANT, run.run_id, 0, completing, n)
    assert again == results
    # ... a different caller recording its result again does not.
    other = next(r for r in results if r.tool_call_id != completing.tool_call_id)
    assert await store.record_result(TENANT, run.run_id, 0, other, n) is None
    # Another step gathers on its own.
    assert await store.record_result(TENANT, run.run_id, 1, tool_result(run.run_id, 1, 0), 1)


async def test_a_result_of_an_unknown_run_creates_no_run(store: RunStore) -> None:
    result = tool_result("no-such-run", 0, 0)
    assert await store.record_result(TENANT, "no-such-run", 0, result, 1) is None
    assert await store.get(TENANT, "no-such-run") is None
    assert not await store.redis.exists(store.keys.run(TENANT, "no-such-run"))


async def test_results_before_reads_the_earlier_steps_in_step_then_plan_order(
    store: RunStore,
) -> None:
    run = await created(store)
    steps = 12  # past ten: step 10 comes after step 9, not after step 1
    expected: list[types_pb2.ToolResult] = []
    for step in range(steps):
        count = 11 if step == 0 else 2
        results = [tool_result(run.run_id, step, i, value=step * 100 + i) for i in range(count)]
        expected += results
        for r in reversed(results):
            await store.record_result(TENANT, run.run_id, step, r, count)
    assert await store.results_before(TENANT, run.run_id, 0) == []
    assert await store.results_before(TENANT, run.run_id, 1) == expected[:11]
    everything = await store.results_before(TENANT, run.run_id, steps)
    assert everything == expected
    assert [r.output.number_value for r in everything][-4:] == [1000, 1001, 1100, 1101]
    # The step being composed is not included; unknown steps give nothing.
    assert await store.results_before(TENANT, run.run_id, steps - 1) == expected[:-2]
    assert await store.results_before(TENANT, run.run_id, steps + 3) == expected
    assert await store.results_before(TENANT, "no-such-run", 3) == []


# -- counters and sessions -------------------------------------------------------------


async def test_counters_count_once_per_marker_and_make_up_the_usage(store: RunStore) -> None:
    run = await created(store)
    totals = await asyncio.gather(
        *(store.add_once(TENANT, run.run_id, "calls:0", calls=3) for _ in range(MANY))
    )
    assert totals == [[3]] * MANY
    assert await store.add_once(TENANT, run.run_id, "calls:1", calls=2) == [5]
    assert await store.add_once(TENANT, run.run_id, "calls:1", calls=2) == [5]  # redelivered
    usage = types_pb2.Usage(prompt_tokens=10, completion_tokens=5)
    await asyncio.gather(
        *(store.add_usage(TENANT, run.run_id, "plan:0", usage) for _ in range(MANY))
    )
    composed = types_pb2.Usage(prompt_tokens=7, completion_tokens=3)
    await store.add_usage(TENANT, run.run_id, "compose:0", composed)
    await store.add_usage(TENANT, run.run_id, "compose:0", composed)
    got = await store.get(TENANT, run.run_id)
    assert got is not None
    assert got.usage == types_pb2.Usage(prompt_tokens=17, completion_tokens=8, total_tokens=25)
    end = await store.finish(TENANT, run.run_id, COMPLETED, answer=types_pb2.Answer(text="42"))
    assert end is not None
    assert end.run.usage.total_tokens == 25
    assert end.run.answer.usage == end.run.usage
    assert await store.add_once(TENANT, "no-such-run", "calls:0", calls=1) == []
    assert await store.get(TENANT, "no-such-run") is None


async def test_a_run_counts_once_as_a_turn_of_its_session(store: RunStore) -> None:
    first = await created(store, conversation_id="conv-9")
    answer = types_pb2.Answer(text="a")
    ends = await asyncio.gather(
        *(
            store.finish(TENANT, first.run_id, COMPLETED, answer=answer, conversation_id="conv-9")
            for _ in range(MANY)
        )
    )
    assert all(end is not None for end in ends)
    session = await store.session(TENANT, "conv-9")
    assert session == {"turns": "1", "last_run": first.run_id, "last_status": str(COMPLETED)}
    second = await created(store, conversation_id="conv-9")
    end = await store.finish(TENANT, second.run_id, FAILED, error="boom")
    assert end is not None
    await store.finish(TENANT, second.run_id, FAILED, conversation_id="conv-9")
    await store.finish(TENANT, second.run_id, FAILED, conversation_id="conv-9")
    session = await store.session(TENANT, "conv-9")
    assert session == {"turns": "2", "last_run": second.run_id, "last_status": str(FAILED)}
    # An unknown run is no turn, and leaves no record behind.
    await store.finish(TENANT, "no-such-run", COMPLETED, conversation_id="conv-9")
    assert (await store.session(TENANT, "conv-9"))["turns"] == "2"
    assert not await store.redis.exists(store.keys.run(TENANT, "no-such-run"))


async def test_a_call_begins_with_its_started_event_once(store: RunStore) -> None:
    run = await created(store)
    started = Event(tool_started=gateway_pb2.ToolStarted(attempt=1))
    began = await asyncio.gather(
        *(
            store.begin_call(TENANT, run.run_id, "c1", started=("started:c1:1", started))
            for _ in range(MANY)
        )
    )
    assert all(began)  # beginning again is not refused (a redelivery runs the call)
    kinds = [e.WhichOneof("event") for e in await store.read_events(TENANT, run.run_id, "")]
    assert kinds.count("tool_started") == 1  # the event, once per marker
    await store.request_cancel(TENANT, run.run_id, "stop")
    assert not await store.begin_call(TENANT, run.run_id, "c2", started=("started:c2:1", started))
    kinds = [e.WhichOneof("event") for e in await store.read_events(TENANT, run.run_id, "")]
    assert kinds.count("tool_started") == 1  # a call that may not begin announces nothing


async def test_a_record_is_kept_beside_an_event_even_after_the_run_ended(store: RunStore) -> None:
    run = await created(store)
    key = store.keys.result(TENANT, run.run_id, "c1")
    assert await store.append_once(
        TENANT, run.run_id, "finished:c1", delta("a"), record=(key, b"result-1", 60)
    )
    assert await store.redis.get(key) == b"result-1"
    assert 0 < await store.redis.ttl(key) <= 60
    await store.finish(TENANT, run.run_id, COMPLETED)
    # Nothing is appended to an ended run, but the record is still written.
    assert not await store.append_once(
        TENANT, run.run_id, "finished:c2", delta("b"), record=(key, b"result-2", 60)
    )
    assert await store.redis.get(key) == b"result-2"


async def test_finishing_with_the_conversation_counts_the_turn_once(store: RunStore) -> None:
    run = await created(store, conversation_id="conv-f")
    ends = await asyncio.gather(
        *(
            store.finish(TENANT, run.run_id, COMPLETED, conversation_id="conv-f")
            for _ in range(MANY)
        )
    )
    assert all(end is not None and end.status == COMPLETED for end in ends)
    session = await store.session(TENANT, "conv-f")
    assert session == {"turns": "1", "last_run": run.run_id, "last_status": str(COMPLETED)}
    # Finishing again (a redelivery): still one turn.
    await store.finish(TENANT, run.run_id, COMPLETED, conversation_id="conv-f")
    assert (await store.session(TENANT, "conv-f"))["turns"] == "1"
    # An ended run's fields come back with its end: no read after it.
    assert ends[0] is not None
    assert ends[0].fields[b"status"] == str(COMPLETED).encode()
    # Without the conversation, no turn is counted (the gateway's own failures).
    other = await created(store, conversation_id="conv-g")
    await store.finish(TENANT, other.run_id, FAILED, error="kafka refused it")
    assert await store.session(TENANT, "conv-g") == {}


async def test_a_snapshot_reads_run_cancel_memory_and_session_at_once(store: RunStore) -> None:
    run = await created(store, conversation_id="conv-s")
    await store.redis.lpush(store.keys.memory(TENANT, "conv-s"), b"older", b"newest")
    await store.redis.hset(store.keys.session(TENANT, "conv-s"), mapping={"turns": "3"})
    seen = await store.snapshot(TENANT, run.run_id, "conv-s", session=True)
    assert seen.run is not None
    assert seen.run.run_id == run.run_id
    assert (seen.cancel_reason, seen.memory, seen.session) == (
        None,
        ["newest", "older"],
        {"turns": "3"},
    )
    assert (await store.snapshot(TENANT, run.run_id, "conv-s")).session == {}  # not asked for

    await store.request_cancel(TENANT, run.run_id, "user asked")
    assert (await store.snapshot(TENANT, run.run_id, "conv-s")).cancel_reason == "user asked"

    # A message naming another conversation than its run's: the run's is read.
    other = await store.snapshot(TENANT, run.run_id, "conv-other", session=True)
    assert (other.memory, other.session) == (["newest", "older"], {"turns": "3"})

    unknown = await store.snapshot(TENANT, "no-such-run", "conv-s", session=True)
    assert (unknown.run, unknown.cancel_reason, unknown.memory) == (None, None, [])


@contextlib.contextmanager
def round_trips() -> Iterator[list[int]]:
    """Counts the round trips every connection of the project's Redis client makes
    meanwhile (a command, or a whole pipeline, is sent as one packed write)."""
    sent = [0]
    original = LeanConnection.send_packed_command

    async def counting(self: LeanConnection, *args: Any, **kwargs: Any) -> None:
        sent[0] += 1
        await original(self, *args, **kwargs)

    with mock.patch.object(LeanConnection, "send_packed_command", counting):
        yield sent


async def test_a_snapshot_can_record_a_result_mark_the_step_and_read_earlier_results(
    store: RunStore,
) -> None:
    run = await created(store, conversation_id="conv-r")
    first = tool_result(run.run_id, 0, 0, value=1)
    await store.record_result(TENANT, run.run_id, 0, first, 1)
    done = [tool_result(run.run_id, 1, i, value=10 + i) for i in range(2)]
    await store.snapshot(TENANT, run.run_id, "conv-r")  # scripts loaded, as in a service
    await store.record_result(TENANT, run.run_id, 9, tool_result(run.run_id, 9, 0), 9)
    with round_trips() as sent:
        seen = await store.snapshot(
            TENANT, run.run_id, "conv-r", record=(1, done[1], 2), earlier_than=1
        )
    assert sent == [1]
    assert seen.step_results is None  # the step is not complete yet
    assert seen.earlier == [first]
    with round_trips() as sent:
        seen = await store.snapshot(
            TENANT, run.run_id, "conv-r", record=(1, done[0], 2), earlier_than=1, running_step=1
        )
    assert sent == [1]
    assert seen.step_results == done  # this result completed the step: all of it, in order
    assert seen.running is True
    assert seen.run is not None
    assert seen.run.status == PENDING
    got = await store.get(TENANT, run.run_id)
    assert got is not None
    assert (got.status, got.step_count) == (RUNNING, 2)
    # The same result again (a redelivery) is told the step's results again.
    again = await store.snapshot(TENANT, run.run_id, "conv-r", record=(1, done[0], 2))
    assert again.step_results == done
    # An ended run is not marked running, and says so.
    await store.finish(TENANT, run.run_id, COMPLETED)
    ended = await store.snapshot(TENANT, run.run_id, "conv-r", running_step=2)
    assert ended.running is False
    got = await store.get(TENANT, run.run_id)
    assert got is not None
    assert got.status == COMPLETED
    # An unknown run: nothing recorded, nothing marked, nothing created.
    unknown = await store.snapshot(
        TENANT, "no-such-run", "conv-r", record=(0, first, 1), running_step=0, earlier_than=2
    )
    assert (unknown.run, unknown.step_results, unknown.running, unknown.earlier) == (
        None,
        None,
        False,
        [],
    )
    assert await store.redis.exists(store.keys.run(TENANT, "no-such-run")) == 0


async def test_writes_run_together_in_order_in_one_round_trip(store: RunStore) -> None:
    run = await created(store)
    writes = [
        store.append_call(TENANT, run.run_id, "delta:0", delta("a")),
        store.add_call(TENANT, run.run_id, "calls:0", calls=2),
        store.finish_call(TENANT, run.run_id, COMPLETED),
        store.append_call(TENANT, run.run_id, "delta:1", delta("after the end")),
    ]
    await store.add_once(TENANT, run.run_id, "warm", calls=0)  # scripts known to Redis
    await store.append_once(TENANT, run.run_id, "warm", delta(""))
    await store.finish(TENANT, "no-such-run", COMPLETED)
    with round_trips() as sent:
        got = await run_together(store.redis, writes)
    assert sent == [1]
    assert appended(got[0]) is not None
    assert counted(got[1]) == [2]
    ended = finished(got[2])
    assert ended is not None
    assert ended.status == COMPLETED
    assert appended(got[3]) is None  # in order: the end came first, nothing after it
    assert kinds(await events_of(store, run.run_id))[-2:] == ["answer_delta", "finished"]
    assert await run_together(store.redis, []) == []


async def test_writes_run_together_after_redis_lost_its_scripts_still_land_in_order(
    store: RunStore,
) -> None:
    run = await created(store)
    # The scripts are known, then Redis forgets them (a restart does the same): the
    # first unknown one and all after it run again, each loaded, in order.
    await store.append_once(TENANT, run.run_id, "warm", delta(""))
    await store.redis.script_flush()
    got = await run_together(
        store.redis,
        [
            store.append_call(TENANT, run.run_id, "delta:0", delta("a")),
            store.finish_call(TENANT, run.run_id, COMPLETED),
            store.append_call(TENANT, run.run_id, "delta:1", delta("after the end")),
        ],
    )
    assert appended(got[0]) is not None
    assert finished(got[1]) is not None
    assert appended(got[2]) is None
    assert kinds(await events_of(store, run.run_id))[-2:] == ["answer_delta", "finished"]


async def test_writes_run_together_raise_an_error_of_redis(store: RunStore) -> None:
    run = await created(store)
    await store.redis.set(store.keys.events(TENANT, "bad"), b"not a stream")
    await store.redis.hset(store.keys.run(TENANT, "bad"), mapping={"status": 2, "seq": 0})
    with pytest.raises(ResponseError):
        await run_together(
            store.redis,
            [
                store.append_call(TENANT, run.run_id, "delta:0", delta("a")),
                store.append_call(TENANT, "bad", "delta:0", delta("b")),  # XADD on a string
            ],
        )
    assert kinds(await events_of(store, run.run_id))[-1] == "answer_delta"  # the first landed


async def test_a_begun_call_finds_its_recorded_result_and_ends_with_its_record(
    store: RunStore,
) -> None:
    run = await created(store)
    started = Event(tool_started=gateway_pb2.ToolStarted(attempt=1))
    record = store.keys.result(TENANT, run.run_id, "c1")
    began = await store.begin_call(
        TENANT, run.run_id, "c1", started=("started:c1:1", started), record=record
    )
    assert began is True
    assert set(await store.active_calls(TENANT, run.run_id)) == {"c1"}
    # The result, its record and the call's end: one step.
    assert await store.append_once(
        TENANT, run.run_id, "finished:c1", delta("r"), record=(record, b"result", 60), end_call="c1"
    )
    assert await store.active_calls(TENANT, run.run_id) == {}
    # A redelivered task: the call does not begin again, and its result comes back.
    again = await store.begin_call(
        TENANT, run.run_id, "c1", started=("started:c1:2", started), record=record
    )
    assert again == b"result"
    assert await store.active_calls(TENANT, run.run_id) == {}
    assert kinds(await events_of(store, run.run_id)).count("tool_started") == 1
    # Even once the run was cancelled, the recorded result is what comes back.
    await store.request_cancel(TENANT, run.run_id, "stop")
    assert (
        await store.begin_call(
            TENANT, run.run_id, "c1", started=("started:c1:3", started), record=record
        )
        == b"result"
    )


# -- read_events -----------------------------------------------------------------------


async def test_reading_after_an_event_returns_only_the_later_ones(store: RunStore) -> None:
    run = await created(store)
    for i in range(4):
        await store.append_once(TENANT, run.run_id, f"delta:{i}", delta(f"p{i} "))
    everything = await events_of(store, run.run_id)
    assert kinds(everything) == ["accepted"] + ["answer_delta"] * 4
    for n, event in enumerate(everything):
        assert await store.read_events(TENANT, run.run_id, event.event_id) == everything[n + 1 :]
        # Sequence numbers are the event ids: 1, 2, 3, ... with no holes.
        assert event.sequence == n + 1
        assert event.event_id == f"{n + 1}-0"
        assert event.event_time.ToMilliseconds() >= run.create_time.ToMilliseconds()
    assert len(await store.read_events(TENANT, run.run_id, "", count=2)) == 2


@pytest.mark.parametrize(
    "after", ["abc", "1-", "-1", "1-2-3", "1", " 1-0", "1-0 ", "99999999999999999999-0"]
)
async def test_a_malformed_event_id_is_a_value_error(store: RunStore, after: str) -> None:
    run = await created(store)
    with pytest.raises(ValueError, match="not an event id"):
        await store.read_events(TENANT, run.run_id, after)


async def test_an_id_not_in_the_stream_is_a_gap(store: RunStore) -> None:
    run = await created(store)
    (accepted,) = await events_of(store, run.run_id)
    assert accepted.event_id == "1-0"
    for after in ("2-0", "1-1", "18446744073709551615-0"):
        with pytest.raises(StreamGapError):
            await store.read_events(TENANT, run.run_id, after)
        with pytest.raises(StreamGapError):
            await store.read_events(TENANT, run.run_id, after, block_ms=100)
    other = await created(store)  # an id of another run's stream is not one of this run
    (theirs,) = await events_of(store, other.run_id)
    if theirs.event_id != accepted.event_id:
        with pytest.raises(StreamGapError):
            await store.read_events(TENANT, run.run_id, theirs.event_id)


async def test_a_blocking_read_returns_the_event_appended_while_it_waits(
    store: RunStore, settings: Settings, namespace: str
) -> None:
    run = await created(store)
    (accepted,) = await events_of(store, run.run_id)
    name = f"reader-{uuid.uuid4().hex[:8]}"
    reader_client = aioredis.Redis.from_url(settings.redis_dsn, client_name=name)
    try:
        reader = RunStore(reader_client, namespace=namespace)
        started = time.monotonic()
        waiting = asyncio.create_task(
            reader.read_events(TENANT, run.run_id, accepted.event_id, block_ms=30_000)
        )

        async def blocked() -> bool:
            clients = await store.redis.client_list()
            return any(c.get("name") == name and c.get("cmd") == "xread" for c in clients)

        await eventually(blocked, timeout=10, what="the reader to block in XREAD")
        assert not waiting.done()
        event_id = await store.append_once(TENANT, run.run_id, "delta:0", delta("hello"))
        got = await asyncio.wait_for(waiting, 10)
        assert [e.event_id for e in got] == [event_id]
        assert got[0].answer_delta.text == "hello"
        assert time.monotonic() - started < 20  # woken by the event, not by the timeout
    finally:
        await reader_client.aclose()


async def test_a_blocking_read_with_nothing_new_returns_nothing(store: RunStore) -> None:
    run = await created(store)
    (accepted,) = await events_of(store, run.run_id)
    assert await store.read_events(TENANT, run.run_id, accepted.event_id, block_ms=50) == []


@pytest.mark.parametrize("status", [COMPLETED, FAILED, CANCELLED])
async def test_the_finished_event_is_built_from_the_stored_run(
    store: RunStore, status: int
) -> None:
    run = await created(store)
    await store.set_running(TENANT, run.run_id, 0)
    pieces = ["6*7 ", "is ", "42."]
    for i, piece in enumerate(pieces):
        await store.append_once(TENANT, run.run_id, f"delta:{i}", delta(piece))
    await store.add_usage(TENANT, run.run_id, "compose:0", types_pb2.Usage(prompt_tokens=4))
    if status == CANCELLED:
        await store.request_cancel(TENANT, run.run_id, "stop")
    answer = types_pb2.Answer(text="".join(pieces))
    error = "boom" if status == FAILED else ""
    await store.finish(TENANT, run.run_id, status, answer=answer, error=error, steps=1)
    stored = await store.get(TENANT, run.run_id)
    assert stored is not None
    assert stored.status == status
    events = await events_of(store, run.run_id)
    finished = events[-1].finished
    expected = {
        COMPLETED: types_pb2.COMPLETION_STATUS_COMPLETED,
        FAILED: types_pb2.COMPLETION_STATUS_FAILED,
        CANCELLED: types_pb2.COMPLETION_STATUS_CANCELLED,
    }[status]
    assert finished.status == expected == completion_of(stored.status)
    assert finished.answer == stored.answer
    assert finished.error_message == stored.error_message
    if status == COMPLETED:
        joined = "".join(e.answer_delta.text for e in events if e.HasField("answer_delta"))
        assert joined == finished.answer.text == stored.answer.text == "6*7 is 42."
        assert finished.answer.usage.prompt_tokens == 4
    else:
        assert finished.answer.text == stored.answer.text == ""
        assert finished.error_message == {FAILED: "boom", CANCELLED: "stop"}[status]


# -- list_runs -------------------------------------------------------------------------


async def pages(store: RunStore, page_size: int, status: int = 0) -> list[list[str]]:
    """Every page of the listing, following the cursors."""
    out: list[list[str]] = []
    cursor: tuple[int, str] | None = None
    while True:
        page, cursor = await store.list_runs(
            TENANT, page_size=page_size, after=cursor, status=status
        )
        out.append([r.run_id for r in page])
        if cursor is None:
            return out
        assert len(out) < 100, "the cursors do not end"


def flat(listing: list[list[str]]) -> list[str]:
    return [run_id for page in listing for run_id in page]


async def test_runs_are_listed_newest_first_a_page_at_a_time(
    store: RunStore, frozen_ms: list[int]
) -> None:
    ids = []
    for i in range(7):
        frozen_ms.append(frozen_ms[0] + i)
        ids.append((await created(store, f"run-{i}")).run_id)
    newest_first = ids[::-1]
    for size in (1, 2, 3, 7, 8, 100):
        listing = await pages(store, size)
        assert flat(listing) == newest_first
        assert all(len(page) == size for page in listing[:-1])
        assert listing[-1]  # no empty last page
    [one] = await pages(store, 100)
    assert one == newest_first


async def test_runs_of_one_millisecond_are_each_listed_once(
    store: RunStore, frozen_ms: list[int]
) -> None:
    for i in range(3):
        frozen_ms.append(frozen_ms[0] + i)
        for j in range(5 if i == 1 else 2):
            await created(store, f"run-{i}-{j}")
    (everything,) = await pages(store, 100)
    assert len(everything) == len(set(everything)) == 9
    # Newest first; runs of the same millisecond by run id, descending.
    assert everything == sorted(everything, key=lambda r: (r.split("-")[1], r), reverse=True)
    for size in range(1, 10):
        assert flat(await pages(store, size)) == everything


async def test_the_status_filter_pages_over_every_matching_run(
    store: RunStore, frozen_ms: list[int]
) -> None:
    frozen_ms.append(frozen_ms[0])
    ids = [(await created(store, f"run-{i:02d}")).run_id for i in range(12)]
    frozen_ms.append(frozen_ms[0] + 1)
    ids += [(await created(store, f"run-{i:02d}")).run_id for i in range(12, 15)]
    running = [i for n, i in enumerate(ids) if n % 3 == 0]
    failed = [i for n, i in enumerate(ids) if n % 3 == 1]
    for run_id in running:
        await store.set_running(TENANT, run_id, 0)
    for run_id in failed:
        await store.finish(TENANT, run_id, FAILED, error="boom")
    newest_first = sorted(ids, key=lambda r: (r in ids[12:], r), reverse=True)
    assert flat(await pages(store, 100)) == newest_first
    for status, expected in ((RUNNING, running), (FAILED, failed)):
        want = [r for r in newest_first if r in expected]
        for size in (1, 2, 3, 50):
            listing = await pages(store, size, status)
            assert flat(listing) == want, (status, size)
            assert listing[-1] or listing == [[]]
    assert await pages(store, 5, CANCELLED) == [[]]


async def test_a_cursor_continues_where_its_page_ended(
    store: RunStore, frozen_ms: list[int]
) -> None:
    frozen_ms.append(frozen_ms[0])
    ids = [(await created(store, f"run-{i}")).run_id for i in range(6)]
    first, cursor = await store.list_runs(TENANT, page_size=2, after=None)
    assert cursor == (first[-1].create_time.ToMilliseconds(), first[-1].run_id)
    # A run created after the first page is newer: it is not on the following pages.
    frozen_ms.append(frozen_ms[0] + 1)
    await created(store, "run-late")
    second, _ = await store.list_runs(TENANT, page_size=2, after=cursor)
    again, _ = await store.list_runs(TENANT, page_size=2, after=cursor)
    assert [r.run_id for r in second] == [r.run_id for r in again]
    rest, end = await store.list_runs(TENANT, page_size=100, after=cursor)
    assert end is None
    seen = [r.run_id for r in first + rest]
    assert seen == sorted(ids, reverse=True)
    assert [r.run_id for r in second] == seen[2:4]


# -- retention -------------------------------------------------------------------------


async def test_the_records_take_the_configured_retention(
    redis: aioredis.Redis, namespace: str
) -> None:
    store = RunStore(redis, namespace=namespace, run_ttl_s=600, stream_ttl_s=120, request_ttl_s=300)
    keys = store.keys
    run, _ = await store.create(new_run(), "req-ttl")
    for key in (keys.run(TENANT, run.run_id), keys.events(TENANT, run.run_id), keys.runs(TENANT)):
        assert 590 <= await redis.ttl(key) <= 600, key
    assert 290 <= await redis.ttl(keys.request(TENANT, "req-ttl")) <= 300
    await store.record_result(TENANT, run.run_id, 0, tool_result(run.run_id, 0, 0), 1)
    assert 590 <= await redis.ttl(keys.step(TENANT, run.run_id, 0)) <= 600
    await store.append_once(TENANT, run.run_id, "delta:0", delta("x"))
    assert 590 <= await redis.ttl(keys.events(TENANT, run.run_id)) <= 600
    end = await store.finish(TENANT, run.run_id, COMPLETED, answer=types_pb2.Answer(text="x"))
    assert end is not None
    # Once finished, the events are kept for the stream retention; the run for its own.
    assert 110 <= await redis.ttl(keys.events(TENANT, run.run_id)) <= 120
    assert 590 <= await redis.ttl(keys.run(TENANT, run.run_id)) <= 600
    await store.finish(TENANT, run.run_id, COMPLETED, conversation_id=run.conversation_id)
    assert 590 <= await redis.ttl(keys.session(TENANT, run.conversation_id)) <= 600


async def test_a_finished_runs_events_expire_before_the_run(
    redis: aioredis.Redis, namespace: str
) -> None:
    store = RunStore(redis, namespace=namespace, run_ttl_s=4, stream_ttl_s=1)
    run = await created(store)
    await store.finish(TENANT, run.run_id, COMPLETED, answer=types_pb2.Answer(text="42"))

    async def events_gone() -> bool:
        return not await store.events_exist(TENANT, run.run_id)

    await eventually(events_gone, timeout=10, what="the stream to expire")
    # The run still answers (GetRun) after its events are gone ...
    kept = await store.get(TENANT, run.run_id)
    assert kept is not None
    assert kept.answer.text == "42"

    async def run_gone() -> bool:
        return await store.get(TENANT, run.run_id) is None

    # ... until the run retention ends it too, and the listing forgets it.
    await eventually(run_gone, timeout=15, what="the run to expire")
    listed, cursor = await store.list_runs(TENANT, page_size=10, after=None)
    assert (listed, cursor) == ([], None)
