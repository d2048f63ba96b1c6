"""The Go SDK's Kafka side (sdk/go/events, built by `make sdk-go`) against a real mesh:
the consumer reads every contract topic and decodes each record by its ce_type; the
producer starts a run from outside the gateway with only the documented headers, and the
mesh runs it in the producer's correlation and trace. (The gateway client is tested with
the other languages' in test_sdk_clients.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from agentflux.v1 import gateway_pb2, types_pb2
from confluent_kafka import Producer

from services.runtime.adapters.kafka import producer_config
from tests.e2e.conftest import AGENTFLUX, ROOT, TENANT, Done, Mesh, eventually, run_program

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

BIN = ROOT / "sdk" / "go" / "bin"
PROMPT = "what is 6*7 then add 8"
TOPICS = {
    "agent.requested": "agentflux.v1.AgentRequested",
    "agent.tool_called": "agentflux.v1.ToolCalled",
    "agent.completed": "agentflux.v1.AgentCompleted",
}
TERMINAL = (
    types_pb2.RUN_STATUS_COMPLETED,
    types_pb2.RUN_STATUS_FAILED,
    types_pb2.RUN_STATUS_CANCELLED,
)


def program(name: str) -> str:
    path = BIN / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make sdk-go`", pytrace=False)
    return str(path)


async def run(
    cmd: str | Path, *args: str, env: dict[str, str] | None = None, timeout: float = 150
) -> Done:
    """Runs one of the Go programs (a name) or another program (a path)."""
    exe = program(cmd) if isinstance(cmd, str) else str(cmd)
    # Without the fallbacks of --target and --api-key: the flags say everything.
    plain = {
        k: v for k, v in os.environ.items() if k not in ("AGENTFLUX_API_KEY", "AGENTFLUX_TARGET")
    }
    return await run_program(exe, *args, env=plain if env is None else env, timeout=timeout)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


async def example(mesh: Mesh, *args: str) -> Done:
    return await run(
        "agentflux-example", "--target", mesh.settings.gateway_target, "--api-key", mesh.key, *args
    )


async def consume(mesh: Mesh, run_id: str, *args: str) -> list[dict[str, Any]]:
    """The run's records as the Go consumer prints them, up to its agent.completed.

    `--until-completed` stops at the completion, and a consumer fetches the three topics
    independently: the completion can arrive before the run's agent.requested. Read
    again (a new group, from the start) until the run's request is among the records."""
    for _ in range(5):
        done = await run(
            "agentflux-consume",
            "--brokers",
            mesh.settings.kafka_bootstrap_servers,
            "--namespace",
            mesh.ns,
            "--group",
            new_id("go-consume"),
            "--until-completed",
            run_id,
            "--timeout",
            "120",
            *args,
        )
        assert done.code == 0, f"exit {done.code}\n{done.stdout}\n{done.stderr}"
        if any(r.get("topic") == mesh.ns + "agent.requested" for r in done.lines):
            break
    return done.lines


async def stub_run(mesh: Mesh, run_id: str) -> types_pb2.Run:
    return (await mesh.gateway.GetRun(gateway_pb2.GetRunRequest(run_id=run_id), timeout=30)).run


def publish_garbage(mesh: Mesh, conversation: str) -> None:
    """Two records of agent.completed no one can decode, keyed as the run's own records
    (the mesh's partitioner): they come before its completion in its partition."""
    producer = Producer(producer_config(mesh.settings))
    base = [("ce_specversion", b"1.0"), ("ce_source", b"/tests/go"), ("ce_id", b"bad-1")]
    for ce_type, value in (
        (b"agentflux.v1.NoSuchEvent", b"\x08\x01"),
        (b"agentflux.v1.AgentCompleted", b"\xff\xff\xff"),
    ):
        producer.produce(
            mesh.ns + "agent.completed",
            key=conversation.encode(),
            value=value,
            headers=[*base, ("ce_type", ce_type)],
        )
    assert producer.flush(30) == 0


async def test_consumer_decodes_every_contract_topic_of_a_run(mesh: Mesh) -> None:
    await mesh.start()
    correlation, conversation = new_id("go-consume"), new_id("go-conv")
    await asyncio.to_thread(publish_garbage, mesh, conversation)
    done = await example(
        mesh,
        "run",
        "--prompt",
        PROMPT,
        "--correlation-id",
        correlation,
        "--conversation",
        conversation,
    )
    assert done.code == 0, done.stderr
    run_id = done.lines[0]["run_id"]
    records = await consume(mesh, run_id)
    # What it could not decode it said, and went on.
    bad = [r for r in records if "error" in r]
    assert [r["ce_type"] for r in bad] == [
        "agentflux.v1.NoSuchEvent",
        "agentflux.v1.AgentCompleted",
    ]
    assert "unknown ce_type" in bad[0]["error"]
    assert "undecodable" in bad[1]["error"]
    assert all("message" not in r and r["key"] == conversation for r in bad), bad
    ours = [r for r in records if r["run_id"] == run_id]
    assert len(ours) == len(records) - len(bad), records
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for r in ours:
        assert r["topic"].startswith(mesh.ns), r
        by_topic.setdefault(r["topic"].removeprefix(mesh.ns), []).append(r)
    assert set(by_topic) == set(TOPICS), sorted(by_topic)
    for topic, rs in by_topic.items():
        for r in rs:
            assert r["ce_type"] == TOPICS[topic], r
            assert r["correlation_id"] == correlation, r
            assert r["tenant_id"] == TENANT, r
            assert r["ce_id"], r
            assert r["traceparent"], r
            assert r["message"]["runId"] == run_id, r
            assert r["key"] == r["message"]["conversationId"], r
    # Decoded as the type its ce_type names: each topic's own fields are there.
    assert {r["message"].get("step", 0) for r in by_topic["agent.requested"]} == {0, 1}
    assert all(r["message"]["call"]["name"] == "calculator" for r in by_topic["agent.tool_called"])
    (completed,) = by_topic["agent.completed"]
    assert completed["message"]["status"] == "COMPLETION_STATUS_COMPLETED"
    assert "50" in completed["message"]["answer"]["text"]


async def test_producer_starts_a_run_the_mesh_completes_in_the_producers_trace(
    mesh: Mesh,
) -> None:
    await mesh.start()
    brokers = mesh.settings.kafka_bootstrap_servers
    produced: list[dict[str, Any]] = []
    for content_type in ("application/protobuf", "application/json"):
        trace_id = uuid.uuid4().hex
        done = await run(
            "agentflux-produce",
            "--brokers",
            brokers,
            "--namespace",
            mesh.ns,
            "--tenant",
            TENANT,
            "--prompt",
            PROMPT,
            "--run-id",
            new_id("go-run"),
            "--correlation-id",
            new_id("go-produce"),
            "--traceparent",
            f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01",
            "--content-type",
            content_type,
        )
        assert done.code == 0, f"{done.stdout}\n{done.stderr}"
        (line,) = done.lines
        assert line["trace_id"] == trace_id
        assert line["topic"] == mesh.ns + "agent.requested"
        assert line["ce_id"]
        assert line["offset"] >= 0
        produced.append(line)

    for p in produced:
        run_id = p["run_id"]

        async def ended(run_id: str = run_id) -> types_pb2.Run | None:
            try:
                got = await stub_run(mesh, run_id)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise
            return got if got.status in TERMINAL else None

        got = await eventually(
            ended,
            timeout=120,
            what=f"run {run_id}, requested on Kafka only, to end (the planner must start "
            "a run it does not know from an AgentRequested of step 0)",
        )
        assert got.status == types_pb2.RUN_STATUS_COMPLETED, got
        assert "50" in got.answer.text

        records = await consume(mesh, run_id, "--run-id", run_id)
        assert not [r for r in records if "error" in r], records
        (requested,) = [
            r
            for r in records
            if r["topic"] == mesh.ns + "agent.requested" and r["ce_id"] == p["ce_id"]
        ]
        assert requested["message"]["prompt"] == PROMPT
        assert requested["correlation_id"] == p["correlation_id"]
        (completed,) = [r for r in records if r["topic"] == mesh.ns + "agent.completed"]
        assert completed["correlation_id"] == p["correlation_id"]
        assert completed["message"]["answer"]["text"] == got.answer.text
        # Keyed as the mesh keys it: the conversation's records share a partition.
        assert completed["key"] == requested["key"]
        assert completed["partition"] == p["partition"], (p, completed)

        # The mesh continued the producer's trace: the planner's span is a child of the
        # producer's, and the work it caused downstream is in the same trace.
        producer_span = requested["traceparent"].split("-")[2]

        async def traced(p: dict[str, Any] = p) -> list[dict[str, Any]] | None:
            shown = await run(
                Path(AGENTFLUX), "trace", p["trace_id"], "--json", env=mesh.env, timeout=60
            )
            if shown.code != 0:
                return None
            spans = [json.loads(line) for line in shown.stdout.splitlines() if line.strip()]
            services = {s["service"] for s in spans if s["trace_id"] == p["trace_id"]}
            return spans if {"planner", "worker"} <= services else None

        spans = await eventually(traced, timeout=60, what=f"spans of trace {p['trace_id']}")
        planner = [s for s in spans if s["service"] == "planner"]
        assert any(s["parent_span_id"] == producer_span for s in planner), planner
