"""Agent runs end to end, as a user runs them: `agentflux serve` processes on the real
brokers, a client over gRPC, faults by signals.

Every test has a namespace of its own (conftest.py), so the meshes never see each
other's records, and the scripted model makes the runs deterministic."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import grpc
import pytest
from agentflux.v1 import gateway_pb2, types_pb2
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from services.runtime.adapters.rabbitmq import RabbitConnection
from services.runtime.keys import Keys
from tests.e2e.conftest import Mesh, eventually, http_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

COMPLETED = types_pb2.RUN_STATUS_COMPLETED


def kinds(events: list[gateway_pb2.StreamRunResponse]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


def joined(events: list[gateway_pb2.StreamRunResponse]) -> str:
    return "".join(e.answer_delta.text for e in events if e.WhichOneof("event") == "answer_delta")


def assert_one_answer(events: list[gateway_pb2.StreamRunResponse], run: types_pb2.Run) -> None:
    """The answer is the same in its three places, as the contract says."""
    assert run.status == COMPLETED, run
    assert joined(events) == events[-1].finished.answer.text == run.answer.text


async def test_an_answer_that_needed_two_tools(mesh: Mesh) -> None:
    await mesh.start()
    run = await mesh.submit("what is 6*7 and 12/4")
    assert run.status == types_pb2.RUN_STATUS_PENDING
    events = await mesh.events(run.run_id)
    assert kinds(events)[0] == "accepted"
    assert kinds(events)[-1] == "finished"
    (planned,) = [e.planned for e in events if e.WhichOneof("event") == "planned"]
    assert [c.name for c in planned.tool_calls] == ["calculator", "calculator"]
    finished = [e.tool_finished.result for e in events if e.WhichOneof("event") == "tool_finished"]
    assert sorted(r.output.number_value for r in finished) == [3, 42]
    assert all(r.status == types_pb2.TOOL_CALL_STATUS_SUCCEEDED for r in finished)
    done = (await mesh.gateway.GetRun(gateway_pb2.GetRunRequest(run_id=run.run_id))).run
    assert_one_answer(events, done)
    assert "42" in done.answer.text
    assert "3" in done.answer.text
    assert done.step_count == 1
    assert done.usage.total_tokens > 0


async def test_a_run_of_two_steps(mesh: Mesh) -> None:
    await mesh.start()
    run = await mesh.submit("what is 6*7 then add 8")
    events = await mesh.events(run.run_id)
    steps = [e.planned.step for e in events if e.WhichOneof("event") == "planned"]
    assert steps == [0, 1]
    done = (await mesh.gateway.GetRun(gateway_pb2.GetRunRequest(run_id=run.run_id))).run
    assert_one_answer(events, done)
    assert "42" in done.answer.text  # the first step's result, reported with the last
    assert "50" in done.answer.text
    assert done.step_count == 2


async def test_a_cancelled_runs_queued_tool_tasks_never_run(mesh: Mesh) -> None:
    # No worker yet: the plan's task waits in the queue when the cancel comes.
    await mesh.start("gateway", "planner", "composer", "indexer")
    run = await mesh.submit("remember that the cancelled run must not write this")
    call = mesh.gateway.StreamRun(gateway_pb2.StreamRunRequest(run_id=run.run_id), timeout=60)
    async for event in call:
        if event.WhichOneof("event") == "planned":
            break
    call.cancel()
    cancelled = await mesh.gateway.CancelRun(
        gateway_pb2.CancelRunRequest(run_id=run.run_id, reason="changed my mind")
    )
    assert cancelled.run.status == types_pb2.RUN_STATUS_CANCELLING  # the composer ends it
    await mesh.start("worker")
    done = await mesh.finished(run.run_id)
    assert done.status == types_pb2.RUN_STATUS_CANCELLED
    assert "changed my mind" in done.error_message
    events = await mesh.events(run.run_id)
    assert events[-1].finished.status == types_pb2.COMPLETION_STATUS_CANCELLED
    results = [e.tool_finished.result for e in events if e.WhichOneof("event") == "tool_finished"]
    assert [r.status for r in results] == [types_pb2.TOOL_CALL_STATUS_CANCELLED]
    assert "tool_started" not in kinds(events)
    # The tool never ran: nothing was remembered.
    memory = Keys(mesh.ns).memory(run.tenant_id, run.conversation_id)
    assert await mesh.redis.llen(memory) == 0


def flaky(failures: int) -> tuple[Any, list[float]]:
    """An HTTP handler answering 503 `failures` times, then 200; and its request times."""
    seen: list[float] = []

    def handle(path: str) -> tuple[int, bytes, float]:
        seen.append(time.monotonic())
        if len(seen) <= failures:
            return 503, b"busy", 0.0
        return 200, b"hello from the test server", 0.0

    return handle, seen


async def test_a_tool_that_fails_twice_then_succeeds(mesh: Mesh) -> None:
    handler, seen = flaky(2)
    with http_server(handler) as url:
        await mesh.start()
        run = await mesh.submit(f"fetch {url}/page")
        events = await mesh.events(run.run_id)
    done = (await mesh.gateway.GetRun(gateway_pb2.GetRunRequest(run_id=run.run_id))).run
    assert_one_answer(events, done)
    assert "hello from the test server" in done.answer.text
    started = [e.tool_started.attempt for e in events if e.WhichOneof("event") == "tool_started"]
    assert started == [1, 2, 3]
    (result,) = [e.tool_finished.result for e in events if e.WhichOneof("event") == "tool_finished"]
    assert result.status == types_pb2.TOOL_CALL_STATUS_SUCCEEDED
    assert result.attempts == 3
    # Retried through the delay tiers of the mesh's settings (300 ms, then 600 ms).
    assert len(seen) == 3
    assert seen[1] - seen[0] >= 0.3
    assert seen[2] - seen[1] >= 0.6


async def test_a_tool_that_always_fails_ends_the_run_failed_and_is_dead_lettered(
    mesh: Mesh,
) -> None:
    handler, seen = flaky(1_000)
    with http_server(handler) as url:
        await mesh.start()
        run = await mesh.submit(f"fetch {url}/down")
        done = await mesh.finished(run.run_id)
    assert done.status == types_pb2.RUN_STATUS_FAILED
    assert "http_get" in done.error_message
    assert "503" in done.error_message
    assert len(seen) == 3  # every attempt made
    topo_dlq = mesh.ns + "agentflux.tool_tasks.dlq"
    async with await RabbitConnection.connect(mesh.settings) as rabbit:
        queue = await rabbit.channel.get_queue(topo_dlq, ensure=True)
        dead = await queue.get(no_ack=True, fail=False)
    assert dead is not None
    headers = dict(dead.headers or {})
    assert headers["dlq_reason"] == "RETRIES_EXHAUSTED"
    assert headers["dlq_attempts"] == 3
    assert headers["ce_runid"] == run.run_id


async def test_a_client_that_disconnects_resumes_the_stream_and_loses_nothing(
    mesh: Mesh,
) -> None:
    await mesh.start()
    run = await mesh.submit("what is 6*7 then add 8")
    everything = await mesh.events(run.run_id)
    # Read a few events, drop the connection, come back after the last one seen.
    first: list[gateway_pb2.StreamRunResponse] = []
    call = mesh.gateway.StreamRun(gateway_pb2.StreamRunRequest(run_id=run.run_id), timeout=60)
    async for event in call:
        first.append(event)
        if len(first) == 3:
            break
    call.cancel()
    rest = await mesh.events(run.run_id, after=first[-1].event_id)
    assert [e.event_id for e in first + rest] == [e.event_id for e in everything]
    assert first + rest == everything
    done = (await mesh.gateway.GetRun(gateway_pb2.GetRunRequest(run_id=run.run_id))).run
    assert_one_answer(first + rest, done)
    # Every event has the next sequence number: a client can see a gap for itself.
    assert [e.sequence for e in everything] == list(range(1, len(everything) + 1))
    # An id that is not in the stream is refused with the documented code.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mesh.events(run.run_id, after="999-0")
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE


async def test_a_stream_resumed_across_a_gateway_restart_loses_nothing(mesh: Mesh) -> None:
    gateway = await mesh.start("gateway")
    await mesh.start("planner", "worker", "composer", "indexer")
    run = await mesh.submit("what is 6*7 then add 8")
    # Three watchers at once; each reads until the plan, then the gateway is killed.
    calls = [
        mesh.gateway.StreamRun(gateway_pb2.StreamRunRequest(run_id=run.run_id), timeout=60)
        for _ in range(3)
    ]
    seen: list[list[gateway_pb2.StreamRunResponse]] = [[] for _ in calls]

    async def watch(i: int) -> None:
        async for event in calls[i]:
            seen[i].append(event)
            if event.WhichOneof("event") == "planned":
                return

    await asyncio.gather(*(watch(i) for i in range(len(calls))))
    gateway.signal(signal.SIGKILL)
    await gateway.exited()
    for call in calls:
        call.cancel()
    await mesh.start("gateway")
    # Each resumes after the last sequence it saw, on the new gateway process.
    wholes = []
    for got in seen:
        rest = []
        stream = mesh.gateway.StreamRun(
            gateway_pb2.StreamRunRequest(run_id=run.run_id, after_sequence=got[-1].sequence),
            timeout=120,
        )
        async for event in stream:
            rest.append(event)
        whole = got + rest
        assert [e.sequence for e in whole] == list(range(1, len(whole) + 1))
        assert whole[-1].WhichOneof("event") == "finished"
        wholes.append(whole)
    everything = await mesh.events(run.run_id)
    assert all(whole == everything for whole in wholes)
    assert everything[-1].finished.status == types_pb2.COMPLETION_STATUS_COMPLETED


async def test_a_poison_record_on_each_topic_is_dead_lettered_and_consumers_go_on(
    mesh: Mesh,
) -> None:
    await mesh.start()
    topics = ["agent.requested", "agent.tool_called", "agent.completed"]
    producer = Producer({"bootstrap.servers": mesh.settings.kafka_bootstrap_servers})
    for topic in topics:
        producer.produce(mesh.ns + topic, b"\xff\xfenot protobuf", key=b"poison")
    assert producer.flush(10) == 0
    run = await mesh.submit("what is 2+3")
    done = await mesh.finished(run.run_id)
    assert done.status == COMPLETED
    dead = await asyncio.to_thread(_read, mesh, mesh.ns + "agent.dlq", 3)
    origins = sorted(dict(r.headers() or [])["dlq_topic"].decode() for r in dead)
    assert origins == sorted(mesh.ns + t for t in topics)
    assert all(dict(r.headers() or [])["dlq_reason"] == b"WRONG_TYPE" for r in dead)


def _read(mesh: Mesh, topic: str, n: int) -> list[Any]:
    reader = Consumer(
        {
            "bootstrap.servers": mesh.settings.kafka_bootstrap_servers,
            "group.id": f"{mesh.ns}reader",
            "auto.offset.reset": "earliest",
        }
    )
    reader.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < n and time.monotonic() < deadline:
            record = reader.poll(0.5)
            if record is not None and record.error() is None:
                out.append(record)
    finally:
        reader.close()
    assert len(out) == n, f"{len(out)} of {n} records on {topic}"
    return out


async def test_two_planners_and_three_workers_share_a_burst_with_each_effect_once(
    mesh: Mesh,
) -> None:
    await mesh.start("gateway", "composer", "indexer")
    for _ in range(2):
        await mesh.start("planner")
    for _ in range(3):
        await mesh.start("worker")
    runs = [
        await mesh.submit(f"remember that item {i} is on the list", conversation_id=f"conv-{i}")
        for i in range(12)
    ]
    done = await asyncio.gather(*(mesh.finished(r.run_id) for r in runs))
    assert all(d.status == COMPLETED for d in done), [d.error_message for d in done]
    for i, run in enumerate(runs):
        memory = Keys(mesh.ns).memory(run.tenant_id, run.conversation_id)
        items = [v.decode() for v in await mesh.redis.lrange(memory, 0, -1)]
        assert items == [f"item {i} is on the list"], items  # the effect, exactly once
    # The work was shared: two members in the planners' group, three queue consumers.
    admin = AdminClient({"bootstrap.servers": mesh.settings.kafka_bootstrap_servers})
    group = f"{mesh.ns}agentflux.planner"
    described = admin.describe_consumer_groups([group])[group].result()
    assert len(described.members) == 2
    async with await RabbitConnection.connect(mesh.settings) as rabbit:
        queue = await rabbit.channel.declare_queue(mesh.ns + "agentflux.tool_tasks", passive=True)
        assert queue.declaration_result.consumer_count == 3


async def test_a_worker_killed_in_the_middle_of_a_tool_does_not_stop_the_run(
    mesh: Mesh,
) -> None:
    arrived = threading.Event()
    calls: list[float] = []

    def slow_first(path: str) -> tuple[int, bytes, float]:
        calls.append(time.monotonic())
        if len(calls) == 1:
            arrived.set()
            return 200, b"too late", 30.0  # the worker is killed while it waits
        return 200, b"answered by the second worker", 0.0

    with http_server(slow_first) as url:
        await mesh.start("gateway", "planner", "composer", "indexer")
        first = await mesh.start("worker")
        run = await mesh.submit(f"fetch {url}/slow")
        await eventually(lambda: _set(arrived), what="the tool to be running")
        first.signal(signal.SIGKILL)
        killed = time.monotonic()
        await first.exited()
        await mesh.start("worker")
        done = await mesh.finished(run.run_id)
        recovered = time.monotonic() - killed
    assert done.status == COMPLETED, done.error_message
    assert "answered by the second worker" in done.answer.text
    assert len(calls) == 2
    # Nothing waited much longer than the dead worker's lease (2 s here) and a start.
    assert recovered < 45, recovered


async def _set(event: threading.Event) -> bool:
    return event.is_set()
