"""The scripted model: deterministic and offline, so every part of agentflux runs (and is
tested end to end) with no model service.

It reads a prompt as a list of clauses joined by "then" (or ";"); step N of a run plans
clause N, by the grammar in `services.models._clauses`: arithmetic fans out to one
calculator call per expression, "add 8" goes on from the previous step's number, and
remember/recall/forget, search, time and fetch requests call the memory, retrieve,
clock and http_get tools. A tool that is not offered is never called: the model answers
directly and says which tool it lacks. Anything else gets a direct answer that uses the
conversation's memory and says what the model can do.

Composing goes on to the next step while a clause remains and the step budget allows
(`step + 1 < max_steps`); otherwise it answers, and names the clauses the budget left
undone. The answer reports the whole run: the earlier steps briefly (each result in at
most a line, read with the clause of its step, which its `tool_call_id` names), then
the last step ("6*7 then add 8" answers "6*7 = 42; adding 8 gives 50.", or "6*7 = 42;
42 + 8 = 50." when the calculator returns its expression). A direct answer at a later
step reports the step before it, whose results the planner has. A direct answer ends
the run, so clauses after it are named as not done.

Tokens are counted as whitespace-separated words, read and written. Planning reads the
prompt, the memory, the previous step's results (in words) and the tools offered (name
and description), and writes the answer or each call as `name {json arguments}`.
Composing reads the prompt, the memory and the run's results (in words), and writes the
answer (nothing when it goes on).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence

from agentflux.v1 import types_pb2

from services.models._arith import operand
from services.models._clauses import Intent, read, split
from services.models._provider import (
    ComposeRequest,
    Composition,
    Plan,
    PlannedCall,
    PlanRequest,
)
from services.models._render import describe, number_of, step_of, text_of, value_of
from services.models._replies import chat, leftover, not_offered, sentence
from services.models._templates import TEMPLATES, fill

__all__ = ["ScriptedProvider"]

log = logging.getLogger(__name__)
_PIECE_WORDS = 3  # words per streamed delta
_BRIEF = 80  # characters of an earlier step's result in an answer
_PIECE = re.compile(r"\S+\s*")


def _tokens(*texts: str | Iterable[str]) -> int:
    return sum(
        len(part.split()) for text in texts for part in ([text] if isinstance(text, str) else text)
    )


def _usage(read_tokens: int, written: int) -> types_pb2.Usage:
    return types_pb2.Usage(
        prompt_tokens=read_tokens, completion_tokens=written, total_tokens=read_tokens + written
    )


def _earlier(clauses: Sequence[str], results: Sequence[types_pb2.ToolResult]) -> list[str]:
    """A short phrase per result of the earlier steps, in step order, each read with the
    clause of its step (results whose step is unknown first, plainly)."""
    steps: dict[int | None, list[types_pb2.ToolResult]] = {}
    for result in results:
        steps.setdefault(step_of(result), []).append(result)
    phrases = []
    for step, group in sorted(steps.items(), key=lambda item: -1 if item[0] is None else item[0]):
        intent = Intent("chat", "")
        if step is not None and step < len(clauses):
            intent = read(clauses[step])
        phrases += [text_of(phrase, _BRIEF) for phrase in describe(intent, group)]
    return phrases


async def _deltas(text: str) -> AsyncIterator[str]:
    pieces = _PIECE.findall(text)
    for start in range(0, len(pieces), _PIECE_WORDS):
        yield "".join(pieces[start : start + _PIECE_WORDS])


class ScriptedProvider:
    """A tiny rule-following model (see the module doc). Stateless: one instance serves
    every run."""

    name: str = "scripted"
    # Plans from the prompt and the step before alone: the run's earlier calls are not read.
    uses_history = False

    async def plan(self, request: PlanRequest) -> Plan:
        """Calls for clause `request.step` of the prompt, or a direct answer: when the
        clause needs no tool or one that is not offered, when it goes on from a number
        the step before did not give, or when no clause is left."""
        clauses = split(request.prompt)
        carried = ""
        if request.step > 0 and request.step - 1 < len(clauses):
            carried = sentence(describe(read(clauses[request.step - 1]), request.previous_results))
        offers = [f"{offer.name} {offer.description}" for offer in request.tools]
        read_tokens = _tokens(request.prompt, request.memory, carried, offers)
        offered = {offer.name for offer in request.tools}
        if request.step < len(clauses):
            intent = read(clauses[request.step])
            calls, reply = self._calls(intent, request, offered)
            if calls:
                written = [
                    f"{call.name} {json.dumps(call.arguments, sort_keys=True)}" for call in calls
                ]
                return Plan(calls=calls, usage=_usage(read_tokens, _tokens(written)))
            rest = clauses[request.step + 1 :]
            if rest:
                reply += f" I did not get to {leftover(rest)}."
        elif clauses:
            reply = "That is everything you asked."
        else:
            reply = chat("", request.memory, offered)
        answer = f"{carried} {reply}".strip()
        return Plan(answer=answer, usage=_usage(read_tokens, _tokens(answer)))

    def _calls(
        self, intent: Intent, request: PlanRequest, offered: set[str]
    ) -> tuple[list[PlannedCall], str]:
        """The calls that serve `intent`, or none and the direct answer instead."""
        if intent.kind == "chat":
            return [], chat(intent.text, request.memory, offered)
        if intent.tool not in offered:
            return [], not_offered(intent)
        if intent.kind == "arithmetic":
            return [PlannedCall("calculator", {"expression": e}) for e in intent.expressions], ""
        if intent.kind == "follow_up":
            return self._follow_up(intent, request.previous_results)
        if intent.kind == "clock":
            if intent.zone_named and not intent.timezone:
                return [], (
                    f'I know time zones by their IANA names, such as Europe/Paris or UTC, not "'
                    f'{intent.zone_named}".'
                )
            return [
                PlannedCall("clock", {"timezone": intent.timezone} if intent.timezone else {})
            ], ""
        if intent.kind == "remember" and not intent.subject:
            return [], 'What should I remember? Say "remember" and the note.'
        if intent.kind == "retrieve" and not intent.subject:
            return [], 'What should I search for? Say "search for" and the words.'
        text = {"text": intent.subject} if intent.subject else {}
        arguments = {
            "remember": {"action": "remember", **text},
            "recall": {"action": "recall", **text},
            "forget": {"action": "forget", **text},
            "retrieve": {"query": intent.subject},
            "fetch": {"url": intent.subject},
        }[intent.kind]
        return [PlannedCall(intent.tool, arguments)], ""

    def _follow_up(
        self, intent: Intent, previous: Sequence[types_pb2.ToolResult]
    ) -> tuple[list[PlannedCall], str]:
        """A calculator call per number the previous step gave ("add 8" to each)."""
        numbers = [
            number
            for result in previous
            if result.status == types_pb2.TOOL_CALL_STATUS_SUCCEEDED
            and (number := number_of(value_of(result.output))) is not None
        ]
        if not numbers:
            return (
                [],
                f"Without a number from the step before, I cannot go on with {intent.phrase}.",
            )
        return [
            PlannedCall(
                "calculator", {"expression": f"{operand(n)} {intent.operator} {intent.operand}"}
            )
            for n in numbers
        ], ""

    async def aclose(self) -> None:
        """Nothing to release: the scripted provider holds no connection."""

    async def compose(self, request: ComposeRequest) -> Composition:
        """Go on while a clause remains within the step budget; otherwise answer.

        The answer is `request.template` formatted with the pieces named in
        `COMPOSE_PLACEHOLDERS`. A template that is empty, malformed, names an unknown
        placeholder or leaves out `{results}` is not used: the built-in
        `TEMPLATES["compose"]` is (and a warning logged), so a bad copy in Memcached
        never fails a run. The deltas are a few words each and join to the answer."""
        clauses = split(request.prompt)
        intent = read(clauses[request.step]) if request.step < len(clauses) else Intent("chat", "")
        earlier = _earlier(clauses, request.earlier_results)
        last = describe(intent, request.results)
        if last:
            results = sentence(earlier + last)
        else:
            nothing = "I ran no tools in this step, so I have nothing to report."
            results = f"{sentence(earlier)} {nothing}".strip()
        read_tokens = _tokens(request.prompt, request.memory, results)
        rest = clauses[request.step + 1 :]
        if rest and request.step + 1 < request.max_steps:
            return Composition(next_step=True, usage=_usage(read_tokens, 0))
        unfinished = ""
        if rest:
            unfinished = (
                f"I stopped at the run's step budget of {request.max_steps} "
                f"step{'' if request.max_steps == 1 else 's'}, "
                f"so I did not get to {leftover(rest)}."
            )
        pieces = {
            "results": results,
            "unfinished": unfinished,
            "prompt": request.prompt,
            "memory": "; ".join(request.memory),
            "step": request.step + 1,
            "max_steps": request.max_steps,
        }
        answer, own = fill(request.template, pieces, TEMPLATES["compose"])
        if not own and request.template:
            log.warning(
                "the compose template %r is not usable; the built-in one is", request.template
            )
        return Composition(
            next_step=False, deltas=_deltas(answer), usage=_usage(read_tokens, _tokens(answer))
        )
