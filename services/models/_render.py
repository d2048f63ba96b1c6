"""How the scripted model puts tool results into words.

It sees only `ToolResult`s (name, status, output, error message), not the calls that made
them, so it pairs each result with what the clause asked for: a clause's calculator
results with its expressions in the order they were written. The planner writes a
call's `tool_call_id` as `<run>.<step>.<index>`, the index in plan order and zero-padded
(`r.0.010`); ids are compared with their numbers as numbers, so the order is the plan's
whether or not the index is padded (the eleventh call, "r.0.10" or "r.0.010", comes after
the third, "r.0.2" or "r.0.002"), and `step_of` reads the step either way.
Outputs are read leniently, since each tool chooses its output's shape:

- calculator: a number, a numeric string, or an object with `result` (or `value`) and
  optionally `expression`. "6*7" with 42 reads "6*7 = 42". A follow-up step ("add 8")
  has no expression in its clause, since its left side was the previous step's number:
  "42 + 8 = 50" when the tool returns its expression, "adding 8 gives 50" when it
  returns the number only;
- memory: recall reads a list (or an object holding one, e.g. `items`) of notes, strings
  or objects with `text`; remember and forget are confirmed from the clause, and a
  `forgotten` count of 0 is said as nothing to forget;
- retrieve: a list (or an object holding one, e.g. `matches`) of matches with `prompt`
  and `snippet`;
- clock: a string, or an object with `time`/`date`/`weekday`/`iso`/`timezone`;
- http_get: a string, or an object with `status` and `text` (or `body`); long text is cut;
- anything else: the output written out as text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from agentflux.v1 import types_pb2
from google.protobuf import struct_pb2

from services.models._arith import number_text
from services.models._clauses import Intent

__all__ = ["describe", "failure", "number_of", "step_of", "text_of", "value_of"]

_ID_PARTS = re.compile(r"(\d+)")
_LIMIT = 200  # characters of a fetched page or a long output quoted in an answer
_FAILED = {
    types_pb2.TOOL_CALL_STATUS_FAILED: "it failed",
    types_pb2.TOOL_CALL_STATUS_TIMED_OUT: "it timed out",
    types_pb2.TOOL_CALL_STATUS_CANCELLED: "the run was cancelled",
}


def value_of(value: struct_pb2.Value) -> Any:
    """A `google.protobuf.Value` as plain Python (None when it is unset)."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {key: value_of(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [value_of(item) for item in value.list_value.values]
    return None


def number_of(output: Any) -> float | None:
    """The number an output holds: itself, a numeric string, or an object's `result`."""
    if isinstance(output, Mapping):
        output = next((output[k] for k in ("result", "value", "answer") if k in output), None)
    if isinstance(output, bool):
        return None
    if isinstance(output, int | float):
        return float(output)
    if isinstance(output, str):
        try:
            return float(output.strip())
        except ValueError:
            return None
    return None


def text_of(output: Any, limit: int = _LIMIT) -> str:
    """Any output as short text."""
    if isinstance(output, float):
        text = number_text(output)
    elif isinstance(output, Mapping):
        text = ", ".join(f"{key}: {text_of(item, limit)}" for key, item in output.items())
    elif isinstance(output, list):
        text = "; ".join(text_of(item, limit) for item in output)
    else:
        text = "nothing" if output is None else str(output)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def failure(result: types_pb2.ToolResult) -> str:
    """Why a call did not succeed, as the answer says it."""
    reason = result.error_message or _FAILED.get(result.status, "it did not finish")
    return f"I could not run {result.name}: {reason}"


def _planned_order(result: types_pb2.ToolResult) -> list[tuple[int, str]]:
    """Call ids compared with their numbers as numbers: "r.0.2" before "r.0.10"."""
    return [
        (int(part), "") if part.isdecimal() else (-1, part)
        for part in _ID_PARTS.split(result.tool_call_id)
    ]


def step_of(result: types_pb2.ToolResult) -> int | None:
    """The step a result belongs to, read from its `tool_call_id` (`<run>.<step>.<index>`,
    padded or not); None when the id is not of that form."""
    parts = result.tool_call_id.rsplit(".", 2)
    if len(parts) == 3 and parts[1].isdecimal() and parts[2].isdecimal():
        return int(parts[1])
    return None


def describe(intent: Intent, results: Sequence[types_pb2.ToolResult]) -> list[str]:
    """One phrase per result of the step that served `intent`, in the order the calls
    were planned."""
    phrases = []
    calculated = 0
    for result in sorted(results, key=_planned_order):
        if result.status != types_pb2.TOOL_CALL_STATUS_SUCCEEDED:
            phrases.append(failure(result))
            calculated += result.name == "calculator"
            continue
        output = value_of(result.output)
        if result.name == "calculator":
            expression = (
                intent.expressions[calculated] if calculated < len(intent.expressions) else ""
            )
            phrases.append(_calculated(intent, expression, output))
            calculated += 1
        elif result.name == "memory":
            phrases.append(_memory(intent, output))
        elif result.name == "retrieve":
            phrases.append(_retrieved(intent.subject, output))
        elif result.name == "clock":
            phrases.append(_clock(intent.asks or "time", output))
        elif result.name == "http_get":
            phrases.append(_fetched(intent.subject, output))
        else:
            phrases.append(f"{result.name} returned {text_of(output)}")
    return phrases


def _calculated(intent: Intent, expression: str, output: Any) -> str:
    number = number_of(output)
    value = number_text(number) if number is not None else text_of(output)
    if isinstance(output, Mapping) and isinstance(output.get("expression"), str):
        expression = output["expression"]
    if expression:
        return f"{expression} = {value}"
    if intent.phrase:
        return f"{intent.phrase} gives {value}"
    return f"the calculator gave {value}"


def _items(output: Any) -> list[Any]:
    """The list an output is, or the first list it holds."""
    if isinstance(output, list):
        return output
    if isinstance(output, Mapping):
        return next((item for item in output.values() if isinstance(item, list)), [])
    return []


def _memory(intent: Intent, output: Any) -> str:
    if intent.kind == "remember":
        return f"noted: {intent.subject}"
    about = f" about {intent.subject}" if intent.subject else ""
    if intent.kind == "forget":
        forgotten = output.get("forgotten") if isinstance(output, Mapping) else None
        if forgotten == 0:
            return f"I had no notes{about} to forget"
        if intent.subject:
            return f"I have forgotten what you told me about {intent.subject}"
        return "I have forgotten everything you asked me to remember"
    notes = [
        text_of(item.get("text", item) if isinstance(item, Mapping) else item)
        for item in _items(output)
    ]
    if not notes:
        return f"you have not asked me to remember anything{about}"
    return f"you asked me to remember{about}: " + "; ".join(notes)


def _retrieved(query: str, output: Any) -> str:
    found = []
    for match in _items(output):
        if isinstance(match, Mapping) and "prompt" in match:
            said = f'you asked "{text_of(match["prompt"])}"'
            if match.get("snippet"):
                said += f' and I answered "{text_of(match["snippet"])}"'
            found.append(said)
        else:
            found.append(text_of(match))
    if not found:
        return f"I found nothing about {query}"
    return f"about {query}: " + "; ".join(found)


def _clock(asks: str, output: Any) -> str:
    if not isinstance(output, Mapping):
        return f"it is {text_of(output)}"
    keys = {
        "time": ("time", "iso", "datetime", "now"),
        "date": ("date", "iso", "datetime"),
        "day": ("weekday", "day", "date", "iso"),
    }[asks]
    said = next((text_of(output[key]) for key in keys if key in output), text_of(output))
    if asks == "date" and "weekday" in output and "weekday" not in said:
        said = f"{text_of(output['weekday'])}, {said}"
    zone = output.get("timezone") or output.get("tz")
    return f"{'it is' if asks == 'time' else 'today is'} {said}" + (f" ({zone})" if zone else "")


def _fetched(url: str, output: Any) -> str:
    if isinstance(output, Mapping):
        status = output.get("status", output.get("status_code"))
        body = output.get("text", output.get("body", output.get("content")))
        if body is not None:
            answered = f" answered {text_of(status)}" if status is not None else ""
            return f"the page {url}{answered}: {text_of(body)}"
    return f"the page {url} gave: {text_of(output)}"
