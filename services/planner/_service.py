"""The planner service (see the package doc)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from agentflux.v1 import events_pb2, gateway_pb2, tasks_pb2, types_pb2
from google.protobuf import duration_pb2, struct_pb2
from opentelemetry import trace

from interceptors import (
    EventConsumer,
    EventProducer,
    IdempotencyGuard,
    Incoming,
    InvalidArgument,
    TaskPublisher,
    Telemetry,
)
from services.models import (
    ModelError,
    ModelProvider,
    PlannedCall,
    PlanRequest,
    ToolOffer,
    provider,
    uses_history,
)
from services.runs import (
    RunEnder,
    RunStore,
    TokenBudget,
    counted,
    estimate_tokens,
    run_of_event,
    run_together,
)
from services.runtime.adapters.kafka import KafkaConsumer
from services.runtime.cache import ReadThroughCache
from services.runtime.flags import FeatureFlags
from services.runtime.keys import Keys
from services.runtime.mesh import Mesh, Service
from services.runtime.topology import task_topology
from services.tools import ToolRegistry, load_mcp_tools, needs_approval

__all__ = ["CAPTURE_CONTENT", "PlannerService"]

log = logging.getLogger(__name__)

# Feature flag: prompts and answers as span attributes. Off by default, since they may
# hold personal data that a trace backend should not keep.
CAPTURE_CONTENT = "capture_content"


class PlannerService(Service):
    """Plans steps of runs (see the package doc)."""

    name = "planner"

    def __init__(
        self,
        mesh: Mesh,
        *,
        model: ModelProvider | None = None,
        tools: ToolRegistry | None = None,
    ) -> None:
        super().__init__(mesh)
        settings = mesh.settings
        self.telemetry = Telemetry.for_service("planner", settings)
        self.model = model or provider(settings, tracer_provider=self.telemetry.provider)
        self.tools = tools or ToolRegistry.load(settings)
        self.store = RunStore.for_settings(mesh.redis, settings)
        self.budget = TokenBudget(mesh.redis, settings)
        source = "/agentflux/planner"
        events = EventProducer(
            mesh.producer, self.telemetry, source=source, topic_prefix=mesh.namespace
        )
        self.ender = RunEnder(self.store, events, self.budget)
        self.kafka = KafkaConsumer(settings, mesh.group(self.name), [mesh.topic("agent.requested")])
        self.consumer = EventConsumer(
            self.kafka,
            self.telemetry,
            dead_letters=mesh.producer,
            guard=IdempotencyGuard(
                mesh.redis,
                namespace=Keys(mesh.namespace).guard(self.name),
                lease_s=settings.lease_s,
            ),
            topic_prefix=mesh.namespace,
            grace_s=settings.grace_s,
        )
        self.tasks: TaskPublisher | None = None
        self.cache = ReadThroughCache(
            mesh.memcached, namespace=mesh.namespace, ttl_s=settings.cache_ttl_s
        )
        self.flags = FeatureFlags(self.cache, settings)

    @property
    def _approval_queue(self) -> str:
        contract = self.mesh.contracts.task(tasks_pb2.ToolTask)
        return task_topology(self.mesh.settings, contract, self.mesh.namespace).approval_queue

    async def start(self) -> None:
        # The MCP servers' tools are offered to the model like the built-ins. Only their
        # specs are needed here (workers run them), so the connections close at once
        # rather than keeping a copy of every stdio server per planner.
        mcp = await load_mcp_tools(self.tools, self.mesh.settings, tracer=self.telemetry.tracer)
        await mcp.aclose()
        rabbit = await self.mesh.rabbit()
        self.tasks = TaskPublisher(
            rabbit, self.telemetry, source="/agentflux/planner", name_prefix=self.mesh.namespace
        )
        await self.mesh.producer.warm([self.mesh.topic("agent.completed")])
        await self.mesh.redis.ping()
        await self.consumer.join()

    async def run(self, stop: asyncio.Event) -> None:
        await self.consumer.run(self.handle, stop)

    async def close(self) -> None:
        await self.model.aclose()
        await self.kafka.close()
        self.cache.close()
        self.telemetry.shutdown()

    async def _start(self, request: events_pb2.AgentRequested, tenant: str) -> types_pb2.Run | None:
        """Records a run that an event started rather than the gateway: a producer inside
        the mesh published `AgentRequested` at step 0 with a run id of its own. Callers
        then see it like any run (GetRun, StreamRun). The gateway's edge policies (rate
        limits, runs in flight) guard the public door and do not apply here; budgets do,
        as they are reserved before each model call. A malformed request is dead-lettered
        naming its fields (InvalidArgument is not retryable).

        A request older than the run retention is not started: it is a replay of a run
        whose record expired, not a new one (None: not planned)."""
        settings = self.mesh.settings
        if not request.HasField("request_time"):
            raise InvalidArgument(
                "request_time", "required to start a run by an event", reason="INVALID_RUN_REQUEST"
            )
        age_s = time.time() - request.request_time.ToNanoseconds() / 1e9
        if age_s > settings.run_retention_s:
            return None
        run = run_of_event(request, tenant, settings)
        # Keyed by the run id, so a redelivery (or a race with another copy) finds the
        # same run instead of creating a second one.
        run, new = await self.store.create(run, f"event:{run.run_id}")
        if new:
            log.info("run %s of tenant %s started by an event", run.run_id, tenant)
        return run

    async def handle(self, incoming: Incoming) -> bytes:
        """Plans the step `incoming` requests (see the package doc)."""
        request = incoming.event
        assert isinstance(request, events_pb2.AgentRequested)
        tenant = request.tenant_id or self.mesh.settings.tenant
        step = request.step
        # The run and what the model is shown of its conversation, and the run marked
        # RUNNING at this step, in one round trip.
        seen = await self.store.snapshot(
            tenant, request.run_id, request.conversation_id, session=True, running_step=step
        )
        run, reason, memory, session = seen.run, seen.cancel_reason, seen.memory, seen.session
        running = bool(seen.running)
        if run is None and step == 0:
            run = await self._start(request, tenant)
            if run is not None:  # new here: its conversation is read now
                memory, session = await asyncio.gather(
                    self.store.memory(tenant, run.conversation_id),
                    self.store.session(tenant, run.conversation_id),
                )
                running = await self.store.set_running(tenant, run.run_id, step)
        if run is None:
            log.warning("run %s of tenant %s is unknown; not planned", request.run_id, tenant)
            return b"unknown"
        if await self.flags.enabled(CAPTURE_CONTENT):
            trace.get_current_span().set_attribute("agentflux.prompt", run.prompt[:4096])
        if reason is not None:
            await self.ender.cancel(run, step, reason)
            return b"cancelled"
        if not running:
            return b"ended"  # a redelivery of a request whose run already ended
        limits = run.limits
        if step >= limits.max_steps:
            await self.ender.fail(run, step - 1, _over_steps(limits))
            return b"failed"
        # What the model asked for before, and what came of it before the last step,
        # so a chat model sees the whole run and not only the step before (a model that
        # says it does not use them is spared the reads).
        history: list[types_pb2.ToolCall] = []
        earlier: list[types_pb2.ToolResult] = []
        if uses_history(self.model):
            history, earlier = await asyncio.gather(
                self.store.planned_calls(tenant, run.run_id, step - 1),
                self.store.results_before(tenant, run.run_id, step - 1),
            )
        ask = PlanRequest(
            prompt=run.prompt,
            step=step,
            tools=self._offers(),
            previous_results=list(request.previous_results),
            memory=memory,
            session=session,
            tenant_id=tenant,
            history=history,
            earlier_results=earlier,
        )
        # Tokens are reserved before the model is asked, and the run ends when they
        # cannot be: an unattended run never spends past its tenant's or its own budget.
        marker = f"plan:{step}"
        estimate = estimate_tokens(
            run.prompt, *ask.memory, *(r.SerializeToString() for r in ask.previous_results)
        )
        if not await self.ender.within_budget(run, step, marker, estimate):
            return b"over budget"
        try:
            plan = await self.model.plan(ask)
        except ModelError as failed:
            # The provider already retried what may pass (timeouts, 429, 5xx, within the
            # run's deadline): what reaches here ends the run with the endpoint's words,
            # rather than a redelivery asking again with no end.
            await self.ender.fail(run, step, f"the model could not plan step {step}: {failed}")
            return b"failed"
        calls = [self._call(run.run_id, step, i, c) for i, c in enumerate(plan.calls)]
        # The call's tokens settled, its `planned` event and (within the step's bound)
        # its tool calls counted: writes that need no answer of each other, one round trip.
        writes = [
            self.store.append_call(
                tenant,
                run.run_id,
                f"planned:{step}",
                gateway_pb2.StreamRunResponse(
                    planned=gateway_pb2.RunPlanned(step=step, tool_calls=calls)
                ),
            )
        ]
        counting = 0 < len(calls) <= run.limits.max_tools_per_step
        if counting:
            count = self.store.add_call(tenant, run.run_id, f"calls:{step}", calls=len(calls))
            writes.append(count)
        settle = await self.budget.settle_call(run, marker, plan.usage)
        if settle is not None:
            writes.insert(0, settle)
        got = await run_together(self.mesh.redis, writes)
        if not calls:
            await self.ender.answer(run, step, _pieces(plan.answer))
            return b"answered"
        problem = self._over_bounds(run, step, calls, counted(got[-1]) if counting else [])
        if problem:
            await self.ender.fail(run, step, problem)
            return b"failed"
        await asyncio.gather(
            *(self._publish(run, request, step, call, len(calls)) for call in calls)
        )
        return b"planned"

    def _offers(self) -> list[ToolOffer]:
        return [ToolOffer(s.name, s.description, s.schema) for s in self.tools.specs()]

    @staticmethod
    def _call(run_id: str, step: int, index: int, planned: PlannedCall) -> types_pb2.ToolCall:
        arguments = struct_pb2.Struct()
        arguments.update(dict(planned.arguments))
        return types_pb2.ToolCall(
            # Zero-padded: ids sort as strings in step order (the composer sorts them).
            tool_call_id=f"{run_id}.{step}.{index:03d}",
            name=planned.name,
            arguments=arguments,
            step=step,
        )

    @staticmethod
    def _over_bounds(
        run: types_pb2.Run, step: int, calls: list[types_pb2.ToolCall], totals: list[int]
    ) -> str:
        """Why the step's `calls` break the run's bounds ("" when they do not); `totals`:
        what counting them answered (`RunStore.add_call`)."""
        limits = run.limits
        if len(calls) > limits.max_tools_per_step:
            return (
                f"step {step} planned {len(calls)} tool calls; the run allows "
                f"{limits.max_tools_per_step} per step (limits.max_tools_per_step)"
            )
        (total,) = totals or [len(calls)]
        if total > limits.max_tool_calls:
            return (
                f"the run planned {total} tool calls in all; it allows "
                f"{limits.max_tool_calls} (limits.max_tool_calls)"
            )
        return ""

    async def _publish(
        self,
        run: types_pb2.Run,
        request: events_pb2.AgentRequested,
        step: int,
        call: types_pb2.ToolCall,
        count: int,
    ) -> None:
        assert self.tasks is not None
        settings = self.mesh.settings
        spec = self.tools.get(call.name) if call.name in self.tools.names() else None
        timeout = spec.spec.timeout_s if spec is not None else settings.tool_timeout_s
        task = tasks_pb2.ToolTask(
            run_id=run.run_id,
            tenant_id=run.tenant_id,
            conversation_id=run.conversation_id,
            step=step,
            step_tool_count=count,
            call=call,
            priority=run.priority,
            attempt=1,
            max_attempts=1 + len(settings.tool_task_retry_delays_ms),
            timeout=duration_pb2.Duration(seconds=int(timeout), nanos=int((timeout % 1) * 1e9)),
        )
        key = f"{call.tool_call_id}:task"
        if not needs_approval(settings, spec.spec if spec is not None else None, call.name):
            await self.tasks.publish(task, idempotency_key=key)
            return
        # Held for a person: the run waits (AWAITING_APPROVAL, an event with the call and
        # its arguments), and the task waits in the approval queue as the timer: at the
        # timeout it reaches a worker, which fails the call unless it was decided. An
        # approval publishes the task at once under the same key, so the two copies run
        # the call once.
        timeout_s = settings.approval_timeout_s
        expire_ms = time.time_ns() // 1_000_000 + timeout_s * 1000
        await self.store.pause_for_approval(
            run.tenant_id, run.run_id, call, task.SerializeToString(), expire_ms
        )
        await self.tasks.publish(
            task, idempotency_key=key, queue=self._approval_queue, expiration_s=timeout_s
        )


def _over_steps(limits: types_pb2.RunLimits) -> str:
    return f"the run used its {limits.max_steps} planning steps (limits.max_steps)"


async def _pieces(text: str, words: int = 4) -> AsyncIterator[str]:
    """A direct answer streamed in pieces of a few words, as a model would."""
    parts = text.split(" ")
    for i in range(0, len(parts), words):
        chunk = " ".join(parts[i : i + words])
        yield chunk if i + words >= len(parts) else chunk + " "
