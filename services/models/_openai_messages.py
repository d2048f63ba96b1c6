"""What the `openai` provider sends and how it reads the model's tool calls.

A run is told to the model as a chat: the instructions, the conversation's memory, the
caller's prompt, then each step taken so far as the assistant's tool calls (with the
arguments it gave) followed by one `tool` message per result. Tool calls in a reply are
read strictly: arguments that are not a JSON object, a tool that was not offered or
arguments that break the tool's schema make the reply malformed, and the model is told
exactly what was wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentflux.v1 import types_pb2
from google.protobuf import json_format
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
    ChatCompletionMessageToolCallUnion,
    ChatCompletionMessageToolCallUnionParam,
    ChatCompletionToolMessageParam,
)

from services.models._provider import ComposeRequest, PlannedCall, PlanRequest, ToolOffer
from services.models._render import step_of

__all__ = [
    "Malformed",
    "compose_messages",
    "correction",
    "plan_messages",
    "read_calls",
    "tool_params",
]

PLAN_SYSTEM = (
    "You are the planner of an agent runtime. Answer the user's request directly when no "
    "tool is needed. Otherwise call the tools that serve it; calls in one reply run at "
    "once, so call together only what does not depend on another call's result. Tool "
    "results come back as tool messages; use them to decide the next calls or to answer."
)
COMPOSE_SYSTEM = (
    "You are the composer of an agent runtime. The tool calls made for the user's request "
    "and their results follow. Answer the request from them, plainly and completely; say "
    "which calls failed, if any."
)
COMPOSE_MORE = " If the results are not enough to answer, call the tools that are needed."
_NOT_RUN = "not run: another call in this reply was malformed; ask for every call again"


def tool_params(offers: Sequence[ToolOffer]) -> list[ChatCompletionFunctionToolParam]:
    """The offered tools as chat-completions function tools."""
    return [
        {
            "type": "function",
            "function": {
                "name": offer.name,
                "description": offer.description,
                "parameters": dict(offer.schema),
            },
        }
        for offer in offers
    ]


def _opening(
    system: str, prompt: str, memory: Sequence[str], session: Mapping[str, str]
) -> list[ChatCompletionMessageParam]:
    messages: list[ChatCompletionMessageParam] = [{"role": "system", "content": system}]
    if memory:
        notes = "\n".join(f"- {note}" for note in memory)
        messages.append(
            {
                "role": "system",
                "content": f"What this conversation remembers, newest first:\n{notes}",
            }
        )
    if session:
        facts = "\n".join(f"- {key}: {value}" for key, value in sorted(session.items()))
        messages.append({"role": "system", "content": f"Session:\n{facts}"})
    messages.append({"role": "user", "content": prompt})
    return messages


def _output(result: types_pb2.ToolResult) -> str:
    if result.status == types_pb2.TOOL_CALL_STATUS_SUCCEEDED:
        if not result.HasField("output"):
            return "null"
        return json.dumps(json_format.MessageToDict(result.output), ensure_ascii=False)
    status = types_pb2.ToolCallStatus.Name(result.status).removeprefix("TOOL_CALL_STATUS_")
    why = result.error_message or status.lower().replace("_", " ")
    return json.dumps({"error": why, "status": status.lower()}, ensure_ascii=False)


def _steps(
    history: Iterable[types_pb2.ToolCall],
    results: Iterable[types_pb2.ToolResult],
    fallback_step: int,
) -> list[ChatCompletionMessageParam]:
    """Each step's calls as one assistant message, then its results as tool messages.

    A call is told only with its result: the chat format needs every call answered, and a
    call without a result is not something the model can use. A result whose call is not
    in `history` gets a call with the result's tool name and no arguments."""
    calls = {call.tool_call_id: call for call in history}
    by_step: dict[int, list[types_pb2.ToolResult]] = {}
    seen: set[str] = set()
    for result in results:
        if result.tool_call_id in seen:
            continue
        seen.add(result.tool_call_id)
        call = calls.get(result.tool_call_id)
        if call is not None:
            step = call.step
        else:
            read = step_of(result)
            step = fallback_step if read is None else read
        by_step.setdefault(step, []).append(result)
    messages: list[ChatCompletionMessageParam] = []
    for _, group in sorted(by_step.items()):
        group.sort(key=lambda result: result.tool_call_id)
        asked: list[ChatCompletionMessageFunctionToolCallParam] = []
        for result in group:
            call = calls.get(result.tool_call_id)
            arguments = json_format.MessageToDict(call.arguments) if call is not None else {}
            name = call.name if call is not None else result.name
            asked.append(_function_call(result.tool_call_id, name, _dumps(arguments)))
        messages.append({"role": "assistant", "content": None, "tool_calls": asked})
        messages += [_tool_message(result.tool_call_id, _output(result)) for result in group]
    return messages


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _function_call(
    tool_call_id: str, name: str, arguments: str
) -> ChatCompletionMessageFunctionToolCallParam:
    return {
        "id": tool_call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _tool_message(tool_call_id: str, content: str) -> ChatCompletionToolMessageParam:
    return {"role": "tool", "tool_call_id": tool_call_id, "content": content}


def plan_messages(request: PlanRequest) -> list[ChatCompletionMessageParam]:
    """The chat that asks for step `request.step`'s plan."""
    messages = _opening(PLAN_SYSTEM, request.prompt, request.memory, request.session)
    if request.step > 0:
        results = [*request.earlier_results, *request.previous_results]
        messages += _steps(request.history, results, request.step - 1)
    return messages


def compose_messages(
    request: ComposeRequest, *, may_go_on: bool
) -> list[ChatCompletionMessageParam]:
    """The chat that asks for the answer (or, when `may_go_on`, for more calls)."""
    system = COMPOSE_SYSTEM + (COMPOSE_MORE if may_go_on else "")
    messages = _opening(system, request.prompt, request.memory, {})
    results = [*request.earlier_results, *request.results]
    return messages + _steps(request.history, results, request.step)


@dataclass(frozen=True, slots=True)
class Malformed:
    """A tool call the model got wrong, and why."""

    tool_call_id: str
    name: str
    reason: str


def _call_id(call: ChatCompletionMessageToolCallUnion, index: int) -> str:
    # Some servers leave ids out; the reply's calls still need ids to be answered.
    return call.id or f"call_{index}"


def read_calls(
    tool_calls: Sequence[ChatCompletionMessageToolCallUnion], offers: Sequence[ToolOffer]
) -> tuple[list[PlannedCall], list[Malformed]]:
    """The calls of a reply, and the ones among them that cannot be run."""
    offered = {offer.name: offer for offer in offers}
    calls: list[PlannedCall] = []
    wrong: list[Malformed] = []
    for index, call in enumerate(tool_calls):
        call_id = _call_id(call, index)
        if call.type != "function":
            wrong.append(Malformed(call_id, call.custom.name, "only function tools are offered"))
            continue
        name, raw = call.function.name, call.function.arguments
        offer = offered.get(name)
        if offer is None:
            known = ", ".join(sorted(offered)) or "none"
            wrong.append(Malformed(call_id, name, f"unknown tool {name!r}; offered: {known}"))
            continue
        try:
            arguments = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            wrong.append(Malformed(call_id, name, f"arguments are not valid JSON ({exc})"))
            continue
        if not isinstance(arguments, dict):
            wrong.append(Malformed(call_id, name, "arguments are not a JSON object"))
            continue
        error = best_match(Draft202012Validator(dict(offer.schema)).iter_errors(arguments))
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path)
            at = f" at {where}" if where else ""
            wrong.append(
                Malformed(call_id, name, f"arguments break the schema{at}: {error.message}")
            )
            continue
        calls.append(PlannedCall(name, arguments))
    return calls, wrong


def correction(
    content: str | None,
    tool_calls: Sequence[ChatCompletionMessageToolCallUnion],
    wrong: Sequence[Malformed],
) -> list[ChatCompletionMessageParam]:
    """The reply as the model gave it, then an answer to each of its calls: what was wrong
    with each malformed one, and that the others were not run."""
    asked: list[ChatCompletionMessageToolCallUnionParam] = []
    for index, call in enumerate(tool_calls):
        call_id = _call_id(call, index)
        if call.type == "function":
            asked.append(_function_call(call_id, call.function.name, call.function.arguments))
        else:
            asked.append(
                {
                    "id": call_id,
                    "type": "custom",
                    "custom": {"name": call.custom.name, "input": call.custom.input},
                }
            )
    reasons = {problem.tool_call_id: problem.reason for problem in wrong}
    messages: list[ChatCompletionMessageParam] = [
        {"role": "assistant", "content": content, "tool_calls": asked}
    ]
    for index, call in enumerate(tool_calls):
        call_id = _call_id(call, index)
        reason = reasons.get(call_id)
        text = f"error: {reason}; call it again, correctly" if reason else _NOT_RUN
        messages.append(_tool_message(call_id, text))
    return messages
