"""How a run's answer reaches its stream (`RunEnder.answer`), on the real Redis and Kafka.

The model is played by async generators: one that has its whole answer at once, one that
streams a piece only after the test saw the one before in the run's stream, and one that
breaks off. Redis round trips are counted as the Redis client spans of the process
(`instrument_caches`: one span per command sent alone or per pipeline)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from agentflux.v1 import gateway_pb2, types_pb2
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from interceptors import Telemetry, instrument_caches, uninstrument_caches
from services.models import ModelError
from services.runs import RunEnder
from services.runtime.config import Settings
from tests.integration.runtime_kit import eventually
from tests.integration.service_kit import WAIT_S, Rig, rig_on_stack

pytestmark = pytest.mark.integration


@pytest.fixture
async def rig(settings: Settings) -> AsyncIterator[Rig]:
    async with rig_on_stack() as got:
        yield got


class RedisSpans:
    """The Redis client spans the process finishes from `clear()` on."""

    def __init__(self) -> None:
        self.memory = InMemorySpanExporter()
        self.telemetry = Telemetry.create("ending-test", exporters=[self.memory])

    def clear(self) -> None:
        assert self.telemetry.flush()  # earlier spans still in the batch land before
        self.memory.clear()

    def round_trips(self) -> list[ReadableSpan]:
        assert self.telemetry.flush()
        return [s for s in self.memory.get_finished_spans() if s.kind is SpanKind.CLIENT]


@pytest.fixture
def redis_spans() -> Iterator[RedisSpans]:
    spans = RedisSpans()
    uninstrument_caches()  # whatever another test left on: its spans would go elsewhere
    instrument_caches(spans.telemetry)
    try:
        yield spans
    finally:
        uninstrument_caches()
        spans.telemetry.shutdown()


async def running(rig: Rig) -> types_pb2.Run:
    run = await rig.new_run("what is 6*7")
    assert await rig.store.set_running(run.tenant_id, run.run_id, 0)
    return run


async def stream(rig: Rig, run: types_pb2.Run) -> list[gateway_pb2.StreamRunResponse]:
    return await rig.store.read_events(run.tenant_id, run.run_id, "")


def answered(events: list[gateway_pb2.StreamRunResponse]) -> list[str]:
    """The answer's pieces and `finished` (with its answer), in stream order."""
    out = []
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "answer_delta":
            out.append(event.answer_delta.text)
        elif kind == "finished":
            out.append(f"finished: {event.finished.answer.text}")
    return out


async def test_an_answer_given_at_once_is_appended_by_the_script_that_ends_the_run(
    rig: Rig, redis_spans: RedisSpans
) -> None:
    async def whole() -> AsyncIterator[str]:
        for piece in ("6*7 ", "= 42."):
            yield piece

    ender = RunEnder(rig.store, rig.events)
    # A first run loads the scripts into Redis (a pipeline meeting NOSCRIPT is sent again
    # one call at a time): the count below is of the steady state.
    assert await ender.answer(await running(rig), 0, whole()) is not None
    counted = await running(rig)
    redis_spans.clear()
    assert await ender.answer(counted, 0, whole()) is not None
    # Both pieces and the end: one script (three round trips before, one per piece).
    assert [s.name for s in redis_spans.round_trips()] == ["EVALSHA"]
    run = await running(rig)
    # A reader blocked on the run's stream after its first event, as StreamRun waits.
    after = (await stream(rig, run))[-1].event_id
    blocked = int((await rig.mesh.redis.info("clients"))["blocked_clients"])
    reading = asyncio.create_task(
        rig.store.read_events(run.tenant_id, run.run_id, after, block_ms=30_000, trusted=True)
    )
    try:

        async def waiting() -> bool:
            clients = await rig.mesh.redis.info("clients")
            return int(clients["blocked_clients"]) > blocked

        await eventually(waiting, timeout=WAIT_S, what="the reader blocked on the stream")
        ended = await ender.answer(run, 0, whole())
        woken = await asyncio.wait_for(reading, WAIT_S)
    finally:
        reading.cancel()
    assert ended is not None
    assert ended.run.status == types_pb2.RUN_STATUS_COMPLETED
    # The reader woke once, for both pieces and `finished`.
    assert answered(woken) == ["6*7 ", "= 42.", "finished: 6*7 = 42."]
    assert answered(await stream(rig, run)) == answered(woken)


async def test_a_piece_is_never_held_back_for_the_next_one(rig: Rig) -> None:
    run = await running(rig)
    seen = asyncio.Event()

    async def streaming() -> AsyncIterator[str]:
        yield "first "
        await seen.wait()  # the next piece only once the first is in the stream
        yield "second"

    ending = asyncio.create_task(RunEnder(rig.store, rig.events).answer(run, 0, streaming()))
    try:

        async def first_in_stream() -> bool:
            return answered(await stream(rig, run)) == ["first "]

        await eventually(first_in_stream, timeout=WAIT_S, what="the first piece alone")
        seen.set()
        await asyncio.wait_for(ending, WAIT_S)
    finally:
        ending.cancel()
    assert answered(await stream(rig, run)) == ["first ", "second", "finished: first second"]


async def test_the_pieces_before_a_break_stay_in_the_stream(rig: Rig) -> None:
    run = await running(rig)

    async def broken() -> AsyncIterator[str]:
        yield "6*7 "
        yield "= "
        raise ModelError("the connection to the model dropped", retryable=True)

    with pytest.raises(ModelError):
        await RunEnder(rig.store, rig.events).answer(run, 0, broken())
    assert answered(await stream(rig, run)) == ["6*7 ", "= "]
    got = await rig.store.get(run.tenant_id, run.run_id)
    assert got is not None
    assert got.status == types_pb2.RUN_STATUS_RUNNING  # the caller ends it, saying why
