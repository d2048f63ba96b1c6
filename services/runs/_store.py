"""The run record, its event stream and its steps (see the package doc)."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis
from agentflux.v1 import gateway_pb2, types_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.runs._scripts import (
    ADD_ONCE,
    APPEND_ONCE,
    BEGIN_CALL,
    CANCEL,
    CREATE,
    DECIDE,
    END_CALL,
    EXPIRE_APPROVAL,
    FINISH,
    PAUSE,
    RECORD,
    RUNNING,
)
from services.runs._together import ScriptCall, finish_queued, queue
from services.runtime.config import Settings
from services.runtime.keys import Keys

__all__ = [
    "TERMINAL",
    "BudgetSpentError",
    "Finished",
    "RequestReusedError",
    "RunSnapshot",
    "RunStore",
    "StreamGapError",
    "TooManyRunsError",
    "completion_of",
    "finished_of",
    "is_event_id",
]

TERMINAL = (
    types_pb2.RUN_STATUS_COMPLETED,
    types_pb2.RUN_STATUS_FAILED,
    types_pb2.RUN_STATUS_CANCELLED,
)
_EVENT_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_ID_PART_MAX = 2**64 - 1  # each part of a stream id is an unsigned 64-bit number


def is_event_id(value: str) -> bool:
    """Whether `value` can be an event id (a Redis stream id, `<ms>-<sequence>`, each
    part a 64-bit unsigned integer)."""
    return bool(_EVENT_ID.fullmatch(value)) and all(
        int(part) <= _ID_PART_MAX for part in value.split("-")
    )


class TooManyRunsError(Exception):
    """The tenant has as many runs in flight as it may."""

    def __init__(self, in_flight: int) -> None:
        super().__init__(f"{in_flight} runs in flight")
        self.in_flight = in_flight


class RequestReusedError(Exception):
    """A `request_id` came back with a different request; `run` is the one it started."""

    def __init__(self, run: types_pb2.Run) -> None:
        super().__init__(f"request id reused; it started run {run.run_id}")
        self.run = run


class BudgetSpentError(Exception):
    """The tenant's token budget for the period cannot cover another model call: a new
    run would fail at its first."""

    def __init__(self, used: int, reserved: int) -> None:
        super().__init__(f"{used} tokens used and {reserved} reserved")
        self.used, self.reserved = used, reserved


class StreamGapError(Exception):
    """`after_event_id` is not an event of the run's stream (unknown or expired)."""


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """What `RunStore.snapshot` read: the run (None when unknown), its cancellation
    reason (None when none was asked for), its conversation's memory and session."""

    run: types_pb2.Run | None
    cancel_reason: str | None
    memory: list[str]
    session: dict[str, str]
    # With `running_step`: whether the run could be marked RUNNING (False: it ended, or
    # is unknown).
    running: bool | None = None
    # With `earlier_than`: the results of the steps before it (`results_before`).
    earlier: list[types_pb2.ToolResult] = field(default_factory=list)
    # With `record`: every result of the step when this one completed it, else None
    # (`record_result`).
    step_results: list[types_pb2.ToolResult] | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """How a run ended, as stored."""

    status: int
    run: types_pb2.Run
    # The run's stored fields as the end left them (reservations included).
    fields: Mapping[bytes, bytes] = field(default_factory=dict)


_MEMORY = 10  # memory entries a handler reads, newest first


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _timestamp(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


class RunStore:
    """Reads and writes runs for every service (the `redis` client returns bytes)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        namespace: str = "",
        run_ttl_s: int = 7 * 86400,
        stream_ttl_s: int = 3600,
        request_ttl_s: int = 86400,
        in_flight_horizon_s: int = 6 * 3600,
    ) -> None:
        self.redis = redis
        self.keys = Keys(namespace)
        self.run_ttl_s = run_ttl_s
        self.stream_ttl_s = stream_ttl_s
        self.request_ttl_s = request_ttl_s
        # A run that never ended (its services lost) stops counting against its tenant's
        # runs in flight after this long, so a lost run cannot hold a slot for ever.
        self.in_flight_horizon_s = in_flight_horizon_s
        self._create = redis.register_script(CREATE)
        self._append = redis.register_script(APPEND_ONCE)
        self._running = redis.register_script(RUNNING)
        self._cancel = redis.register_script(CANCEL)
        self._finish = redis.register_script(FINISH)
        self._record = redis.register_script(RECORD)
        self._add = redis.register_script(ADD_ONCE)
        self._begin_call = redis.register_script(BEGIN_CALL)
        self._end_call = redis.register_script(END_CALL)
        self._pause = redis.register_script(PAUSE)
        self._decide = redis.register_script(DECIDE)
        self._expire_approval = redis.register_script(EXPIRE_APPROVAL)

    @classmethod
    def for_settings(cls, redis: aioredis.Redis, settings: Settings) -> RunStore:
        """A store with the namespace and retentions the settings give."""
        return cls(
            redis,
            namespace=settings.namespace,
            run_ttl_s=settings.run_retention_s,
            stream_ttl_s=settings.stream_retention_s,
            request_ttl_s=settings.request_id_ttl_s,
        )

    # -- the run ---------------------------------------------------------------------

    async def create(
        self,
        run: types_pb2.Run,
        request_id: str = "",
        *,
        digest: str = "",
        max_in_flight: int = 0,
        budget: tuple[str, int] | None = None,
    ) -> tuple[types_pb2.Run, bool]:
        """Stores a new PENDING run with its `accepted` event; with a `request_id` seen
        before, returns that run instead (the bool says whether the run is new).

        `digest` identifies the request: a `request_id` reused for a request with another
        digest raises `RequestReusedError` naming the first run. With `max_in_flight`, a
        tenant with that many runs unfinished is refused with `TooManyRunsError`. With
        `budget` (the tenant's period key and the tokens at which it is spent, as
        `TokenBudget.gate` gives them), a tenant whose budget is spent is refused first
        with `BudgetSpentError`, in the same round trip."""
        now = _now_ms()
        run.status = types_pb2.RUN_STATUS_PENDING
        run.create_time.CopyFrom(_timestamp(now))
        run.update_time.CopyFrom(_timestamp(now))
        accepted = gateway_pb2.StreamRunResponse(accepted=gateway_pb2.RunAccepted(run=run))
        tenant, run_id = run.tenant_id, run.run_id
        keys = [
            self.keys.request(tenant, request_id or "-"),
            self.keys.run(tenant, run_id),
            self.keys.runs(tenant),
            self.keys.events(tenant, run_id),
            self.keys.in_flight(tenant),
        ]
        if budget is not None:
            keys.append(budget[0])
        kind, value = cast(
            "list[bytes]",
            await self._create(
                keys=keys,
                args=[
                    run_id,
                    run.SerializeToString(),
                    now,
                    accepted.SerializeToString(),
                    self.request_ttl_s,
                    self.run_ttl_s,
                    "1" if request_id else "0",
                    digest,
                    max_in_flight,
                    self.in_flight_horizon_s * 1000,
                    budget[1] if budget is not None else 0,
                ],
            ),
        )
        if kind == b"new":
            return run, True
        if kind == b"full":
            raise TooManyRunsError(int(value))
        if kind == b"spent":
            used, _, reserved = value.decode().partition("|")
            raise BudgetSpentError(int(used), int(reserved))
        first_id, _, first_digest = value.decode().partition("|")
        existing = await self.get(tenant, first_id)
        if existing is None:  # its record expired before the request id did
            raise LookupError(f"request {request_id} started a run that no longer exists")
        if digest and first_digest and first_digest != digest:
            raise RequestReusedError(existing)
        return existing, False

    async def get(self, tenant: str, run_id: str) -> types_pb2.Run | None:
        """The run as it is now, or None when there is no such run for `tenant`."""
        fields = cast("dict[bytes, bytes]", await self.redis.hgetall(self.keys.run(tenant, run_id)))
        return _assemble(fields) if fields else None

    async def snapshot(
        self,
        tenant: str,
        run_id: str,
        conversation_id: str,
        *,
        session: bool = False,
        running_step: int | None = None,
        earlier_than: int = 0,
        record: tuple[int, types_pb2.ToolResult, int] | None = None,
    ) -> RunSnapshot:
        """The run, why its cancellation was requested, and its conversation's memory
        (and session state) in one round trip: what a handler reads before it decides.
        `conversation_id` is the one the message names; when the run says otherwise, the
        run's conversation is read again (the run is the authority).

        In the same round trip, when asked: `record` (step, result, results expected)
        first adds a tool result to its step (`record_result`); `running_step` marks the
        run RUNNING at that step (`set_running`; harmless for a run being cancelled,
        which stays CANCELLING); `earlier_than` reads the results of the steps before
        it (`results_before`). The run read is the one before the marking."""
        scripts: list[tuple[int, ScriptCall]] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            if record is not None:
                scripts.append((len(pipe), self._record_call(tenant, run_id, *record)))
                queue(pipe, scripts[-1][1])
            at = len(pipe)
            pipe.hgetall(self.keys.run(tenant, run_id))
            pipe.lrange(self.keys.memory(tenant, conversation_id), 0, _MEMORY - 1)
            if session:
                pipe.hgetall(self.keys.session(tenant, conversation_id))
            running_at = len(pipe)
            if running_step is not None:
                scripts.append((running_at, self._running_call(tenant, run_id, running_step)))
                queue(pipe, scripts[-1][1])
            earlier_at = len(pipe)
            for step in range(earlier_than):
                pipe.hvals(self.keys.step(tenant, run_id, step))
            got: list[Any] = await pipe.execute(raise_on_error=False)
        for index, call in scripts:  # each may run twice: see finish_queued
            (got[index],) = await finish_queued([call], [got[index]])
        for value in got:
            if isinstance(value, Exception):
                raise value
        step_results = None
        if record is not None:
            step_results = _results(got[0])
        running = None if running_step is None else bool(got[running_at])
        earlier = _earlier(got[earlier_at : earlier_at + earlier_than])
        fields = cast("dict[bytes, bytes]", got[at])
        if not fields:
            return RunSnapshot(None, None, [], {}, running, earlier, step_results)
        run = _assemble(fields)
        reason = fields.get(b"cancel")
        if run.conversation_id != conversation_id:
            memory = await self.memory(tenant, run.conversation_id)
            state = await self.session(tenant, run.conversation_id) if session else {}
        else:
            memory = [cast("bytes", v).decode() for v in got[at + 1]]
            state = {k.decode(): v.decode() for k, v in got[at + 2].items()} if session else {}
        return RunSnapshot(
            run,
            None if reason is None else reason.decode(),
            memory,
            state,
            running,
            earlier,
            step_results,
        )

    async def list_runs(
        self, tenant: str, *, page_size: int, after: tuple[int, str] | None, status: int = 0
    ) -> tuple[list[types_pb2.Run], tuple[int, str] | None]:
        """The tenant's runs, newest first, after the `(create ms, run id)` cursor;
        returns the page and the cursor of the next page (None on the last)."""
        key = self.keys.runs(tenant)
        out: list[types_pb2.Run] = []
        cursor = after
        while len(out) <= page_size:
            ids, cursor = await self._ids_after(key, cursor, page_size * 2)
            if not ids:
                break
            out += await self._runs(tenant, ids, status)
        page = out[:page_size]
        if len(out) <= page_size or not page:
            return page, None
        last = page[-1]
        return page, (last.create_time.ToMilliseconds(), last.run_id)

    async def _ids_after(
        self, key: str, cursor: tuple[int, str] | None, count: int
    ) -> tuple[list[str], tuple[int, str] | None]:
        """Run ids of the index past `cursor` in the index's order (creation ms, then
        run id, both descending), about `count` at a time, and the cursor of the last.

        Runs created in one millisecond may straddle two reads: the next read takes the
        rest of that millisecond first, so none is skipped (`(ms` alone would skip
        them, whenever a status filter or an expired run makes another read needed)."""
        top = "+inf"
        if cursor is not None:
            ms, last_id = cursor
            if last_id:
                same = cast("list[bytes]", await self.redis.zrevrangebyscore(key, ms, ms))
                rest = sorted((m.decode() for m in same if m.decode() < last_id), reverse=True)
                if rest:
                    return rest, (ms, "")  # "": that millisecond is done
            top = f"({ms}"
        batch = cast(
            "list[tuple[bytes, float]]",
            await self.redis.zrevrangebyscore(
                key, top, "-inf", start=0, num=count, withscores=True
            ),
        )
        if not batch:
            return [], None
        ids = [m.decode() for m, _ in batch]
        return ids, (int(batch[-1][1]), ids[-1])

    async def _runs(self, tenant: str, ids: list[str], status: int) -> list[types_pb2.Run]:
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hgetall(self.keys.run(tenant, run_id))
            rows = await pipe.execute()
        runs = [_assemble(r) for r in rows if r]  # expired runs leave the index lazily
        return [r for r in runs if not status or r.status == status]

    async def set_running(self, tenant: str, run_id: str, step: int) -> bool:
        """Marks the run RUNNING at `step`; False when it ended (or is unknown)."""
        return bool(await self._running_call(tenant, run_id, step).run())

    def _running_call(self, tenant: str, run_id: str, step: int) -> ScriptCall:
        return ScriptCall(self._running, [self.keys.run(tenant, run_id)], [step, _now_ms()])

    async def add_once(self, tenant: str, run_id: str, marker: str, **counts: int) -> list[int]:
        """Adds `counts` to the run's counters once per `marker`; returns their totals
        (empty when the run is unknown). Counters: `calls` (tool calls planned so far),
        `u_prompt` and `u_completion` (tokens, which make up `Run.usage`)."""
        return counted(await self.add_call(tenant, run_id, marker, **counts).run())

    def add_call(self, tenant: str, run_id: str, marker: str, **counts: int) -> ScriptCall:
        """`add_once` to run with others (`run_together`); its answer read by `counted`."""
        args: list[str | int] = [marker]
        for name, value in counts.items():
            args += [name, value]
        return ScriptCall(self._add, [self.keys.run(tenant, run_id)], args)

    async def add_usage(
        self, tenant: str, run_id: str, marker: str, usage: types_pb2.Usage
    ) -> None:
        """Charges `usage` to the run once per `marker` (a step's plan, its answer)."""
        await self.add_once(
            tenant,
            run_id,
            marker,
            u_prompt=usage.prompt_tokens,
            u_completion=usage.completion_tokens,
        )

    async def session(self, tenant: str, conversation_id: str) -> dict[str, str]:
        """A conversation's session state (turns so far, last run and its status)."""
        raw = cast(
            "dict[bytes, bytes]",
            await self.redis.hgetall(self.keys.session(tenant, conversation_id)),
        )
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def memory(self, tenant: str, conversation_id: str, limit: int = _MEMORY) -> list[str]:
        """A conversation's short-lived memory (what the memory tool stored), newest first."""
        raw = await self.redis.lrange(self.keys.memory(tenant, conversation_id), 0, limit - 1)
        return [cast("bytes", v).decode() for v in raw]

    async def request_cancel(self, tenant: str, run_id: str, reason: str) -> types_pb2.Run | None:
        """Records a cancellation request (the first reason wins) and returns the run as
        it is now; None when there is no such run."""
        await self._cancel(keys=[self.keys.run(tenant, run_id)], args=[reason, _now_ms()])
        return await self.get(tenant, run_id)

    async def cancel_reason(self, tenant: str, run_id: str) -> str | None:
        """Why the run's cancellation was requested, or None when it was not."""
        raw = await self.redis.hget(self.keys.run(tenant, run_id), "cancel")
        return None if raw is None else cast("bytes", raw).decode()

    async def finish(
        self,
        tenant: str,
        run_id: str,
        status: int,
        *,
        answer: types_pb2.Answer | None = None,
        error: str = "",
        steps: int = 0,
        conversation_id: str | None = None,
    ) -> Finished | None:
        """Ends the run (at most once; a requested cancellation wins) and appends its
        `finished` event. Returns how the run ended, whoever ended it; None when the
        run is unknown (expired). With `conversation_id`, the run also counts once as a
        turn of that conversation's session, in the same round trip."""
        call = self.finish_call(
            tenant,
            run_id,
            status,
            answer=answer,
            error=error,
            steps=steps,
            conversation_id=conversation_id,
        )
        return finished(await call.run())

    def finish_call(
        self,
        tenant: str,
        run_id: str,
        status: int,
        *,
        answer: types_pb2.Answer | None = None,
        error: str = "",
        steps: int = 0,
        conversation_id: str | None = None,
        pieces: Sequence[tuple[str, gateway_pb2.StreamRunResponse]] = (),
    ) -> ScriptCall:
        """`finish` to run with others (`run_together`); its answer read by `finished`.
        `pieces`: (marker, event) pairs appended first in the same step, each as
        `append_once` would (the answer's last pieces)."""
        keys = [
            self.keys.run(tenant, run_id),
            self.keys.events(tenant, run_id),
            self.keys.in_flight(tenant),
        ]
        if conversation_id is not None:
            keys.append(self.keys.session(tenant, conversation_id))
        args = [
            status,
            (answer or types_pb2.Answer()).SerializeToString(),
            error,
            steps,
            _now_ms(),
            self.stream_ttl_s,
            run_id,
            self.run_ttl_s,
        ]
        for marker, event in pieces:
            args += [marker, event.SerializeToString()]
        return ScriptCall(self._finish, keys, args)

    # -- the event stream ----------------------------------------------------------------

    async def append_once(
        self,
        tenant: str,
        run_id: str,
        marker: str,
        event: gateway_pb2.StreamRunResponse,
        *,
        record: tuple[str, bytes, int] | None = None,
        end_call: str = "",
    ) -> str | None:
        """Appends `event` unless an event with `marker` was appended already or the run
        ended; returns its event id, or None when nothing was appended. `record`:
        (key, value, seconds) set first in any case, in the same round trip; `end_call`: a
        tool call id whose call is over (`end_call`), also in any case."""
        call = self.append_call(tenant, run_id, marker, event, record=record, end_call=end_call)
        got = await call.run()
        return appended(got)

    def append_call(
        self,
        tenant: str,
        run_id: str,
        marker: str,
        event: gateway_pb2.StreamRunResponse,
        *,
        record: tuple[str, bytes, int] | None = None,
        end_call: str = "",
    ) -> ScriptCall:
        """`append_once` to run with others (`run_together`); its answer read by
        `appended`. `end_call`: a tool call id whose call is over (`end_call`), recorded
        in the same step whatever the append does."""
        keys = [self.keys.run(tenant, run_id), self.keys.events(tenant, run_id)]
        args: list[str | int | bytes] = [marker, event.SerializeToString(), end_call]
        if record is not None:
            keys.append(record[0])
            args += [record[1], record[2]]
        return ScriptCall(self._append, keys, args)

    async def read_events(
        self,
        tenant: str,
        run_id: str,
        after: str,
        *,
        block_ms: int | None = None,
        count: int = 100,
        trusted: bool = False,
    ) -> list[gateway_pb2.StreamRunResponse]:
        """Events after `after` (from the start when empty), waiting up to `block_ms`
        for the first one when there are none yet. Raises `StreamGapError` for an `after`
        that is not an event of the stream (or `ValueError` when malformed); `trusted`
        skips that check for a cursor this code took from the stream itself."""
        key = self.keys.events(tenant, run_id)
        if after and not trusted:
            if not is_event_id(after):
                raise ValueError("not an event id (<sequence>-0)")
            if not await self.redis.xrange(key, after, after, count=1):
                raise StreamGapError(after)
        start = after or "0-0"
        entries: list[tuple[bytes, dict[bytes, bytes]]]
        if block_ms is None:
            rows: Any = await self.redis.xrange(key, f"({start}" if after else "-", count=count)
            entries = list(rows)
        else:
            got: Any = await self.redis.xread({key: start}, count=count, block=block_ms)
            entries = [(i, f) for _, batch in got or () for i, f in batch]
        out = []
        for entry_id, fields in entries:
            out.append(await self._event(tenant, run_id, entry_id.decode(), fields))
        return out

    async def planned_calls(
        self, tenant: str, run_id: str, through_step: int
    ) -> list[types_pb2.ToolCall]:
        """The tool calls planned in steps 0..`through_step`, with their arguments, in
        plan order: a model that is shown its earlier results must also see what it asked
        for. Read from the run's `planned` events; none once the stream expired."""
        if through_step < 0:
            return []
        calls: list[types_pb2.ToolCall] = []
        after = ""
        while True:
            batch = await self.read_events(tenant, run_id, after, count=500, trusted=True)
            for event in batch:
                if event.WhichOneof("event") == "planned" and event.planned.step <= through_step:
                    calls += event.planned.tool_calls
            if len(batch) < 500:
                return calls
            after = batch[-1].event_id

    async def events_exist(self, tenant: str, run_id: str) -> bool:
        """Whether the run's events are still kept."""
        return bool(await self.redis.exists(self.keys.events(tenant, run_id)))

    async def _event(
        self, tenant: str, run_id: str, event_id: str, fields: dict[bytes, bytes]
    ) -> gateway_pb2.StreamRunResponse:
        if fields.get(b"k") == b"finished":
            # Built from the stored run, so the stream, GetRun and AgentCompleted agree.
            run = await self.get(tenant, run_id) or types_pb2.Run(run_id=run_id)
            event = gateway_pb2.StreamRunResponse(finished=finished_of(run))
        else:
            event = gateway_pb2.StreamRunResponse.FromString(fields.get(b"e", b""))
        event.event_id = event_id
        event.sequence = int(event_id.split("-", 1)[0])
        event.event_time.CopyFrom(_timestamp(int(fields.get(b"t", b"0"))))
        return event

    async def first_sequence(self, tenant: str, run_id: str) -> int:
        """Sequence number of the first event the stream still holds (0 when none)."""
        rows: Any = await self.redis.xrange(self.keys.events(tenant, run_id), count=1)
        return int(rows[0][0].decode().split("-", 1)[0]) if rows else 0

    async def last_sequence(self, tenant: str, run_id: str) -> int:
        """Sequence number of the run's last event (kept or not; 0 when none)."""
        raw = await self.redis.hget(self.keys.run(tenant, run_id), "seq")
        return int(cast("bytes", raw)) if raw else 0

    # -- tool calls, cancellation and approval ---------------------------------------

    async def begin_call(
        self,
        tenant: str,
        run_id: str,
        tool_call_id: str,
        started: tuple[str, gateway_pb2.StreamRunResponse] | None = None,
        *,
        record: str = "",
    ) -> bool | bytes:
        """Records that a tool call begins, unless its run is cancelled or ended: one
        atomic step, so once `request_cancel` returned no call of the run can begin.
        `started`: (marker, event) appended once per marker when the call begins, in
        the same step (`append_once` without a round trip of its own). `record` (with
        `started`): the key of the call's result record, checked first in the same step;
        when it holds a result, the call does not begin and that result is returned."""
        keys = [self.keys.run(tenant, run_id)]
        args: list[str | int | bytes] = [tool_call_id, _now_ms()]
        if started is not None:
            keys.append(self.keys.events(tenant, run_id))
            args += [started[0], started[1].SerializeToString()]
            if record:
                keys.append(record)
        began = await self._begin_call(keys=keys, args=args)
        return began if isinstance(began, bytes) else bool(began)

    async def active_calls(self, tenant: str, run_id: str) -> dict[str, int]:
        """The run's tool calls that began and are not over: call id -> when it began
        (epoch ms)."""
        fields = cast("dict[bytes, bytes]", await self.redis.hgetall(self.keys.run(tenant, run_id)))
        return {
            k.decode().removeprefix("active:"): int(v)
            for k, v in fields.items()
            if k.startswith(b"active:")
        }

    async def end_call(self, tenant: str, run_id: str, tool_call_id: str) -> None:
        """Records that a tool call is over (whatever its outcome)."""
        await self._end_call(keys=[self.keys.run(tenant, run_id)], args=[tool_call_id])

    async def pause_for_approval(
        self,
        tenant: str,
        run_id: str,
        call: types_pb2.ToolCall,
        task: bytes,
        expire_ms: int,
    ) -> bool:
        """Keeps `call` (and its serialized `task`) pending a person's decision, puts the
        run in AWAITING_APPROVAL and announces it (once); False when the run ended or the
        call waits already."""
        event = gateway_pb2.StreamRunResponse(
            approval_requested=gateway_pb2.ApprovalRequested(
                call=call, expire_time=_timestamp(expire_ms)
            )
        )
        paused = await self._pause(
            keys=[self.keys.run(tenant, run_id), self.keys.events(tenant, run_id)],
            args=[
                call.tool_call_id,
                call.SerializeToString(),
                task,
                event.SerializeToString(),
                _now_ms(),
            ],
        )
        return bool(paused)

    async def decide(
        self, tenant: str, run_id: str, tool_call_id: str, *, approved: bool, reason: str = ""
    ) -> tuple[int, bytes]:
        """Records a person's decision on a pending call. Returns (1, the call's task)
        when it took effect, (0, the call's state) when it was decided (or expired)
        already, (-1, b"") for a call that never waited."""
        event = gateway_pb2.StreamRunResponse(
            approval_decided=gateway_pb2.ApprovalDecided(
                tool_call_id=tool_call_id, approved=approved, reason=reason
            )
        )
        state = "approved" if approved else f"rejected:{reason}"
        code, value = cast(
            "list[Any]",
            await self._decide(
                keys=[self.keys.run(tenant, run_id), self.keys.events(tenant, run_id)],
                args=[tool_call_id, state, event.SerializeToString(), _now_ms()],
            ),
        )
        return int(code), bytes(value or b"")

    async def approval_state(self, tenant: str, run_id: str, tool_call_id: str) -> str:
        """`pending`, `approved`, `rejected:<reason>`, `expired`, or "" (never waited)."""
        raw = await self.redis.hget(self.keys.run(tenant, run_id), f"approval:{tool_call_id}")
        return cast("bytes", raw).decode() if raw else ""

    async def expire_approval(self, tenant: str, run_id: str, tool_call_id: str) -> str:
        """The approval timer fired: a call still pending expires. Returns its state."""
        got = await self._expire_approval(keys=[self.keys.run(tenant, run_id)], args=[tool_call_id])
        return cast("bytes", got).decode() if got else ""

    # -- steps -----------------------------------------------------------------------

    async def record_result(
        self, tenant: str, run_id: str, step: int, result: types_pb2.ToolResult, expected: int
    ) -> list[types_pb2.ToolResult] | None:
        """Adds one tool result of `step`; returns every result of the step to the one
        caller whose result completed it (again on its redelivery), else None."""
        return _results(await self._record_call(tenant, run_id, step, result, expected).run())

    def _record_call(
        self, tenant: str, run_id: str, step: int, result: types_pb2.ToolResult, expected: int
    ) -> ScriptCall:
        return ScriptCall(
            self._record,
            [self.keys.step(tenant, run_id, step), self.keys.run(tenant, run_id)],
            [result.tool_call_id, result.SerializeToString(), expected, self.run_ttl_s, step],
        )

    async def results_before(
        self, tenant: str, run_id: str, step: int
    ) -> list[types_pb2.ToolResult]:
        """The recorded tool results of steps 0..`step`-1, by step, then `tool_call_id`
        (the plan's order, the ids being zero-padded). A step whose record expired, or
        that had no tool calls, gives none."""
        if step <= 0:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for earlier in range(step):
                pipe.hvals(self.keys.step(tenant, run_id, earlier))
            rows = cast("list[list[bytes]]", await pipe.execute())
        return _earlier(rows)


_COMPLETION: dict[int, types_pb2.CompletionStatus.ValueType] = {
    types_pb2.RUN_STATUS_COMPLETED: types_pb2.COMPLETION_STATUS_COMPLETED,
    types_pb2.RUN_STATUS_FAILED: types_pb2.COMPLETION_STATUS_FAILED,
    types_pb2.RUN_STATUS_CANCELLED: types_pb2.COMPLETION_STATUS_CANCELLED,
}


def counted(got: Any) -> list[int]:
    """The totals an `add_call` answered (empty when the run is unknown)."""
    return [int(v) for v in cast("list[int]", got or [])]


def appended(got: Any) -> str | None:
    """The event id an `append_call` answered, or None when nothing was appended."""
    return None if got is None else cast("bytes", got).decode()


def finished(got: Any) -> Finished | None:
    """How a run ended, from what a `finish_call` answered (None: the run is unknown)."""
    if got == -1:
        return None
    flat = cast("list[bytes]", got[1])
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    run = _assemble(fields)
    return Finished(run.status, run, fields)


def _results(got: Any) -> list[types_pb2.ToolResult] | None:
    if got is None:
        return None
    results = [types_pb2.ToolResult.FromString(v) for v in cast("list[bytes]", got)]
    return sorted(results, key=lambda r: r.tool_call_id)


def _earlier(rows: list[Any]) -> list[types_pb2.ToolResult]:
    out: list[types_pb2.ToolResult] = []
    for values in rows:
        results = [types_pb2.ToolResult.FromString(v) for v in values]
        out += sorted(results, key=lambda r: r.tool_call_id)
    return out


def completion_of(status: int) -> types_pb2.CompletionStatus.ValueType:
    """The `CompletionStatus` of a terminal `RunStatus` (the contract's mapping)."""
    return _COMPLETION.get(int(status), types_pb2.COMPLETION_STATUS_UNSPECIFIED)


def finished_of(run: types_pb2.Run) -> gateway_pb2.RunFinished:
    """The `finished` event of an ended run."""
    return gateway_pb2.RunFinished(
        status=completion_of(run.status), answer=run.answer, error_message=run.error_message
    )


def _assemble(fields: dict[bytes, bytes]) -> types_pb2.Run:
    run = types_pb2.Run.FromString(fields.get(b"run", b""))
    run.status = int(fields.get(b"status", b"1"))  # type: ignore[assignment]
    run.step_count = int(fields.get(b"steps", b"0"))
    prompt, completion = int(fields.get(b"u_prompt", 0)), int(fields.get(b"u_completion", 0))
    run.usage.CopyFrom(
        types_pb2.Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )
    )
    if b"answer" in fields:
        run.answer.CopyFrom(types_pb2.Answer.FromString(fields[b"answer"]))
        run.answer.usage.CopyFrom(run.usage)
    run.error_message = fields.get(b"error", b"").decode()
    if not run.error_message and b"cancel" in fields and run.status not in TERMINAL:
        run.error_message = f"cancellation requested: {fields[b'cancel'].decode()}"
    run.update_time.CopyFrom(_timestamp(int(fields.get(b"update_ms", b"0"))))
    pending = sorted(k for k in fields if k.startswith(b"pending:"))
    run.pending_approvals.extend(types_pb2.ToolCall.FromString(fields[k]) for k in pending)
    return run
