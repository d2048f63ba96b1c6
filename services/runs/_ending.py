"""How a run ends, the same way whichever service ends it.

The planner ends a run it can answer directly (or one that broke its bounds, or was
cancelled before planning); the composer ends the others. Either way: the answer's
pieces go into the run's stream (each at most once, so a redelivery never duplicates
text), the run record takes its terminal state with the `finished` event (once; a
requested cancellation wins), the conversation's session is updated, and
`AgentCompleted` is emitted from the stored run, so the stream, `GetRun` and the
event agree. The emission happens on every attempt, even when an earlier attempt
already ended the run: a crash between the two must not leave the projections (the
response store, the index) without the event; downstream dedupes it by its
idempotency key."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from agentflux.v1 import events_pb2, gateway_pb2, types_pb2

from interceptors import EventProducer
from services.runs._budget import BudgetExceededError, TokenBudget
from services.runs._store import Finished, RunStore, completion_of, finished
from services.runs._together import ScriptCall, run_together

__all__ = ["RunEnder"]

log = logging.getLogger(__name__)


class RunEnder:
    """Ends runs (see the module doc)."""

    def __init__(
        self, store: RunStore, events: EventProducer, budget: TokenBudget | None = None
    ) -> None:
        self.store = store
        self.events = events
        self.budget = budget  # an ended run's unsettled reservations go back to its tenant

    async def within_budget(
        self, run: types_pb2.Run, step: int, marker: str, estimate: int
    ) -> bool:
        """Reserves `estimate` tokens for the model call `marker` of `run`; when the
        tenant's or the run's budget cannot cover it, ends the run FAILED naming the
        budget and returns False (the caller asks the model nothing)."""
        if self.budget is None:
            return True
        try:
            await self.budget.reserve(run, marker, estimate)
        except BudgetExceededError as over:
            await self.fail(run, step, str(over))
            return False
        return True

    async def answer(
        self,
        run: types_pb2.Run,
        step: int,
        deltas: AsyncIterator[str],
        *,
        settle: Callable[[], Awaitable[ScriptCall | None]] | None = None,
    ) -> Finished | None:
        """Streams the answer's pieces, then ends the run COMPLETED with their text.
        `settle`, called once the pieces are drained: the answering model call's tokens
        to settle (`TokenBudget.settle_call`), sent in the same round trip as the end
        and before it, so the run ends with its usage counted.

        A piece is never held back waiting for the next one: it is appended as soon as
        the model has no other piece ready. Pieces the model has ready together (a
        burst, or a whole answer at once) are appended in one round trip, and the last
        ones by the script that ends the run, so a reader of the stream wakes once for
        them and `finished`. If the model breaks off, the pieces it gave are appended
        before its error goes on."""
        pieces: list[str] = []
        ready: list[tuple[str, gateway_pb2.StreamRunResponse]] = []  # not sent yet, in order
        iterator = aiter(deltas)
        while True:
            upcoming: asyncio.Future[str] = asyncio.ensure_future(anext(iterator))
            try:
                if ready:
                    # One turn of the loop lets the model hand over a piece it holds
                    # already; one it is still waiting for is not waited for.
                    await asyncio.sleep(0)
                    if not upcoming.done():
                        await self._append(run, ready)
                        ready = []
                piece = await upcoming
            except StopAsyncIteration:
                break
            except Exception:
                broke_off = upcoming.done() and not upcoming.cancelled() and upcoming.exception()
                if broke_off and ready:
                    # The model broke off: what it gave stays in the run's stream. (An
                    # error of Redis's own while the model was still busy goes on as is.)
                    await self._append(run, ready)
                raise
            finally:
                if not upcoming.done():  # cancelled, or Redis failed meanwhile
                    upcoming.cancel()
            event = gateway_pb2.StreamRunResponse(answer_delta=gateway_pb2.AnswerDelta(text=piece))
            ready.append((f"delta:{len(pieces)}", event))
            pieces.append(piece)
        answer = types_pb2.Answer(text="".join(pieces))
        before = await settle() if settle is not None else None
        return await self._end(
            run,
            types_pb2.RUN_STATUS_COMPLETED,
            step,
            answer=answer,
            before=[] if before is None else [before],
            pieces=ready,
        )

    async def _append(
        self, run: types_pb2.Run, pieces: list[tuple[str, gateway_pb2.StreamRunResponse]]
    ) -> None:
        calls = [self.store.append_call(run.tenant_id, run.run_id, m, e) for m, e in pieces]
        await run_together(self.store.redis, calls)

    async def fail(self, run: types_pb2.Run, step: int, error: str) -> Finished | None:
        """Ends the run FAILED with `error` (what a user should read)."""
        return await self._end(run, types_pb2.RUN_STATUS_FAILED, step, error=error)

    async def cancel(self, run: types_pb2.Run, step: int, reason: str) -> Finished | None:
        """Ends the run CANCELLED (its cancellation was requested)."""
        return await self._end(run, types_pb2.RUN_STATUS_CANCELLED, step, error=reason)

    async def _end(
        self,
        run: types_pb2.Run,
        status: int,
        step: int,
        *,
        answer: types_pb2.Answer | None = None,
        error: str = "",
        before: list[ScriptCall] | None = None,
        pieces: Sequence[tuple[str, gateway_pb2.StreamRunResponse]] = (),
    ) -> Finished | None:
        # The run's end and its turn in its conversation's session (and the writes that
        # must land `before` it): one round trip. `pieces`: the answer's last pieces,
        # appended by the same script just before `finished`.
        end = self.store.finish_call(
            run.tenant_id,
            run.run_id,
            status,
            answer=answer,
            error=error,
            steps=step + 1,
            conversation_id=run.conversation_id,
            pieces=pieces,
        )
        got = await run_together(self.store.redis, [*(before or []), end])
        ended_as = finished(got[-1])
        if ended_as is None:
            log.warning("run %s is unknown (expired?); nothing to end", run.run_id)
            return None
        ended = ended_as.run
        if self.budget is not None:
            await self.budget.release(ended, ended_as.fields)
        completed = events_pb2.AgentCompleted(
            run_id=ended.run_id,
            tenant_id=ended.tenant_id,
            conversation_id=ended.conversation_id,
            status=completion_of(ended.status),
            answer=ended.answer if ended.status == types_pb2.RUN_STATUS_COMPLETED else None,
            usage=ended.usage,
            error_message=ended.error_message,
            step_count=ended.step_count,
            prompt=ended.prompt,
            complete_time=ended.update_time,
        )
        await self.events.emit(completed, idempotency_key=f"{ended.run_id}:completed")
        return ended_as
