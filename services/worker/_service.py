"""The worker service (see the package doc)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, cast

import grpc
from agentflux.v1 import (
    events_pb2,
    gateway_pb2,
    index_pb2,
    index_pb2_grpc,
    tasks_pb2,
    types_pb2,
)
from google.protobuf import duration_pb2, json_format, struct_pb2

from interceptors import (
    EventProducer,
    FluxError,
    IdempotencyGuard,
    Incoming,
    TaskConsumer,
    Telemetry,
    Unavailable,
    client_interceptors,
)
from services.runs import RunStore
from services.runtime.cache import ReadThroughCache
from services.runtime.keys import Keys
from services.runtime.locks import FencedLock, LockTimeout
from services.runtime.mesh import Mesh, Service
from services.runtime.topology import task_topology
from services.tools import (
    JSON,
    McpTools,
    ToolContext,
    ToolError,
    ToolRegistry,
    ToolSpec,
    load_mcp_tools,
    needs_approval,
)

__all__ = ["WorkerService"]

log = logging.getLogger(__name__)

_FAILED = types_pb2.TOOL_CALL_STATUS_FAILED
_TIMED_OUT = types_pb2.TOOL_CALL_STATUS_TIMED_OUT


class _Failed(Exception):  # noqa: N818 - an outcome of a tool call, not an error of ours
    """A tool call that did not produce an output, with the status it ends in."""

    def __init__(self, status: int, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class WorkerService(Service):
    """Runs tool tasks (see the package doc)."""

    name = "worker"

    def __init__(self, mesh: Mesh, *, tools: ToolRegistry | None = None) -> None:
        super().__init__(mesh)
        settings = mesh.settings
        self.tools = tools or ToolRegistry.load(settings)
        self.mcp: McpTools | None = None
        self.keys = Keys(mesh.namespace)
        self.telemetry = Telemetry.for_service("worker", settings)
        self.store = RunStore.for_settings(mesh.redis, settings)
        self.events = EventProducer(
            mesh.producer, self.telemetry, source="/agentflux/worker", topic_prefix=mesh.namespace
        )
        self.cache = ReadThroughCache(
            mesh.memcached, namespace=mesh.namespace, ttl_s=settings.cache_ttl_s
        )
        self.locks = FencedLock(mesh.redis, namespace=mesh.namespace)
        self.max_attempts = 1 + len(settings.tool_task_retry_delays_ms)
        self.consumer: TaskConsumer | None = None
        self._index: grpc.aio.Channel | None = None

    async def start(self) -> None:
        mesh = self.mesh
        contract = mesh.contracts.task(tasks_pb2.ToolTask)
        self.consumer = TaskConsumer(
            await mesh.rabbit(),
            self.telemetry,
            contract,
            topology=task_topology(mesh.settings, contract, mesh.namespace),
            guard=IdempotencyGuard(
                mesh.redis, namespace=self.keys.guard(self.name), lease_s=mesh.settings.lease_s
            ),
            prefetch=mesh.settings.worker_prefetch,
            max_attempts=self.max_attempts,
            grace_s=mesh.settings.grace_s,
        )
        self._index = grpc.aio.insecure_channel(
            mesh.settings.indexer_target, interceptors=client_interceptors(self.telemetry)
        )
        await mesh.producer.warm([mesh.topic("agent.tool_called")])
        await mesh.redis.ping()
        # MCP servers' tools join the built-ins before the first task is taken; a server
        # that cannot be reached fails the start, naming it (McpStartError).
        self.mcp = await load_mcp_tools(self.tools, mesh.settings, tracer=self.telemetry.tracer)
        for spec in self.tools.specs():  # Memcached warm (or found down, and skipped)
            await self._metadata(spec)

    async def run(self, stop: asyncio.Event) -> None:
        assert self.consumer is not None
        await self.consumer.run(self.handle, stop)

    async def close(self) -> None:
        if self.mcp is not None:
            await self.mcp.aclose()
        if self._index is not None:
            await self._index.close()
        self.cache.close()
        self.telemetry.shutdown()

    async def handle(self, incoming: Incoming) -> bytes:
        """Runs one tool task (see the package doc)."""
        task = incoming.event
        assert isinstance(task, tasks_pb2.ToolTask)
        tenant = task.tenant_id or self.mesh.settings.tenant
        call = task.call
        record = self.keys.result(tenant, task.run_id, call.tool_call_id)
        spec = self.tools.get(call.name).spec if call.name in self.tools.names() else None
        if needs_approval(self.mesh.settings, spec, call.name):
            recorded = cast("bytes | None", await self.mesh.redis.get(record))
            if recorded is not None:
                return await self._recorded(task, recorded)
            refused = await self._refusal(task, tenant)
            if refused is not None:
                return await self._settle(task, tenant, record, refused)
        # The one check a cancel cannot slip past: the call begins only if its run is not
        # cancelled, in the same atomic step that records it as begun (and, for a call
        # that was not held for approval, that finds a result recorded before).
        started = gateway_pb2.StreamRunResponse(
            tool_started=gateway_pb2.ToolStarted(call=call, attempt=incoming.attempt)
        )
        marker = f"started:{call.tool_call_id}:{incoming.attempt}"
        began = await self.store.begin_call(
            tenant, task.run_id, call.tool_call_id, started=(marker, started), record=record
        )
        if isinstance(began, bytes):
            return await self._recorded(task, began)
        if not began:
            return await self._settle(task, tenant, record, await self._cancelled(task, tenant))
        progress = _Progress()
        try:
            return await self._begun(task, tenant, record, incoming.attempt, progress)
        finally:
            if not progress.over:  # a result recorded ended the call in the same step
                await asyncio.shield(self.store.end_call(tenant, task.run_id, call.tool_call_id))

    async def _recorded(self, task: tasks_pb2.ToolTask, recorded: bytes) -> bytes:
        """A redelivered task whose result was recorded: emitted again, never run again."""
        await self._emit(task, types_pb2.ToolResult.FromString(recorded))
        return recorded

    async def _refusal(self, task: tasks_pb2.ToolTask, tenant: str) -> types_pb2.ToolResult | None:
        """For a call that needs approval: the result of a call that must not run (its
        run cancelled, or no approval), or None when it may run. (For any other call a
        cancel is caught by `begin_call`, atomically: no read of its own.)"""
        call = task.call
        if await self.store.cancel_reason(tenant, task.run_id) is not None:
            return await self._cancelled(task, tenant)
        state = await self.store.approval_state(tenant, task.run_id, call.tool_call_id)
        if state == "pending":  # the approval queue's timer fired before any decision
            state = await self.store.expire_approval(tenant, task.run_id, call.tool_call_id)
        if state == "approved":
            return None
        result = types_pb2.ToolResult(tool_call_id=call.tool_call_id, name=call.name)
        if state.startswith("rejected:"):
            result.status = types_pb2.TOOL_CALL_STATUS_REJECTED
            result.error_message = f"rejected: {state.partition(':')[2] or 'no reason given'}"
        elif state == "expired":
            result.status = _FAILED
            result.error_message = (
                f"no approval within {self.mesh.settings.approval_timeout_s} s "
                "(AGENTFLUX_APPROVAL_TIMEOUT_S)"
            )
        else:
            result.status = _FAILED
            result.error_message = "needs a person's approval, and none was asked for"
        return result

    async def _cancelled(self, task: tasks_pb2.ToolTask, tenant: str) -> types_pb2.ToolResult:
        reason = await self.store.cancel_reason(tenant, task.run_id) or "the run ended"
        return types_pb2.ToolResult(
            tool_call_id=task.call.tool_call_id,
            name=task.call.name,
            status=types_pb2.TOOL_CALL_STATUS_CANCELLED,
            error_message=f"not run: the run was cancelled ({reason})",
        )

    async def _begun(
        self,
        task: tasks_pb2.ToolTask,
        tenant: str,
        record: str,
        attempt: int,
        progress: _Progress,
    ) -> bytes:
        call = task.call  # its `started` event was appended as it began (begin_call)
        began = time.monotonic()
        result = types_pb2.ToolResult(
            tool_call_id=call.tool_call_id, name=call.name, attempts=attempt
        )
        try:
            output = _value(await self._run(task, tenant, attempt, result))
        except Exception as exc:
            failed = _failure_of(exc)
            if failed.status == types_pb2.TOOL_CALL_STATUS_CANCELLED:
                # Stopped for a cancelled run: its result acknowledges the cancel.
                result.status = types_pb2.TOOL_CALL_STATUS_CANCELLED
                result.error_message = str(failed)
                result.duration.CopyFrom(_duration(time.monotonic() - began))
                return await self._settle(task, tenant, record, result, progress)
            last = attempt >= self.max_attempts
            if failed.retryable and not last:
                raise Unavailable(f"{call.name}: {failed}") from failed  # the next tier
            result.status = failed.status  # type: ignore[assignment]
            result.error_message = str(failed)
            result.duration.CopyFrom(_duration(time.monotonic() - began))
            await self._settle(task, tenant, record, result, progress)
            # The run ends with this result; the task itself goes to the dead letters.
            raise FluxError(
                f"{call.name}: {failed}",
                reason="RETRIES_EXHAUSTED" if failed.retryable else "TOOL_FAILED",
                retryable=False,
            ) from failed
        result.status = types_pb2.TOOL_CALL_STATUS_SUCCEEDED
        result.output.CopyFrom(output)
        result.duration.CopyFrom(_duration(time.monotonic() - began))
        return await self._settle(task, tenant, record, result, progress)

    async def _run(
        self, task: tasks_pb2.ToolTask, tenant: str, attempt: int, result: types_pb2.ToolResult
    ) -> JSON:
        call = task.call
        if call.name not in self.tools.names():
            known = ", ".join(sorted(self.tools.names()))
            raise _Failed(_FAILED, f"no tool named {call.name!r} (known: {known})", retryable=False)
        tool = self.tools.get(call.name)
        args = _plain(json_format.MessageToDict(call.arguments))
        try:
            self.tools.validate(call.name, args)
        except ToolError as bad:
            raise _Failed(_FAILED, str(bad), retryable=False) from bad
        meta = await self._metadata(tool.spec)
        timeout = float(meta["timeout_s"])
        if task.HasField("timeout") and task.timeout.ToTimedelta().total_seconds() > 0:
            timeout = min(timeout, task.timeout.ToTimedelta().total_seconds())
        artifact = None
        if meta["cacheable"] and not meta["side_effects"]:
            digest = hashlib.sha256(
                (
                    call.name + "\n" + json.dumps(args, sort_keys=True, separators=(",", ":"))
                ).encode()
            ).hexdigest()
            result.artifact_key = digest
            artifact = self.keys.artifact(tenant, digest)
            cached = cast("bytes | None", await self.mesh.redis.get(artifact))
            if cached is not None:
                return json.loads(cached)
        ctx = ToolContext(
            tenant_id=tenant,
            run_id=task.run_id,
            conversation_id=task.conversation_id,
            tool_call_id=call.tool_call_id,
            idempotency_key=f"{task.run_id}:{call.tool_call_id}",
            attempt=attempt,
            settings=self.mesh.settings,
            redis=self.mesh.redis,
            namespace=self.mesh.namespace,
            search=self._search,
        )
        if meta["exclusive"]:
            # One call at a time across every worker; the token lets the resource refuse
            # a holder whose lease expired while it was paused.
            name = f"tool:{call.name}"
            async with self.locks.hold(name, lease_s=timeout + 5, wait_s=timeout) as lease:
                ctx = replace(ctx, fencing_token=lease.token)
                output = await self._call(tool, args, ctx, timeout)
        else:
            output = await self._call(tool, args, ctx, timeout)
        if artifact is not None:
            ttl = self.mesh.settings.run_retention_s
            await self.mesh.redis.set(artifact, json.dumps(output), ex=ttl)
        return output

    async def _call(
        self, tool: Any, args: dict[str, Any], ctx: ToolContext, timeout: float
    ) -> JSON:
        """Runs the tool under its timeout while watching its run: a cancel sets
        `ctx.cancelled`, and a tool still running `cancel_deadline_s` later is abandoned."""
        cancelled = asyncio.Event()
        ctx = replace(ctx, cancelled=cancelled)
        running = asyncio.ensure_future(tool(args, ctx))
        done_watching = asyncio.Event()
        watch = asyncio.create_task(self._until_cancelled(ctx.tenant_id, ctx.run_id, done_watching))
        try:
            done, _ = await asyncio.wait(
                {running, watch}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if running in done:
                return running.result()
            if watch in done and watch.result():
                cancelled.set()
                deadline = self.mesh.settings.cancel_deadline_s
                stopped, _ = await asyncio.wait({running}, timeout=deadline)
                how = "stopped" if stopped else f"abandoned after {deadline:g} s"
                raise _Failed(
                    types_pb2.TOOL_CALL_STATUS_CANCELLED,
                    f"the run was cancelled while the tool ran ({how})",
                    retryable=False,
                )
            raise _Failed(_TIMED_OUT, f"did not finish within {timeout:g} s", retryable=True)
        except ToolError as failed:
            raise _Failed(_FAILED, str(failed), retryable=failed.retryable) from failed
        finally:
            # The watcher is told to stop, not only cancelled: a cancel that lands inside
            # a Redis command can be absorbed by the client's retry, and its loop would
            # poll on forever and hold this call open.
            done_watching.set()
            for task in (running, watch):
                if not task.done():
                    task.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await asyncio.wait({watch})

    async def _until_cancelled(self, tenant: str, run_id: str, done: asyncio.Event) -> bool:
        """True once the run's cancellation is requested (polled: a few small reads a
        second per running tool), False once `done` is set. The first read waits one
        interval: `begin_call` checked the cancel an instant before, and most tools are
        over by then (a read cut off by their end would also cost its connection)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.2)
            if done.is_set():
                return False
            if await self.store.cancel_reason(tenant, run_id) is not None:
                return True

    async def _metadata(self, spec: ToolSpec) -> dict[str, Any]:
        """A tool's metadata, read through Memcached (the registry is the source)."""

        async def source() -> bytes:
            return json.dumps(
                {
                    "timeout_s": spec.timeout_s,
                    "side_effects": spec.side_effects,
                    "exclusive": spec.exclusive,
                    "cacheable": spec.cacheable,
                }
            ).encode()

        meta: dict[str, Any] = json.loads(await self.cache.get(f"tool:{spec.name}", source))
        return meta

    async def _search(self, tenant: str, query: str, limit: int) -> list[dict[str, Any]]:
        assert self._index is not None
        stub = index_pb2_grpc.ResponseIndexServiceStub(self._index)
        try:
            found = await stub.SearchIndex(
                index_pb2.SearchIndexRequest(tenant_id=tenant, query=query, page_size=limit),
                timeout=5,
            )
        except grpc.aio.AioRpcError as exc:
            retry = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            raise ToolError(f"the response index: {exc.details()}", retryable=retry) from exc
        return [
            {
                "run_id": r.run_id,
                "conversation_id": r.conversation_id,
                "prompt": r.prompt,
                "snippet": r.snippet,
                "score": r.score,
            }
            for r in found.results
        ]

    async def _settle(
        self,
        task: tasks_pb2.ToolTask,
        tenant: str,
        record: str,
        result: types_pb2.ToolResult,
        progress: _Progress | None = None,
    ) -> bytes:
        """Records `result` with its `finished` event and emits it. `progress`: the call
        began (`begin_call`), and is over in the same step."""
        data = result.SerializeToString()
        # Recorded before the emit: a crash after this re-emits the result, never re-runs.
        # The record, the `finished` event and the call's end go in one round trip.
        await self.store.append_once(
            tenant,
            task.run_id,
            f"finished:{result.tool_call_id}",
            gateway_pb2.StreamRunResponse(tool_finished=gateway_pb2.ToolFinished(result=result)),
            record=(record, data, self.mesh.settings.run_retention_s),
            end_call=result.tool_call_id if progress is not None else "",
        )
        if progress is not None:
            progress.over = True
        await self._emit(task, result)
        return data

    async def _emit(self, task: tasks_pb2.ToolTask, result: types_pb2.ToolResult) -> None:
        called = events_pb2.ToolCalled(
            run_id=task.run_id,
            tenant_id=task.tenant_id,
            conversation_id=task.conversation_id,
            step=task.step,
            step_tool_count=task.step_tool_count,
            call=task.call,
            result=result,
        )
        await self.events.emit(called, idempotency_key=f"{task.call.tool_call_id}:called")


@dataclass(slots=True)
class _Progress:
    """A begun call's: `over` once its end was recorded with its result."""

    over: bool = False


def _failure_of(exc: Exception) -> _Failed:
    """What a call that raised `exc` ends in. Not only `_Failed`: a tool that raises
    other than `ToolError`, or an exclusive tool's lock that stays taken, must also end
    the call after the last attempt, or its run would wait for the result for ever."""
    if isinstance(exc, _Failed):
        return exc
    if isinstance(exc, LockTimeout):
        failed = _Failed(_TIMED_OUT, str(exc), retryable=True)
    else:  # its cause is unknown, so it is retried (as the consumers retry such errors)
        failed = _Failed(_FAILED, f"{type(exc).__name__}: {exc}", retryable=True)
    failed.__cause__ = exc  # the tool's own traceback stays on the span and in logs
    return failed


def _value(output: JSON) -> struct_pb2.Value:
    """A tool's output as a protobuf Value; output that is not JSON fails the call for
    good (running the tool again would return the same)."""
    wrapper = struct_pb2.Struct()
    try:
        json_format.ParseDict({"v": output}, wrapper)
    except (json_format.ParseError, TypeError, ValueError) as bad:
        kind = type(output).__name__
        raise _Failed(_FAILED, f"returned {kind}, which is not JSON", retryable=False) from bad
    return wrapper.fields["v"]


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


def _plain(value: Any) -> Any:
    """Struct numbers are doubles: an integral one becomes an int again (a `limit` of
    5 arrives as 5.0, which `range()` and most tools do not take)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
