"""The scripted model: what it plans for each kind of clause, how it composes results, how
it streams and counts tokens, and how providers and templates are chosen. Pure unit
tests: no service, no broker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from agentflux.v1 import types_pb2
from google.protobuf import json_format, struct_pb2

from services.models import (
    COMPOSE_PLACEHOLDERS,
    TEMPLATES,
    ComposeRequest,
    Composition,
    ModelProvider,
    Plan,
    PlannedCall,
    PlanRequest,
    ScriptedProvider,
    ToolOffer,
    provider,
)
from services.runtime.config import Settings

SUCCEEDED = types_pb2.TOOL_CALL_STATUS_SUCCEEDED
FAILED = types_pb2.TOOL_CALL_STATUS_FAILED
TIMED_OUT = types_pb2.TOOL_CALL_STATUS_TIMED_OUT
ALL_TOOLS = ("calculator", "memory", "retrieve", "clock", "http_get")

model: ModelProvider = ScriptedProvider()


def offers(*names: str) -> list[ToolOffer]:
    return [ToolOffer(name, f"The {name} tool.", {"type": "object"}) for name in names]


def result(
    name: str, output: Any = None, status: int = SUCCEEDED, error: str = ""
) -> types_pb2.ToolResult:
    value = json_format.ParseDict(output, struct_pb2.Value()) if output is not None else None
    return types_pb2.ToolResult(
        tool_call_id=f"c{name}", name=name, status=status, output=value, error_message=error
    )


async def plan(
    prompt: str,
    step: int = 0,
    tools: Sequence[str] = ALL_TOOLS,
    previous: Sequence[types_pb2.ToolResult] = (),
    memory: Sequence[str] = (),
) -> Plan:
    request = PlanRequest(prompt, step, offers(*tools), previous_results=previous, memory=memory)
    return await model.plan(request)


async def compose(
    prompt: str,
    results: Sequence[types_pb2.ToolResult],
    step: int = 0,
    max_steps: int = 4,
    template: str = "",
    earlier: Sequence[types_pb2.ToolResult] = (),
) -> Composition:
    request = ComposeRequest(prompt, step, max_steps, results, template, earlier_results=earlier)
    return await model.compose(request)


def call_result(
    step: int, index: int, name: str, output: Any, run_id: str = "run-1", pad: bool = True
) -> types_pb2.ToolResult:
    """A result whose `tool_call_id` is the planner's: `<run>.<step>.<index:03d>` (or the
    older unpadded `<run>.<step>.<index>`)."""
    call = f"{run_id}.{step}.{index:03d}" if pad else f"{run_id}.{step}.{index}"
    done = result(name, output)
    done.tool_call_id = call
    return done


async def answer_of(composition: Composition) -> tuple[str, list[str]]:
    """The answer and the deltas it came in."""
    assert not composition.next_step
    assert composition.deltas is not None
    deltas = [delta async for delta in composition.deltas]
    return "".join(deltas), deltas


async def answer(prompt: str, results: Sequence[types_pb2.ToolResult], **kwargs: Any) -> str:
    text, _ = await answer_of(await compose(prompt, results, **kwargs))
    return text


# -- plans -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "calls"),
    [
        ("what is 6*7", [("calculator", {"expression": "6*7"})]),
        ("What is (2+3)**2?", [("calculator", {"expression": "(2+3)**2"})]),
        ("what is 2^10", [("calculator", {"expression": "2**10"})]),
        (
            "what is 6*7 and 12/4",
            [("calculator", {"expression": "6*7"}), ("calculator", {"expression": "12/4"})],
        ),
        ("Remember that I like tea", [("memory", {"action": "remember", "text": "I like tea"})]),
        ("note: buy milk", [("memory", {"action": "remember", "text": "buy milk"})]),
        ("what do you remember?", [("memory", {"action": "recall"})]),
        ("do you remember anything about tea", [("memory", {"action": "recall", "text": "tea"})]),
        ("What did I ask you to remember", [("memory", {"action": "recall"})]),
        ("forget that I like tea", [("memory", {"action": "forget", "text": "I like tea"})]),
        ("forget everything", [("memory", {"action": "forget"})]),
        ("what did I say about Kafka?", [("retrieve", {"query": "Kafka"})]),
        ("what did you answer about the budget", [("retrieve", {"query": "the budget"})]),
        ("search for rabbitmq", [("retrieve", {"query": "rabbitmq"})]),
        ("what time is it", [("clock", {})]),
        ("what's the date in Europe/Paris?", [("clock", {"timezone": "Europe/Paris"})]),
        ("What day is it today in UTC", [("clock", {"timezone": "UTC"})]),
        ("fetch https://example.com/a?b=1", [("http_get", {"url": "https://example.com/a?b=1"})]),
        ("get example.org", [("http_get", {"url": "https://example.org"})]),
    ],
)
async def test_a_clause_plans_its_tool_calls(prompt: str, calls: list[tuple[str, Any]]) -> None:
    planned = await plan(prompt)
    assert planned.answer == ""
    assert [(call.name, dict(call.arguments)) for call in planned.calls] == calls


@pytest.mark.parametrize("prompt", ["what is 42", "get me a coffee", "see you on 2024-01-05"])
async def test_what_is_not_a_request_gets_a_helpful_direct_answer(prompt: str) -> None:
    planned = await plan(prompt)
    assert planned.calls == ()
    assert "I can work out arithmetic" in planned.answer
    assert '"then"' in planned.answer  # says how to ask for several things


async def test_a_direct_answer_lists_only_the_tools_offered() -> None:
    planned = await plan("hello", tools=["clock"])
    assert planned.answer.startswith("Hello!")
    assert "tell the time" in planned.answer
    assert "arithmetic" not in planned.answer
    assert "no tools" in (await plan("hello", tools=[])).answer


async def test_a_direct_answer_uses_the_conversation_memory() -> None:
    planned = await plan("what is my name", memory=["my name is Ana", "I like tea"])
    assert "my name is Ana" in planned.answer
    assert "I like tea" not in planned.answer  # only what bears on the question
    unrelated = await plan("good morning", memory=["my name is Ana"])
    assert "I remember one note" in unrelated.answer


@pytest.mark.parametrize(
    ("prompt", "tool"),
    [
        ("what is 6*7", "calculator"),
        ("remember the milk", "memory"),
        ("what time is it", "clock"),
        ("fetch https://example.com", "http_get"),
        ("search for kafka", "retrieve"),
    ],
)
async def test_a_tool_not_offered_is_never_called(prompt: str, tool: str) -> None:
    others = [name for name in ALL_TOOLS if name != tool]
    planned = await plan(prompt, tools=others)
    assert planned.calls == ()
    assert f"I would need the {tool} tool" in planned.answer
    assert "not offered" in planned.answer


async def test_a_zone_that_is_not_an_iana_name_is_asked_for_again() -> None:
    planned = await plan("what time is it in new york")
    assert planned.calls == ()
    assert "IANA" in planned.answer
    assert "new york" in planned.answer


async def test_step_n_plans_clause_n() -> None:
    prompt = "remember tea THEN what time is it; what is 1+1"
    assert (await plan(prompt, step=0)).calls[0].name == "memory"
    assert (await plan(prompt, step=1)).calls[0].name == "clock"
    assert (await plan(prompt, step=2)).calls[0].arguments == {"expression": "1+1"}


@pytest.mark.parametrize(
    ("clause", "previous", "expression"),
    [
        ("add 8", 42.0, "42 + 8"),
        ("subtract 2 from it", 42.0, "42 - 2"),
        ("multiply it by 3", 42.0, "42 * 3"),
        ("divide by 4", 42.0, "42 / 4"),
        ("double it", 2.5, "2.5 * 2"),
        ("square it", -5.0, "(-5) ** 2"),
        ("times 2+1", 7.0, "7 * (2+1)"),
    ],
)
async def test_a_follow_up_goes_on_from_the_previous_number(
    clause: str, previous: float, expression: str
) -> None:
    planned = await plan(
        f"what is 6*7 then {clause}", step=1, previous=[result("calculator", previous)]
    )
    assert [dict(call.arguments) for call in planned.calls] == [{"expression": expression}]


async def test_a_follow_up_on_a_fan_out_goes_on_from_each_number() -> None:
    previous = [result("calculator", 42), result("calculator", 3)]
    planned = await plan("6*7 and 12/4 then add 8", step=1, previous=previous)
    assert planned.calls == [
        PlannedCall("calculator", {"expression": "42 + 8"}),
        PlannedCall("calculator", {"expression": "3 + 8"}),
    ]


async def test_a_follow_up_without_a_number_answers_and_says_why() -> None:
    failed = result("calculator", status=FAILED, error="division by zero")
    planned = await plan("what is 1/0 then add 8", step=1, previous=[failed])
    assert planned.calls == ()
    assert "I could not run calculator: division by zero" in planned.answer
    assert "cannot go on with adding 8" in planned.answer


async def test_a_direct_answer_later_in_a_run_reports_the_step_before_and_what_is_left() -> None:
    prompt = "what is 6*7 then hello then what time is it"
    planned = await plan(prompt, step=1, previous=[result("calculator", 42)])
    assert planned.answer.startswith("6*7 = 42. Hello!")
    assert 'I did not get to "what time is it"' in planned.answer


# -- composition -----------------------------------------------------------------------


async def test_compose_continues_while_a_clause_remains_within_the_budget() -> None:
    composition = await compose("what is 6*7 then add 8", [result("calculator", 42)], max_steps=2)
    assert composition.next_step
    assert composition.deltas is None


async def test_compose_answers_the_last_clause_from_its_results() -> None:
    prompt = "what is 6*7 and 12/4"
    text = await answer(prompt, [result("calculator", 42), result("calculator", 3)])
    assert text == "6*7 = 42; 12/4 = 3."
    final = await answer("6*7 then add 8", [result("calculator", 50)], step=1)
    assert final == "Adding 8 gives 50."
    echoed = {"expression": "42 + 8", "result": 50}
    assert await answer("6*7 then add 8", [result("calculator", echoed)], step=1) == "42 + 8 = 50."


@pytest.mark.parametrize("call_id", ["run.0.{n}", "run.0.{n:03d}", "r.1.x.0.{n:03d}"])
async def test_results_are_read_in_the_order_their_calls_were_planned(call_id: str) -> None:
    prompt = " and ".join(f"{n}+0" for n in range(12))
    results = [
        types_pb2.ToolResult(
            tool_call_id=call_id.format(n=n),
            name="calculator",
            status=SUCCEEDED,
            output=struct_pb2.Value(number_value=n),
        )
        for n in range(12)
    ]
    results.sort(key=lambda r: r.tool_call_id)  # unpadded, as strings: "0.10" before "0.2"
    results.reverse()
    text = await answer(prompt, results)
    assert text == "; ".join(f"{n}+0 = {n}" for n in range(12)) + "."


# -- the whole run's history ----------------------------------------------------------


async def test_the_answer_reports_the_earlier_steps_before_the_last() -> None:
    earlier = [call_result(0, 0, "calculator", 42)]
    prompt = "what is 6*7 then add 8"
    final = await answer(prompt, [call_result(1, 0, "calculator", 50)], step=1, earlier=earlier)
    assert final == "6*7 = 42; adding 8 gives 50."
    echoed = call_result(1, 0, "calculator", {"expression": "42 + 8", "result": 50})
    assert await answer(prompt, [echoed], step=1, earlier=earlier) == "6*7 = 42; 42 + 8 = 50."


async def test_each_earlier_step_is_read_with_its_own_clause() -> None:
    prompt = "what is 6*7 and 12/4 then add 8 then double it"
    earlier = [
        call_result(0, 0, "calculator", 42),
        call_result(0, 1, "calculator", 3),
        call_result(1, 0, "calculator", 50),
        call_result(1, 1, "calculator", 11),
    ]
    last = [call_result(2, 0, "calculator", 100), call_result(2, 1, "calculator", 22)]
    text = await answer(prompt, last, step=2, earlier=earlier)
    assert text == (
        "6*7 = 42; 12/4 = 3; adding 8 gives 50; adding 8 gives 11; "
        "doubling gives 100; doubling gives 22."
    )


@pytest.mark.parametrize("pad", [True, False])
async def test_earlier_steps_past_ten_are_grouped_by_the_step_their_ids_name(pad: bool) -> None:
    # Twelve clauses ("add 1" at step 1 ... "add 11" at step 11); step 11 composes. The
    # ids name steps 0..10, padded or not, and the run id has dots of its own.
    prompt = "what is 1+1 then " + " then ".join(f"add {k}" for k in range(1, 12))
    earlier = [call_result(0, 0, "calculator", 2, run_id="run.x", pad=pad)] + [
        call_result(k, 0, "calculator", 100 + k, run_id="run.x", pad=pad) for k in range(1, 11)
    ]
    earlier.sort(key=lambda r: r.tool_call_id)  # as strings: step 10 before step 2
    earlier.reverse()  # whatever order they come in, the answer goes step by step
    last = [call_result(11, 0, "calculator", 111, run_id="run.x", pad=pad)]
    text = await answer(prompt, last, step=11, earlier=earlier)
    each = "; ".join(f"adding {k} gives {100 + k}" for k in range(1, 12))
    assert text == f"1+1 = 2; {each}."


async def test_an_earlier_step_is_reported_briefly_and_the_last_in_full() -> None:
    page = {"status": 200, "text": "word " * 100}
    earlier = [call_result(0, 0, "http_get", page)]
    prompt = "fetch https://example.com then fetch https://example.org"
    text = await answer(prompt, [call_result(1, 0, "http_get", page)], step=1, earlier=earlier)
    brief, full = text.split("; ", 1)
    assert brief.startswith("The page https://example.com answered 200: word word")
    assert len(brief) <= 80
    assert brief.endswith("\u2026")
    assert full.startswith("the page https://example.org answered 200: word word")
    assert len(full) > 200


async def test_earlier_results_with_ids_of_another_form_are_still_reported() -> None:
    earlier = [result("calculator", 42)]  # tool_call_id "ccalculator": no step in it
    text = await answer(
        "what is 6*7 then add 8", [result("calculator", 50)], step=1, earlier=earlier
    )
    assert text == "The calculator gave 42; adding 8 gives 50."


async def test_a_last_step_without_results_still_reports_the_earlier_ones() -> None:
    earlier = [call_result(0, 0, "calculator", 42)]
    text = await answer("what is 6*7 then what time is it", [], step=1, earlier=earlier)
    assert text == "6*7 = 42. I ran no tools in this step, so I have nothing to report."


async def test_the_budget_answer_reports_the_earlier_steps_and_names_what_is_left() -> None:
    prompt = "what is 6*7 then add 8 then double it"
    earlier = [call_result(0, 0, "calculator", 42)]
    last = [call_result(1, 0, "calculator", 50)]
    text = await answer(prompt, last, step=1, max_steps=2, earlier=earlier)
    assert text.startswith("6*7 = 42; adding 8 gives 50. I stopped at the run's step budget")
    assert '"double it"' in text


async def test_the_earlier_results_are_read_tokens() -> None:
    prompt = "what is 6*7 then add 8"
    last = [call_result(1, 0, "calculator", 50)]
    alone = await compose(prompt, last, step=1)
    earlier = [call_result(0, 0, "calculator", 42)]
    with_history = await compose(prompt, last, step=1, earlier=earlier)
    read_more = with_history.usage.prompt_tokens - alone.usage.prompt_tokens
    assert read_more == 3  # "6*7 = 42;"
    # Going on reads them too, and writes nothing.
    going_on = await compose(prompt + " then double it", last, step=1, earlier=earlier)
    assert going_on.next_step
    assert going_on.usage.completion_tokens == 0
    assert going_on.usage.prompt_tokens > alone.usage.prompt_tokens


def test_compose_requests_without_earlier_results_are_still_valid() -> None:
    request = ComposeRequest("what is 6*7", 0, 4, [], "")
    assert request.earlier_results == ()


async def test_when_the_budget_is_used_up_it_answers_and_names_what_is_left() -> None:
    prompt = "what is 6*7 then add 8 then double it"
    text = await answer(prompt, [result("calculator", 42)], step=0, max_steps=1)
    assert text.startswith("6*7 = 42.")
    assert "step budget of 1 step" in text
    assert '"add 8", "double it"' in text


async def test_failures_are_reported_with_their_error_message() -> None:
    results = [
        result("calculator", 42),
        result("calculator", status=FAILED, error="division by zero"),
    ]
    text = await answer("what is 6*7 and 1/0", results)
    assert text == "6*7 = 42; I could not run calculator: division by zero."
    timed_out = await answer("what time is it", [result("clock", status=TIMED_OUT)])
    assert timed_out == "I could not run clock: it timed out."


async def test_no_results_is_said_plainly() -> None:
    assert "nothing to report" in await answer("what time is it", [])


CLOCK = {
    "timezone": "Europe/Paris",
    "iso": "2025-01-01T10:00:00+01:00",
    "date": "2025-01-01",
    "time": "10:00:00",
    "weekday": "Wednesday",
    "utc_offset": "+01:00",
    "unix": 1735722000,
}


# The outputs are shaped as the built-in tools (services/tools) return them.
@pytest.mark.parametrize(
    ("prompt", "tool_result", "expected"),
    [
        (
            "remember I like tea",
            result("memory", {"remembered": "I like tea", "repeated": False, "count": 1}),
            "Noted: I like tea.",
        ),
        (
            "what do you remember",
            result("memory", {"items": ["I like tea", "buy milk"], "count": 2, "total": 2}),
            "You asked me to remember: I like tea; buy milk.",
        ),
        (
            "what did I tell you to remember about tea",
            result("memory", {"items": [], "count": 0, "total": 3}),
            "You have not asked me to remember anything about tea.",
        ),
        (
            "forget everything",
            result("memory", {"forgotten": 2, "repeated": False}),
            "I have forgotten everything you asked me to remember.",
        ),
        (
            "forget about tea",
            result("memory", {"forgotten": 0, "repeated": False}),
            "I had no notes about tea to forget.",
        ),
        (
            "what did I say about tea",
            result(
                "retrieve",
                {
                    "query": "tea",
                    "matches": [
                        {"run_id": "r1", "prompt": "I like tea", "snippet": "Noted.", "score": 1}
                    ],
                },
            ),
            'About tea: you asked "I like tea" and I answered "Noted."',
        ),
        (
            "search for kafka",
            result("retrieve", {"query": "kafka", "matches": []}),
            "I found nothing about kafka.",
        ),
        (
            "what time is it in Europe/Paris",
            result("clock", CLOCK),
            "It is 10:00:00 (Europe/Paris).",
        ),
        (
            "what's the date in Europe/Paris",
            result("clock", CLOCK),
            "Today is Wednesday, 2025-01-01 (Europe/Paris).",
        ),
        ("what day is it", result("clock", CLOCK), "Today is Wednesday (Europe/Paris)."),
        ("what time is it", result("clock", "10:00"), "It is 10:00."),
        (
            "fetch https://example.com",
            result(
                "http_get",
                {
                    "url": "https://example.com",
                    "status": 200,
                    "content_type": "text/html",
                    "text": "<p>hello\n  world</p>",
                    "truncated": False,
                },
            ),
            "The page https://example.com answered 200: <p>hello world</p>.",
        ),
    ],
)
async def test_each_tool_result_is_put_into_words(
    prompt: str, tool_result: types_pb2.ToolResult, expected: str
) -> None:
    assert await answer(prompt, [tool_result]) == expected


# -- streaming and usage ---------------------------------------------------------------


async def test_deltas_join_to_the_answer_and_come_in_several_small_pieces() -> None:
    failed = result("calculator", status=FAILED, error="division by zero")
    composition = await compose("what is 1/0 then add 8", [failed], max_steps=1)
    text, deltas = await answer_of(composition)
    assert len(deltas) > 3
    assert all(1 <= len(delta.split()) <= 3 for delta in deltas)
    assert text.startswith("I could not run calculator: division by zero.")
    assert composition.usage.completion_tokens == len(text.split())


async def test_usage_is_deterministic_and_adds_up() -> None:
    first, again = await plan("what is 6*7"), await plan("what is 6*7")
    assert first.usage == again.usage
    assert first.usage.prompt_tokens > 0
    assert first.usage.completion_tokens > 0
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    longer = await plan("please what is 6*7")
    assert longer.usage.prompt_tokens == first.usage.prompt_tokens + 1

    direct = await plan("hello", tools=[])
    assert direct.usage.completion_tokens == len(direct.answer.split())

    composed = await compose("what is 6*7", [result("calculator", 42)])
    usage = composed.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    going_on = await compose("6*7 then add 8", [result("calculator", 42)])
    assert going_on.usage.completion_tokens == 0
    assert going_on.usage.total_tokens == going_on.usage.prompt_tokens > 0


# -- templates and providers -----------------------------------------------------------


def test_the_built_in_templates_format_with_their_documented_placeholders() -> None:
    pieces = {name: f"<{name}>" for name in COMPOSE_PLACEHOLDERS}
    assert TEMPLATES["compose"].format(**pieces) == "<results> <unfinished>"


async def test_the_answer_is_composed_from_the_template() -> None:
    template = "Step {step} of {max_steps}, for {prompt!r}: {results}"
    text = await answer("what is 6*7", [result("calculator", 42)], template=template)
    assert text == "Step 1 of 4, for 'what is 6*7': 6*7 = 42."


@pytest.mark.parametrize(
    "template",
    ["", "Answer: {answer}", "{results", "{0} {results}", "No results here.", "{step:q} {results}"],
)
async def test_a_template_that_cannot_be_used_falls_back_to_the_built_in(
    template: str, caplog: pytest.LogCaptureFixture
) -> None:
    text = await answer("what is 6*7", [result("calculator", 42)], template=template)
    assert text == "6*7 = 42."
    if template:  # an operator's broken copy is worth a warning; no template is not
        assert "not usable" in caplog.text


def test_the_provider_is_chosen_by_name() -> None:
    assert isinstance(provider(Settings(_env_file=None)), ScriptedProvider)  # type: ignore[call-arg]
    chosen = provider(Settings(_env_file=None, model_provider=" Scripted "))  # type: ignore[call-arg]
    assert chosen.name == "scripted"


def test_an_unknown_provider_is_an_error_naming_the_known_ones() -> None:
    settings = Settings(_env_file=None, model_provider="gpt-9")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"'gpt-9'.*known: scripted"):
        provider(settings)
