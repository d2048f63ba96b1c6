"""What a new run is made of, wherever it starts: through the gateway's `Submit`, or by
an `AgentRequested` event at step 0 that a producer inside the mesh published (see
docs/wire-protocol.md, "Starting runs with events"). Both resolve limits the same way,
so a run's bounds do not depend on its door.

Every check raises `InvalidArgument` naming the field at fault: the gateway turns it
into INVALID_ARGUMENT, a consumer into a dead letter with the original record."""

from __future__ import annotations

from agentflux.v1 import events_pb2, types_pb2

from interceptors import ContextValueError, InvalidArgument
from interceptors._context import check_id
from services.runtime.config import Settings

__all__ = ["MAX_PROMPT_BYTES", "resolve_limits", "run_of_event"]

MAX_PROMPT_BYTES = 32 * 1024
_PRIORITIES = frozenset(types_pb2.Priority.values())


def resolve_limits(got: types_pb2.RunLimits, settings: Settings) -> types_pb2.RunLimits:
    """The run's bounds: zero fields take the deployment's defaults, which are also caps.
    `max_tokens` has no deployment cap (zero: only the tenant's token budget bounds it)."""
    caps = {
        "max_steps": settings.run_max_steps,
        "max_tools_per_step": settings.run_max_tools_per_step,
        "max_tool_calls": settings.run_max_tool_calls,
    }
    resolved = types_pb2.RunLimits(max_tokens=got.max_tokens)
    for name, cap in caps.items():
        value = getattr(got, name)
        if not 0 <= value <= cap:
            raise InvalidArgument(f"limits.{name}", f"{value}; give 0-{cap} (0: {cap})")
        setattr(resolved, name, value or cap)
    if got.max_tokens < 0:
        raise InvalidArgument("limits.max_tokens", f"{got.max_tokens}; give 0 or more")
    return resolved


def run_of_event(
    request: events_pb2.AgentRequested, tenant: str, settings: Settings
) -> types_pb2.Run:
    """The run an `AgentRequested` at step 0 starts when no gateway recorded it: the
    producer chose its id, so a redelivered event finds the same run."""
    violations: list[tuple[str, str]] = []
    for field, value, is_tenant, required in (
        ("run_id", request.run_id, False, True),
        ("tenant_id", tenant, True, True),
        ("conversation_id", request.conversation_id, False, False),
    ):
        if not value:
            if required:
                violations.append((field, "required"))
            continue
        try:
            check_id(field, value, tenant=is_tenant)
        except ContextValueError as bad:
            violations.append((field, bad.description))
    if not request.prompt.strip():
        violations.append(("prompt", "required"))
    elif (size := len(request.prompt.encode("utf-8"))) > MAX_PROMPT_BYTES:
        violations.append(("prompt", f"{size} bytes; at most {MAX_PROMPT_BYTES} (UTF-8)"))
    if request.priority not in _PRIORITIES:
        violations.append(("priority", f"{request.priority} is not a Priority"))
    if violations:
        raise InvalidArgument.of(violations, reason="INVALID_RUN_REQUEST")
    return types_pb2.Run(
        run_id=request.run_id,
        tenant_id=tenant,
        # The record key is the conversation: a run without one is its own conversation.
        conversation_id=request.conversation_id or request.run_id,
        prompt=request.prompt,
        priority=request.priority or types_pb2.PRIORITY_NORMAL,
        limits=resolve_limits(request.limits, settings),
    )
