"""What a tool is: a name, a JSON schema for its arguments, a timeout, whether it has
side effects, and an async function that runs it.

Tools run in workers, at least once: a task is redelivered after a crash, so a tool
may be called again for the same call. A tool with side effects (`side_effects=True`)
receives `ToolContext.idempotency_key`, the same on every attempt of one call: it must
pass it on to whatever it changes (an HTTP `Idempotency-Key` header, a unique key in a
database) so that a crash between the effect and the worker's record of it is
deduplicated downstream. A tool without side effects may be cached by its arguments
(`cacheable`), and a tool marked `exclusive` runs under a lock with a fencing token
(`ToolContext.fencing_token`), one call at a time across every worker. A tool marked
`needs_approval` (or named in `AGENTFLUX_APPROVAL_TOOLS`) runs only once a person
approved the call. A cancelled run sets `ToolContext.cancelled` while its tools run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis

from services.runtime.config import Settings

__all__ = ["JSON", "Search", "Tool", "ToolContext", "ToolError", "ToolSpec", "needs_approval"]

JSON = Any
"""A JSON value: None, bool, int, float, str, list or dict of JSON values."""

Search = Callable[[str, str, int], Awaitable[list[dict[str, Any]]]]
"""search(tenant_id, query, limit) -> matches (run_id, prompt, snippet, score, ...)."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """How a tool is called and run."""

    name: str
    description: str
    schema: Mapping[str, Any]  # JSON Schema (draft 2020-12) of the arguments object
    timeout_s: float = 10.0
    side_effects: bool = False  # receives the idempotency key; never cached
    exclusive: bool = False  # one call at a time, under a lock with a fencing token
    cacheable: bool = False  # output cached by the hash of name and canonical arguments
    needs_approval: bool = False  # a person approves each call before it runs


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool knows of the call it serves."""

    tenant_id: str
    run_id: str
    conversation_id: str
    tool_call_id: str
    idempotency_key: str  # the same on every attempt of this call
    attempt: int
    settings: Settings
    redis: aioredis.Redis
    namespace: str = ""
    fencing_token: int | None = None  # set for exclusive tools: pass it to the resource
    search: Search | None = None  # the response index (the retrieve tool)
    # Set when the run is cancelled while the tool runs: a tool that takes long should
    # check it and stop (raise ToolError); after the cancel deadline it is abandoned.
    cancelled: asyncio.Event | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


class ToolError(Exception):
    """A tool could not do what was asked. `retryable` says whether another attempt
    may succeed (a timeout, a server error) or not (a division by zero, a host that is
    not allowed): the worker retries the first kind through the delay tiers and fails
    the second at once."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class Tool(Protocol):
    """A tool: its spec and the coroutine that runs one call with checked arguments."""

    spec: ToolSpec

    async def __call__(self, args: Mapping[str, Any], ctx: ToolContext) -> JSON:
        """Runs one call; returns a JSON value or raises `ToolError`."""


def needs_approval(settings: Settings, spec: ToolSpec | None, name: str) -> bool:
    """Whether a call of tool `name` waits for a person: its spec says so, or the
    deployment does (`AGENTFLUX_APPROVAL_TOOLS`). The planner holds such calls and the
    worker refuses to run one that was not approved, so the two always agree."""
    return (spec is not None and spec.needs_approval) or name in settings.approval_tools
