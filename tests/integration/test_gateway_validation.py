"""The rules of the gateway's contracts (protovalidate annotations in proto/) enforced by
a real gateway on the real stack: INVALID_ARGUMENT with a `google.rpc.BadRequest` naming
every field at fault at once, and nothing of an invalid request reaching Kafka or the
run store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from agentflux.v1 import gateway_pb2, types_pb2
from google.rpc import error_details_pb2

from services.runtime.config import Settings
from tests.integration.test_gateway import (
    Rig,
    collect,
    new_tenant,
    read_requested,
    rich_status,
    running_gateway,
    tenant_md,
    violations,
)

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module")
async def rig(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with running_gateway(tmp_path_factory.mktemp("stack")) as got:
        yield got


async def refused(call: Any) -> grpc.aio.AioRpcError:
    """The error of a unary call, or of a stream's first read."""
    done = collect(call) if isinstance(call, grpc.aio.UnaryStreamCall) else call
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await done
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return caught.value


def descriptions(error: grpc.aio.AioRpcError) -> dict[str, str]:
    for detail in rich_status(error).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return {v.field: v.description for v in bad.field_violations}
    raise AssertionError("no BadRequest detail")


def bad_submit(prompt: str) -> gateway_pb2.SubmitRequest:
    """A Submit with a valid prompt and five other fields at fault."""
    return gateway_pb2.SubmitRequest(
        prompt=prompt,
        conversation_id="no spaces please",
        request_id="x" * 129,
        priority=99,  # type: ignore[arg-type]
        limits=types_pb2.RunLimits(max_steps=1000, max_tokens=-5),
    )


async def test_a_submit_with_several_bad_fields_names_each(rig: Rig) -> None:
    request = bad_submit("")  # the prompt is missing too
    error = await refused(rig.stub.Submit(request))
    named = descriptions(error)
    assert sorted(named) == sorted(
        [
            "prompt",
            "conversation_id",
            "request_id",
            "priority",
            "limits.max_steps",
            "limits.max_tokens",
        ]
    )
    # Each says what is wrong with its field, and the status message lists them all.
    assert all(named.values()), named
    assert all(f"{field}: " in (error.details() or "") for field in named)


async def test_nothing_of_an_invalid_submit_reaches_kafka_or_the_run_store(rig: Rig) -> None:
    tenant = new_tenant()
    md = tenant_md(tenant)
    conversation, invalid = uuid.uuid4().hex, f"invalid {uuid.uuid4().hex}"
    request = bad_submit(invalid)
    request.conversation_id = conversation  # valid: the other fields are at fault
    await refused(rig.stub.Submit(request, metadata=md))
    # A valid run of the same conversation after it: the conversation is the record key,
    # so both would share a partition, and the invalid one would come first.
    valid = gateway_pb2.SubmitRequest(prompt="marker", conversation_id=conversation)
    marker = (await rig.stub.Submit(valid, metadata=md)).run
    records = await asyncio.to_thread(
        read_requested, rig.settings, rig.topic, lambda e: e.run_id == marker.run_id
    )
    assert [e.prompt for e, _, _ in records if e.tenant_id == tenant] == ["marker"]
    listed = await rig.stub.ListRuns(gateway_pb2.ListRunsRequest(), metadata=md)
    assert [r.run_id for r in listed.runs] == [marker.run_id]


async def test_a_limit_within_the_contract_but_over_the_deployments_cap_is_refused(
    rig: Rig,
) -> None:
    # The contract holds the ceiling (64); the deployment's cap is a setting, checked in code.
    over = rig.settings.run_max_steps + 1
    assert over <= 64
    request = gateway_pb2.SubmitRequest(prompt="p", limits=types_pb2.RunLimits(max_steps=over))
    error = await refused(rig.stub.Submit(request))
    assert violations(error) == ["limits.max_steps"]


@pytest.mark.parametrize(
    ("rpc", "request_", "fields"),
    [
        pytest.param(
            "StreamRun",
            gateway_pb2.StreamRunRequest(run_id="a b", after_event_id="x", after_sequence=-1),
            ["run_id", "after_event_id", "after_sequence"],
            id="StreamRun",
        ),
        pytest.param("GetRun", gateway_pb2.GetRunRequest(), ["run_id"], id="GetRun-required"),
        pytest.param(
            "GetRun", gateway_pb2.GetRunRequest(run_id="x" * 129), ["run_id"], id="GetRun-long"
        ),
        pytest.param(
            "ListRuns",
            gateway_pb2.ListRunsRequest(page_size=101, status=42),  # type: ignore[arg-type]
            ["page_size", "status"],
            id="ListRuns",
        ),
        pytest.param(
            "CancelRun",
            gateway_pb2.CancelRunRequest(run_id="", reason="é" * 513),  # 1026 bytes
            ["run_id", "reason"],
            id="CancelRun",
        ),
        pytest.param(
            "ApproveToolCall",
            gateway_pb2.ApproveToolCallRequest(run_id="-r", tool_call_id=""),
            ["run_id", "tool_call_id"],
            id="ApproveToolCall",
        ),
        pytest.param(
            "RejectToolCall",
            gateway_pb2.RejectToolCallRequest(run_id="r", tool_call_id="c/1", reason="x" * 1025),
            ["tool_call_id", "reason"],
            id="RejectToolCall",
        ),
        pytest.param(
            "SearchResponses",
            gateway_pb2.SearchResponsesRequest(query="q" * 1025, page_size=-1),
            ["query", "page_size"],
            id="SearchResponses",
        ),
    ],
)
async def test_each_rpcs_rules_fire(rig: Rig, rpc: str, request_: Any, fields: list[str]) -> None:
    error = await refused(getattr(rig.stub, rpc)(request_))
    assert sorted(violations(error)) == sorted(fields)
