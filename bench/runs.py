"""Whole agent runs through `agentflux serve`, beside the same chain of hops done with bare
clients, in one run.

    .venv/bin/python -m bench.runs [--quick] [--rate R] [--knee | --no-knee]
                                   [--no-sampled-out] [--no-floor] [--split] [--json PATH]

**agentflux**: the five services in one `agentflux serve` subprocess, in a namespace of
their own (`bench-<random>.`: a namespace is one label), with their own gRPC ports, index
folder and span store in a temporary folder. **bare**: one helper subprocess
(`python -m bench.runs --bare-chain ...`, this module) doing the same hops with bare
clients on one event loop, the one `agentflux serve` runs on (AGENTFLUX_EVENT_LOOP, uvloop
by default): a grpc.aio `Submit` that produces the request to Kafka
(confluent-kafka, linger.ms=0, acks=all, idempotent), a consumer that publishes a task to
RabbitMQ (aio-pika, confirms, persistent), a consumer of that queue that works out 6*7 and
produces the result to Kafka, a consumer that appends the answer to a Redis stream
(XADD), and a grpc.aio `StreamRun` that waits on that stream with XREAD BLOCK. Its names
live under `bench.<random>.`. **sampled out** (unless `--no-sampled-out`): a second
`agentflux serve` with the same settings but AGENTFLUX_TRACE_SAMPLE_RATIO=0, in the
namespace `bench-<random>-s.` with a folder of its own, so its runs record no spans; and
beside it, its reference **tracing off**: the same with OTEL_SDK_DISABLED=true (the SDK
switched off: no span at all, not even one that does not record) in `bench-<random>-o.`.
**bare + state** (unless `--no-floor`): a second bare helper (`--state-trips`, names under
`bench.<random>-f.`) that also makes, at each step, the Redis round trips the mesh makes
there (STATE_TRIPS), each a plain SET or XADD from the bare client: the least the
design's state, events and guard cost a run, with nothing of agentflux around them.
**agentflux, a process per service** (`--split`, in the knee only): the same mesh as five
`agentflux serve <service>` processes in `bench-<random>-p.`, started when the knee starts.
Every other side is one process of services with the client in this process, so all pay
the same process boundary, and the client is the same bare grpc.aio stub for all:
Submit("what is 6*7"), then StreamRun until `finished`, both with the bench's API key
(the gateway requires one; the bare chain ignores it). The run latency is Submit -> `finished`
received.

Four measurements, each in interleaved rounds (bare, bare + state, agentflux, sampled out,
tracing off, then the reverse order) after a warm-up, with gc before each round: (1) one
run at a time: p50/p90/p99 and the ratios to bare and to agentflux; (2) a fixed open-loop
load (`--rate` runs/s, started on schedule whether or not earlier runs finished): latency
and whether bare and agentflux kept up; (3) closed loop, K runs in flight: runs/s; (4) the
knee: an open-loop sweep of bare and agentflux at rising rates, up to the highest rate
that each keeps up with at a p99 within twice its p99 at the lowest rate. Per side and
phase it also meters CPU seconds of the services' process, of this process (the client)
and of the stack's processes. After the run it splits the latencies (one at a time, and K
in flight) into hops, from the mesh's spans and from the bare chain's own timestamps,
counts what one run costs the mesh (spans, Redis and Memcached commands, messages) from
the same spans, and checks that the sampled-out side's span store holds no span of its
runs (and the tracing-off side's no span at all).

Every agentflux run must end COMPLETED with the answer "6*7 = 42." (its answer deltas
joined too) and every bare run must return it; anything else fails the bench. Everything
is removed at the end, also on failure: every process (SIGTERM, then wait), the
namespaces' and the baseline's topics, groups, queues, exchanges, Redis and Memcached
keys, and the temporary folder. Exit codes: 0 all ran, 1 a run, a phase or the
sampled-out check failed, 2 the stack is unreachable or not on loopback. See
bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import gc
import itertools
import json
import math
import operator
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aio_pika
import grpc
import redis.asyncio as aioredis
from agentflux.v1 import events_pb2, gateway_pb2, gateway_pb2_grpc, tasks_pb2, types_pb2
from aio_pika.abc import AbstractIncomingMessage, DeliveryMode
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import Message as Record
from confluent_kafka.admin import AdminClient
from google.protobuf import struct_pb2

from bench.hops import Stats, _drop_rabbit, _markdown, log, preflight, purge_redis
from services.cli import SERVICE_NAMES
from services.runtime import lifecycle
from services.runtime.adapters.kafka import consumer_config, producer_config
from services.runtime.adapters.rabbitmq import PROTOBUF
from services.runtime.apikeys import digest_of, new_key
from services.runtime.bearer import key_metadata
from services.runtime.config import Settings
from services.runtime.topology import TopicSpec, ensure_kafka_topics, kafka_topics, task_topologies

ROOT = Path(__file__).resolve().parents[1]
AGENTFLUX = str(Path(sys.executable).with_name("agentflux"))
# The meshes are started from the main thread, and stop (drain) when the bench dies, even
# by SIGKILL, instead of running on alone (`agentflux serve --parent`).
SERVE = (AGENTFLUX, "serve", "--parent", str(os.getpid()))
LOOPBACK = "127.0.0.1"
PROMPT = "what is 6*7"
ANSWER = "6*7 = 42."  # what the scripted model answers, and what the bare chain writes
RUN_TIMEOUT_S = 30.0  # only to notice a broken run: a healthy one takes milliseconds
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0  # the mesh's grace period (10 s) and then some
COMPLETED = types_pb2.COMPLETION_STATUS_COMPLETED
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- what to run ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """How many runs of each kind, per side."""

    warmup: int  # untimed runs one at a time, then one untimed closed-loop round
    seq_runs: int  # timed runs one at a time
    seq_rounds: int  # interleaved rounds they are split into
    load_s: float  # seconds of open-loop load, split into load_rounds
    load_rounds: int
    in_flight: int  # closed loop: runs in flight at once
    burst_runs: int  # runs per closed-loop round
    burst_rounds: int
    idle_s: float  # every process idle, after the warm-up: their CPU then


# Sized so that these phases take about 4 minutes on a 2-core machine with the
# sampled-out side (--quick: about 1).
PLAN = Plan(20, 300, 10, 40.0, 2, 8, 200, 4, 10.0)
QUICK_PLAN = Plan(10, 60, 4, 10.0, 2, 8, 48, 2, 3.0)

DEFAULT_RATE = 5.0


@dataclass(frozen=True, slots=True)
class KneePlan:
    """The open-loop sweep that finds each side's knee (see `knee`)."""

    start: float  # runs/s of the first step; its p99 is the baseline
    factor: float  # each step's rate is the last one's times this
    cap: float  # no step above this rate: the bare chain would go on for long
    step_s: float  # a step lasts this long, or until it has `min_runs`, whichever is first,
    min_runs: int
    floor_s: float  # but never less than this: a backlog needs time to show
    base_runs: int  # the first step has at least this many runs: the baseline's p99
    budget_s: float  # the whole sweep stops here, both sides, mid-way if it must


# Full: 4 to 5 minutes on a 2-core machine (--quick: about 2). Every step has at least
# 100 runs: with 30 or 40, a step's p99 is its slowest run or the one before, and one
# hiccup of the machine failed a step (both sides have stopped at 3 runs/s so, while
# keeping up at 15 in another run minutes apart).
KNEE_PLAN = KneePlan(4.0, 1.5, 200.0, 25.0, 100, 5.0, 100, 360.0)
QUICK_KNEE_PLAN = KneePlan(4.0, 1.5, 200.0, 8.0, 40, 2.0, 40, 150.0)
# The knee is the highest rate kept up with at a p99 at most this many times the baseline.
KNEE_P99_LIMIT = 2.0
# A failed step is run once more before its side stops. Noise on a shared machine only
# ever adds latency, so one bad burst would otherwise end a sweep early; a side that is
# really past its knee fails again.
KNEE_TRIES = 2
# A step that failed while the side's services used less than this share of a core did
# not fail for lack of CPU: on this machine a side past its knee has its core busy, and
# the VM has slow spells of a minute or so in which both sides fail at low rates at once
# (bare at 6 runs/s with 8% of a core). Such a step is run again, after a pause, up to
# NOISE_TRIES more times, and the table shows each try.
NOISE_SHARE = 0.5
NOISE_TRIES = 3
NOISE_PAUSE_S = 15.0
# After each step the services' process must fall below this share of a core (its
# indexer and commits catch up) before the next step starts, on either side, so that a
# side that just drowned does not steal the CPU of the next one. Waited for at most
# SETTLE_MAX_S.
SETTLE_SHARE = 0.2
SETTLE_MAX_S = 15.0

# The meshes' AGENTFLUX_RATE_LIMIT (calls per tenant per minute): see `mesh_env`.
RATE_LIMIT = 1_000_000_000

# The sides, as named in the tables and the JSON.
BARE, FLUX, SAMPLED = "bare", "agentflux", "sampled out"
SPLIT = "agentflux, a process per service"
FLOOR = "bare + state"
OFF = "tracing off"
# The sampled-out side's tracing, and its reference's: the SDK switched off by the
# standard variable, so no tracer makes anything, not even a span that does not record.
SAMPLED_OUT = {"AGENTFLUX_TRACE_SAMPLE_RATIO": "0"}
TRACING_OFF = {"OTEL_SDK_DISABLED": "true"}
TRACING_VARIABLES = ("AGENTFLUX_TRACE_SAMPLE_RATIO", "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER")

# The Redis round trips a run through the mesh makes at each step of the chain beyond the
# bare chain's own, at this version (its spans: "What one run costs"; 26 a run, two of
# them the indexer's after the answer, which the bare chain has no part in), made by the
# floor side (`bare + state`) with the bare client: the cheapest round trip there is,
# with no script, span or guard logic around it. "event" is an XADD to the run's stream
# where the mesh appends one of the run's events (each wakes StreamRun's XREAD); "state"
# is a SET of a key of the run's. Per step: the trips before it hands the run on, and
# those after (the guard's outcome, which the mesh writes after the hand-off). Memcached
# reads (4 a run) are left out: the floor is a lower bound.
STATE_TRIPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # admission; the run's record with its `accepted` event
    "gateway": (("state", "event"), ()),
    # claim; the run, memory and session; the model call's budget; `planned` | outcome
    "planner": (("state", "state", "state", "event"), ("state",)),
    # claim; the call begun, `started`; the cached result; the result, `finished` | outcome
    "worker": (("state", "event", "state", "event"), ("state",)),
    # claim; the run, memory and the step's results; the template's usage | outcome (the
    # answer and the run's end are the bare chain's own XADD pipeline)
    "composer": (("state", "state", "state"), ("state",)),
    # StreamRun: admission; the run's record; the stream so far (XRANGE)
    "stream": (("state", "state", "state"), ()),
}
STATE_TTL_MS = 600_000


# -- the bare chain (runs in a helper process: --bare-chain) -------------------------------

EXPRESSION = re.compile(r"(\d+(?:\.\d+)?)\s*([-+*/])\s*(\d+(?:\.\d+)?)")
OPERATORS: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}
AMQP_PRIORITY = 5  # what the contract maps PRIORITY_NORMAL (and unspecified) to
BARE_PREFETCH = 16  # the worker's default prefetch
BARE_TENANT = "default"
STREAM_BLOCK_MS = 2_000  # as the gateway's StreamRun
STREAM_TTL_MS = 3_600_000


def calculate(expression: str) -> float:
    """`a op b`, the one thing the bare "tool" can do."""
    match = EXPRESSION.fullmatch(expression.strip())
    if match is None:
        raise ValueError(f"not a binary expression: {expression!r}")
    left, op, right = match.groups()
    return OPERATORS[op](float(left), float(right))


@dataclass(frozen=True, slots=True)
class BareNames:
    """The baseline's Kafka topics and groups, RabbitMQ exchange and queue, Redis keys."""

    prefix: str

    @property
    def requested(self) -> str:
        return self.prefix + "agent.requested"

    @property
    def called(self) -> str:
        return self.prefix + "agent.tool_called"

    @property
    def tasks(self) -> str:  # the exchange, the queue and the routing key
        return self.prefix + "tool_tasks"

    @property
    def groups(self) -> list[str]:
        return [self.prefix + "planner", self.prefix + "composer"]

    def stream(self, run_id: str) -> str:
        return f"{self.prefix}run:{run_id}"


class BareProducer:
    """confluent-kafka with the mesh's settings (linger.ms=0, acks=all, idempotent);
    delivery reports are served on a thread of their own and handed to the loop, which is
    what any asyncio program must do with this client."""

    def __init__(self, settings: Settings) -> None:
        self.producer = Producer(producer_config(settings, **{"linger.ms": 0}))
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._reports, name="bare-producer", daemon=True)
        self.thread.start()

    def _reports(self) -> None:
        while not self.closed.is_set():
            self.producer.poll(0.2)  # returns as soon as a report is there

    async def produce(self, topic: str, value: bytes, key: bytes) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(err: KafkaError | None) -> None:
            if done.done():
                return
            if err is None:
                done.set_result(None)
            else:
                done.set_exception(RuntimeError(f"produce to {topic} failed: {err}"))

        def report(err: KafkaError | None, _record: Record) -> None:
            loop.call_soon_threadsafe(settle, err)

        self.producer.produce(topic, value, key, on_delivery=report)
        await done

    def warm(self, topics: Sequence[str]) -> None:
        for topic in topics:  # connects and gets the producer id before the first run
            self.producer.list_topics(topic, 10)

    def close(self) -> None:
        self.producer.flush(10)
        self.closed.set()
        self.thread.join()


class BareConsumer:
    """A group consumer polled on a thread of its own (its poll blocks); each record is
    handled by a task on the loop, so records run concurrently as in the mesh. The offset
    of a handled record is stored by the polling thread before its next poll (a call
    from another thread would wait for the poll in flight: confluent-kafka serialises
    the calls on one consumer) and auto-committed every 200 ms (the mesh commits at most
    that often too), with no regard to order: at-least-once, loosely."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        group: str,
        handler: Callable[[Record], Awaitable[None]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        conf = consumer_config(
            settings, group, **{"enable.auto.commit": True, "auto.commit.interval.ms": 200}
        )
        self.consumer = Consumer(conf)
        self.handler = handler
        self.loop = loop
        self.assigned = threading.Event()
        self.stop = threading.Event()
        self.done: collections.deque[Record] = collections.deque()
        self.tasks: set[asyncio.Task[None]] = set()
        self.consumer.subscribe([topic], on_assign=lambda _c, _p: self.assigned.set())
        self.thread = threading.Thread(target=self._poll, name=f"bare-{group}", daemon=True)
        self.thread.start()

    def _store(self) -> None:
        while self.done:
            self.consumer.store_offsets(message=self.done.popleft())

    def _poll(self) -> None:
        while not self.stop.is_set():
            self._store()
            # Waits for the first record only, then takes what else is already fetched:
            # consume(n, timeout) would wait for n records or the whole timeout.
            first = self.consumer.poll(0.2)
            if first is None:
                continue
            for record in [first, *self.consumer.consume(99, 0)]:
                err = record.error()
                if err is not None:
                    print(f"{record.topic()}: {err}", file=sys.stderr, flush=True)
                    continue
                self.loop.call_soon_threadsafe(self._spawn, record)
        self._store()

    def _spawn(self, record: Record) -> None:
        task = self.loop.create_task(self._handle(record))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, record: Record) -> None:
        try:
            await self.handler(record)
        except Exception:
            traceback.print_exc()
            return
        self.done.append(record)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.consumer.close()  # commits what was stored


class BareChain(gateway_pb2_grpc.AgentGatewayServicer):
    """The same hops as a run through the mesh, with bare clients on one event loop:
    gateway (Submit, StreamRun), "planner", "worker" and "composer" (see the module doc).
    `stamps` records, per run, when each handler starts and when it hands the run on
    (wall clock, ns), for the breakdown; that costs a dict write per hop."""

    def __init__(self, settings: Settings, names: BareNames, state: bool = False) -> None:
        self.settings = settings
        self.names = names
        self.state = state  # the floor side: STATE_TRIPS at each step
        self.stamps: dict[str, dict[str, int]] = {}
        self.consumers: list[BareConsumer] = []

    async def trips(self, run_id: str, step: str, after: bool = False) -> None:
        """The floor side's Redis round trips at `step` (STATE_TRIPS), one after the
        other, as the mesh makes them; nothing on the bare side."""
        if not self.state:
            return
        for kind in STATE_TRIPS[step][1 if after else 0]:
            if kind == "event":
                await self.redis.xadd(self.names.stream(run_id), {"event": step})
            else:
                key = f"{self.names.prefix}state:{run_id}"
                await self.redis.set(key, step, px=STATE_TTL_MS)

    def stamp(self, run_id: str, mark: str) -> None:
        self.stamps.setdefault(run_id, {})[mark] = time.time_ns()

    async def start(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.redis = aioredis.Redis.from_url(self.settings.redis_dsn)
        await self.redis.ping()
        self.rabbit = await aio_pika.connect(self.settings.amqp_url, timeout=10)
        channel = await self.rabbit.channel(publisher_confirms=True, on_return_raises=True)
        await channel.set_qos(prefetch_count=BARE_PREFETCH)
        self.exchange = await channel.get_exchange(self.names.tasks, ensure=False)
        self.queue = await channel.get_queue(self.names.tasks, ensure=False)
        self.tag = await self.queue.consume(self.work)
        self.producer = BareProducer(self.settings)
        await asyncio.to_thread(self.producer.warm, [self.names.requested, self.names.called])
        self.consumers = [
            BareConsumer(
                self.settings, self.names.requested, self.names.groups[0], self.plan, loop
            ),
            BareConsumer(
                self.settings, self.names.called, self.names.groups[1], self.compose, loop
            ),
        ]
        for consumer in self.consumers:
            if not await asyncio.to_thread(consumer.assigned.wait, 60):
                raise TimeoutError(f"no partitions assigned to {consumer.thread.name}")
        self.server = grpc.aio.server()
        gateway_pb2_grpc.add_AgentGatewayServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"{LOOPBACK}:{port}")
        await self.server.start()

    async def close(self) -> None:
        with contextlib.suppress(AttributeError):
            await self.server.stop(1)
        for consumer in self.consumers:
            await asyncio.to_thread(consumer.close)
        with contextlib.suppress(AttributeError):
            await self.queue.cancel(self.tag)
            await asyncio.to_thread(self.producer.close)
            await self.rabbit.close()
            await self.redis.aclose()

    # gateway
    async def Submit(  # noqa: N802 - the generated method name
        self, request: gateway_pb2.SubmitRequest, context: Any
    ) -> gateway_pb2.SubmitResponse:
        begun = time.time_ns()
        run_id = uuid.uuid4().hex
        event = events_pb2.AgentRequested(
            run_id=run_id,
            tenant_id=BARE_TENANT,
            conversation_id=request.conversation_id or uuid.uuid4().hex,
            prompt=request.prompt,
            priority=request.priority,
        )
        event.request_time.GetCurrentTime()
        self.stamps.setdefault(run_id, {})["gateway"] = begun
        key = event.conversation_id.encode()
        await self.trips(run_id, "gateway")
        self.stamp(run_id, "requested")
        await self.producer.produce(self.names.requested, event.SerializeToString(), key)
        run = types_pb2.Run(
            run_id=run_id,
            tenant_id=BARE_TENANT,
            conversation_id=event.conversation_id,
            prompt=request.prompt,
            status=types_pb2.RUN_STATUS_PENDING,
        )
        return gateway_pb2.SubmitResponse(run=run)

    async def StreamRun(  # noqa: N802
        self, request: gateway_pb2.StreamRunRequest, context: Any
    ) -> Any:
        key = self.names.stream(request.run_id)
        last: bytes | str = "0-0"
        reads = self.stamps.setdefault(request.run_id, {})
        await self.trips(request.run_id, "stream")
        while True:
            reads["xreads"] = reads.get("xreads", 0) + 1  # a count, not a time
            got: Any = await self.redis.xread({key: last}, count=10, block=STREAM_BLOCK_MS)
            for _stream, entries in got or ():
                for entry_id, fields in entries:
                    last = entry_id
                    text = fields.get(b"answer")
                    if text is not None:
                        answer = types_pb2.Answer(text=text.decode())
                        yield gateway_pb2.StreamRunResponse(
                            event_id=entry_id.decode(),
                            finished=gateway_pb2.RunFinished(status=COMPLETED, answer=answer),
                        )
                        return

    # "planner": the request -> one tool task
    async def plan(self, record: Record) -> None:
        request = events_pb2.AgentRequested.FromString(record.value() or b"")
        self.stamp(request.run_id, "planner")
        match = EXPRESSION.search(request.prompt)
        if match is None:
            raise ValueError(f"nothing to work out in {request.prompt!r}")
        arguments = struct_pb2.Struct()
        arguments.update({"expression": match.group(0)})
        task = tasks_pb2.ToolTask(
            run_id=request.run_id,
            tenant_id=request.tenant_id,
            conversation_id=request.conversation_id,
            step=request.step,
            step_tool_count=1,
            call=types_pb2.ToolCall(
                tool_call_id=f"{request.run_id}.0.000", name="calculator", arguments=arguments
            ),
            priority=request.priority,
            attempt=1,
            max_attempts=1,
        )
        message = aio_pika.Message(
            task.SerializeToString(),
            content_type=PROTOBUF,
            delivery_mode=DeliveryMode.PERSISTENT,
            priority=AMQP_PRIORITY,
        )
        await self.trips(request.run_id, "planner")
        self.stamp(request.run_id, "task")
        await self.exchange.publish(message, self.names.tasks, mandatory=True)
        await self.trips(request.run_id, "planner", after=True)

    # "worker": the tool task -> its result
    async def work(self, message: AbstractIncomingMessage) -> None:
        task = tasks_pb2.ToolTask.FromString(message.body)
        self.stamp(task.run_id, "worker")
        try:
            value = calculate(str(task.call.arguments["expression"]))
        except (ValueError, KeyError, ZeroDivisionError):
            traceback.print_exc()
            await message.reject()
            return
        result = types_pb2.ToolResult(
            tool_call_id=task.call.tool_call_id,
            name=task.call.name,
            status=types_pb2.TOOL_CALL_STATUS_SUCCEEDED,
            output=struct_pb2.Value(number_value=value),
            attempts=1,
        )
        called = events_pb2.ToolCalled(
            run_id=task.run_id,
            tenant_id=task.tenant_id,
            conversation_id=task.conversation_id,
            step=task.step,
            step_tool_count=task.step_tool_count,
            call=task.call,
            result=result,
        )
        key = task.conversation_id.encode()
        await self.trips(task.run_id, "worker")
        self.stamp(task.run_id, "called")
        await self.producer.produce(self.names.called, called.SerializeToString(), key)
        await self.trips(task.run_id, "worker", after=True)
        await message.ack()

    # "composer": the result -> the answer in the run's stream
    async def compose(self, record: Record) -> None:
        called = events_pb2.ToolCalled.FromString(record.value() or b"")
        self.stamp(called.run_id, "composer")
        expression = called.call.arguments["expression"]
        text = f"{expression} = {called.result.output.number_value:g}."
        key = self.names.stream(called.run_id)
        await self.trips(called.run_id, "composer")
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, {"answer": text})
            pipe.pexpire(key, STREAM_TTL_MS)
            await pipe.execute()
        await self.trips(called.run_id, "composer", after=True)


def _dump(path: Path, stamps: dict[str, dict[str, int]]) -> None:
    path.write_text(json.dumps(stamps))


async def serve_bare(prefix: str, port: int, stamps: Path, state: bool = False) -> int:
    """The helper process: the bare chain (with STATE_TRIPS if `state`) until SIGTERM,
    then its stamps to `stamps`."""
    # Only Submit and StreamRun are served; the other methods answer UNIMPLEMENTED.
    chain = BareChain(Settings(), BareNames(prefix), state)  # type: ignore[abstract]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await chain.start(port)
        what = "bare chain + state trips" if state else "bare chain"
        print(f"ready: {what} on {LOOPBACK}:{port} (names under {prefix})", flush=True)
        await stop.wait()
    finally:
        await chain.close()
        _dump(stamps, chain.stamps)
    return 0


# -- the two processes ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (from /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Child:
    """A subprocess whose output goes to a file: no reader thread in this process, so
    nothing competes with the client for the GIL while it measures."""

    name: str
    popen: subprocess.Popen[bytes]
    output_path: Path

    @classmethod
    def start(cls, name: str, argv: Sequence[str], env: dict[str, str], output: Path) -> Child:
        with output.open("wb") as out:
            popen = subprocess.Popen(
                list(argv), cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        return cls(name, popen, output)

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    async def ready(self, timeout: float = READY_TIMEOUT_S) -> str:
        """The `ready:` line, once the process printed it."""
        deadline = time.monotonic() + timeout
        while True:
            line = next((ln for ln in self.output().splitlines() if ln.startswith("ready:")), "")
            if line:
                return line
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.popen.returncode}) before it was ready:\n"
                    + self.tail()
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s:\n{self.tail()}")
            await asyncio.sleep(0.1)

    def cpu_s(self) -> float:
        return process_cpu_s(self.popen.pid)

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then waits for the exit (SIGKILL after `timeout`)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.popen.wait, timeout)
        except subprocess.TimeoutExpired:
            log(f"  {self.name} did not stop within {timeout:.0f} s: killing it")
            self.popen.kill()
            return await asyncio.to_thread(self.popen.wait, 10)


@dataclass
class ChildGroup:
    """Several subprocesses as one side (a mesh of one process per service): ready when
    all are, their CPU summed, stopped together."""

    name: str
    children: list[Child]

    def output(self) -> str:
        return "\n".join(f"[{c.name}]\n{c.output()}" for c in self.children)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(f"[{c.name}]\n{c.tail(lines)}" for c in self.children)

    async def ready(self, timeout: float = READY_TIMEOUT_S) -> str:
        lines = await asyncio.gather(*(c.ready(timeout) for c in self.children))
        return f"{self.name}: " + "; ".join(ln.removeprefix("ready: ") for ln in lines)

    def cpu_s(self) -> float:
        return sum(c.cpu_s() for c in self.children)

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        codes = await asyncio.gather(*(c.stop(timeout) for c in self.children))
        return next((code for code in codes if code != 0), 0)


def stack_pids(settings: Settings) -> dict[str, int]:
    """Pids of the local stack's processes (for their CPU time; read only)."""
    files = {
        "kafka": "kafka/kafka.pid",
        "rabbitmq": "rabbitmq/beam.pid",
        "redis": "redis/redis.pid",
        "memcached": "memcached/memcached.pid",
    }
    pids = {}
    for name, rel in files.items():
        with contextlib.suppress(OSError, ValueError):
            pid = int((settings.stack_dir / rel).read_text().strip())
            process_cpu_s(pid)
            pids[name] = pid
    return pids


def stack_cpu_s(pids: dict[str, int]) -> float:
    total = 0.0
    for pid in pids.values():
        with contextlib.suppress(OSError):
            total += process_cpu_s(pid)
    return total


# -- the client ----------------------------------------------------------------------------


class RunError(Exception):
    """A run did not end as it must (not completed, a wrong answer, an error, a timeout).
    `code` is the gRPC status name when a call failed, else empty."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Sample:
    """One run as the client saw it."""

    run_id: str
    t0: float  # perf_counter before Submit
    t1: float  # perf_counter when `finished` arrived
    wall0: int  # the same two moments on the wall clock (ns), to line up with spans
    wall1: int
    events: int  # stream events received

    @property
    def ms(self) -> float:
        return (self.t1 - self.t0) * 1e3


@dataclass(slots=True)
class CpuMeter:
    """CPU seconds spent while one side's rounds of one phase ran."""

    server: float = 0.0  # the services' process (agentflux serve, or the bare helper)
    client: float = 0.0  # this process
    stack: float = 0.0  # Kafka, RabbitMQ, Redis, Memcached (shared with everyone else)
    seconds: float = 0.0  # wall time of those rounds


@dataclass
class Side:
    """One side of the comparison: its process and a bare client channel to it."""

    name: str
    proc: Child | ChildGroup
    channel: grpc.aio.Channel
    strict: bool  # check the stream as the contract says: joined deltas == answer
    # The API key every call presents, on every side alike (the bare gateway ignores it).
    metadata: tuple[tuple[str, str], ...] = ()
    stub: Any = None

    def __post_init__(self) -> None:
        # grpc.aio calls are awaitables; the generated stubs type them as plain responses.
        self.stub = gateway_pb2_grpc.AgentGatewayStub(self.channel)

    def check(
        self, run_id: str, finished: gateway_pb2.RunFinished | None, deltas: list[str]
    ) -> None:
        where = f"{self.name} run {run_id}"
        if finished is None:
            raise RunError(f"{where}: the stream ended without `finished`")
        if finished.status != COMPLETED:
            status = types_pb2.CompletionStatus.Name(finished.status)
            raise RunError(f"{where} ended {status}: {finished.error_message}")
        if finished.answer.text != ANSWER:
            raise RunError(f"{where} answered {finished.answer.text!r}, not {ANSWER!r}")
        if self.strict and "".join(deltas) != ANSWER:
            raise RunError(f"{where}: the answer deltas join to {''.join(deltas)!r}")


async def one_run(side: Side) -> Sample:
    """Submit, then StreamRun until `finished`; checked (see `Side.check`)."""
    wall0, t0 = time.time_ns(), time.perf_counter()
    request = gateway_pb2.SubmitRequest(prompt=PROMPT, request_id=uuid.uuid4().hex)
    run_id = "?"
    finished: gateway_pb2.RunFinished | None = None
    deltas: list[str] = []
    events, t1, wall1 = 0, 0.0, 0
    try:
        response = await side.stub.Submit(request, timeout=RUN_TIMEOUT_S, metadata=side.metadata)
        run_id = response.run.run_id
        stream = gateway_pb2.StreamRunRequest(run_id=run_id)
        # Read to the end, not left after `finished`: the gateway ends the stream there.
        calls = side.stub.StreamRun(stream, timeout=RUN_TIMEOUT_S, metadata=side.metadata)
        async for event in calls:
            events += 1
            kind = event.WhichOneof("event")
            if kind == "finished":
                t1, wall1 = time.perf_counter(), time.time_ns()
                finished = event.finished
            elif kind == "answer_delta":
                deltas.append(event.answer_delta.text)
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
        raise RunError(f"{side.name} run {run_id}: {code}: {exc.details()}", code) from None
    side.check(run_id, finished, deltas)
    return Sample(run_id, t0, t1, wall0, wall1, events)


# -- measuring -----------------------------------------------------------------------------


def _orders(sides: Sequence[Side], rounds: int) -> Iterator[Sequence[Side]]:
    """bare, agentflux / agentflux, bare / ...: neither side always goes first."""
    for r in range(rounds):
        yield sides if r % 2 == 0 else sides[::-1]


@contextlib.contextmanager
def metered(side: Side, meter: CpuMeter, pids: dict[str, int]) -> Iterator[None]:
    gc.collect()  # each round pays for its own garbage, not the previous round's
    before = (side.proc.cpu_s(), time.process_time(), stack_cpu_s(pids), time.perf_counter())
    try:
        yield
    finally:
        meter.server += side.proc.cpu_s() - before[0]
        meter.client += time.process_time() - before[1]
        meter.stack += stack_cpu_s(pids) - before[2]
        meter.seconds += time.perf_counter() - before[3]


@dataclass
class Phase:
    """One side's samples and CPU in one measurement."""

    samples: list[Sample] = field(default_factory=list)
    cpu: CpuMeter = field(default_factory=CpuMeter)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def stats(self) -> Stats:
        return Stats.of([s.ms for s in self.samples])

    def per_run_ms(self, what: str) -> float:
        seconds: float = getattr(self.cpu, what)
        return seconds / max(1, len(self.samples)) * 1e3


async def warm_up(side: Side, plan: Plan) -> None:
    for _ in range(plan.warmup):
        await one_run(side)
    await closed_round(side, plan.in_flight, plan.in_flight * 2)


async def idle_cpu(sides: Sequence[Side], seconds: float) -> dict[str, float]:
    """CPU of each services' process while nothing runs, as a share of one core."""
    await asyncio.sleep(1.0)  # the warm-up's last runs are indexed meanwhile
    before = {s.name: s.proc.cpu_s() for s in sides}
    await asyncio.sleep(seconds)
    return {s.name: (s.proc.cpu_s() - before[s.name]) / seconds for s in sides}


async def sequential(sides: Sequence[Side], plan: Plan, pids: dict[str, int]) -> dict[str, Phase]:
    """One run at a time, interleaved rounds."""
    phases = {s.name: Phase() for s in sides}
    per_round = -(-plan.seq_runs // plan.seq_rounds)
    for order in _orders(sides, plan.seq_rounds):
        for side in order:
            phase = phases[side.name]
            with metered(side, phase.cpu, pids):
                for _ in range(per_round):
                    phase.samples.append(await one_run(side))
    return phases


def max_in_flight(samples: Sequence[Sample]) -> int:
    moments = sorted([(s.t0, 1) for s in samples] + [(s.t1, -1) for s in samples])
    peak = now = 0
    for _, step in moments:
        now += step
        peak = max(peak, now)
    return peak


# A side kept up with the load when every run finished and the last one finished within
# this long after it was submitted: no backlog built up behind the schedule.
DRAIN_LIMIT_S = 1.0


async def open_round(
    side: Side,
    rate: float,
    n: int,
    run: Callable[[Side], Coroutine[Any, Any, Sample | None]] = one_run,
) -> dict[str, Any]:
    """`n` runs started on a fixed schedule (`rate` per second), whether or not the
    earlier ones finished (open loop). `run` returns None for a run the side refused
    (see `refusable`): it did not keep up then."""
    start = time.perf_counter() + 0.05
    late: list[float] = []
    runs: list[asyncio.Task[Sample | None]] = []
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        late.append(time.perf_counter() - due)
        runs.append(asyncio.create_task(run(side)))
    try:
        got = await asyncio.gather(*runs)
    except BaseException:
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        raise
    samples = [s for s in got if s is not None]
    refused = n - len(samples)
    end = time.perf_counter()
    first = min((s.t0 for s in samples), default=start)
    last_start = max((s.t0 for s in samples), default=start)
    last_end = max((s.t1 for s in samples), default=end)
    return {
        "samples": samples,
        "runs": n,
        "refused": refused,
        "achieved_per_s": len(samples) / max(last_end - first, 1e-9),
        "drain_s": last_end - last_start,
        "late_max_ms": max(late) * 1e3,
        "max_in_flight": max_in_flight(samples),
        "kept_up": refused == 0 and last_end - last_start <= DRAIN_LIMIT_S,
    }


async def open_loop(
    sides: Sequence[Side], plan: Plan, rate: float, pids: dict[str, int]
) -> dict[str, Phase]:
    phases = {s.name: Phase() for s in sides}
    n = max(1, round(rate * plan.load_s / plan.load_rounds))
    for order in _orders(sides, plan.load_rounds):
        for side in order:
            phase = phases[side.name]
            with metered(side, phase.cpu, pids):
                got = await open_round(side, rate, n)
            phase.samples += got.pop("samples")
            phase.rounds.append(got)
    return phases


async def closed_round(side: Side, k: int, n: int) -> tuple[float, list[Sample]]:
    """`n` runs by `k` clients, each starting its next run when its last one finished."""
    left = n
    samples: list[Sample] = []

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            samples.append(await one_run(side))

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(k)))
    return n / (time.perf_counter() - t0), samples


async def closed_loop(sides: Sequence[Side], plan: Plan, pids: dict[str, int]) -> dict[str, Phase]:
    phases = {s.name: Phase() for s in sides}
    for order in _orders(sides, plan.burst_rounds):
        for side in order:
            phase = phases[side.name]
            with metered(side, phase.cpu, pids):
                rate, samples = await closed_round(side, plan.in_flight, plan.burst_runs)
            phase.samples += samples
            phase.rounds.append({"runs": plan.burst_runs, "runs_per_s": rate})
    return phases


# -- the knee ------------------------------------------------------------------------------


async def refusable(side: Side) -> Sample | None:
    """A run, or None when the gateway refused it for want of room (RESOURCE_EXHAUSTED:
    the tenant's runs in flight, AGENTFLUX_MAX_RUNS_IN_FLIGHT). That is how a drowning
    mesh answers by design, so the sweep counts it as not keeping up; any other failure
    is a broken run and fails the bench as in every phase."""
    try:
        return await one_run(side)
    except RunError as exc:
        if exc.code == "RESOURCE_EXHAUSTED":
            return None
        raise


async def settle(side: Side) -> float:
    """Waits until the side's services' process is nearly idle (below SETTLE_SHARE of a
    core over a quarter of a second), for at most SETTLE_MAX_S; the seconds waited. The
    runs of a step have all finished by then, but not the work behind them (the indexer,
    commits), and on a 2-core machine that would land on the next step."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < SETTLE_MAX_S:
        before = side.proc.cpu_s()
        await asyncio.sleep(0.25)
        if (side.proc.cpu_s() - before) / 0.25 < SETTLE_SHARE:
            break
    return time.monotonic() - t0


def knee_rates(plan: KneePlan) -> list[float]:
    """start, start * factor, ... up to the cap, to 3 significant digits (4, 6, 9,
    13.5, 20.2, ...): computed from the start each time, so rounding does not add up."""
    rates: list[float] = []
    for i in itertools.count():
        rate = float(f"{plan.start * plan.factor**i:.3g}")
        if rate > plan.cap:
            return rates
        rates.append(rate)
    raise AssertionError("unreachable")


def step_runs(plan: KneePlan, rate: float, first: bool) -> int:
    seconds = max(plan.floor_s, min(plan.step_s, plan.min_runs / rate))
    n = max(2, round(rate * seconds))  # a p99 needs two
    return max(n, plan.base_runs) if first else n


@dataclass
class Sweep:
    """One side's knee sweep: a step per rate, until it stopped."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    baseline_p99: float = 0.0  # ms, at the first rate
    knee: float | None = None  # the highest rate that passed; None: not even the first
    stopped: str = ""  # why the sweep ended
    open_ended: bool = False  # it never failed (cap or time budget): the knee is at least this


def _step_percentiles(samples: Sequence[Sample]) -> tuple[float, float]:
    if len(samples) >= 2:
        stats = Stats.of([s.ms for s in samples])
        return stats.p50, stats.p99
    if samples:
        return samples[0].ms, samples[0].ms
    return float("nan"), float("nan")


async def knee_step(side: Side, rate: float, n: int, sweep: Sweep, first: bool) -> bool:
    """One step of one side, added to its sweep; whether it passed."""
    gc.collect()
    cpu0, wall0 = side.proc.cpu_s(), time.perf_counter()
    got = await open_round(side, rate, n, refusable)
    busy = (side.proc.cpu_s() - cpu0) / (time.perf_counter() - wall0)
    samples: list[Sample] = got.pop("samples")
    p50, p99 = _step_percentiles(samples)
    if first:  # noise only ever adds latency: the lower of the first rate's p99s
        sweep.baseline_p99 = min(p99, sweep.baseline_p99 or p99)
    over = p99 / sweep.baseline_p99 if sweep.baseline_p99 > 0 else float("nan")
    step = {
        "rate_per_s": rate,
        "again": bool(sweep.steps) and sweep.steps[-1]["rate_per_s"] == rate,
        **got,
        "p50_ms": p50,
        "p99_ms": p99,
        "p99_over_baseline": over,
        "server_cpu_share": busy,
        "latencies_ms": [round(s.ms, 3) for s in samples],
    }
    sweep.steps.append(step)
    step["settle_s"] = await settle(side)
    log(
        f"  {side.name} at {rate:g} runs/s{' again' if step['again'] else ''}: {n} runs, "
        f"{'kept up' if got['kept_up'] else 'did NOT keep up'}, p50 {_ms(p50)} ms, "
        f"p99 {_ms(p99)} ms ({over:.2f}x), {busy * 100:.0f}% of a core"
    )
    if not got["kept_up"]:
        refused = f", {got['refused']} refused" if got["refused"] else ""
        sweep.stopped = f"did not keep up at {rate:g} runs/s{refused}"
    elif not over <= KNEE_P99_LIMIT:  # also when it is nan
        sweep.stopped = f"p99 {over:.2f}x the baseline at {rate:g} runs/s"
    else:
        sweep.stopped = ""
        return True
    return False


async def _step_with_tries(side: Side, rate: float, n: int, sweep: Sweep, first: bool) -> bool:
    """A step, tried KNEE_TRIES times, and up to NOISE_TRIES more while its failures came
    with the side's core mostly idle (see NOISE_SHARE); whether one try passed."""
    noise_left = NOISE_TRIES
    tries = 0
    while True:
        if await knee_step(side, rate, n, sweep, first):
            return True
        tries += 1
        if tries < KNEE_TRIES:
            continue
        busy = sweep.steps[-1]["server_cpu_share"]
        if busy >= NOISE_SHARE or noise_left == 0:
            return False
        noise_left -= 1
        log(
            f"  {side.name} at {rate:g} runs/s failed with {busy * 100:.0f}% of a core "
            f"busy: the machine, not the side; again in {NOISE_PAUSE_S:g} s"
        )
        await asyncio.sleep(NOISE_PAUSE_S)


async def knee(sides: Sequence[Side], plan: KneePlan, sweeps: dict[str, Sweep]) -> None:
    """Open-loop steps at rising rates, sides interleaved per step, until each side fails
    a step KNEE_TRIES times in a row (more while its core stays mostly idle: see
    NOISE_SHARE): it did not keep up (the open loop's rule, with no
    run refused) or its p99 went above KNEE_P99_LIMIT times its p99 at the first rate. Its
    knee is the last rate it passed. A side that failed runs no more steps; the other one
    goes on alone. Fills in `sweeps` as it goes, so that a failure mid-way still leaves
    the steps that ran."""
    for side in sides:
        sweeps[side.name] = Sweep()
    active = list(sides)
    t0 = time.monotonic()
    for i, rate in enumerate(knee_rates(plan)):
        if not active:
            break
        if time.monotonic() - t0 > plan.budget_s:
            for side in active:
                sweeps[side.name].stopped = f"time budget ({plan.budget_s:g} s) spent"
                sweeps[side.name].open_ended = True
            active = []
            break
        n = step_runs(plan, rate, first=i == 0)
        for side in list(active) if i % 2 == 0 else active[::-1]:
            sweep = sweeps[side.name]
            if i == 0:
                # The baseline is measured twice, and the lower p99 kept: one burst of
                # noise in the first step would otherwise raise the bar of every later
                # step (both sides have shown a first step twice as slow as the next).
                await knee_step(side, rate, n, sweep, first=True)
            if await _step_with_tries(side, rate, n, sweep, first=i == 0):
                sweep.knee = rate
                continue
            active.remove(side)
            # Steps of x1.5 are coarse: one more step halfway (on a log scale) between
            # the last rate passed and this one says which half the knee is in.
            if sweep.knee is not None:
                mid = float(f"{math.sqrt(sweep.knee * rate):.3g}")
                if sweep.knee < mid < rate:
                    why = sweep.stopped
                    n_mid = step_runs(plan, mid, first=False)
                    if await _step_with_tries(side, mid, n_mid, sweep, first=False):
                        sweep.knee = mid
                        sweep.stopped = f"{why}; passed at {mid:g} runs/s between"
    for side in active:
        sweeps[side.name].stopped = f"rate cap ({plan.cap:g} runs/s) reached"
        sweeps[side.name].open_ended = True


# -- where the time goes -------------------------------------------------------------------

# Moments of a run, in causal order, on the wall clock: where each handler starts and
# where it hands the run on (a produce or publish starts). "submit" and "received" are
# the client's; the others come from the mesh's spans (agentflux) or the helper's stamps
# (bare). A hand-off is timed from its start, not from the broker's ack: the next
# handler often starts before the ack is back (RabbitMQ delivers before it confirms).
MARKS = (
    "submit",
    "gateway",
    "requested",
    "planner",
    "task",
    "worker",
    "called",
    "composer",
    "received",
)
SEGMENTS = (
    "client -> gateway's Submit handler (gRPC)",
    "gateway: Submit handler until it produces the request",
    "Kafka agent.requested: produce -> planner's handler",
    "planner: handler until it publishes the tool task",
    "RabbitMQ tool task: publish -> worker's handler",
    "worker: handler until it produces the result",
    "Kafka agent.tool_called: produce -> composer's handler",
    "composer and run stream: handler -> client has `finished`",
)
# Which span gives each mark on the agentflux side: (service, kind, name suffix). The
# mark is the span's start.
SPAN_MARKS = {
    "gateway": ("gateway", "SERVER", "/Submit"),
    "requested": ("gateway", "PRODUCER", "agent.requested"),
    "planner": ("planner", "CONSUMER", "agent.requested"),
    "task": ("planner", "PRODUCER", "tool_tasks"),
    "worker": ("worker", "CONSUMER", "tool_tasks"),
    "called": ("worker", "PRODUCER", "agent.tool_called"),
    "composer": ("composer", "CONSUMER", "agent.tool_called"),
}


@dataclass
class SpanFacts:
    """What the mesh's span store says about its runs."""

    marks: dict[str, dict[str, int]]  # run id -> mark -> wall clock ns
    counts: dict[str, collections.Counter[str]]  # run id -> what its trace holds
    streams: list[collections.Counter[str]]  # the same for each StreamRun call's trace


def _what(span: dict[str, Any]) -> str:
    attributes = span.get("attributes", {})
    db = attributes.get("db.system")
    if db:
        return f"{db} {span['service']}"
    if span["kind"] == "PRODUCER":
        return f"published {attributes.get('messaging.system', '?')}"
    return ""


def span_facts(folder: Path) -> SpanFacts:
    """Marks and counts of every run in the mesh's span store (one pass over it). A
    run's trace starts at its Submit; each StreamRun call is a trace of its own (the
    bench's client sends no trace context), which carries no run id."""
    wanted: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for mark, (service, kind, suffix) in SPAN_MARKS.items():
        wanted.setdefault((service, kind), []).append((suffix, mark))
    by_trace: dict[str, dict[str, int]] = {}
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    run_of: dict[str, str] = {}
    streams: set[str] = set()
    for path in sorted(folder.glob("*.jsonl")):
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    span = json.loads(line)
                except ValueError:  # a torn or empty line
                    continue
                trace = span["trace_id"]
                run_id = span.get("attributes", {}).get("agentflux.run_id")
                if run_id:
                    run_of[trace] = run_id
                if span["kind"] == "SERVER" and span["name"].endswith("/StreamRun"):
                    streams.add(trace)
                counts[trace]["spans"] += 1
                what = _what(span)
                if what:
                    counts[trace][what] += 1
                for suffix, mark in wanted.get((span["service"], span["kind"]), ()):
                    if span["name"].endswith(suffix):
                        by_trace.setdefault(trace, {})[mark] = int(span["start_ns"])
    return SpanFacts(
        marks={run_of[t]: marks for t, marks in by_trace.items() if t in run_of},
        counts={run_of[t]: c for t, c in counts.items() if t in run_of},
        streams=[counts[t] for t in streams],
    )


def run_costs(facts: SpanFacts, samples: Sequence[Sample]) -> dict[str, float]:
    """Median count of each thing per run (its own trace) and per StreamRun call."""
    runs = [facts.counts[s.run_id] for s in samples if s.run_id in facts.counts]
    out: dict[str, float] = {}
    for prefix, traces in (("run", runs), ("stream", facts.streams)):
        keys = {k for c in traces for k in c}
        for key in sorted(keys):
            out[f"{prefix}: {key}"] = statistics.median(c[key] for c in traces)
        out[f"{prefix}: traces"] = len(traces)
    return out


def breakdown(
    samples: Sequence[Sample], marks: dict[str, dict[str, int]]
) -> tuple[list[float], float, int]:
    """Median ms of each segment over the runs with every mark, the median latency of
    those runs, and how many they were."""
    rows: list[list[float]] = []
    totals = []
    for s in samples:
        got = {**marks.get(s.run_id, {}), "submit": s.wall0, "received": s.wall1}
        if all(m in got for m in MARKS):
            times = [got[m] for m in MARKS]
            rows.append([(b - a) / 1e6 for a, b in itertools.pairwise(times)])
            totals.append((times[-1] - times[0]) / 1e6)
    if not rows:
        return [], 0.0, 0
    return (
        [statistics.median(col) for col in zip(*rows, strict=True)],
        statistics.median(totals),
        len(rows),
    )


def _read_stamps(path: Path) -> dict[str, dict[str, int]]:
    try:
        stamps: dict[str, dict[str, int]] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return stamps


# -- clean-up ------------------------------------------------------------------------------


async def purge_memcached(settings: Settings, prefix: str | tuple[str, ...]) -> int:
    """Deletes the Memcached keys under `prefix` (or any of several: the meshes'
    read-through caches), found with one `lru_crawler metadump all`."""
    host, port = settings.memcached_address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"lru_crawler metadump all\r\n")
        keys = []
        async with asyncio.timeout(30):
            while True:
                line = (await reader.readline()).decode(errors="replace").strip()
                if not line or line == "END" or line.startswith(("ERROR", "BUSY", "CLIENT_ERROR")):
                    if line != "END":
                        raise RuntimeError(f"memcached metadump: {line or 'connection closed'}")
                    break
                key = unquote(line.split(" ", 1)[0].removeprefix("key="))
                if key.startswith(prefix):
                    keys.append(key)
            for key in keys:
                writer.write(f"delete {key}\r\n".encode())
                await writer.drain()
                await reader.readline()
        return len(keys)
    finally:
        writer.close()
        await writer.wait_closed()


async def _drop_kafka_names(settings: Settings, topics: list[str], group_prefix: str) -> None:
    """Deletes `topics` and every consumer group under `group_prefix`. A group that still
    has members (a process that was killed: they linger for the session timeout) is
    tried again for up to 30 s."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    listed = await asyncio.wrap_future(admin.list_consumer_groups(request_timeout=30))
    groups = [g.group_id for g in listed.valid if g.group_id.startswith(group_prefix)]
    deadline = time.monotonic() + 30
    while groups:
        busy = []
        for group, fut in admin.delete_consumer_groups(groups, request_timeout=30).items():
            try:
                await asyncio.wrap_future(fut)
            except KafkaException as exc:
                code = exc.args[0].code()
                if code == KafkaError.NON_EMPTY_GROUP and time.monotonic() < deadline:
                    busy.append(group)
                elif code != KafkaError.GROUP_ID_NOT_FOUND:
                    log(f"  clean-up of consumer group {group} failed: {exc!r}")
        groups = busy
        if groups:
            await asyncio.sleep(2)
    for topic, fut in admin.delete_topics(topics, operation_timeout=30).items():
        try:
            await asyncio.wrap_future(fut)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                log(f"  clean-up of Kafka topic {topic} failed: {exc!r}")


async def clean_up(
    settings: Settings, namespaces: Sequence[str], bares: Sequence[BareNames]
) -> None:
    """Deletes what any side made (the meshes' `namespaces` and the bare helpers'
    names); every step runs even when an earlier one failed."""
    log("cleaning up")

    async def step(what: str, action: Callable[[], Awaitable[Any]]) -> None:
        try:
            await action()
        except Exception as exc:
            log(f"  clean-up of {what} failed: {exc!r}")

    async def kafka() -> None:
        for ns in namespaces:
            topics = [t.name for t in kafka_topics(settings, prefix=ns)]
            await _drop_kafka_names(settings, topics, ns)
        for bare in bares:
            await _drop_kafka_names(settings, [bare.requested, bare.called], bare.prefix)

    async def rabbit() -> None:
        for ns in namespaces:
            await _drop_rabbit(settings, task_topologies(settings, prefix=ns))
        connection = await aio_pika.connect(settings.amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            for bare in bares:
                await channel.queue_delete(bare.tasks)
                await channel.exchange_delete(bare.tasks)

    async def redis() -> None:
        client = aioredis.Redis.from_url(settings.redis_dsn)
        try:
            for prefix in (*namespaces, *(bare.prefix for bare in bares)):
                await purge_redis(client, prefix)
        finally:
            await client.aclose()

    async def memcached() -> None:
        await purge_memcached(settings, tuple(namespaces))

    await step("Kafka topics and groups", kafka)
    await step("RabbitMQ queues and exchanges", rabbit)
    await step("Redis keys", redis)
    await step("Memcached keys", memcached)


async def declare_bare(settings: Settings, bare: BareNames) -> None:
    """The baseline's two topics (partitions as the mesh's) and its task exchange and
    classic priority queue (durable, as the mesh's)."""
    keep = {"retention.ms": str(3_600_000)}
    await ensure_kafka_topics(
        settings,
        [TopicSpec(t, settings.kafka_partitions, keep) for t in (bare.requested, bare.called)],
    )
    connection = await aio_pika.connect(settings.amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            bare.tasks, aio_pika.ExchangeType.DIRECT, durable=True
        )
        queue = await channel.declare_queue(
            bare.tasks, durable=True, arguments={"x-max-priority": 10}
        )
        await queue.bind(exchange, bare.tasks)


# -- report --------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _ratio(flux: float, bare: float) -> str:
    return f"{flux / bare:.2f}x" if bare > 0 else "-"


Row = tuple[str, ...]


def _header(names: Sequence[str]) -> Row:
    """bare, agentflux and its ratio; then, for each side that ran, sampled out and its
    ratios to both, tracing off and sampled out's ratio to it, and bare + state with its
    ratio to bare and agentflux's to it."""
    header = ["", BARE, FLUX, f"{FLUX}/{BARE}"]
    if SAMPLED in names:
        header += [SAMPLED, f"{SAMPLED}/{BARE}", f"{SAMPLED}/{FLUX}"]
    if OFF in names:
        header += [OFF, f"{SAMPLED}/{OFF}"]
    if FLOOR in names:
        header += [FLOOR, f"{FLOOR}/{BARE}", f"{FLUX}/{FLOOR}"]
    return tuple(header)


def _row(
    label: str, values: dict[str, float], fmt: Callable[[float], str] = _ms, ratios: bool = True
) -> Row:
    """A row of numbers, one per side, with each ratio of the header (if `ratios`)."""
    b, f = values[BARE], values[FLUX]
    row = [label, fmt(b), fmt(f), _ratio(f, b) if ratios else ""]
    if SAMPLED in values:
        x = values[SAMPLED]
        row += [fmt(x), _ratio(x, b) if ratios else "", _ratio(x, f) if ratios else ""]
    if OFF in values:
        x = values[OFF]
        row += [fmt(x), _ratio(values[SAMPLED], x) if ratios else ""]
    if FLOOR in values:
        x = values[FLOOR]
        row += [fmt(x), _ratio(x, b) if ratios else "", _ratio(f, x) if ratios else ""]
    return tuple(row)


def _text_row(label: str, cells: dict[str, str]) -> Row:
    row = [label, cells[BARE], cells[FLUX], ""]
    if SAMPLED in cells:
        row += [cells[SAMPLED], "", ""]
    if OFF in cells:
        row += [cells[OFF], ""]
    if FLOOR in cells:
        row += [cells[FLOOR], "", ""]
    return tuple(row)


def _rate(value: float) -> str:
    return f"{value:,.1f}"


def cpu_rows(phases: dict[str, Phase], stack: bool) -> list[Row]:
    rows = [("services' process CPU ms/run", "server"), ("client CPU ms/run", "client")]
    if stack:
        rows.append(("stack CPU ms/run (Kafka, RabbitMQ, Redis, Memcached)", "stack"))
    return [_row(label, {n: p.per_run_ms(what) for n, p in phases.items()}) for label, what in rows]


def busy_row(phases: dict[str, Phase]) -> Row:
    """How busy the services' process was while its side's rounds ran."""
    return _text_row(
        "services' process CPU, % of one core",
        {n: f"{p.cpu.server / p.cpu.seconds * 100:.0f}%" for n, p in phases.items()},
    )


def _stats_rows(stats: dict[str, Stats], which: Sequence[str]) -> list[Row]:
    return [_row(f"{attr} ms", {n: getattr(st, attr) for n, st in stats.items()}) for attr in which]


def sequential_table(phases: dict[str, Phase], idle: dict[str, float], stack: bool) -> str:
    stats = {n: p.stats() for n, p in phases.items()}
    body = [_text_row("runs", {n: str(st.n) for n, st in stats.items()})]
    body += _stats_rows(stats, ("p50", "p90", "p99", "mean"))
    ops = {n: st.ops_per_s for n, st in stats.items()}
    body.append(_row("runs/s, one at a time", ops, _rate))
    body += cpu_rows(phases, stack)
    body.append(busy_row(phases))
    if idle:
        body.append(
            _text_row(
                "services' process CPU at idle, % of one core",
                {n: f"{idle[n] * 100:.1f}%" for n in phases if n in idle},
            )
        )
    return _markdown(_header(list(phases)), body)


def open_table(phases: dict[str, Phase], stack: bool) -> str:
    stats = {n: p.stats() for n, p in phases.items()}

    def rounds(key: str, fmt: str) -> dict[str, str]:
        return {n: " / ".join(format(r[key], fmt) for r in p.rounds) for n, p in phases.items()}

    body = [
        _text_row("runs", {n: str(st.n) for n, st in stats.items()}),
        _text_row("achieved runs/s, per round", rounds("achieved_per_s", ".2f")),
        _text_row(
            "kept up (every round)",
            {n: "yes" if all(r["kept_up"] for r in p.rounds) else "NO" for n, p in phases.items()},
        ),
        _text_row("last run done after its start, s", rounds("drain_s", ".2f")),
        _text_row(
            "most runs in flight",
            {n: str(max(r["max_in_flight"] for r in p.rounds)) for n, p in phases.items()},
        ),
    ]
    body += _stats_rows(stats, ("p50", "p90", "p99"))
    body += cpu_rows(phases, stack)
    body.append(busy_row(phases))
    return _markdown(_header(list(phases)), body)


def closed_table(phases: dict[str, Phase], stack: bool) -> str:
    stats = {n: p.stats() for n, p in phases.items()}
    per_round = {n: [r["runs_per_s"] for r in p.rounds] for n, p in phases.items()}
    body = [
        _text_row("runs", {n: str(st.n) for n, st in stats.items()}),
        _row(
            "runs/s (median of rounds)",
            {n: statistics.median(r) for n, r in per_round.items()},
            _rate,
        ),
        _text_row(
            "runs/s, rounds min-max",
            {n: f"{_rate(min(r))}-{_rate(max(r))}" for n, r in per_round.items()},
        ),
    ]
    body += _stats_rows(stats, ("p50", "p99"))
    body += cpu_rows(phases, stack)
    body.append(busy_row(phases))
    return _markdown(_header(list(phases)), body)


def knee_table(sweep: Sweep) -> str:
    header = (
        "rate offered",
        "runs",
        "achieved runs/s",
        "kept up",
        "last done after its start, s",
        "p50 ms",
        "p99 ms",
        "p99/baseline",
        "services' CPU, % of a core",
    )
    body = []
    for step in sweep.steps:
        kept = "yes" if step["kept_up"] else "NO"
        if step["refused"]:
            kept += f" ({step['refused']} refused)"
        body.append(
            (
                f"{step['rate_per_s']:g}/s{' again' if step.get('again') else ''}",
                str(step["runs"]),
                f"{step['achieved_per_s']:.1f}",
                kept,
                f"{step['drain_s']:.2f}",
                _ms(step["p50_ms"]),
                _ms(step["p99_ms"]),
                f"{step['p99_over_baseline']:.2f}x",
                f"{step['server_cpu_share'] * 100:.0f}%",
            )
        )
    return _markdown(header, body)


def _knee_text(sweep: Sweep, start: float) -> str:
    if sweep.knee is None:
        return f"below {start:g} runs/s"
    return f"{'>= ' if sweep.open_ended else ''}{sweep.knee:g} runs/s"


def knee_ratio(sweeps: dict[str, Sweep]) -> str:
    """agentflux's knee over bare's; a bound when either sweep never failed."""
    bare, flux = sweeps[BARE], sweeps[FLUX]
    if bare.knee is None or flux.knee is None or (bare.open_ended and flux.open_ended):
        return "-"
    bound = "<= " if bare.open_ended else ">= " if flux.open_ended else ""
    return f"{bound}{flux.knee / bare.knee:.2f}x"


# (label, key in the mesh's costs, the bare chain's count, the floor's STATE_TRIPS step)
REDIS_ROWS = (
    ("Redis commands, gateway's Submit", "run: redis gateway", "0", "gateway"),
    ("Redis commands, planner", "run: redis planner", "0", "planner"),
    ("Redis commands, worker", "run: redis worker", "0", "worker"),
    (
        "Redis commands, composer",
        "run: redis composer",
        "2 (XADD, PEXPIRE: 1 pipeline)",
        "composer",
    ),
    ("Redis commands, indexer", "run: redis indexer", "none (no indexer)", ""),
    ("Redis commands, gateway's StreamRun", "stream: redis gateway", "", "stream"),
)


def floor_commands(step: str) -> int:
    """The Redis commands the floor side adds at `step` (STATE_TRIPS)."""
    before, after = STATE_TRIPS[step]
    return len(before) + len(after)


def cost_table(costs: dict[str, float], bare_xreads: float, floor_xreads: float | None) -> str:
    """What one run costs in spans, round trips and messages (agentflux: from its
    spans; bare and bare + state: by construction, their XREADs counted)."""

    def got(key: str) -> str:
        return f"{costs.get(key, 0):g}"

    memcached = sum(v for k, v in costs.items() if k.startswith("run: memcached"))
    redis = sum(v for k, v in costs.items() if k.startswith(("run: redis", "stream: redis")))
    body = [
        ("spans, the run's trace", got("run: spans"), "0"),
        ("spans, its StreamRun call", got("stream: spans"), "0"),
    ]
    for label, key, bare, _step in REDIS_ROWS:
        body.append((label, got(key), bare or f"{bare_xreads:g} (XREAD BLOCK)"))
    body += [
        ("Redis commands in all", f"{redis:g}", f"{bare_xreads + 2:g}"),
        ("Memcached gets", f"{memcached:g}", "0"),
        ("Kafka records produced", got("run: published kafka"), "2"),
        ("RabbitMQ messages published", got("run: published rabbitmq"), "1"),
    ]
    header: Row = ("per run (median)", "agentflux", "bare")
    if floor_xreads is None:
        return _markdown(header, body)
    # bare + state: the bare chain's commands and STATE_TRIPS, each a round trip.
    row_of = {step: text for text, _, _, step in REDIS_ROWS if step}
    floor = {row_of[step]: f"{floor_commands(step)}" for step in row_of}
    floor[row_of["composer"]] = f"{floor_commands('composer') + 2}"  # and its own pipeline
    floor[row_of["stream"]] = (
        f"{floor_xreads + floor_commands('stream'):g} ({floor_xreads:g} XREAD BLOCK)"
    )
    added = sum(floor_commands(step) for step in STATE_TRIPS)
    floor["Redis commands in all"] = f"{floor_xreads + 2 + added:g}"
    return _markdown((*header, FLOOR), [(*row, floor.get(row[0], row[2])) for row in body])


def breakdown_table(got: dict[str, tuple[list[float], float, int]]) -> str:
    """Each segment per side, and agentflux less bare (and less bare + state, if run)."""
    (bare, bare_total, nb), (flux, flux_total, nf) = got[BARE], got[FLUX]
    floor, floor_total, nl = got.get(FLOOR, ([], 0.0, 0))
    header: Row = ("segment (median ms)", BARE, FLUX, f"{FLUX} - {BARE}")
    if nl:
        header += (FLOOR, f"{FLUX} - {FLOOR}")
    columns = [bare, flux, *([floor] if nl else [])]
    body = []
    for label, b, f, *x in zip(SEGMENTS, *columns, strict=True):
        row: Row = (label, _ms(b), _ms(f), f"{f - b:+.2f}")
        body.append(row + ((_ms(x[0]), f"{f - x[0]:+.2f}") if x else ()))
    runs = f"runs: {nb} {BARE}, {nf} {FLUX}" + (f", {nl} {FLOOR}" if nl else "")
    whole: Row = (f"whole run (median; {runs})", _ms(bare_total), _ms(flux_total))
    whole += (f"{flux_total - bare_total:+.2f}",)
    if nl:
        whole += (_ms(floor_total), f"{flux_total - floor_total:+.2f}")
    body.append(whole)
    return _markdown(header, body)


# -- main ----------------------------------------------------------------------------------


def mesh_env(
    ns: str, gateway: int, indexer: int, folder: Path, api_keys: str, tracing: dict[str, str]
) -> dict[str, str]:
    """A mesh's environment: its namespace, ports, index folder and span store, the
    bench's API key, and its tracing (`tracing`, added; empty: the defaults, every trace
    recorded)."""
    env = {
        **os.environ,
        "AGENTFLUX_NAMESPACE": ns,
        "AGENTFLUX_GATEWAY_PORT": str(gateway),
        "AGENTFLUX_INDEXER_PORT": str(indexer),
        "AGENTFLUX_INDEX_DIR": str(folder / "index"),
        # The span store stays on (the default), in the temporary folder: <stack_dir>/traces.
        # stack_dir is read for nothing else by `serve`.
        "AGENTFLUX_STACK_DIR": str(folder),
        # The gateway requires an API key (the default). The bench's key comes from the
        # settings, checked in memory: a key made by `agentflux tenants add` would add
        # one Redis round trip per call.
        "AGENTFLUX_API_KEYS": api_keys,
        # Far above what the bench calls (the default, 600 calls a minute, would refuse
        # most of them); the limiter's script still runs on every call, as anywhere.
        "AGENTFLUX_RATE_LIMIT": str(RATE_LIMIT),
        "PYTHONUNBUFFERED": "1",
    }
    # Not inherited: the full side is what a deployment gets by default.
    for name in TRACING_VARIABLES:
        env.pop(name, None)
    return env | tracing


def _progress(label: str, phases: dict[str, Phase]) -> None:
    stats = {n: p.stats() for n, p in phases.items()}
    b = stats[BARE]
    log(
        f"  {label}: "
        + "; ".join(
            f"{n} p50 {_ms(st.p50)} ms ({st.p50 / b.p50:.2f}x), p99 {_ms(st.p99)} ms"
            for n, st in stats.items()
        )
    )


async def start_sides(
    stack: AsyncExitStack,
    folder: Path,
    namespaces: Sequence[str],
    bare: BareNames,
    procs: list[Child | ChildGroup],
    key: str,
    floor: BareNames | None = None,
) -> list[Side]:
    """The processes (bare, agentflux, sampled out and tracing off when there are more
    namespaces, and bare + state when there are `floor` names), started at once and
    waited for; a client channel to each. Each one is stopped on the way out from the
    moment it exists."""
    api_keys = f"{BARE_TENANT}:{digest_of(key)}"
    helpers: list[tuple[str, str, BareNames, str, tuple[str, ...]]] = [
        (BARE, "bare chain", bare, "bare", ())
    ]
    if floor is not None:
        helpers.append((FLOOR, "bare chain + state trips", floor, "floor", ("--state-trips",)))
    wanted = []
    for name, title, names, file, flags in helpers:
        port = free_port()
        helper = [sys.executable, "-m", "bench.runs", "--bare-chain", names.prefix, *flags]
        helper += ["--port", str(port), "--stamps", str(folder / f"{file}-stamps.json")]
        proc = Child.start(
            title, helper, {**os.environ, "PYTHONUNBUFFERED": "1"}, folder / f"{file}.log"
        )
        procs.append(proc)
        stack.push_async_callback(proc.stop)
        wanted.append((name, proc, port, False))
    meshes: list[tuple[str, str, Path, dict[str, str]]] = [(FLUX, "agentflux serve", folder, {})]
    if len(namespaces) > 1:
        for name, title, sub, tracing in (
            (SAMPLED, "agentflux serve, sampled out", "sampled-out", SAMPLED_OUT),
            (OFF, "agentflux serve, tracing off", "tracing-off", TRACING_OFF),
        ):
            (folder / sub).mkdir()
            meshes.append((name, title, folder / sub, tracing))
    for (name, title, home, tracing), ns in zip(meshes, namespaces, strict=True):
        port = free_port()
        env = mesh_env(ns, port, free_port(), home, api_keys, tracing)
        log_file = home / f"serve-{ns.rstrip('.')}.log"
        proc = Child.start(title, [*SERVE], env, log_file)
        procs.append(proc)
        stack.push_async_callback(proc.stop)
        wanted.append((name, proc, port, True))
    t0 = time.monotonic()
    lines = await asyncio.gather(*(proc.ready() for _, proc, _, _ in wanted))
    log(f"{len(wanted)} sides ready in {time.monotonic() - t0:.1f} s:")
    for line in lines:
        log(f"  {line}")
    sides = []
    for name, proc, port, strict in wanted:
        channel = grpc.aio.insecure_channel(f"{LOOPBACK}:{port}")
        stack.push_async_callback(channel.close)
        sides.append(Side(name, proc, channel, strict, key_metadata(key)))
    return sides


async def start_split_side(
    stack: AsyncExitStack, folder: Path, ns: str, procs: list[Child | ChildGroup], key: str
) -> Side:
    """The mesh as a process per service (`agentflux serve <service>` each) in namespace
    `ns`, waited for; a client channel to its gateway. Started only when the knee starts,
    so that its idle processes take nothing from the phases before."""
    home = folder / "split"
    home.mkdir()
    port = free_port()
    # The same settings for every process: each binds only its own service's port (the
    # gateway's, the indexer's; a health port of its own is picked free).
    env = mesh_env(ns, port, free_port(), home, f"{BARE_TENANT}:{digest_of(key)}", {})
    children = [
        Child.start(f"agentflux serve {svc}", [*SERVE, svc], env, home / f"{svc}.log")
        for svc in SERVICE_NAMES  # what `agentflux serve <service>` takes, one process each
    ]
    group = ChildGroup("agentflux serve, a process per service", children)
    procs.append(group)
    stack.push_async_callback(group.stop)
    t0 = time.monotonic()
    line = await group.ready()
    log(f"{SPLIT} ready in {time.monotonic() - t0:.1f} s:\n  {line}")
    channel = grpc.aio.insecure_channel(f"{LOOPBACK}:{port}")
    stack.push_async_callback(channel.close)
    return Side(SPLIT, group, channel, True, key_metadata(key))


@dataclass
class Findings:
    """Everything a run of the bench found, for the report and the JSON."""

    results: dict[str, dict[str, Phase]] = field(default_factory=dict)  # phase -> side
    idle: dict[str, float] = field(default_factory=dict)
    sweeps: dict[str, Sweep] = field(default_factory=dict)  # the knee, per side
    costs: dict[str, float] = field(default_factory=dict)
    bare_marks: dict[str, dict[str, int]] = field(default_factory=dict)
    floor_marks: dict[str, dict[str, int]] = field(default_factory=dict)
    breakdowns: dict[str, dict[str, tuple[list[float], float, int]]] = field(default_factory=dict)
    sampled_check: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


async def measure_all(
    sides: Sequence[Side],
    plan: Plan,
    knee_plan: KneePlan | None,
    only_knee: bool,
    rate: float,
    pids: dict[str, int],
    found: Findings,
    split: Callable[[], Awaitable[Side]] | None = None,
) -> None:
    k = plan.in_flight
    # The open loop at one rate and the knee compare bare with agentflux only; the
    # sampled-out side is there to be set beside both, one at a time and in a closed loop.
    # The process-per-service side (`split`: starts it) takes part in the knee only.
    two = [s for s in sides if s.name in (BARE, FLUX)]
    log(f"warm-up: {plan.warmup} runs one at a time, then {2 * k} with {k} in flight, per side")
    for side in sides:
        await warm_up(side, plan)
    results = found.results
    if not only_knee:
        found.idle.update(await idle_cpu(sides, plan.idle_s))
        log("  idle: " + ", ".join(f"{n} {v * 100:.1f}% of a core" for n, v in found.idle.items()))
        log(f"sequential: {plan.seq_runs} runs per side in {plan.seq_rounds} rounds")
        results["sequential"] = await sequential(sides, plan, pids)
        _progress("sequential", results["sequential"])
        log(f"open loop: {rate:g} runs/s for {plan.load_s:g} s per side, {plan.load_rounds} rounds")
        results["open"] = await open_loop(two, plan, rate, pids)
        _progress("open loop", results["open"])
        log(
            f"closed loop: {k} in flight, {plan.burst_runs} runs per round, "
            f"{plan.burst_rounds} rounds"
        )
        results["closed"] = await closed_loop(sides, plan, pids)
        _progress("closed loop", results["closed"])
    if knee_plan is not None:
        knee_sides = list(two)
        cold = list(two) if only_knee else []
        if split is not None:
            side = await split()
            await warm_up(side, plan)
            knee_sides.append(side)
            cold.append(side)
        if cold:
            # In a full run the knee comes after minutes of the other phases; alone, the
            # mesh is minutes younger, and its first steps came out up to twice as slow
            # as its later ones (a baseline set that high hides the knee). An unmeasured
            # round at the first rate first, as long as a step, warms it the same way.
            n = step_runs(knee_plan, knee_plan.start, first=True)
            names = ", ".join(side.name for side in cold)
            log(f"knee warm-up: {n} runs at {knee_plan.start:g} runs/s ({names}), unmeasured")
            for side in cold:
                await open_round(side, knee_plan.start, n, refusable)
        log(
            f"knee: open-loop steps from {knee_plan.start:g} runs/s, x{knee_plan.factor:g} each, "
            f"up to {knee_plan.cap:g}, for at most {knee_plan.budget_s:g} s"
        )
        await knee(knee_sides, knee_plan, found.sweeps)
        for name, sweep in found.sweeps.items():
            log(f"  {name}: knee {_knee_text(sweep, knee_plan.start)} ({sweep.stopped})")


def span_store_lines(folder: Path) -> int:
    """Spans in a span store: its non-empty lines."""
    count = 0
    for path in folder.glob("*.jsonl"):
        with path.open(encoding="utf-8", errors="replace") as lines:
            count += sum(1 for line in lines if line.strip())
    return count


def sampled_out_check(folder: Path, phases: dict[str, dict[str, Phase]]) -> dict[str, Any]:
    """What the sampled-out side's span store holds: nothing of its runs, if the
    sampling holds (the whole trace of a sampled-out root is absent)."""
    facts = span_facts(folder)
    run_spans = sum(c["spans"] for c in facts.counts.values())
    stream_spans = sum(c["spans"] for c in facts.streams)
    runs = sum(len(p[SAMPLED].samples) for p in phases.values() if SAMPLED in p)
    return {
        "span_store_lines": span_store_lines(folder),
        "runs_with_spans": len(facts.counts),
        "run_trace_spans": run_spans,
        "streamrun_trace_spans": stream_spans,
        "measured_runs": runs,
        "ok": run_spans == 0 and stream_spans == 0,
    }


async def run(args: argparse.Namespace) -> int:
    settings = Settings()
    plan = QUICK_PLAN if args.quick else PLAN
    knee_plan = None if args.knee == "off" else QUICK_KNEE_PLAN if args.quick else KNEE_PLAN
    only_knee = args.knee == "only"
    rate: float = args.rate
    token = uuid.uuid4().hex[:8]
    ns = f"bench-{token}."  # a mesh namespace is a single label
    namespaces = [ns]
    sampled = args.sampled_out and not only_knee  # it takes part in no step of the knee
    if sampled:
        # Not under `ns`, nor `ns` under them: sampled out, and its reference, tracing off.
        namespaces += [f"bench-{token}-s.", f"bench-{token}-o."]
    split_ns = f"bench-{token}-p." if args.split and knee_plan is not None else None
    bare = BareNames(f"bench.{token}.")
    # Not under the bare chain's prefix: the clean-up of one must not reach the other's.
    floor = BareNames(f"bench.{token}-f.") if args.floor and not only_knee else None
    bares = [bare, *([floor] if floor else [])]
    started = datetime.now(UTC)
    problems = await preflight(settings, ("kafka", "rabbitmq", "redis", "memcached"))
    if problems:
        for problem in problems:
            log(f"cannot run: {problem}")
        log("the bench runs against the local stack: start it with `make stack-up`")
        return 2
    load_start = os.getloadavg()
    log(
        f"agentflux bench runs ({'quick' if args.quick else 'full'}"
        f"{', knee only' if only_knee else ''}): mesh namespace{'s' if sampled else ''} "
        f"{' and '.join(namespaces)}, bare names under "
        f"{' and '.join(b.prefix for b in bares)}; "
        f"{os.cpu_count()} CPUs, load {load_start[0]:.2f}"
    )
    if args.sampled_out and only_knee:
        log("  (no sampled-out side: it is measured one at a time and in the closed loop)")
    if args.floor and only_knee:
        log("  (no bare + state side: it is measured one at a time and in the closed loop)")
    if args.split and knee_plan is None:
        log("  (--split is a side of the knee, which --no-knee leaves out: not started)")
    pids = stack_pids(settings)
    found = Findings()
    failures = found.failures
    t_all = time.monotonic()
    async with AsyncExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentflux-bench-")))
        # After every process stopped (the stack unwinds in reverse).
        stack.push_async_callback(
            clean_up, settings, [*namespaces, *([split_ns] if split_ns else [])], bares
        )
        procs: list[Child | ChildGroup] = []
        try:
            for names in bares:
                await declare_bare(settings, names)
            key = new_key()
            sides = await start_sides(stack, folder, namespaces, bare, procs, key, floor)
            split: Callable[[], Awaitable[Side]] | None = None
            if split_ns is not None:
                split = functools.partial(start_split_side, stack, folder, split_ns, procs, key)
            await measure_all(sides, plan, knee_plan, only_knee, rate, pids, found, split)
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            log(f"FAILED: {failures[-1]}")
            # Their output goes with the temporary folder: what led up to it, while it lasts.
            for proc in procs:
                log(f"  the last lines of {proc.name}:\n{proc.tail(15)}")
        # Stopped here, not only on the way out, so that the meshes' spans are flushed and
        # the bare chain's stamps written before the breakdown and the check read them.
        for proc in procs:
            code = await proc.stop()
            if code != 0:
                failures.append(f"{proc.name} exited {code} (0 expected, after SIGTERM)")
                log(f"{failures[-1]}; its last lines:\n{proc.tail()}")
        results = found.results
        if results:
            facts = span_facts(folder / "traces")
            flux_marks = facts.marks
            if "sequential" in results:
                found.costs.update(run_costs(facts, results["sequential"][FLUX].samples))
            found.bare_marks = _read_stamps(folder / "bare-stamps.json")
            found.floor_marks = _read_stamps(folder / "floor-stamps.json")
            for phase in ("sequential", "closed"):
                if phase in results:
                    found.breakdowns[phase] = {
                        BARE: breakdown(results[phase][BARE].samples, found.bare_marks),
                        FLUX: breakdown(results[phase][FLUX].samples, flux_marks),
                    }
                    if FLOOR in results[phase]:
                        found.breakdowns[phase][FLOOR] = breakdown(
                            results[phase][FLOOR].samples, found.floor_marks
                        )
        if any(SAMPLED in phases for phases in results.values()):
            check = sampled_out_check(folder / "sampled-out" / "traces", results)
            found.sampled_check = check
            if not check["ok"]:
                failures.append(
                    f"the sampled-out side recorded {check['run_trace_spans']} spans of "
                    f"{check['runs_with_spans']} runs and {check['streamrun_trace_spans']} of "
                    "StreamRun calls (0 expected): does `serve` honour "
                    "AGENTFLUX_TRACE_SAMPLE_RATIO?"
                )
            # Its reference must have made no span at all, or it is no reference.
            off_lines = span_store_lines(folder / "tracing-off" / "traces")
            check["tracing_off_span_store_lines"] = off_lines
            if off_lines:
                failures.append(
                    f"the tracing-off side wrote {off_lines} spans (0 expected): does "
                    "`serve` honour OTEL_SDK_DISABLED?"
                )
    log(f"done in {time.monotonic() - t_all:.1f} s")
    print(report(found, plan, knee_plan, rate, bool(pids)))
    if failures:
        print("\nFAILED: " + "; ".join(failures))
    if args.json:
        load = (load_start, os.getloadavg())
        doc = to_json(found, plan, knee_plan, rate, args, started, load)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"results written to {args.json}")
    return 1 if failures else 0


def knee_report(sweeps: dict[str, Sweep], plan: KneePlan) -> list[str]:
    parts = [
        "",
        f"Knee: open-loop steps from {plan.start:g} runs/s, x{plan.factor:g} each, up to "
        f"{plan.cap:g} runs/s, sides interleaved per step; a step lasts {plan.step_s:g} s or "
        f"{plan.min_runs} runs, whichever is first, at least {plan.floor_s:g} s (the first: "
        f"at least {plan.base_runs} runs). The knee is the highest rate kept up with at a p99 "
        f"at most {KNEE_P99_LIMIT:g}x the p99 at {plan.start:g} runs/s (the baseline).",
    ]
    for name, sweep in sweeps.items():
        if not sweep.steps:
            continue
        parts += [
            "",
            f"{name}: baseline p99 {_ms(sweep.baseline_p99)} ms; stopped: "
            f"{sweep.stopped or 'a run failed'}.",
            knee_table(sweep),
        ]
    if BARE in sweeps and FLUX in sweeps:
        parts += [
            "",
            f"Knee: bare {_knee_text(sweeps[BARE], plan.start)}, agentflux "
            f"{_knee_text(sweeps[FLUX], plan.start)}; agentflux/bare {knee_ratio(sweeps)}.",
        ]
    if SPLIT in sweeps:
        parts.append(
            f"The same mesh as a process per service: {_knee_text(sweeps[SPLIT], plan.start)} "
            "(its CPU column sums the five processes)."
        )
    return parts


def report(
    found: Findings, plan: Plan, knee_plan: KneePlan | None, rate: float, stack: bool
) -> str:
    results = found.results
    if not results and not any(s.steps for s in found.sweeps.values()):
        return "No phase finished."
    parts = []
    ratios = "ratios: agentflux / bare"
    if any(SAMPLED in phases for phases in results.values()):
        ratios += ", sampled out / bare, sampled out / agentflux, sampled out / tracing off"
    if any(FLOOR in phases for phases in results.values()):
        ratios += ", bare + state / bare, agentflux / bare + state"
    if "sequential" in results:
        parts += [
            f"One run at a time ({plan.seq_runs} runs per side, {plan.seq_rounds} interleaved "
            f"rounds); latency = Submit -> `finished` received, ms; {ratios}:",
            sequential_table(results["sequential"], found.idle, stack),
        ]
    if "open" in results:
        parts += [
            "",
            f"Open loop: {rate:g} runs/s started on schedule for {plan.load_s:g} s per side "
            f"({plan.load_rounds} rounds):",
            open_table(results["open"], stack),
        ]
    if "closed" in results:
        parts += [
            "",
            f"Closed loop: {plan.in_flight} runs in flight ({plan.burst_runs} runs per round, "
            f"{plan.burst_rounds} rounds per side); runs/s ratio below 1.00x = slower:",
            closed_table(results["closed"], stack),
        ]
    if knee_plan is not None and found.sweeps:
        parts += knee_report(found.sweeps, knee_plan)
    check = found.sampled_check
    if check:
        verdict = "OK" if check["ok"] else "NOT sampled out"
        parts += [
            "",
            f"Sampled out (AGENTFLUX_TRACE_SAMPLE_RATIO=0), its span store after "
            f"{check['measured_runs']} measured runs and the warm-up: "
            f"{check['span_store_lines']} spans in all; {check['run_trace_spans']} in the "
            f"traces of {check['runs_with_spans']} runs, {check['streamrun_trace_spans']} in "
            f"StreamRun calls' traces: {verdict}. What one run costs and where the time goes "
            "come from spans: not for this side. Tracing off (OTEL_SDK_DISABLED=true), its "
            f"reference: {check.get('tracing_off_span_store_lines', 0)} spans in all.",
        ]
    costs = found.costs
    if costs and "sequential" in results:
        seq = results["sequential"]

        def xreads(name: str, marks: dict[str, dict[str, int]]) -> float:
            return statistics.median(
                marks.get(s.run_id, {}).get("xreads", 0) for s in seq[name].samples
            )

        bare_xreads = xreads(BARE, found.bare_marks)
        floor_xreads = xreads(FLOOR, found.floor_marks) if FLOOR in seq else None
        events = {
            n: statistics.median(s.events for s in p.samples)
            for n, p in results["sequential"].items()
        }
        parts += [
            "",
            f"What one run costs, one at a time (agentflux: from its spans, over "
            f"{costs.get('run: traces', 0):g} runs and {costs.get('stream: traces', 0):g} "
            f"StreamRun calls; bare{' and bare + state' if floor_xreads is not None else ''}: "
            f"by construction). Stream events received per run: "
            f"{events[FLUX]:g} agentflux, {events[BARE]:g} bare.",
            cost_table(costs, bare_xreads, floor_xreads),
        ]
    titles = {"sequential": "one run at a time", "closed": f"{plan.in_flight} in flight"}
    for phase, got in found.breakdowns.items():
        if got[BARE][2] and got[FLUX][2]:
            parts += [
                "",
                f"Where the time goes, {titles[phase]}: median of each segment, wall clock "
                f"(agentflux: its spans; bare{' and bare + state' if FLOOR in got else ''}: "
                "their stamps):",
                breakdown_table(got),
            ]
    return "\n".join(parts).lstrip("\n")


def _phase_json(phase: Phase) -> dict[str, Any]:
    return {
        "stats_ms": asdict(phase.stats()),
        "cpu_s": asdict(phase.cpu),
        "cpu_ms_per_run": {w: phase.per_run_ms(w) for w in ("server", "client", "stack")},
        "rounds": phase.rounds,
        "events_per_run": statistics.median(s.events for s in phase.samples),
        "latencies_ms": [round(s.ms, 3) for s in phase.samples],
    }


def _knee_json(sweeps: dict[str, Sweep], plan: KneePlan | None) -> dict[str, Any]:
    if plan is None:
        return {}
    return {
        "plan": asdict(plan),
        "p99_limit_over_baseline": KNEE_P99_LIMIT,
        "drain_limit_s": DRAIN_LIMIT_S,
        "sides": {
            name: {
                "knee_per_s": sweep.knee,
                "at_least": sweep.open_ended,
                "stopped": sweep.stopped,
                "baseline_p99_ms": sweep.baseline_p99,
                "steps": sweep.steps,
            }
            for name, sweep in sweeps.items()
        },
        "agentflux_over_bare": knee_ratio(sweeps) if BARE in sweeps and FLUX in sweeps else "-",
    }


def to_json(
    found: Findings,
    plan: Plan,
    knee_plan: KneePlan | None,
    rate: float,
    args: argparse.Namespace,
    started: datetime,
    load: tuple[tuple[float, ...], tuple[float, ...]],
) -> dict[str, Any]:
    return {
        "started": started.isoformat(),
        "quick": args.quick,
        "plan": asdict(plan),
        "rate_per_s": rate,
        "prompt": PROMPT,
        "answer": ANSWER,
        "sides": [
            n
            for n in (BARE, FLUX, SAMPLED, OFF, FLOOR, SPLIT)
            if n in found.sweeps or any(n in p for p in found.results.values())
        ],
        "mesh_settings": {
            "api_key": "from AGENTFLUX_API_KEYS",
            "rate_limit": RATE_LIMIT,
            "sampled_out": SAMPLED_OUT,
            "tracing_off": TRACING_OFF,
            # The bare helper runs on the same loop (its main).
            "event_loop": lifecycle.loop_factory(Settings().event_loop)[0],
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_start": load[0],
            "loadavg_end": load[1],
        },
        "idle_cpu_share_of_a_core": found.idle,
        "agentflux_per_run_from_spans": found.costs,
        "phases": {
            name: {side: _phase_json(p) for side, p in phases.items()}
            for name, phases in found.results.items()
        },
        "knee": _knee_json(found.sweeps, knee_plan),
        "sampled_out_span_check": found.sampled_check,
        "breakdown_ms": {
            name: {
                side: {"segments": dict(zip(SEGMENTS, seg, strict=False)), "whole": t, "runs": n}
                for side, (seg, t, n) in got.items()
            }
            for name, got in found.breakdowns.items()
        },
        "failures": found.failures,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.runs",
        description="Whole agent runs through `agentflux serve` beside the same hops done "
        "with bare clients, interleaved in one run: latency one at a time, at a fixed "
        "load, runs/s with several in flight, and the knee of sustained throughput; beside "
        "them, a second `serve` whose traces are all sampled out.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer runs and shorter steps (about 3 minutes instead of about 9)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        help=f"runs per second of the open-loop load (default {DEFAULT_RATE:g})",
    )
    knee = parser.add_mutually_exclusive_group()
    knee.add_argument(
        "--knee",
        dest="knee",
        action="store_const",
        const="only",
        default="on",
        help="only the knee (after the warm-up); every run has it after the other phases",
    )
    knee.add_argument(
        "--no-knee", dest="knee", action="store_const", const="off", help="leave the knee out"
    )
    parser.add_argument(
        "--sampled-out",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="two sides: `agentflux serve` with AGENTFLUX_TRACE_SAMPLE_RATIO=0, and its "
        "reference with tracing off (OTEL_SDK_DISABLED=true), one at a time and in the "
        "closed loop (default: on)",
    )
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a side: the bare chain plus the Redis round trips the mesh makes at each step "
        "(`bare + state`), one at a time and in the closed loop (default: on)",
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="in the knee, a third side: the same mesh as a process per service "
        "(`agentflux serve <service>` each), started when the knee starts",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    # The helper process of the baseline (started by the bench itself).
    parser.add_argument("--bare-chain", metavar="PREFIX", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stamps", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--state-trips", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be above 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.bare_chain:
            # On the loop `agentflux serve` runs on (AGENTFLUX_EVENT_LOOP): the two sides
            # differ by agentflux, not by their event loops.
            main = serve_bare(args.bare_chain, args.port, args.stamps, args.state_trips)
            return lifecycle.run(main, Settings().event_loop)
        # The client (this process) stays on asyncio's loop: the same for every side.
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
