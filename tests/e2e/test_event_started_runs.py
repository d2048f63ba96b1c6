"""Runs started by events: a producer inside the mesh publishes `AgentRequested` at step 0
with only the headers docs/wire-protocol.md documents, and the mesh runs it like a run
submitted through the gateway. A malformed request is dead-lettered naming its fields,
and a replayed request of a run whose record expired is not run again.

The records are produced with a bare Kafka client, as a producer in another language
would; the Go SDK's producer does the same in test_sdk_go.py."""

from __future__ import annotations

import asyncio
import time
import uuid

from agentflux.v1 import events_pb2, gateway_pb2, types_pb2
from confluent_kafka import Producer
from google.protobuf import timestamp_pb2

from tests.e2e.conftest import TENANT, Mesh, eventually
from tests.integration.runtime_kit import headers, read_all

COMPLETED = types_pb2.RUN_STATUS_COMPLETED
TOPIC = "agent.requested"


def _request(run_id: str, prompt: str, *, age_s: float = 0.0) -> events_pb2.AgentRequested:
    sent = timestamp_pb2.Timestamp()
    sent.FromNanoseconds(int((time.time() - age_s) * 1e9))
    return events_pb2.AgentRequested(
        run_id=run_id,
        tenant_id=TENANT,
        conversation_id="conv-" + run_id,
        prompt=prompt,
        request_time=sent,
    )


def _produce(mesh: Mesh, request: events_pb2.AgentRequested, **extra: str) -> dict[str, str]:
    sent = {
        "ce_specversion": "1.0",
        "ce_type": "agentflux.v1.AgentRequested",
        "ce_source": "/tests/foreign-producer",
        "ce_id": f"orders/{uuid.uuid4().hex}",
        "content-type": "application/protobuf",
        **extra,
    }
    producer = Producer({"bootstrap.servers": mesh.settings.kafka_bootstrap_servers})
    producer.produce(
        mesh.ns + TOPIC,
        request.SerializeToString(),
        # The documented key: the conversation, so one conversation stays in order.
        key=request.conversation_id.encode(),
        headers=[(k, v.encode()) for k, v in sent.items()],
    )
    assert producer.flush(10) == 0
    return sent


async def _finished(mesh: Mesh, run_id: str) -> types_pb2.Run:
    """The run once it ended; it exists only once the planner has read its event."""

    async def recorded() -> bool:
        listed = await mesh.gateway.ListRuns(gateway_pb2.ListRunsRequest())
        return run_id in [r.run_id for r in listed.runs]

    await eventually(recorded, what=f"run {run_id} to be recorded")
    return await mesh.finished(run_id)


async def test_an_event_with_the_documented_headers_starts_a_run(mesh: Mesh) -> None:
    await mesh.start()
    run_id = "ext-" + uuid.uuid4().hex
    correlation = "corr-" + uuid.uuid4().hex
    trace_id = uuid.uuid4().hex
    _produce(
        mesh,
        _request(run_id, "what is 6*7 then add 8"),
        ce_correlationid=correlation,
        traceparent=f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01",
    )
    # The caller's view: the run exists for its tenant, streams, and completes.
    done = await _finished(mesh, run_id)
    assert done.status == COMPLETED, done
    assert "50" in done.answer.text
    assert done.conversation_id == "conv-" + run_id
    completed = [
        r
        for r in await asyncio.to_thread(read_all, mesh.settings, mesh.ns + "agent.completed", 1)
        if events_pb2.AgentCompleted.FromString(r.value()).run_id == run_id
    ]
    assert completed, "no agent.completed for the run"
    got = headers(completed[0])
    # The producer's correlation id and trace carry through every hop to the result.
    assert got["ce_correlationid"].decode() == correlation
    assert got["traceparent"].decode().split("-")[1] == trace_id


async def test_a_malformed_request_is_dead_lettered_naming_its_fields(mesh: Mesh) -> None:
    await mesh.start()
    bad = _request("ext-" + uuid.uuid4().hex, "   ")
    bad.limits.max_steps = -1
    sent = _produce(mesh, bad)
    [dead] = await asyncio.to_thread(read_all, mesh.settings, mesh.ns + "agent.dlq", 1, 60.0)
    got = headers(dead)
    assert dead.value() == bad.SerializeToString()  # the original bytes, kept
    assert got["dlq_reason"] == b"INVALID_RUN_REQUEST"
    assert b"prompt: required" in got["dlq_error"]
    assert got["ce_id"].decode() == sent["ce_id"]
    stored = await mesh.gateway.ListRuns(gateway_pb2.ListRunsRequest())
    assert bad.run_id not in [r.run_id for r in stored.runs]


async def test_a_replayed_request_of_an_expired_run_is_not_run_again(mesh: Mesh) -> None:
    await mesh.start()
    stale = _request("ext-" + uuid.uuid4().hex, "what is 2+3", age_s=30 * 24 * 3600)
    fresh = _request("ext-" + uuid.uuid4().hex, "what is 2+3")
    # One conversation, so one partition: the fresh request is planned after the stale one.
    fresh.conversation_id = stale.conversation_id
    _produce(mesh, stale)
    _produce(mesh, fresh)
    assert (await _finished(mesh, fresh.run_id)).status == COMPLETED
    listed = await mesh.gateway.ListRuns(gateway_pb2.ListRunsRequest())
    assert [r.run_id for r in listed.runs] == [fresh.run_id]
