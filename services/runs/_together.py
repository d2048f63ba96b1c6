"""Several of the run's scripts in one Redis round trip.

A round trip costs more than the scripts it runs: on the development machine about
250 µs of CPU with redis-py and a span, against a few µs of Lua. A handler that makes
writes which do not depend on each other's answers (settle a model call's tokens,
append its `planned` event, count its tool calls) sends them in one pipeline, in order.

Not a transaction: each script is atomic on its own, and every script sent this way is
one that may run twice (each counts once per marker, or ends a run at most once). That
is what makes the rare fallback safe: after Redis lost its script cache (a restart, a
SCRIPT FLUSH), the first script it no longer knows and every one after it run again,
in order, each loaded on the way (`AsyncScript.__call__`), so no later write lands
before an earlier one that failed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

__all__ = ["ScriptCall", "run_together"]


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One script with its keys and arguments, to run with others (`run_together`)."""

    script: AsyncScript
    keys: Sequence[str]
    args: Sequence[Any]

    async def run(self) -> Any:
        """The script alone, in a round trip of its own."""
        return await self.script(keys=list(self.keys), args=list(self.args))


def queue(pipe: Any, call: ScriptCall) -> None:
    """Adds `call` to a pipeline by its digest (no SCRIPT EXISTS round trip first, which
    redis-py's `Pipeline` sends for scripts registered on it)."""
    pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)


async def finish_queued(calls: Sequence[ScriptCall], got: Sequence[Any]) -> list[Any]:
    """The answers of `calls` queued in one pipeline run with `raise_on_error=False`:
    from the first one Redis did not know on, the calls run again one by one (see the
    module doc); any other error is raised."""
    out = list(got)
    for i, value in enumerate(out):
        if isinstance(value, NoScriptError):
            for j in range(i, len(calls)):
                out[j] = await calls[j].run()
            break
        if isinstance(value, Exception):
            raise value
    return out


async def run_together(redis: aioredis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """Runs `calls` in order in one round trip; returns their answers in the same order.
    A lone call goes as it would alone."""
    if len(calls) == 1:
        return [await calls[0].run()]
    if not calls:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for call in calls:
            queue(pipe, call)
        got: list[Any] = await pipe.execute(raise_on_error=False)
    return await finish_queued(calls, got)
