"""What a model provider does for the planner and the composer.

The planner asks it for a plan (`plan`): the tool calls of one step, or a direct answer
when no tool is needed. The composer, once a step's results are in, asks it to compose
(`compose`), with the earlier steps' results too: either go on with another step (a
continuation, within the run's step budget) or answer, streaming the text in pieces.
Both report the tokens they spent, so the run's usage (and, later, the tenant's budget)
is charged from what the model says. A provider that cannot answer raises `ModelError`,
which says whether asking again may succeed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentflux.v1 import types_pb2

__all__ = [
    "ComposeRequest",
    "Composition",
    "ModelError",
    "ModelProvider",
    "Plan",
    "PlanRequest",
    "PlannedCall",
    "ToolOffer",
]


class ModelError(Exception):
    """The model could not give a plan or an answer. `retryable`: asking again may succeed
    (a timeout, a rate limit, a server fault, a dropped stream); when False it will not
    (a request the endpoint refuses, a key it rejects, tool calls malformed twice, the
    run's deadline gone)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class ToolOffer:
    """A tool the model may call: name, what it does, and its arguments' JSON schema."""

    name: str
    description: str
    schema: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """One tool call the model asks for."""

    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """What the planner knows when it asks for a step's plan."""

    prompt: str
    step: int
    tools: Sequence[ToolOffer]
    previous_results: Sequence[types_pb2.ToolResult] = ()  # the step before, for step > 0
    memory: Sequence[str] = ()  # the conversation's short-lived memory, newest first
    session: Mapping[str, str] = field(default_factory=dict)
    # Whose run it is: a provider may call the model with the tenant's own key.
    tenant_id: str = ""
    # The calls of every earlier step (0..step-1) with their arguments, so a model that
    # reads a conversation sees what it asked for beside what it got.
    history: Sequence[types_pb2.ToolCall] = ()
    # The results of the steps before `previous_results`' (0..step-2), by step, then
    # tool_call_id, so the model sees the whole run and not only its last step.
    earlier_results: Sequence[types_pb2.ToolResult] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    """The tool calls of a step (run at once), or a direct answer (no calls)."""

    calls: Sequence[PlannedCall] = ()
    answer: str = ""
    usage: types_pb2.Usage = field(default_factory=types_pb2.Usage)


@dataclass(frozen=True, slots=True)
class ComposeRequest:
    """What the composer knows once a step's results are in."""

    prompt: str
    step: int
    max_steps: int  # the run's step budget: a continuation needs step + 1 < max_steps
    results: Sequence[types_pb2.ToolResult]  # this step's, in tool_call_id order
    template: str  # the prompt template the answer is composed from
    memory: Sequence[str] = ()
    # The results of the run's earlier steps (0..step-1), by step, then tool_call_id, so
    # an answer can report the whole run and not only its last step.
    earlier_results: Sequence[types_pb2.ToolResult] = ()
    tenant_id: str = ""
    history: Sequence[types_pb2.ToolCall] = ()  # the calls of steps 0..step, as in PlanRequest
    # What the model may call when it goes on (offered only while step + 1 < max_steps).
    tools: Sequence[ToolOffer] = ()


@dataclass
class Composition:
    """Either go on (`next_step`: plan another step with these results) or answer:
    `deltas` yields the answer's pieces in order; `usage` is final once it is drained."""

    next_step: bool
    deltas: AsyncIterator[str] | None = None
    usage: types_pb2.Usage = field(default_factory=types_pb2.Usage)


class ModelProvider(Protocol):
    """A model: plans steps and composes answers."""

    name: str

    async def plan(self, request: PlanRequest) -> Plan:
        """The plan of one step."""

    async def compose(self, request: ComposeRequest) -> Composition:
        """Continue or answer, after a step's results."""

    async def aclose(self) -> None:
        """Releases what the provider holds (connections), when its service stops."""


def uses_history(model: object) -> bool:
    """Whether `model` reads a request's `history` and `earlier_results` when planning
    (a chat model must be shown the whole run). A provider that does not says so with a
    `uses_history = False` attribute, and its services skip reading them."""
    return bool(getattr(model, "uses_history", True))
