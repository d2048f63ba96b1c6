"""The worker's own promises, in-process on the real brokers.

A `WorkerService` runs with tools of the test's own (`Probe`), on a namespace of its
own; the test publishes `ToolTask`s as the planner would and observes what a user
would: the `ToolCalled` records on `agent.tool_called`, the run's events, the
dead-letter queue, Redis. Only the worker runs: no planner or composer reacts."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from agentflux.v1 import events_pb2, types_pb2
from google.protobuf import json_format

from services.runtime.config import Settings
from services.runtime.keys import Keys
from services.runtime.locks import FencedLock
from services.tools import JSON, ToolContext, ToolRegistry, ToolSpec
from services.worker import WorkerService
from tests.integration.runtime_kit import eventually
from tests.integration.service_kit import (
    WAIT_S,
    Reader,
    Rig,
    kinds,
    rig_on_stack,
    succeeded,
    tool_call,
)

pytestmark = pytest.mark.integration

SUCCEEDED = types_pb2.TOOL_CALL_STATUS_SUCCEEDED
FAILED = types_pb2.TOOL_CALL_STATUS_FAILED
SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer"}},
    "required": ["n"],
    "additionalProperties": False,
}


@dataclass
class Ran:
    """One call of a probe tool: its arguments, its context and when it ran."""

    args: Mapping[str, Any]
    ctx: ToolContext
    began: float
    ended: float = 0.0


@dataclass
class Probe:
    """A tool of the test's: records every call, and in each call awaits `work` (by
    default nothing) before answering `{"n": n, "token": fencing token}`."""

    spec: ToolSpec
    work: Callable[[Ran], Awaitable[None]] | None = None
    calls: list[Ran] = field(default_factory=list)
    active: int = 0
    peak: int = 0

    async def __call__(self, args: Mapping[str, Any], ctx: ToolContext) -> JSON:
        ran = Ran(args, ctx, time.monotonic())
        self.calls.append(ran)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.work is not None:
                await self.work(ran)
        finally:
            self.active -= 1
            ran.ended = time.monotonic()
        return {"n": args["n"], "token": ctx.fencing_token}


def probe(
    name: str = "probe", *, work: Callable[[Ran], Awaitable[None]] | None = None, **spec: Any
) -> Probe:
    return Probe(ToolSpec(name=name, description="a test tool", schema=SCHEMA, **spec), work)


@pytest.fixture
async def rig(settings: Settings) -> AsyncIterator[Rig]:
    async with rig_on_stack() as got:
        yield got


async def start_worker(rig: Rig, *tools: Probe, **changes: Any) -> WorkerService:
    """A worker with only `tools`, on the rig's mesh (or one with `changes`)."""
    mesh = rig.mesh_with(**changes) if changes else rig.mesh
    worker = WorkerService(mesh, tools=ToolRegistry(tools, source="test"))
    rig.cached.update(f"tool:{t.spec.name}" for t in tools)
    return await rig.start(worker)


def tool_called(rig: Rig) -> Reader[events_pb2.ToolCalled]:
    return rig.reader("agent.tool_called", events_pb2.ToolCalled)


def output(result: types_pb2.ToolResult) -> Any:
    return json_format.MessageToDict(result.output)


def results_by_call(records: list[Any]) -> dict[str, types_pb2.ToolResult]:
    return {r.event.call.tool_call_id: r.event.result for r in records}


# -- exclusive, cacheable, recorded --------------------------------------------------------


async def test_an_exclusive_tool_never_overlaps_and_gets_strictly_increasing_tokens(
    rig: Rig,
) -> None:
    worker: WorkerService | None = None

    async def first_waits_for_the_others(ran: Ran) -> None:
        # The first call holds the lock until the worker has all three tasks in hand:
        # the other two are then waiting for the lock, not merely not delivered yet.
        if len(tool.calls) == 1:
            assert worker is not None
            assert worker.consumer is not None
            consumer = worker.consumer

            async def all_in_hand() -> bool:
                return consumer.in_flight == 3

            await eventually(all_in_hand, timeout=WAIT_S, what="three tasks in hand")
        await asyncio.sleep(0.05)  # the call's own work, so overlaps would show

    tool = probe(exclusive=True, work=first_waits_for_the_others)
    worker = await start_worker(rig, tool)
    run = await rig.new_run("three exclusive calls")
    calls = [tool_call(run, 0, i, "probe", n=i) for i in range(3)]
    for call in calls:
        await rig.publish_task(run, call, count=3)

    records = await tool_called(rig).at_least(3)
    results = results_by_call(records)
    assert all(r.status == SUCCEEDED for r in results.values()), results
    assert tool.peak == 1
    ran = sorted(tool.calls, key=lambda r: r.began)
    for before, after in itertools.pairwise(ran):
        assert before.ended <= after.began, "two calls of an exclusive tool overlapped"
    tokens = [t for r in ran if (t := r.ctx.fencing_token) is not None]
    assert len(tokens) == len(ran), "an exclusive call ran without a fencing token"
    assert tokens == sorted(set(tokens)), f"tokens not strictly increasing: {tokens}"
    # The resource sees the tokens too: each output carries the token its call held.
    assert sorted(output(r)["token"] for r in results.values()) == tokens


async def test_a_cacheable_tool_runs_once_for_the_same_arguments(rig: Rig) -> None:
    tool = probe(cacheable=True)
    await start_worker(rig, tool)
    run = await rig.new_run("the same call twice")
    first, again, other = (
        tool_call(run, 0, 0, "probe", n=7),
        tool_call(run, 0, 1, "probe", n=7),
        tool_call(run, 0, 2, "probe", n=8),
    )
    reader = tool_called(rig)
    await rig.publish_task(run, first, count=3)
    await reader.at_least(1)
    await rig.publish_task(run, again, count=3)
    await reader.at_least(2)
    await rig.publish_task(run, other, count=3)
    results = results_by_call(await reader.at_least(3))

    one, two, three = (results[c.tool_call_id] for c in (first, again, other))
    assert [r.status for r in (one, two, three)] == [SUCCEEDED] * 3
    assert [c.args["n"] for c in tool.calls] == [7, 8]  # 7 ran once; its second call did not
    assert one.artifact_key
    assert two.artifact_key == one.artifact_key
    assert output(two) == output(one) == {"n": 7, "token": None}
    assert three.artifact_key not in ("", one.artifact_key)
    stored = await rig.mesh.redis.get(Keys(rig.ns).artifact(run.tenant_id, one.artifact_key))
    assert stored is not None


async def test_a_recorded_result_is_emitted_again_without_running_the_tool(rig: Rig) -> None:
    # The crash between recording a result and acking its task: the redelivered task
    # finds the record and must emit it, not run the tool a second time.
    tool = probe()
    await start_worker(rig, tool)
    run = await rig.new_run("a task whose result is recorded")
    call = tool_call(run, 0, 0, "probe", n=1)
    recorded = succeeded(call, 41)
    key = Keys(rig.ns).result(run.tenant_id, run.run_id, call.tool_call_id)
    await rig.mesh.redis.set(key, recorded.SerializeToString())

    await rig.publish_task(run, call)

    (record,) = await tool_called(rig).at_least(1)
    assert record.event.result == recorded
    assert record.idempotency_key == f"{call.tool_call_id}:called"
    assert tool.calls == []
    assert "tool_started" not in kinds(await rig.run_events(run))


async def test_a_cancelled_runs_task_ends_cancelled_and_the_tool_never_runs(rig: Rig) -> None:
    tool = probe()
    await start_worker(rig, tool)
    run = await rig.new_run("cancelled before its task ran")
    await rig.store.request_cancel(run.tenant_id, run.run_id, "the user changed their mind")
    call = tool_call(run, 0, 0, "probe", n=1)

    await rig.publish_task(run, call)

    (record,) = await tool_called(rig).at_least(1)
    result = record.event.result
    assert result.status == types_pb2.TOOL_CALL_STATUS_CANCELLED
    assert "the user changed their mind" in result.error_message
    assert tool.calls == []
    events = await rig.run_events(run)
    assert "tool_started" not in kinds(events)
    finished = [e.tool_finished.result for e in events if e.WhichOneof("event") == "tool_finished"]
    assert finished == [result]


# -- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args", "reason"),
    [
        ("nope", {"n": 1}, "no tool named 'nope' (known: probe)"),
        ("probe", {"n": "seven"}, "invalid arguments for tool 'probe': n: 'seven' is not of"),
    ],
    ids=["unknown-tool", "arguments-against-the-schema"],
)
async def test_a_call_that_cannot_succeed_fails_at_once_and_is_dead_lettered(
    rig: Rig, name: str, args: dict[str, Any], reason: str
) -> None:
    tool = probe()
    await start_worker(rig, tool)
    run = await rig.new_run("a call that cannot succeed")
    call = tool_call(run, 0, 0, name, **args)

    await rig.publish_task(run, call)

    (record,) = await tool_called(rig).at_least(1)
    result = record.event.result
    assert result.status == FAILED
    assert result.attempts == 1
    assert reason in result.error_message
    (dead,) = await rig.dead_letters()
    headers = dict(dead.headers or {})
    assert headers["dlq_reason"] == "TOOL_FAILED"
    assert headers["dlq_attempts"] == 1
    assert reason in str(headers["dlq_error"])
    assert headers["ce_runid"] == run.run_id
    assert tool.calls == []
    assert len(await tool_called(rig).all()) == 1


async def test_a_tool_slower_than_its_timeout_ends_timed_out_after_the_last_attempt(
    rig: Rig,
) -> None:
    async def hang(ran: Ran) -> None:
        await asyncio.Event().wait()

    tool = probe(timeout_s=0.2, work=hang)
    await start_worker(rig, tool)  # delay tiers of 100 and 200 ms: three attempts
    run = await rig.new_run("a tool that never answers")
    call = tool_call(run, 0, 0, "probe", n=1)

    await rig.publish_task(run, call, timeout_s=0.2)

    (dead,) = await rig.dead_letters()
    headers = dict(dead.headers or {})
    assert headers["dlq_reason"] == "RETRIES_EXHAUSTED"
    assert headers["dlq_attempts"] == 3
    assert [c.ctx.attempt for c in tool.calls] == [1, 2, 3]
    # Only the last attempt emits: one failed result, so the run still ends.
    (record,) = await tool_called(rig).all()
    result = record.event.result
    assert result.status == types_pb2.TOOL_CALL_STATUS_TIMED_OUT
    assert result.attempts == 3
    assert "did not finish within 0.2 s" in result.error_message


async def test_a_tool_that_raises_another_exception_ends_failed_after_the_last_attempt(
    rig: Rig,
) -> None:
    # A tool should raise only ToolError; one that raises anything else must still end
    # its call (and so its run) after the last attempt, not leave it running for ever.
    async def broken(ran: Ran) -> None:
        raise KeyError("no such field")

    tool = probe(work=broken)
    await start_worker(rig, tool)
    run = await rig.new_run("a tool with a bug")
    call = tool_call(run, 0, 0, "probe", n=1)

    await rig.publish_task(run, call)

    (record,) = await tool_called(rig).at_least(1)
    result = record.event.result
    assert result.status == FAILED
    assert result.attempts == 3
    assert "KeyError" in result.error_message
    assert "no such field" in result.error_message
    assert len(tool.calls) == 3  # its cause is unknown: retried like a timeout
    (dead,) = await rig.dead_letters()
    assert dict(dead.headers or {})["dlq_reason"] == "RETRIES_EXHAUSTED"
    events = await rig.run_events(run)
    finished = [e.tool_finished.result for e in events if e.WhichOneof("event") == "tool_finished"]
    assert finished == [result]


class NotJson(Probe):
    """A tool with a bug: it answers something that is not JSON."""

    async def __call__(self, args: Mapping[str, Any], ctx: ToolContext) -> JSON:
        await super().__call__(args, ctx)
        return {"when": object()}


async def test_a_tool_whose_output_is_not_json_fails_at_once(rig: Rig) -> None:
    tool = NotJson(ToolSpec(name="probe", description="a test tool", schema=SCHEMA))
    await start_worker(rig, tool)
    run = await rig.new_run("a tool that answers with an object")
    call = tool_call(run, 0, 0, "probe", n=1)

    await rig.publish_task(run, call)

    (record,) = await tool_called(rig).at_least(1)
    result = record.event.result
    assert result.status == FAILED
    assert "not JSON" in result.error_message
    assert len(tool.calls) == 1  # the same call would answer the same: not retried
    (dead,) = await rig.dead_letters()
    assert dict(dead.headers or {})["dlq_reason"] == "TOOL_FAILED"


async def test_an_exclusive_tool_whose_lock_stays_taken_ends_timed_out_after_the_last_attempt(
    rig: Rig,
) -> None:
    tool = probe(exclusive=True, timeout_s=0.2)
    await start_worker(rig, tool)
    run = await rig.new_run("a lock held elsewhere")
    call = tool_call(run, 0, 0, "probe", n=1)
    # Another worker holds the tool's lock (say it hangs in a call) past every attempt.
    lock = FencedLock(rig.mesh.redis, namespace=rig.ns)
    async with lock.hold("tool:probe", lease_s=60, wait_s=5):
        await rig.publish_task(run, call, timeout_s=0.2)
        (dead,) = await rig.dead_letters()

    assert dict(dead.headers or {})["dlq_attempts"] == 3
    (record,) = await tool_called(rig).at_least(1)
    result = record.event.result
    assert result.status == types_pb2.TOOL_CALL_STATUS_TIMED_OUT
    assert result.attempts == 3
    assert "lock 'tool:probe' not acquired within 0.2 s" in result.error_message
    assert tool.calls == []


# -- Memcached down ---------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port  # nothing listens there once the socket is closed


async def test_with_memcached_down_tasks_run_on_metadata_from_the_source(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="services.runtime.cache")
    tool = probe(cacheable=True)
    await start_worker(rig, tool, memcached_servers=f"127.0.0.1:{closed_port()}")
    run = await rig.new_run("tasks while memcached is down")
    reader = tool_called(rig)
    calls = [tool_call(run, 0, i, "probe", n=5) for i in range(3)]
    for done, call in enumerate(calls, start=1):
        await rig.publish_task(run, call, count=3)
        await reader.at_least(done)

    results = results_by_call(await reader.all())
    assert [results[c.tool_call_id].status for c in calls] == [SUCCEEDED] * 3
    # The metadata came from the registry: the tool is cacheable, so it ran once.
    assert len(tool.calls) == 1
    assert len({results[c.tool_call_id].artifact_key for c in calls}) == 1
    warnings = [r for r in caplog.records if r.name == "services.runtime.cache"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unreachable" in warnings[0].getMessage()
