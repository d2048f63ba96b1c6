"""`AgentGateway`: the RPCs of the public API over the shared run records.

Every read is scoped to the caller's tenant: another tenant's run is NOT_FOUND, so
nothing tells whether it exists. The run records are written by `RunStore` scripts
before an RPC returns, so a caller reads what it wrote at once, from any gateway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
import redis.exceptions
from agentflux.v1 import (
    events_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    index_pb2,
    index_pb2_grpc,
    tasks_pb2,
    types_pb2,
)
from confluent_kafka import KafkaException
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from interceptors import (
    AlreadyExists,
    DeadlineExceeded,
    EventProducer,
    FailedPrecondition,
    FluxContext,
    FluxError,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    TaskPublisher,
    Unauthenticated,
    Unavailable,
    bind,
    current,
)
from services.gateway import _requests as req
from services.gateway._validation import validate
from services.runs import (
    TERMINAL,
    BudgetSpentError,
    RequestReusedError,
    RunStore,
    StreamGapError,
    TokenBudget,
    TooManyRunsError,
    finished_of,
)
from services.runtime.config import Settings

__all__ = ["AgentGateway"]

# A blocking read waits this long for a run's next event, well inside the Redis
# client's socket timeout; an idle stream costs one round trip per wait.
STREAM_BLOCK_MS = 2_000
SEARCH_TIMEOUT_S = 10.0
MAX_QUERY_BYTES = 1024
MAX_REASON_BYTES = 1024
# How much longer than the tools' cancel deadline CancelRun waits for them to stop.
CANCEL_SLACK_S = 2.0

log = logging.getLogger(__name__)
T = TypeVar("T")


@contextmanager
def _store_reachable() -> Iterator[None]:
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise Unavailable("the run store (Redis) is unreachable", retry_after=1.0) from exc


async def _unless(gone: asyncio.Event, read: Awaitable[T]) -> T | None:
    """The result of `read`, or None as soon as `gone` is set (the read is cancelled:
    redis-py then drops the connection it was reading on, which returns it to the
    pool)."""
    reading = asyncio.ensure_future(read)
    if gone.is_set():
        reading.cancel()
    else:
        waiting = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait({reading, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        if reading.done():
            return reading.result()
        reading.cancel()
    # Bounded: a cancel that lands inside a Redis command can be absorbed by its retry.
    await asyncio.wait({reading}, timeout=STREAM_BLOCK_MS / 1000)
    if reading.done() and not reading.cancelled():
        reading.exception()  # retrieved: a read failing as it is dropped is no news
    return None


class AgentGateway(gateway_pb2_grpc.AgentGatewayServicer):
    """The servicer (see the module doc and gateway.proto for the contract)."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: RunStore,
        streams: RunStore,
        events: EventProducer,
        index: index_pb2_grpc.ResponseIndexServiceAsyncStub,
        tasks: TaskPublisher,
    ) -> None:
        self.settings = settings
        self.store = store  # unary calls
        self.streams = streams  # StreamRun: its own pool, one connection per open stream
        self.events = events
        self.index = index
        self.tasks = tasks  # approved (or rejected) calls' tasks go to the workers
        self.budget = TokenBudget(store.redis, settings)

    def _tenant(self) -> str:
        # The one place a handler learns its tenant: the auth interceptor (_auth.py) bound
        # the key's tenant (or, with auth off, x-tenant-id or the setting). None bound means
        # the call never went through it: refuse rather than guess a tenant.
        ctx = current()
        if ctx is None or not ctx.tenant_id:
            raise Unauthenticated("the call's tenant is unknown (not authenticated)")
        return ctx.tenant_id

    async def Submit(  # noqa: N802 - generated servicer method names
        self, request: gateway_pb2.SubmitRequest, context: Any
    ) -> gateway_pb2.SubmitResponse:
        validate(request)
        run = req.new_run(request, self._tenant(), self.settings)
        ctx = current()
        request_id = req.request_id_of(request, ctx.idempotency_key if ctx else "")
        with _store_reachable():
            try:
                # The tenant's budget is checked in the same step that creates the run.
                run, new = await self.store.create(
                    run,
                    request_id,
                    digest=req.digest(request),
                    max_in_flight=self.settings.max_runs_in_flight,
                    budget=self.budget.gate(run.tenant_id),
                )
            except BudgetSpentError as spent:
                raise self._budget_spent(run.tenant_id, spent) from None
            except RequestReusedError as reused:
                raise AlreadyExists(
                    f"request id {request_id} was used for a different request; it "
                    f"started run {reused.run.run_id}",
                    reason="REQUEST_ID_REUSED",
                    metadata={"run_id": reused.run.run_id},
                ) from None
            except TooManyRunsError as full:
                raise ResourceExhausted(
                    f"the tenant has {full.in_flight} runs in flight, its limit "
                    f"(AGENTFLUX_MAX_RUNS_IN_FLIGHT); retry when one ends",
                    reason="RUNS_IN_FLIGHT",
                    retry_after=1.0,
                ) from None
            except LookupError:
                raise FailedPrecondition(
                    f"request id {request_id} started a run that no longer exists; "
                    "submit with a new request_id",
                    reason="RUN_EXPIRED",
                ) from None
            # Emitted again for a retry that finds the run still PENDING: the first call
            # may have died before Kafka had the record. The planner dedupes on the
            # idempotency key, so a second copy of a delivered request does nothing.
            if new or run.status == types_pb2.RUN_STATUS_PENDING:
                await self._request(run)
        return gateway_pb2.SubmitResponse(run=run)

    def _budget_spent(self, tenant: str, spent: BudgetSpentError) -> ResourceExhausted:
        """RESOURCE_EXHAUSTED (QuotaFailure, RetryInfo: the period's end) for a tenant
        whose token budget for the period is spent: no room for even the smallest model
        call (its output allowance), so a new run could not take its first step. Runs
        already going are stopped by their own reservations."""
        period, limit = self.settings.budget_period_s, self.budget.tenant_limit
        return ResourceExhausted(
            f"tenant {tenant}'s token budget is spent: {spent.used} used and "
            f"{spent.reserved} reserved of {limit} tokens this period "
            "(AGENTFLUX_TENANT_TOKEN_BUDGET per AGENTFLUX_BUDGET_PERIOD_S)",
            reason="TOKEN_BUDGET_EXHAUSTED",
            retry_after=max(1.0, period - time.time() % period),
            quota=[(f"tenant:{tenant}", f"{limit} model tokens per {period} s")],
        )

    async def _request(self, run: types_pb2.Run) -> None:
        event = events_pb2.AgentRequested(
            run_id=run.run_id,
            tenant_id=run.tenant_id,
            conversation_id=run.conversation_id,
            prompt=run.prompt,
            priority=run.priority,
            step=0,
            limits=run.limits,
            request_time=run.create_time,
        )
        ctx = current() or FluxContext.new()
        with bind(ctx.with_(tenant_id=run.tenant_id, run_id=run.run_id)):
            try:
                await self.events.emit(event, idempotency_key=f"{run.run_id}:requested")
            except (KafkaException, RuntimeError) as exc:
                # Nothing will pick the run up: end it, so no one waits for it.
                why = "the gateway could not queue the run (Kafka refused it)"
                await self.store.finish(
                    run.tenant_id, run.run_id, types_pb2.RUN_STATUS_FAILED, error=why
                )
                raise Unavailable(f"{why}; submit it again", retry_after=1.0) from exc

    async def StreamRun(  # noqa: N802
        self, request: gateway_pb2.StreamRunRequest, context: Any
    ) -> AsyncIterator[gateway_pb2.StreamRunResponse]:
        validate(request)
        tenant = self._tenant()
        run_id = req.required_id("run_id", request.run_id)
        after = req.checked_after(request.after_event_id, request.after_sequence)
        with _store_reachable():
            # From the start (the usual call), the first read tells by itself that the
            # events are kept: only when it finds none is their existence asked.
            first = None if after else await self.streams.read_events(tenant, run_id, "")
            if not first and not await self.streams.events_exist(tenant, run_id):
                run = await self.streams.get(tenant, run_id)
                if run is None:
                    raise self._no_events(None, run_id)
                async for event in self._rebuilt(run, after):
                    yield event
                return
            block: int | None = None  # the first read never waits: see below
            trusted = False  # the caller's `after` is checked once; later ones are ours
            # gRPC tells a streaming handler that its caller left only when it writes;
            # a stream of a quiet run would hold its Redis connection until the run
            # ends. The end of the call is watched instead, and stops the read.
            gone = asyncio.Event()
            loop = asyncio.get_running_loop()
            context.add_done_callback(lambda _: loop.call_soon_threadsafe(gone.set))
            while True:
                try:
                    got: list[gateway_pb2.StreamRunResponse] | None
                    if first:
                        got, first = first, None  # read above
                    else:
                        got = await _unless(
                            gone,
                            self.streams.read_events(
                                tenant, run_id, after, block_ms=block, trusted=trusted
                            ),
                        )
                except StreamGapError:
                    raise OutOfRange(
                        f"after_event_id {after} is not an event of run {run_id}",
                        metadata={"run_id": run_id},
                    ) from None
                if got is None:
                    return  # the caller left: nothing more to send, the connection goes back
                batch = got
                block = STREAM_BLOCK_MS
                trusted = True
                if not batch:
                    # A client resuming after `finished` waits for nothing: once the run
                    # ended, one last read returns what is left, and the stream ends.
                    run = await self.streams.get(tenant, run_id)
                    if run is None or run.status in TERMINAL:
                        batch = await self.streams.read_events(tenant, run_id, after, trusted=True)
                        if not batch:
                            if run is None:
                                raise self._no_events(None, run_id)
                            return
                    else:
                        continue  # quiet for a while (a run waiting for a person): wait on
                for event in batch:
                    yield event
                    if event.WhichOneof("event") == "finished":
                        return
                after = batch[-1].event_id

    async def _rebuilt(
        self, run: types_pb2.Run, after: str
    ) -> AsyncIterator[gateway_pb2.StreamRunResponse]:
        """The run's events outlived their retention: say which are lost, never skip them
        silently, then end with `finished`, rebuilt from the stored run (the projection
        of `agent.completed`), so the caller still learns how the run ended."""
        last = await self.streams.last_sequence(run.tenant_id, run.run_id)
        seen = int(after.split("-", 1)[0]) if after else 0
        if run.status not in TERMINAL or seen >= last:
            return  # nothing the caller has not seen
        if seen + 1 <= last - 1:
            yield gateway_pb2.StreamRunResponse(
                event_id=f"{last - 1}-0",
                sequence=last - 1,
                events_lost=gateway_pb2.EventsLost(
                    from_sequence=seen + 1,
                    to_sequence=last - 1,
                    reason=(
                        f"the run's events are kept {self.settings.stream_retention_s} s "
                        "after it ends"
                    ),
                ),
            )
        yield gateway_pb2.StreamRunResponse(
            event_id=f"{last}-0",
            sequence=last,
            event_time=run.update_time,
            finished=finished_of(run),
        )

    def _no_events(self, run: types_pb2.Run | None, run_id: str) -> NotFound:
        if run is None:
            return NotFound(f"no run {run_id}", metadata={"run_id": run_id})
        return NotFound(
            f"the events of run {run_id} expired (they are kept "
            f"{self.settings.stream_retention_s} s after the run ends); GetRun still returns it",
            reason="EVENTS_EXPIRED",
            metadata={"run_id": run_id},
        )

    async def GetRun(  # noqa: N802
        self, request: gateway_pb2.GetRunRequest, context: Any
    ) -> gateway_pb2.GetRunResponse:
        validate(request)
        run_id = req.required_id("run_id", request.run_id)
        with _store_reachable():
            run = await self.store.get(self._tenant(), run_id)
        if run is None:
            raise NotFound(f"no run {run_id}", metadata={"run_id": run_id})
        return gateway_pb2.GetRunResponse(run=run)

    async def ListRuns(  # noqa: N802
        self, request: gateway_pb2.ListRunsRequest, context: Any
    ) -> gateway_pb2.ListRunsResponse:
        validate(request)
        size = req.page_size(request.page_size, default=20)
        cursor = req.decode_page_token(request.page_token)
        status = req.checked_status(request.status)
        with _store_reachable():
            runs, following = await self.store.list_runs(
                self._tenant(), page_size=size, after=cursor, status=status
            )
        return gateway_pb2.ListRunsResponse(
            runs=runs, next_page_token=req.encode_page_token(following)
        )

    async def CancelRun(  # noqa: N802
        self, request: gateway_pb2.CancelRunRequest, context: Any
    ) -> gateway_pb2.CancelRunResponse:
        validate(request)
        run_id = req.required_id("run_id", request.run_id)
        reason = request.reason.strip() or "cancelled by the caller"
        if len(reason.encode("utf-8")) > MAX_REASON_BYTES:
            raise InvalidArgument("reason", f"at most {MAX_REASON_BYTES} bytes (UTF-8)")
        tenant = self._tenant()
        with _store_reachable():
            run = await self.store.request_cancel(tenant, run_id, reason)
            if run is None:
                raise NotFound(f"no run {run_id}", metadata={"run_id": run_id})
            # Calls waiting for a person would hold the run until their approval timeout:
            # decide them now, and their tasks reach a worker that sees the cancel.
            for call in run.pending_approvals:
                with contextlib.suppress(FailedPrecondition):  # decided meanwhile: fine
                    await self._decide(tenant, run_id, call.tool_call_id, False, reason)
            await self._until_tools_stopped(tenant, run_id)
            run = await self.store.get(tenant, run_id) or run
        return gateway_pb2.CancelRunResponse(run=run)

    async def _until_tools_stopped(self, tenant: str, run_id: str) -> None:
        """Waits until no tool of the run is running: each sees the cancel and stops, or
        its worker abandons it after `cancel_deadline_s`. No call can begin after the
        cancel, so from the return of CancelRun on no tool side effect of the run starts.
        A worker that died mid-call leaves its mark behind: the wait is bounded."""
        deadline = time.monotonic() + self.settings.cancel_deadline_s + CANCEL_SLACK_S
        while await self.store.active_calls(tenant, run_id):
            if time.monotonic() >= deadline:
                log.warning("run %s: tools still marked running after the cancel", run_id)
                return
            await asyncio.sleep(0.05)

    async def ApproveToolCall(  # noqa: N802
        self, request: gateway_pb2.ApproveToolCallRequest, context: Any
    ) -> gateway_pb2.ApproveToolCallResponse:
        validate(request)
        run_id = req.required_id("run_id", request.run_id)
        call_id = req.required_id("tool_call_id", request.tool_call_id)
        run = await self._decide(self._tenant(), run_id, call_id, True, "")
        return gateway_pb2.ApproveToolCallResponse(run=run)

    async def RejectToolCall(  # noqa: N802
        self, request: gateway_pb2.RejectToolCallRequest, context: Any
    ) -> gateway_pb2.RejectToolCallResponse:
        validate(request)
        run_id = req.required_id("run_id", request.run_id)
        call_id = req.required_id("tool_call_id", request.tool_call_id)
        reason = request.reason.strip() or "rejected by a person"
        if len(reason.encode("utf-8")) > MAX_REASON_BYTES:
            raise InvalidArgument("reason", f"at most {MAX_REASON_BYTES} bytes (UTF-8)")
        run = await self._decide(self._tenant(), run_id, call_id, False, reason)
        return gateway_pb2.RejectToolCallResponse(run=run)

    async def _decide(
        self, tenant: str, run_id: str, call_id: str, approved: bool, reason: str
    ) -> types_pb2.Run:
        """Records the decision, then publishes the call's task: a worker runs it (an
        approval) or answers REJECTED for it (a rejection), and the run goes on."""
        with _store_reachable():
            if await self.store.get(tenant, run_id) is None:
                raise NotFound(f"no run {run_id}", metadata={"run_id": run_id})
            code, value = await self.store.decide(
                tenant, run_id, call_id, approved=approved, reason=reason
            )
            if code == -1:
                raise NotFound(
                    f"run {run_id} has no call {call_id} waiting for approval",
                    metadata={"run_id": run_id, "tool_call_id": call_id},
                )
            if code == 0:
                state = value.decode().partition(":")[0]
                raise FailedPrecondition(
                    f"call {call_id} is {state} already", reason="ALREADY_DECIDED"
                )
            task = tasks_pb2.ToolTask.FromString(value)
            await self.tasks.publish(task, idempotency_key=f"{call_id}:task")
            run = await self.store.get(tenant, run_id)
        if run is None:
            raise NotFound(f"no run {run_id}", metadata={"run_id": run_id})
        return run

    async def SearchResponses(  # noqa: N802
        self, request: gateway_pb2.SearchResponsesRequest, context: Any
    ) -> gateway_pb2.SearchResponsesResponse:
        validate(request)
        query = req.required_text("query", request.query, MAX_QUERY_BYTES)
        search = index_pb2.SearchIndexRequest(
            tenant_id=self._tenant(),
            query=query,
            page_size=req.page_size(request.page_size, default=10),
            page_token=request.page_token,
        )
        try:
            got = await self.index.SearchIndex(search, timeout=SEARCH_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise self._index_error(exc) from None
        return gateway_pb2.SearchResponsesResponse(
            results=got.results, next_page_token=got.next_page_token
        )

    def _index_error(self, exc: grpc.aio.AioRpcError) -> FluxError:
        code, details = exc.code(), exc.details() or ""
        where = f"the response index ({self.settings.indexer_target})"
        if code is grpc.StatusCode.UNAVAILABLE:
            return Unavailable(f"{where} is unreachable: {details}", retry_after=1.0)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"{where} did not answer in time")
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidArgument(_violated_field(exc) or "page_token", details)
        return FluxError(f"{where} failed: {code.name}")


def _violated_field(exc: grpc.aio.AioRpcError) -> str:
    """The first field a BadRequest detail of `exc` names, if any."""
    try:
        status = rpc_status.from_call(exc)
    except ValueError:
        return ""
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad) and bad.field_violations:
            return str(bad.field_violations[0].field)
    return ""
