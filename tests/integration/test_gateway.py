"""The gateway in-process on the real stack, called over a real grpc.aio channel.

The test plays the rest of the mesh: it reads `AgentRequested` from the namespace's
Kafka topic with a plain consumer, and moves runs along with `RunStore` (planned, tool
started and finished, answer deltas, finished) as the planner, workers and composer
would. Every assertion is about what a caller observes: the answer, the status code and
its details, the record on the topic and its headers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from agentflux.v1 import events_pb2, gateway_pb2, gateway_pb2_grpc, types_pb2
from confluent_kafka import Consumer
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from services.gateway import GatewayService
from services.runs import RunStore
from services.runtime.adapters.kafka import KafkaProducer
from services.runtime.adapters.memcached import connect_memcached_async
from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings
from services.runtime.mesh import Mesh
from services.runtime.topology import ensure_kafka_topics, kafka_topics
from tests.integration.runtime_kit import delete_kafka, eventually

pytestmark = pytest.mark.integration

GATEWAY = "agentflux.v1.AgentGateway"
Event = gateway_pb2.StreamRunResponse


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Rig:
    """One gateway on its own namespace, and what a test needs around it."""

    settings: Settings
    gateway: GatewayService
    store: RunStore
    channel: grpc.aio.Channel
    stub: gateway_pb2_grpc.AgentGatewayStub

    @property
    def topic(self) -> str:
        return self.settings.namespace + "agent.requested"


@contextlib.asynccontextmanager
async def running_gateway(
    stack_dir: Path,
    *,
    topics: bool = True,
    producer: dict[str, Any] | None = None,
    channel_to: Callable[[int], grpc.aio.Channel] | None = None,
    **overrides: Any,
) -> AsyncIterator[Rig]:
    """A started GatewayService on a fresh namespace and port; its topics (unless
    `topics` is False) and Redis keys are removed afterwards, also on failure."""
    # Two rigs given one namespace are two gateways of one mesh.
    namespace = overrides.pop("namespace", None) or f"t{uuid.uuid4().hex[:10]}."
    settings = Settings(
        namespace=namespace,
        gateway_port=free_port(),
        indexer_port=free_port(),  # nothing listens there
        stack_dir=stack_dir,
        grace_s=1.0,
        # x-tenant-id names the tenant: these tests act as many tenants without keys.
        # API keys have their own tests (test_gateway_edge.py).
        **{"auth": "off", **overrides},
    )
    specs = kafka_topics(settings, prefix=namespace) if topics else []
    mesh = Mesh(
        settings=settings,
        redis=connect_redis(settings, max_connections=64),
        producer=KafkaProducer(settings, **{"linger.ms": 0, **(producer or {})}),
        memcached=connect_memcached_async(settings),
    )
    gateway = GatewayService(mesh)
    stop = asyncio.Event()
    serving: asyncio.Task[None] | None = None
    try:
        if specs:
            await ensure_kafka_topics(settings, specs)
        await gateway.start()
        serving = asyncio.create_task(gateway.run(stop))
        if channel_to is None:
            channel = grpc.aio.insecure_channel(settings.gateway_target)
        else:  # the rig's client as the test builds it (TLS), given the gateway's port
            channel = channel_to(gateway.port)
        async with channel:
            stub = gateway_pb2_grpc.AgentGatewayStub(channel)
            yield Rig(settings, gateway, gateway.store, channel, stub)
    finally:
        stop.set()
        if serving is not None:
            await serving
        await gateway.close()
        await mesh.close()
        await delete_kafka(settings, [s.name for s in specs], [])
        cleaner = aioredis.Redis.from_url(settings.redis_dsn)
        try:
            keys = [k async for k in cleaner.scan_iter(f"{namespace}af:*", count=1000)]
            if keys:
                await cleaner.delete(*keys)
        finally:
            await cleaner.aclose()


@pytest_asyncio.fixture(scope="module")
async def rig(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with running_gateway(tmp_path_factory.mktemp("stack")) as got:
        yield got


def tenant_md(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("x-tenant-id", tenant),)


def new_tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailing metadata"
    return status  # type: ignore[no-any-return]


def violations(error: grpc.aio.AioRpcError) -> list[str]:
    for detail in rich_status(error).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return [v.field for v in bad.field_violations]
    raise AssertionError("no BadRequest detail")


def read_requested(
    settings: Settings, topic: str, until: Callable[[events_pb2.AgentRequested], bool]
) -> list[tuple[events_pb2.AgentRequested, dict[str, bytes], bytes]]:
    """Records of `topic` from the start (payload, headers, key), up to and including
    the first one `until` accepts. Blocking: call it through `asyncio.to_thread`."""
    reader = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"reader.{os.urandom(6).hex()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    reader.subscribe([topic])
    out = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            record = reader.poll(0.25)
            if record is None or record.error() is not None:
                continue
            event = events_pb2.AgentRequested.FromString(record.value() or b"")
            raw: Any = record.headers() or []
            out.append((event, {k: v or b"" for k, v in raw}, record.key() or b""))
            if until(event):
                return out
    finally:
        reader.close()
    raise AssertionError(f"the awaited record never reached {topic} ({len(out)} others did)")


async def collect(stream: Any) -> list[Event]:
    return [event async for event in stream]


def kinds(events: list[Event]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


def deltas(events: list[Event]) -> str:
    return "".join(e.answer_delta.text for e in events if e.HasField("answer_delta"))


def delta(text: str) -> Event:
    return Event(answer_delta=gateway_pb2.AnswerDelta(text=text))


async def play_tools(store: RunStore, run: types_pb2.Run) -> None:
    """What the planner and a worker append for a one-tool step."""
    tenant, run_id = run.tenant_id, run.run_id
    args = struct_pb2.Struct()
    args.update({"expression": "6*7"})
    call = types_pb2.ToolCall(tool_call_id="c1", name="calculator", arguments=args, step=0)
    assert await store.set_running(tenant, run_id, 0)
    planned = Event(planned=gateway_pb2.RunPlanned(step=0, tool_calls=[call]))
    assert await store.append_once(tenant, run_id, "planned:0", planned)
    started = Event(tool_started=gateway_pb2.ToolStarted(call=call, attempt=1))
    assert await store.append_once(tenant, run_id, "started:c1", started)
    result = types_pb2.ToolResult(
        tool_call_id="c1", name="calculator", status=types_pb2.TOOL_CALL_STATUS_SUCCEEDED
    )
    result.output.number_value = 42
    result.duration.FromMilliseconds(3)
    finished = Event(tool_finished=gateway_pb2.ToolFinished(result=result))
    assert await store.append_once(tenant, run_id, "finished:c1", finished)


async def submit(rig: Rig, prompt: str = "what is 6*7?", tenant: str = "", **fields: Any) -> Any:
    md = tenant_md(tenant) if tenant else None
    got = await rig.stub.Submit(gateway_pb2.SubmitRequest(prompt=prompt, **fields), metadata=md)
    return got.run


# --- Submit ------------------------------------------------------------------------------


async def test_submit_returns_pending_and_emits_agent_requested_with_the_context(rig: Rig) -> None:
    correlation = uuid.uuid4().hex
    call = rig.stub.Submit(
        gateway_pb2.SubmitRequest(prompt="what is 6*7?", priority=types_pb2.PRIORITY_HIGH),
        metadata=(("x-correlation-id", correlation), ("x-tenant-id", "acme")),
    )
    run = (await call).run
    assert dict(await call.initial_metadata())["x-correlation-id"] == correlation
    assert run.status == types_pb2.RUN_STATUS_PENDING
    assert run.tenant_id == "acme"
    assert run.conversation_id
    assert run.run_id
    # Zero limits took the deployment's defaults.
    s = rig.settings
    assert (run.limits.max_steps, run.limits.max_tools_per_step, run.limits.max_tool_calls) == (
        s.run_max_steps,
        s.run_max_tools_per_step,
        s.run_max_tool_calls,
    )

    records = await asyncio.to_thread(
        read_requested, s, rig.topic, lambda e: e.run_id == run.run_id
    )
    event, headers, key = records[-1]
    assert headers["ce_type"] == b"agentflux.v1.AgentRequested"
    assert headers["ce_source"] == b"/agentflux/gateway"
    assert headers["ce_correlationid"] == correlation.encode()
    assert headers["ce_idempotencykey"] == f"{run.run_id}:requested".encode()
    assert headers["ce_tenantid"] == b"acme"
    assert headers["ce_runid"] == run.run_id.encode()
    assert key == run.conversation_id.encode()
    assert (event.tenant_id, event.prompt, event.step) == ("acme", "what is 6*7?", 0)
    assert event.priority == types_pb2.PRIORITY_HIGH
    assert event.limits == run.limits
    assert event.request_time == run.create_time


async def test_a_retried_request_id_returns_the_same_run_and_emits_again_only_while_pending(
    rig: Rig,
) -> None:
    request_id, conversation = uuid.uuid4().hex, uuid.uuid4().hex
    first = await submit(rig, request_id=request_id, conversation_id=conversation)
    again = await submit(rig, request_id=request_id, conversation_id=conversation)
    assert again.run_id == first.run_id
    assert again.status == types_pb2.RUN_STATUS_PENDING
    # The planner picked it up: a retry now finds the run and queues nothing.
    assert await rig.store.set_running(first.tenant_id, first.run_id, 0)
    late = await submit(rig, request_id=request_id, conversation_id=conversation)
    assert late.run_id == first.run_id
    assert late.status == types_pb2.RUN_STATUS_RUNNING
    # A later run of the same conversation lands on the same partition, after the others.
    marker = await submit(rig, prompt="marker", conversation_id=conversation)
    records = await asyncio.to_thread(
        read_requested, rig.settings, rig.topic, lambda e: e.run_id == marker.run_id
    )
    mine = [(e, h) for e, h, _ in records if e.run_id == first.run_id]
    assert len(mine) == 2, "emitted on the first call and on the retry while PENDING only"
    assert {h["ce_idempotencykey"] for _, h in mine} == {f"{first.run_id}:requested".encode()}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * (32 * 1024 + 1)}, "prompt"),
        ({"conversation_id": "no spaces please"}, "conversation_id"),
        ({"request_id": "x" * 129}, "request_id"),
        ({"priority": 99}, "priority"),
        ({"limits": types_pb2.RunLimits(max_steps=1000)}, "limits.max_steps"),
        ({"limits": types_pb2.RunLimits(max_tools_per_step=-1)}, "limits.max_tools_per_step"),
        ({"limits": types_pb2.RunLimits(max_tool_calls=1_000_000)}, "limits.max_tool_calls"),
        ({"limits": types_pb2.RunLimits(max_tokens=-5)}, "limits.max_tokens"),
    ],
)
async def test_an_invalid_submit_names_the_field(
    rig: Rig, fields: dict[str, Any], field: str
) -> None:
    request = gateway_pb2.SubmitRequest(**{"prompt": "hello", **fields})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rig.stub.Submit(request)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == [field]


async def test_limits_within_the_caps_are_kept(rig: Rig) -> None:
    limits = types_pb2.RunLimits(max_steps=1, max_tool_calls=2, max_tokens=500)
    run = await submit(rig, limits=limits)
    assert run.limits.max_steps == 1
    assert run.limits.max_tool_calls == 2
    assert run.limits.max_tokens == 500
    assert run.limits.max_tools_per_step == rig.settings.run_max_tools_per_step
    got = await rig.stub.GetRun(gateway_pb2.GetRunRequest(run_id=run.run_id))
    assert got.run.limits == run.limits


async def test_kafka_refusing_the_request_fails_the_run_and_answers_unavailable(
    settings: Settings, tmp_path: Path
) -> None:
    # No topics in this namespace (and the stack creates none on demand): Kafka refuses.
    async with running_gateway(
        tmp_path, topics=False, producer={"message.timeout.ms": 1500}
    ) as lonely:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await lonely.stub.Submit(gateway_pb2.SubmitRequest(prompt="anyone?"))
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        listed = await lonely.stub.ListRuns(gateway_pb2.ListRunsRequest())
        [run] = listed.runs
        assert run.status == types_pb2.RUN_STATUS_FAILED
        assert "could not queue" in run.error_message
        events = await collect(
            lonely.stub.StreamRun(gateway_pb2.StreamRunRequest(run_id=run.run_id))
        )
        assert kinds(events) == ["accepted", "finished"]
        assert events[-1].finished.status == types_pb2.COMPLETION_STATUS_FAILED


# --- reading what you wrote ----------------------------------------------------------------


async def test_a_submitted_run_is_found_at_once(rig: Rig) -> None:
    tenant = new_tenant()
    run = await submit(rig, tenant=tenant)
    md = tenant_md(tenant)
    got = await rig.stub.GetRun(gateway_pb2.GetRunRequest(run_id=run.run_id), metadata=md)
    assert got.run.run_id == run.run_id
    assert got.run.status == types_pb2.RUN_STATUS_PENDING
    listed = await rig.stub.ListRuns(gateway_pb2.ListRunsRequest(), metadata=md)
    assert [r.run_id for r in listed.runs] == [run.run_id]
    stream = rig.stub.StreamRun(gateway_pb2.StreamRunRequest(run_id=run.run_id), metadata=md)
    first = await stream.read()
    stream.cancel()
    assert first.WhichOneof("event") == "accepted"
    assert first.accepted.run.run_id == run.run_id
    assert first.accepted.run.status == types_pb2.RUN_STATUS_PENDING
    assert first.event_id


# --- StreamRun ---------------------------------------------------------------------------


async def test_a_stream_follows_the_run_to_its_end_and_the_answer_agrees(rig: Rig) -> None:
    run = await submit(rig)
    following = asyncio.create_task(
        collect(rig.stub.StreamRun(gateway_pb2.StreamRunRequest(run_id=run.run_id)))
    )
    await play_tools(rig.store, run)
    for i, text in enumerate(["The answer ", "is ", "42."]):
        assert await rig.store.append_once(run.tenant_id, run.run_id, f"delta:0:{i}", delta(text))
    answer = types_pb2.Answer(text="The answer is 42.")
    await rig.store.finish(
        run.tenant_id, run.run_id, types_pb2.RUN_STATUS_COMPLETED, answer=answer, steps=1
    )
    events = await asyncio.wait_for(following, 30)
    assert kinds(events) == [
        "accepted",
        "planned",
        "tool_started",
        "tool_finished",
        "answer_delta",
        "answer_delta",
        "answer_delta",
        "finished",
    ]
    ids = [e.event_id for e in events]
    assert len(set(ids)) == len(ids)
    assert all(ids)
    finished = events[-1].finished
    assert finished.status == types_pb2.COMPLETION_STATUS_COMPLETED
    got = await rig.stub.GetRun(gateway_pb2.GetRunRequest(run_id=run.run_id))
    assert got.run.status == types_pb2.RUN_STATUS_COMPLETED
    assert deltas(events) == finished.answer.text == got.run.answer.text == "The answer is 42."
    # Resuming after the last event a client saw ends at once, with nothing left.
    after_end = rig.stub.StreamRun(
        gateway_pb2.StreamRunRequest(run_id=run.run_id, after_event_id=ids[-1])
    )
    assert await asyncio.wait_for(collect(after_end), 10) == []


async def test_a_resumed_stream_loses_nothing_and_a_cancelled_one_lets_go(rig: Rig) -> None:
    run = await submit(rig)
    tenant, run_id = run.tenant_id, run.run_id
    await play_tools(rig.store, run)
    assert await rig.store.append_once(tenant, run_id, "delta:0:0", delta("Forty"))
    seen: list[Event] = []
    stream = rig.stub.StreamRun(gateway_pb2.StreamRunRequest(run_id=run_id))
    async for event in stream:
        seen.append(event)
        if event.HasField("answer_delta"):
            break  # the client goes away mid-run
    stream.cancel()
    pool: Any = rig.gateway.stream_redis.connection_pool

    async def released() -> bool:
        return not pool._in_use_connections

    await eventually(released, timeout=10, what="the stream's Redis connection released")

    assert await rig.store.append_once(tenant, run_id, "delta:0:1", delta("-two"))
    answer = types_pb2.Answer(text="Forty-two")
    await rig.store.finish(tenant, run_id, types_pb2.RUN_STATUS_COMPLETED, answer=answer)
    rest = await collect(
        rig.stub.StreamRun(
            gateway_pb2.StreamRunRequest(run_id=run_id, after_event_id=seen[-1].event_id)
        )
    )
    assert kinds(rest) == ["answer_delta", "finished"]
    assert deltas(seen + rest) == rest[-1].finished.answer.text == "Forty-two"
    # From an earlier point, everything after it again: resuming is repeatable.
    again = await collect(
        rig.stub.StreamRun(
            gateway_pb2.StreamRunRequest(run_id=run_id, after_event_id=seen[0].event_id)
        )
    )
    assert [e.event_id for e in again] == [e.event_id for e in seen[1:] + rest]


async def test_bad_resume_points_are_refused(rig: Rig) -> None:
    run = await submit(rig)
    for after, code in [
        ("yesterday", grpc.StatusCode.INVALID_ARGUMENT),
        ("1-1", grpc.StatusCode.OUT_OF_RANGE),
        ("99-0", grpc.StatusCode.OUT_OF_RANGE),
    ]:
        request = gateway_pb2.StreamRunRequest(run_id=run.run_id, after_event_id=after)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(rig.stub.StreamRun(request))
        assert caught.value.code() is code, after
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            assert violations(caught.value) == ["after_event_id"]


async def test_a_run_whose_events_expired_says_what_is_lost_and_how_it_ended(
    rig: Rig,
) -> None:
    run = await submit(rig)
    await rig.store.finish(run.tenant_id, run.run_id, types_pb2.RUN_STATUS_FAILED, error="boom")
    await rig.store.redis.delete(rig.store.keys.events(run.tenant_id, run.run_id))  # expiry
    # accepted (1) and finished (2) were written; 1 is gone, 2 is rebuilt from the run.
    events = await collect(rig.stub.StreamRun(gateway_pb2.StreamRunRequest(run_id=run.run_id)))
    assert kinds(events) == ["events_lost", "finished"]
    lost = events[0].events_lost
    assert (lost.from_sequence, lost.to_sequence) == (1, 1)
    assert "kept" in lost.reason
    assert events[1].sequence == 2
    assert events[1].finished.status == types_pb2.COMPLETION_STATUS_FAILED
    assert events[1].finished.error_message == "boom"
    # A client that had seen everything but `finished` hears of no gap.
    resumed = await collect(
        rig.stub.StreamRun(gateway_pb2.StreamRunRequest(run_id=run.run_id, after_sequence=1))
    )
    assert kinds(resumed) == ["finished"]
    # and one that had seen `finished` gets nothing more.
    assert (
        await collect(
            rig.stub.StreamRun(gateway_pb2.StreamRunRequest(run_id=run.run_id, after_sequence=2))
        )
        == []
    )
    got = await rig.stub.GetRun(gateway_pb2.GetRunRequest(run_id=run.run_id))
    assert got.run.status == types_pb2.RUN_STATUS_FAILED
    assert got.run.error_message == "boom"


# --- tenants and unknown runs -------------------------------------------------------------


async def test_unknown_runs_and_other_tenants_runs_are_not_found(rig: Rig) -> None:
    owner, other = new_tenant(), new_tenant()
    run = await submit(rig, tenant=owner)
    for run_id, md in [(uuid.uuid4().hex, tenant_md(owner)), (run.run_id, tenant_md(other))]:
        calls = [
            rig.stub.GetRun(gateway_pb2.GetRunRequest(run_id=run_id), metadata=md),
            rig.stub.CancelRun(gateway_pb2.CancelRunRequest(run_id=run_id), metadata=md),
            collect(rig.stub.StreamRun(gateway_pb2.StreamRunRequest(run_id=run_id), metadata=md)),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND
            assert other not in (caught.value.details() or "")
    theirs = await rig.stub.ListRuns(gateway_pb2.ListRunsRequest(), metadata=tenant_md(other))
    assert list(theirs.runs) == []
    # Untouched by the other tenant's cancel.
    got = await rig.stub.GetRun(
        gateway_pb2.GetRunRequest(run_id=run.run_id), metadata=tenant_md(owner)
    )
    assert got.run.status == types_pb2.RUN_STATUS_PENDING
    assert not got.run.error_message


async def test_a_malformed_run_id_is_invalid(rig: Rig) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rig.stub.GetRun(gateway_pb2.GetRunRequest(run_id="a b"))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["run_id"]


# --- ListRuns ------------------------------------------------------------------------------


async def test_list_runs_pages_newest_first_with_a_status_filter(rig: Rig) -> None:
    tenant = new_tenant()
    md = tenant_md(tenant)
    made = [await submit(rig, prompt=f"run {i}", tenant=tenant) for i in range(5)]
    for run in made[1:3]:
        assert await rig.store.set_running(tenant, run.run_id, 0)
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await rig.stub.ListRuns(
            gateway_pb2.ListRunsRequest(page_size=2, page_token=token), metadata=md
        )
        pages.append([r.run_id for r in page.runs])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == [r.run_id for r in reversed(made)]
    running = await rig.stub.ListRuns(
        gateway_pb2.ListRunsRequest(status=types_pb2.RUN_STATUS_RUNNING), metadata=md
    )
    assert [r.run_id for r in running.runs] == [made[2].run_id, made[1].run_id]
    assert not running.next_page_token
    for request, field in [
        (gateway_pb2.ListRunsRequest(page_token="not a token"), "page_token"),
        (gateway_pb2.ListRunsRequest(page_token="bm9wZQ"), "page_token"),  # "nope"
        (gateway_pb2.ListRunsRequest(page_size=101), "page_size"),
        (gateway_pb2.ListRunsRequest(page_size=-1), "page_size"),
        (gateway_pb2.ListRunsRequest(status=42), "status"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rig.stub.ListRuns(request, metadata=md)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violations(caught.value) == [field]


# --- CancelRun -----------------------------------------------------------------------------


async def test_cancel_returns_the_run_cancelling_and_records_the_cancellation(rig: Rig) -> None:
    run = await submit(rig)
    tenant, run_id = run.tenant_id, run.run_id
    assert await rig.store.set_running(tenant, run_id, 0)
    got = await rig.stub.CancelRun(gateway_pb2.CancelRunRequest(run_id=run_id, reason="changed"))
    # Not CANCELLED yet: no hop has acknowledged (the composer ends it below).
    assert got.run.status == types_pb2.RUN_STATUS_CANCELLING
    assert "changed" in got.run.error_message
    assert await rig.store.cancel_reason(tenant, run_id) == "changed"
    # The composer ends it as it would; the requested cancellation wins.
    await rig.store.finish(tenant, run_id, types_pb2.RUN_STATUS_COMPLETED)
    events = await collect(rig.stub.StreamRun(gateway_pb2.StreamRunRequest(run_id=run_id)))
    assert events[-1].finished.status == types_pb2.COMPLETION_STATUS_CANCELLED
    assert events[-1].finished.error_message == "changed"


async def test_cancelling_a_finished_run_returns_it_unchanged(rig: Rig) -> None:
    run = await submit(rig)
    answer = types_pb2.Answer(text="done")
    await rig.store.finish(run.tenant_id, run.run_id, types_pb2.RUN_STATUS_COMPLETED, answer=answer)
    before = (await rig.stub.GetRun(gateway_pb2.GetRunRequest(run_id=run.run_id))).run
    got = await rig.stub.CancelRun(gateway_pb2.CancelRunRequest(run_id=run.run_id))
    assert got.run == before
    assert await rig.store.cancel_reason(run.tenant_id, run.run_id) is None


# --- SearchResponses, health, reflection -------------------------------------------------


async def test_search_without_an_indexer_is_unavailable(rig: Rig) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rig.stub.SearchResponses(gateway_pb2.SearchResponsesRequest(query="42"))
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "unreachable" in (caught.value.details() or "")
    for request, field in [
        (gateway_pb2.SearchResponsesRequest(query=" "), "query"),
        (gateway_pb2.SearchResponsesRequest(query="42", page_size=500), "page_size"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rig.stub.SearchResponses(request)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violations(caught.value) == [field]


async def test_health_is_serving_after_start_and_reflection_lists_the_gateway(rig: Rig) -> None:
    health = health_pb2_grpc.HealthStub(rig.channel)
    for service in (GATEWAY, ""):
        got = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert got.status == health_pb2.HealthCheckResponse.SERVING, service
    reflection = reflection_pb2_grpc.ServerReflectionStub(rig.channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    answers = [a async for a in reflection.ServerReflectionInfo(iter([ask]))]
    names = {s.name for s in answers[0].list_services_response.service}
    assert GATEWAY in names
    assert "grpc.health.v1.Health" in names
