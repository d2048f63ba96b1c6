"""The composer service (see the package doc)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from agentflux.v1 import events_pb2, types_pb2
from opentelemetry import trace

from interceptors import EventConsumer, EventProducer, IdempotencyGuard, Incoming, Telemetry
from services.models import (
    TEMPLATES,
    ComposeRequest,
    ModelError,
    ModelProvider,
    ToolOffer,
    provider,
    uses_history,
)
from services.runs import (
    TERMINAL,
    RunEnder,
    RunStore,
    ScriptCall,
    TokenBudget,
    estimate_tokens,
)
from services.runtime.adapters.kafka import KafkaConsumer
from services.runtime.cache import ReadThroughCache
from services.runtime.flags import FeatureFlags
from services.runtime.keys import Keys
from services.runtime.mesh import Mesh, Service
from services.tools import ToolRegistry, load_mcp_tools

__all__ = ["ComposerService"]

log = logging.getLogger(__name__)

_TEMPLATE = "compose"
# Feature flag (read through Memcached): answers as span attributes; off by default.
CAPTURE_CONTENT = "capture_content"


class ComposerService(Service):
    """Ends or continues runs once a step's results are in (see the package doc)."""

    name = "composer"

    def __init__(
        self,
        mesh: Mesh,
        *,
        model: ModelProvider | None = None,
        tools: ToolRegistry | None = None,
    ) -> None:
        super().__init__(mesh)
        settings = mesh.settings
        self.telemetry = Telemetry.for_service("composer", settings)
        self.model = model or provider(settings, tracer_provider=self.telemetry.provider)
        # The tools are offered again when composing, so a chat model can ask for another
        # step instead of answering; the planner then plans it.
        self.tools = tools or ToolRegistry.load(settings)
        self.store = RunStore.for_settings(mesh.redis, settings)
        self.budget = TokenBudget(mesh.redis, settings)
        self.events = EventProducer(
            mesh.producer, self.telemetry, source="/agentflux/composer", topic_prefix=mesh.namespace
        )
        self.ender = RunEnder(self.store, self.events, self.budget)
        self.cache = ReadThroughCache(
            mesh.memcached, namespace=mesh.namespace, ttl_s=settings.cache_ttl_s
        )
        self.flags = FeatureFlags(self.cache, settings)
        self.kafka = KafkaConsumer(
            settings, mesh.group(self.name), [mesh.topic("agent.tool_called")]
        )
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

    async def start(self) -> None:
        # Only the MCP tools' specs are needed here (see the planner).
        mcp = await load_mcp_tools(self.tools, self.mesh.settings, tracer=self.telemetry.tracer)
        await mcp.aclose()
        topics = [self.mesh.topic("agent.requested"), self.mesh.topic("agent.completed")]
        await self.mesh.producer.warm(topics)
        await self.mesh.redis.ping()
        await self._template()  # Memcached warm (or found down, and served from the source)
        await self.consumer.join()

    async def run(self, stop: asyncio.Event) -> None:
        await self.consumer.run(self.handle, stop)

    async def close(self) -> None:
        await self.model.aclose()
        await self.kafka.close()
        self.cache.close()
        self.telemetry.shutdown()

    async def _template(self) -> str:
        async def source() -> bytes:
            return TEMPLATES[_TEMPLATE].encode()

        return (await self.cache.get(f"template:{_TEMPLATE}", source)).decode()

    async def handle(self, incoming: Incoming) -> bytes:
        """Adds one tool result to its step; the result that completes the step ends or
        continues the run (see the package doc)."""
        called = incoming.event
        assert isinstance(called, events_pb2.ToolCalled)
        tenant = called.tenant_id or self.mesh.settings.tenant
        step = called.step
        # The result added to its step, the run, its conversation's memory and the
        # results of the steps before, in one round trip (read in vain when this result
        # does not complete its step: cheaper than a second trip when it does).
        seen = await self.store.snapshot(
            tenant,
            called.run_id,
            called.conversation_id,
            record=(step, called.result, called.step_tool_count),
            earlier_than=step,
        )
        results = seen.step_results
        if results is None:
            return b"gathered"
        run, reason = seen.run, seen.cancel_reason
        if run is None:
            log.warning("run %s is unknown (expired?); its step is dropped", called.run_id)
            return b"unknown"
        if run.status in TERMINAL:
            return b"ended"
        if reason is not None:
            await self.ender.cancel(run, step, reason)
            return b"cancelled"
        # A rejected call is an answer of its own (a person said no): the model hears it.
        went_on = (types_pb2.TOOL_CALL_STATUS_SUCCEEDED, types_pb2.TOOL_CALL_STATUS_REJECTED)
        failed = [r for r in results if r.status not in went_on]
        if failed:
            await self.ender.fail(run, step, _failures(failed))
            return b"failed"
        # The rest read at once: one wait, not two (the run's earlier calls only for a
        # model that uses them).
        memory, earlier = seen.memory, seen.earlier
        template, history = await asyncio.gather(
            self._template(),
            self.store.planned_calls(tenant, run.run_id, step if uses_history(self.model) else -1),
        )
        ask = ComposeRequest(
            prompt=run.prompt,
            step=step,
            max_steps=run.limits.max_steps,
            results=results,
            template=template,
            memory=memory,
            earlier_results=earlier,
            tenant_id=tenant,
            history=history,
            tools=[ToolOffer(s.name, s.description, s.schema) for s in self.tools.specs()],
        )
        # Reserved before the model is asked (see the planner); settled once it answered.
        marker = f"compose:{step}"
        estimate = estimate_tokens(
            run.prompt,
            ask.template,
            *ask.memory,
            *(r.SerializeToString() for r in (*ask.results, *ask.earlier_results)),
        )
        if not await self.ender.within_budget(run, step, marker, estimate):
            return b"over budget"
        try:
            composition = await self.model.compose(ask)
        except ModelError as failed:
            # Retried already where it may pass (see the planner): the run ends with why.
            await self.ender.fail(run, step, f"the model could not compose step {step}: {failed}")
            return b"failed"
        if composition.next_step and step + 1 < run.limits.max_steps:
            await self.budget.settle(run, marker, composition.usage)
            await self._continue(run, step, results)
            return b"continued"
        if composition.deltas is None:
            await self.budget.settle(run, marker, composition.usage)
            why = (
                f"the model asked for step {step + 2} beyond the run's {run.limits.max_steps} "
                "steps (limits.max_steps) and gave no answer"
                if composition.next_step
                else "the model gave neither an answer nor a next step"
            )
            await self.ender.fail(run, step, why)
            return b"failed"

        capture = await self.flags.enabled(CAPTURE_CONTENT)
        span = trace.get_current_span()

        async def captured(deltas: AsyncIterator[str]) -> AsyncIterator[str]:
            pieces = []
            async for piece in deltas:
                pieces.append(piece)
                yield piece
            if capture:
                span.set_attribute("agentflux.answer", "".join(pieces)[:4096])

        async def settle() -> ScriptCall | None:
            # The usage is final once the answer is drained: settled with the run's end.
            return await self.budget.settle_call(run, marker, composition.usage)

        try:
            await self.ender.answer(run, step, captured(composition.deltas), settle=settle)
        except ModelError as failed:
            # The answer broke off mid-stream: its pieces so far stay in the run's stream,
            # and the run ends FAILED saying so (asking again would stream another text
            # under the same pieces).
            await self.ender.fail(run, step, f"the model's answer broke off: {failed}")
            return b"failed"
        return b"answered"

    async def _continue(
        self, run: types_pb2.Run, step: int, results: list[types_pb2.ToolResult]
    ) -> None:
        request = events_pb2.AgentRequested(
            run_id=run.run_id,
            tenant_id=run.tenant_id,
            conversation_id=run.conversation_id,
            prompt=run.prompt,
            priority=run.priority,
            step=step + 1,
            limits=run.limits,
            previous_results=results,
            request_time=run.create_time,
        )
        await self.events.emit(request, idempotency_key=f"{run.run_id}:requested:{step + 1}")


def _failures(failed: list[types_pb2.ToolResult]) -> str:
    parts = []
    for result in failed:
        status = types_pb2.ToolCallStatus.Name(result.status).removeprefix("TOOL_CALL_STATUS_")
        parts.append(f"{result.name} {status.lower()}: {result.error_message or 'no reason given'}")
    return "; ".join(parts)
