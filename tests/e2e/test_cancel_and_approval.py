"""Cancellation that holds, and tools that wait for a person, end to end.

The side effect of a tool here is a request reaching a test HTTP server: the server
numbers every arrival, so "no side effect starts after CancelRun returns" is checked
against what really arrived, not against what the services say."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from agentflux.v1 import gateway_pb2, types_pb2

from tests.e2e.conftest import Mesh, eventually, http_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


class Arrivals:
    """An HTTP handler that numbers arrivals and holds `/slow/...` for a long time."""

    def __init__(self, hold_s: float = 30.0) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[int, str]] = []
        self.hold_s = hold_s

    def now(self) -> int:
        with self.lock:
            return len(self.seen)

    def __call__(self, path: str) -> tuple[int, bytes, float]:
        with self.lock:
            self.seen.append((len(self.seen) + 1, path))
        return 200, f"page {path}".encode(), self.hold_s if path.startswith("/slow") else 0.0


async def test_cancel_while_a_tool_runs_stops_it_and_nothing_starts_afterwards(
    mesh: Mesh,
) -> None:
    arrivals = Arrivals()
    with http_server(arrivals) as url:
        await mesh.start(AGENTFLUX_CANCEL_DEADLINE_S="2")
        run = await mesh.submit(f"fetch {url}/slow/first then fetch {url}/second")
        await eventually(lambda: _true(arrivals.now() >= 1), what="the first fetch running")
        began = time.monotonic()
        cancelled = (
            await mesh.gateway.CancelRun(
                gateway_pb2.CancelRunRequest(run_id=run.run_id, reason="stop now"), timeout=30
            )
        ).run
        returned_at = arrivals.now()
        took = time.monotonic() - began
        # It returned once the running tool stopped (within the cancel deadline), and
        # the run is not reported CANCELLED before every hop acknowledged.
        assert cancelled.status in (
            types_pb2.RUN_STATUS_CANCELLING,
            types_pb2.RUN_STATUS_CANCELLED,
        )
        assert took < 15, took
        done = await mesh.finished(run.run_id)
        assert done.status == types_pb2.RUN_STATUS_CANCELLED
        assert done.error_message == "stop now"
        # The second step's fetch never started: nothing arrived after CancelRun returned.
        assert arrivals.now() == returned_at == 1, arrivals.seen
    events = await mesh.events(run.run_id)
    results = [e.tool_finished.result for e in events if e.WhichOneof("event") == "tool_finished"]
    assert [r.status for r in results] == [types_pb2.TOOL_CALL_STATUS_CANCELLED]
    assert "cancelled while the tool ran" in results[0].error_message
    assert [e.planned.step for e in events if e.WhichOneof("event") == "planned"] == [0]


async def test_cancels_racing_many_runs_never_let_a_side_effect_start_afterwards(
    mesh: Mesh,
) -> None:
    arrivals = Arrivals(hold_s=0.0)
    with http_server(arrivals) as url:
        await mesh.start()
        runs = [await mesh.submit(f"fetch {url}/r{i}/a then fetch {url}/r{i}/b") for i in range(8)]
        marks: dict[str, int] = {}

        async def cancel(i: int, run: types_pb2.Run) -> None:
            await asyncio.sleep(0.02 * i)  # land the cancels at different points of the runs
            await mesh.gateway.CancelRun(gateway_pb2.CancelRunRequest(run_id=run.run_id))
            marks[run.run_id] = arrivals.now()

        await asyncio.gather(*(cancel(i, r) for i, r in enumerate(runs)))
        done = await asyncio.gather(*(mesh.finished(r.run_id) for r in runs))
    for i, (run, end) in enumerate(zip(runs, done, strict=True)):
        late = [
            n for n, path in arrivals.seen if path.startswith(f"/r{i}/") and n > marks[run.run_id]
        ]
        assert not late, (run.run_id, end.status, arrivals.seen)
        assert end.status in (types_pb2.RUN_STATUS_CANCELLED, types_pb2.RUN_STATUS_COMPLETED)


async def _true(value: bool) -> bool:
    return value


APPROVAL = {"AGENTFLUX_APPROVAL_TOOLS": "http_get", "AGENTFLUX_APPROVAL_TIMEOUT_S": "60"}


async def _waiting(mesh: Mesh, run_id: str) -> gateway_pb2.StreamRunResponse:
    call = mesh.gateway.StreamRun(gateway_pb2.StreamRunRequest(run_id=run_id), timeout=60)
    async for event in call:
        if event.WhichOneof("event") == "approval_requested":
            call.cancel()
            return event
    raise AssertionError("the stream ended without asking for approval")


async def test_an_approved_call_runs_and_the_run_goes_on(mesh: Mesh) -> None:
    arrivals = Arrivals(hold_s=0.0)
    with http_server(arrivals) as url:
        await mesh.start(**APPROVAL)
        run = await mesh.submit(f"fetch {url}/approved")
        asked = await _waiting(mesh, run.run_id)
        call = asked.approval_requested.call
        assert call.name == "http_get"
        assert call.arguments["url"] == f"{url}/approved"
        waiting = (await mesh.gateway.GetRun(gateway_pb2.GetRunRequest(run_id=run.run_id))).run
        assert waiting.status == types_pb2.RUN_STATUS_AWAITING_APPROVAL
        assert [c.tool_call_id for c in waiting.pending_approvals] == [call.tool_call_id]
        assert arrivals.now() == 0  # nothing ran before the approval
        approved = await mesh.gateway.ApproveToolCall(
            gateway_pb2.ApproveToolCallRequest(run_id=run.run_id, tool_call_id=call.tool_call_id)
        )
        assert approved.run.status == types_pb2.RUN_STATUS_RUNNING
        done = await mesh.finished(run.run_id)
        assert done.status == types_pb2.RUN_STATUS_COMPLETED, done.error_message
        assert arrivals.now() == 1
        # A second decision is refused: the call was decided.
        with pytest.raises(grpc.aio.AioRpcError) as twice:
            await mesh.gateway.RejectToolCall(
                gateway_pb2.RejectToolCallRequest(run_id=run.run_id, tool_call_id=call.tool_call_id)
            )
        assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    kinds = [e.WhichOneof("event") for e in await mesh.events(run.run_id)]
    assert kinds.index("approval_requested") < kinds.index("approval_decided")
    assert kinds.index("approval_decided") < kinds.index("tool_started")


async def test_a_rejected_call_never_runs_and_the_model_hears_why(mesh: Mesh) -> None:
    arrivals = Arrivals(hold_s=0.0)
    with http_server(arrivals) as url:
        await mesh.start(**APPROVAL)
        run = await mesh.submit(f"fetch {url}/rejected")
        asked = await _waiting(mesh, run.run_id)
        await mesh.gateway.RejectToolCall(
            gateway_pb2.RejectToolCallRequest(
                run_id=run.run_id,
                tool_call_id=asked.approval_requested.call.tool_call_id,
                reason="not that site",
            )
        )
        done = await mesh.finished(run.run_id)
    assert arrivals.now() == 0
    assert done.status == types_pb2.RUN_STATUS_COMPLETED
    assert "not that site" in done.answer.text
    events = await mesh.events(run.run_id)
    (result,) = [e.tool_finished.result for e in events if e.WhichOneof("event") == "tool_finished"]
    assert result.status == types_pb2.TOOL_CALL_STATUS_REJECTED


async def test_an_approval_that_never_comes_fails_the_run_with_the_reason(mesh: Mesh) -> None:
    arrivals = Arrivals(hold_s=0.0)
    with http_server(arrivals) as url:
        await mesh.start(AGENTFLUX_APPROVAL_TOOLS="http_get", AGENTFLUX_APPROVAL_TIMEOUT_S="2")
        run = await mesh.submit(f"fetch {url}/never")
        await _waiting(mesh, run.run_id)
        done = await mesh.finished(run.run_id)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await mesh.gateway.ApproveToolCall(
                gateway_pb2.ApproveToolCallRequest(
                    run_id=run.run_id, tool_call_id=f"{run.run_id}.0.000"
                )
            )
    assert arrivals.now() == 0
    assert done.status == types_pb2.RUN_STATUS_FAILED
    assert "no approval within 2 s" in done.error_message
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_cancelling_a_run_that_waits_for_approval_ends_it_at_once(mesh: Mesh) -> None:
    arrivals = Arrivals(hold_s=0.0)
    with http_server(arrivals) as url:
        await mesh.start(**APPROVAL)
        run = await mesh.submit(f"fetch {url}/waiting")
        await _waiting(mesh, run.run_id)
        await mesh.gateway.CancelRun(gateway_pb2.CancelRunRequest(run_id=run.run_id))
        done = await mesh.finished(run.run_id, timeout=30)  # not the 60 s approval timeout
    assert done.status == types_pb2.RUN_STATUS_CANCELLED
    assert arrivals.now() == 0
