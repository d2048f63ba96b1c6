"""The planner's own promises, in-process on the real brokers.

A `PlannerService` (the scripted model, the built-in tools) runs on a namespace of its
own; the test creates runs as the gateway does and emits `AgentRequested` as the
gateway (step 0) or the composer (later steps) would. No worker runs, so every task the
planner publishes stays in the work queue, where the test counts it. What is observed:
the run record and its events, the queue, `agent.completed`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from agentflux.v1 import events_pb2, types_pb2

from interceptors import Outcome
from services.planner import PlannerService
from services.runtime.config import Settings
from tests.integration.runtime_kit import eventually
from tests.integration.service_kit import (
    WAIT_S,
    Event,
    Rig,
    deltas,
    kinds,
    limits,
    rig_on_stack,
    succeeded,
    tool_call,
)

pytestmark = pytest.mark.integration

FAILED = types_pb2.RUN_STATUS_FAILED


@pytest.fixture
async def rig(settings: Settings) -> AsyncIterator[Rig]:
    async with rig_on_stack() as got:
        yield got


@pytest.fixture
async def planner(rig: Rig) -> PlannerService:
    return await rig.start(PlannerService(rig.mesh))


async def handled(planner: PlannerService, n: int, outcome: Outcome = Outcome.HANDLED) -> None:
    """Waits until the planner's consumer counts `n` records of `outcome`."""

    async def done() -> bool:
        return planner.consumer.counts[outcome] >= n

    await eventually(done, timeout=WAIT_S, what=f"{n} request(s) {outcome.value}")


async def queued(rig: Rig, n: int) -> None:
    async def there() -> bool:
        return await rig.queue_depth() >= n

    await eventually(there, timeout=WAIT_S, what=f"{n} task(s) queued")


def planned_steps(events: list[Event]) -> list[int]:
    return [e.planned.step for e in events if e.WhichOneof("event") == "planned"]


# -- bounds -------------------------------------------------------------------------------


async def test_a_plan_over_max_tools_per_step_fails_the_run_and_publishes_nothing(
    rig: Rig, planner: PlannerService
) -> None:
    run = await rig.new_run("what is 1+1 and 2+2 and 3+3", run_limits=limits(per_step=2))

    await rig.request(run)

    ended = await rig.ended(run)
    assert ended.status == FAILED
    assert "limits.max_tools_per_step" in ended.error_message
    assert "planned 3 tool calls" in ended.error_message
    assert await rig.queue_depth() == 0
    (completed,) = await rig.completed().at_least(1)
    assert completed.event.status == types_pb2.COMPLETION_STATUS_FAILED
    assert completed.event.error_message == ended.error_message


async def test_plans_over_max_tool_calls_across_steps_fail_the_run_and_publish_nothing(
    rig: Rig, planner: PlannerService
) -> None:
    # Two calls in step 0, two more in step 1 ("add 8" to each number): 4 > 3.
    run = await rig.new_run("what is 6*7 and 2*3 then add 8", run_limits=limits(calls=3))
    await rig.request(run)
    await queued(rig, 2)
    step0 = [tool_call(run, 0, 0, "calculator"), tool_call(run, 0, 1, "calculator")]

    await rig.request(run, 1, [succeeded(step0[0], 42), succeeded(step0[1], 6)])

    ended = await rig.ended(run)
    assert ended.status == FAILED
    assert "limits.max_tool_calls" in ended.error_message
    assert "planned 4 tool calls in all" in ended.error_message
    assert await rig.queue_depth() == 2  # step 0's tasks, none of step 1


# -- redeliveries ------------------------------------------------------------------------


async def test_a_redelivered_request_publishes_its_tasks_once(
    rig: Rig, planner: PlannerService
) -> None:
    run = await rig.new_run("what is 1+1 and 2+2")
    await rig.request(run)
    await handled(planner, 1)
    await queued(rig, 2)
    (first,) = await rig.reader("agent.requested", events_pb2.AgentRequested).at_least(1)

    # The same record again (a producer's retry, a redelivery), then the same request
    # emitted again under the same idempotency key (the gateway's retried Submit).
    copy = list(first.headers.items())
    await rig.mesh.producer.produce(
        rig.ns + "agent.requested", first.value, key=first.key, headers=copy
    )
    await rig.request(run)

    await handled(planner, 2, Outcome.DUPLICATE)
    assert planner.consumer.counts[Outcome.HANDLED] == 1
    assert await rig.queue_depth() == 2
    assert planned_steps(await rig.run_events(run)) == [0]


async def test_the_planned_event_appears_once_per_step(rig: Rig, planner: PlannerService) -> None:
    # Each step's request is handled twice: the second copy carries a key the
    # consumer's guard has not seen (as after a crash before the guard recorded the
    # first), so only the planner's own bookkeeping can keep it from planning twice.
    run = await rig.new_run("what is 6*7 then add 8")
    await rig.request(run)
    await rig.request(run, key="another-key-0")
    step0 = tool_call(run, 0, 0, "calculator")
    await rig.request(run, 1, [succeeded(step0, 42)])
    await rig.request(run, 1, [succeeded(step0, 42)], key="another-key-1")

    await handled(planner, 4)
    assert planned_steps(await rig.run_events(run)) == [0, 1]
    # A step planned again publishes the same tasks under the same keys, so the
    # workers' guard runs each call once.
    tasks = await rig.take(rig.topology.queue)
    keys = {dict(t.headers or {})["ce_idempotencykey"] for t in tasks}
    assert keys == {f"{run.run_id}.0.000:task", f"{run.run_id}.1.000:task"}
    now = await rig.run_now(run)
    assert now.status == types_pb2.RUN_STATUS_RUNNING
    assert now.step_count == 2


# -- ending without tools ----------------------------------------------------------------


async def test_a_cancelled_run_ends_cancelled_without_planning(
    rig: Rig, planner: PlannerService
) -> None:
    run = await rig.new_run("what is 1+1")
    await rig.store.request_cancel(run.tenant_id, run.run_id, "no longer needed")

    await rig.request(run)

    ended = await rig.ended(run)
    assert ended.status == types_pb2.RUN_STATUS_CANCELLED
    assert "no longer needed" in ended.error_message
    assert ended.usage.total_tokens == 0  # the model was never asked
    assert "planned" not in kinds(await rig.run_events(run))
    assert await rig.queue_depth() == 0
    (completed,) = await rig.completed().at_least(1)
    assert completed.event.status == types_pb2.COMPLETION_STATUS_CANCELLED


async def test_a_direct_answer_completes_the_run_streamed_in_several_deltas(
    rig: Rig, planner: PlannerService
) -> None:
    run = await rig.new_run("hello there")

    await rig.request(run)

    ended = await rig.ended(run)
    assert ended.status == types_pb2.RUN_STATUS_COMPLETED
    events = await rig.run_events(run)
    pieces = deltas(events)
    assert len(pieces) > 1
    assert "".join(pieces) == ended.answer.text
    assert ended.answer.text.startswith("Hello!")
    assert kinds(events)[-1] == "finished"
    assert events[-1].finished.answer.text == ended.answer.text
    (planned,) = [e.planned for e in events if e.WhichOneof("event") == "planned"]
    assert list(planned.tool_calls) == []
    assert await rig.queue_depth() == 0
    (completed,) = await rig.completed().at_least(1)
    assert completed.event.status == types_pb2.COMPLETION_STATUS_COMPLETED
    assert completed.event.answer.text == ended.answer.text
