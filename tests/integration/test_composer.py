"""The composer's own promises, in-process on the real brokers.

A `ComposerService` (the scripted model) runs on a namespace of its own; the test
creates runs as the gateway does, marks their steps running as the planner does, and
emits `ToolCalled` as workers would. No planner runs, so a continuation stays on
`agent.requested` where the test reads it. What is observed: the run record and its
events, the records on `agent.requested` and `agent.completed`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from agentflux.v1 import events_pb2, types_pb2

from services.composer import ComposerService
from services.runtime.config import Settings
from tests.integration.runtime_kit import eventually
from tests.integration.service_kit import (
    WAIT_S,
    Reader,
    Rig,
    deltas,
    limits,
    rig_on_stack,
    settled,
    succeeded,
    tool_call,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def rig(settings: Settings) -> AsyncIterator[Rig]:
    async with rig_on_stack() as got:
        yield got


@pytest.fixture
async def composer(rig: Rig) -> ComposerService:
    return await rig.start(ComposerService(rig.mesh))


async def running(rig: Rig, prompt: str, **run_limits: int) -> types_pb2.Run:
    """A run at step 0, as the planner leaves it once it published the step's tasks."""
    run = await rig.new_run(prompt, run_limits=limits(**run_limits))
    assert await rig.store.set_running(run.tenant_id, run.run_id, 0)
    return run


async def finished_with(composer: ComposerService, n: int) -> None:
    """Waits until the composer finished `n` records (handled or duplicates)."""

    async def done() -> bool:
        return settled(composer.consumer.counts) >= n

    await eventually(done, timeout=WAIT_S, what=f"{n} ToolCalled handled")


def requested(rig: Rig) -> Reader[events_pb2.AgentRequested]:
    return rig.reader("agent.requested", events_pb2.AgentRequested)


# -- gathering a step -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "continues"),
    [("what is 1+1 and 2+2 and 3+3", False), ("what is 1+1 and 2+2 and 3+3 then add 1", True)],
    ids=["answer", "continuation"],
)
async def test_a_steps_results_in_any_order_and_duplicated_complete_it_once(
    rig: Rig, composer: ComposerService, prompt: str, continues: bool
) -> None:
    run = await running(rig, prompt)
    calls = [tool_call(run, 0, i, "calculator") for i in range(3)]
    c0, c1, c2 = (succeeded(call, 2 * (i + 1)) for i, call in enumerate(calls))
    # Out of plan order; each result again as a worker re-emits it (its own key), and
    # the results that do not complete the step again under keys the composer's guard
    # has not seen, so only the step's own gathering can tell they are not new.
    arrivals = [(c2, ""), (c0, ""), (c0, "again-0"), (c1, ""), (c2, ""), (c0, ""), (c2, "again")]
    arrivals.append((c1, ""))
    for result, key in arrivals:
        await rig.called(run, result, count=3, key=key)

    await finished_with(composer, len(arrivals))
    answers = await rig.completed().all()
    continuations = await requested(rig).all()
    if continues:
        assert answers == []
        (continuation,) = continuations
        assert continuation.event.step == 1
        assert (await rig.run_now(run)).status == types_pb2.RUN_STATUS_RUNNING
    else:
        assert continuations == []
        (answer,) = answers
        assert answer.event.status == types_pb2.COMPLETION_STATUS_COMPLETED
        assert answer.event.answer.text == "1+1 = 2; 2+2 = 4; 3+3 = 6."
        ended = await rig.run_now(run)
        assert ended.answer.text == answer.event.answer.text
        assert "".join(deltas(await rig.run_events(run))) == ended.answer.text


async def test_a_failed_result_ends_the_run_failed_naming_the_tool_and_its_reason(
    rig: Rig, composer: ComposerService
) -> None:
    run = await running(rig, "what is 6*7 and 1/0 then add 8")
    ok, bad = tool_call(run, 0, 0, "calculator"), tool_call(run, 0, 1, "calculator")
    failed = types_pb2.ToolResult(
        tool_call_id=bad.tool_call_id,
        name="calculator",
        status=types_pb2.TOOL_CALL_STATUS_FAILED,
        error_message="division by zero",
        attempts=1,
    )
    await rig.called(run, succeeded(ok, 42), count=2)
    await rig.called(run, failed, count=2)

    ended = await rig.ended(run)
    assert ended.status == types_pb2.RUN_STATUS_FAILED
    assert ended.error_message == "calculator failed: division by zero"
    (answer,) = await rig.completed().at_least(1)
    assert answer.event.status == types_pb2.COMPLETION_STATUS_FAILED
    assert answer.event.error_message == ended.error_message
    assert await requested(rig).all() == []  # no next step after a failure


# -- going on ---------------------------------------------------------------------------------


async def test_a_continuation_carries_the_next_step_the_results_and_a_deterministic_key(
    rig: Rig, composer: ComposerService
) -> None:
    run = await running(rig, "what is 6*7 then add 8")
    result = succeeded(tool_call(run, 0, 0, "calculator"), 42)

    await rig.called(run, result)

    (first,) = await requested(rig).at_least(1)
    event = first.event
    assert event.step == 1
    assert list(event.previous_results) == [result]
    assert (event.run_id, event.tenant_id, event.conversation_id, event.prompt) == (
        run.run_id,
        run.tenant_id,
        run.conversation_id,
        run.prompt,
    )
    assert event.priority == run.priority
    assert event.limits == run.limits
    assert first.key == run.conversation_id.encode()  # the conversation's order holds
    assert first.idempotency_key == f"{run.run_id}:requested:1"
    # The completing result handled again (its guard record lost): the continuation is
    # emitted again under the same key, so the planner's guard takes it for a duplicate.
    await rig.called(run, result, key="handled-again")
    again = (await requested(rig).at_least(2))[1]
    assert again.idempotency_key == first.idempotency_key
    assert again.event == first.event


async def test_at_the_step_budget_the_run_answers_instead_of_continuing(
    rig: Rig, composer: ComposerService
) -> None:
    run = await running(rig, "what is 6*7 then add 8 then add 1", steps=2)
    await rig.called(run, succeeded(tool_call(run, 0, 0, "calculator"), 42))
    (continuation,) = await requested(rig).at_least(1)
    assert continuation.event.step == 1  # within the budget: step 1 of 2
    assert await rig.store.set_running(run.tenant_id, run.run_id, 1)

    await rig.called(run, succeeded(tool_call(run, 1, 0, "calculator"), 50), step=1)

    ended = await rig.ended(run)
    assert ended.status == types_pb2.RUN_STATUS_COMPLETED
    assert "50" in ended.answer.text
    assert "step budget of 2 steps" in ended.answer.text
    assert '"add 1"' in ended.answer.text
    assert ended.step_count == 2
    (answer,) = await rig.completed().at_least(1)
    assert answer.event.answer.text == ended.answer.text
    assert len(await requested(rig).all()) == 1  # no step 2
