"""Token budgets end to end: a run whose tenant runs out of tokens mid-run ends failed
with the reason, before the model is asked again; usage shows in GetRun and in
`agent.completed`, and the next Submit is refused with a QuotaFailure."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from agentflux.v1 import events_pb2, gateway_pb2, types_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.runs import estimate_tokens
from tests.e2e.conftest import Mesh
from tests.e2e.test_agent_runs import _read

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PROMPT = "what is 6*7 then add 8"


async def test_a_tenant_out_of_tokens_mid_run_fails_the_run_with_the_reason(mesh: Mesh) -> None:
    # Room for the first model call (the plan of step 0) and not one token more: the
    # composer's call after the tools ran cannot reserve its estimate.
    budget = estimate_tokens(PROMPT) + 1
    await mesh.start(AGENTFLUX_TENANT_TOKEN_BUDGET=str(budget))
    run = await mesh.submit(PROMPT)
    done = await mesh.finished(run.run_id)
    assert done.status == types_pb2.RUN_STATUS_FAILED
    assert "token budget is spent" in done.error_message
    assert "AGENTFLUX_TENANT_TOKEN_BUDGET" in done.error_message
    events = await mesh.events(run.run_id)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds.count("planned") == 1  # step 0 was planned and its tools ran; no step 1
    assert "tool_finished" in kinds
    # What was spent is the plan's actual usage, charged once, shown in GetRun and in
    # the run's AgentCompleted.
    assert 0 < done.usage.total_tokens < budget
    (record,) = await asyncio.to_thread(_read, mesh, mesh.ns + "agent.completed", 1)
    completed = events_pb2.AgentCompleted.FromString(record.value())
    assert completed.run_id == run.run_id
    assert completed.usage.total_tokens == done.usage.total_tokens


async def test_a_spent_tenant_budget_refuses_new_runs_with_a_quota_failure(mesh: Mesh) -> None:
    # One run's first call fits; what it spends leaves less than any call could need.
    await mesh.start(AGENTFLUX_TENANT_TOKEN_BUDGET=str(estimate_tokens("what is 1+1") + 1))
    other_key = await mesh.new_key("other-team")
    first = await mesh.submit("what is 1+1")
    await mesh.finished(first.run_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.gateway.Submit(gateway_pb2.SubmitRequest(prompt="what is 2+2"))
    refused = caught.value
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "AGENTFLUX_TENANT_TOKEN_BUDGET" in (refused.details() or "")
    status = rpc_status.from_call(refused)
    assert status is not None
    quota = error_details_pb2.QuotaFailure()
    assert any(d.Unpack(quota) for d in status.details)
    assert quota.violations[0].subject == "tenant:acme"
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details)
    assert retry.retry_delay.seconds > 0
    # The other tenant's budget is its own.
    other = mesh.client(other_key)
    ok = await other.Submit(gateway_pb2.SubmitRequest(prompt="what is 3+3"))
    assert ok.run.tenant_id == "other-team"
