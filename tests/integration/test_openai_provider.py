"""The `openai` model provider against a real OpenAI-compatible HTTP server
(tests/fakes/openai_server.py): the requests it sends, how it reads replies and streams,
and what it does with faults. No brokers: the server is the only thing it talks to."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agentflux.v1 import types_pb2
from google.protobuf import struct_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from interceptors import FluxContext, bind
from services.models import (
    PROVIDERS,
    ComposeRequest,
    ModelError,
    OpenAIProvider,
    PlannedCall,
    PlanRequest,
    ToolOffer,
)
from services.runtime.config import Settings
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = "test-model"
CALCULATOR = ToolOffer(
    "calculator",
    "Evaluates an arithmetic expression.",
    {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
        "additionalProperties": False,
    },
)
CLOCK = ToolOffer(
    "clock",
    "The current time in a time zone.",
    {"type": "object", "properties": {"timezone": {"type": "string"}}},
)
TOOLS = (CALCULATOR, CLOCK)

Make = Callable[..., OpenAIProvider]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def make(fake: FakeOpenAI, spans: InMemorySpanExporter) -> AsyncIterator[Make]:
    """Builds providers pointed at `fake`, their spans going to `spans`."""
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(spans))
    made: list[OpenAIProvider] = []

    def build(**overrides: Any) -> OpenAIProvider:
        fields = {"model_provider": "openai", "model_base_url": fake.url, "model_name": MODEL}
        settings = Settings(_env_file=None, **(fields | overrides))
        provider = OpenAIProvider(settings, tracer_provider=tracing)
        made.append(provider)
        return provider

    yield build
    for provider in made:
        await provider.aclose()
    tracing.shutdown()


def struct(**fields: Any) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(fields)
    return value


def call(run: str, step: int, index: int, name: str, **arguments: Any) -> types_pb2.ToolCall:
    return types_pb2.ToolCall(
        tool_call_id=f"{run}.{step}.{index:03d}",
        name=name,
        arguments=struct(**arguments),
        step=step,
    )


def result(tool_call_id: str, name: str, output: Any) -> types_pb2.ToolResult:
    value = struct_pb2.Value()
    if isinstance(output, dict):
        value.struct_value.update(output)
    elif isinstance(output, str):
        value.string_value = output
    else:
        value.number_value = output
    return types_pb2.ToolResult(
        tool_call_id=tool_call_id,
        name=name,
        status=types_pb2.TOOL_CALL_STATUS_SUCCEEDED,
        output=value,
    )


def failed(tool_call_id: str, name: str, why: str) -> types_pb2.ToolResult:
    return types_pb2.ToolResult(
        tool_call_id=tool_call_id,
        name=name,
        status=types_pb2.TOOL_CALL_STATUS_FAILED,
        error_message=why,
    )


def compose_request(step: int = 0, max_steps: int = 3, **fields: Any) -> ComposeRequest:
    fields.setdefault("results", [result("r.0.000", "calculator", 42)])
    fields.setdefault("history", [call("r", 0, 0, "calculator", expression="6*7")])
    fields.setdefault("tools", TOOLS)
    return ComposeRequest(
        prompt="what is 6*7?", step=step, max_steps=max_steps, template="{results}", **fields
    )


# -- planning ------------------------------------------------------------------------------


async def test_a_plan_with_parallel_calls_offers_the_tools_and_presents_the_key(
    fake: FakeOpenAI, make: Make
) -> None:
    fake.script(
        {
            "tool_calls": [
                {"name": "calculator", "arguments": {"expression": "6*7"}},
                {"name": "clock", "arguments": {"timezone": "Europe/Paris"}},
            ],
            "usage": {"prompt_tokens": 50, "completion_tokens": 12},
        }
    )
    model = make(model_api_key="sk-default")

    plan = await model.plan(PlanRequest(prompt="6*7, and the time in Paris", step=0, tools=TOOLS))

    assert plan.calls == [
        PlannedCall("calculator", {"expression": "6*7"}),
        PlannedCall("clock", {"timezone": "Europe/Paris"}),
    ]
    assert plan.answer == ""
    assert (plan.usage.prompt_tokens, plan.usage.completion_tokens) == (50, 12)
    assert plan.usage.total_tokens == 62
    (sent,) = fake.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-default"
    assert sent.body["model"] == MODEL
    assert not sent.body.get("stream")
    assert "tool_choice" not in sent.body
    assert sent.body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": offer.name,
                "description": offer.description,
                "parameters": dict(offer.schema),
            },
        }
        for offer in TOOLS
    ]
    roles = [message["role"] for message in sent.body["messages"]]
    assert roles == ["system", "user"]
    assert sent.body["messages"][-1]["content"] == "6*7, and the time in Paris"


async def test_each_tenant_presents_its_own_key_and_others_the_default(
    fake: FakeOpenAI, make: Make
) -> None:
    fake.script(*[{"content": "hi"}] * 4)
    model = make(model_api_key="sk-default", model_tenant_api_keys={"acme": "sk-acme"})
    ask = PlanRequest(prompt="hello", step=0, tools=())

    await model.plan(PlanRequest(prompt="hello", step=0, tools=(), tenant_id="acme"))
    await model.plan(PlanRequest(prompt="hello", step=0, tools=(), tenant_id="globex"))
    with bind(FluxContext.new(tenant_id="acme")):  # the run's tenant, when the request names none
        await model.plan(ask)
    await model.plan(ask)

    keys = [request.headers["authorization"] for request in fake.requests]
    assert keys == ["Bearer sk-acme", "Bearer sk-default", "Bearer sk-acme", "Bearer sk-default"]


async def test_without_a_key_no_authorization_is_sent(fake: FakeOpenAI, make: Make) -> None:
    fake.script({"content": "hi"})
    await make().plan(PlanRequest(prompt="hello", step=0, tools=TOOLS))
    assert "authorization" not in fake.requests[0].headers


async def test_a_plan_can_be_a_direct_answer(fake: FakeOpenAI, make: Make) -> None:
    fake.script(
        {"content": "Hello! How can I help?", "usage": {"prompt_tokens": 9, "completion_tokens": 5}}
    )

    plan = await make(model_temperature=0.2).plan(
        PlanRequest(prompt="hello", step=0, tools=TOOLS, memory=["the user is Ada"])
    )

    assert plan.calls == ()
    assert plan.answer == "Hello! How can I help?"
    assert (plan.usage.prompt_tokens, plan.usage.completion_tokens, plan.usage.total_tokens) == (
        9,
        5,
        14,
    )
    body = fake.requests[0].body
    assert body["temperature"] == 0.2
    memory = body["messages"][1]
    assert memory["role"] == "system"
    assert "the user is Ada" in memory["content"]


async def test_a_later_step_tells_the_earlier_ones_with_their_real_arguments(
    fake: FakeOpenAI, make: Make
) -> None:
    fake.script({"content": "50, and it is noon in Paris."})
    history = [
        call("run1", 0, 0, "calculator", expression="6*7"),
        call("run1", 1, 0, "calculator", expression="42 + 8"),
        call("run1", 1, 1, "clock", timezone="Europe/Paris"),
        call("run1", 1, 2, "clock", timezone="Mars/Olympus"),
    ]
    ask = PlanRequest(
        prompt="6*7 then add 8, and the time in Paris",
        step=2,
        tools=TOOLS,
        earlier_results=[result("run1.0.000", "calculator", 42)],
        previous_results=[
            result("run1.1.000", "calculator", 50),
            result("run1.1.001", "clock", {"time": "12:00"}),
            failed("run1.1.002", "clock", "unknown time zone"),
            # Its call is not in the history: told as a call with no arguments.
            result("run1.1.003", "calculator", 7),
        ],
        history=history,
    )

    plan = await make().plan(ask)

    assert plan.answer == "50, and it is noon in Paris."
    messages = fake.requests[0].body["messages"]
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "tool",
        "tool",
        "tool",
    ]
    step0, step1 = messages[2], messages[4]
    assert [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in step0["tool_calls"]
    ] == [("run1.0.000", "calculator", {"expression": "6*7"})]
    assert [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in step1["tool_calls"]
    ] == [
        ("run1.1.000", "calculator", {"expression": "42 + 8"}),
        ("run1.1.001", "clock", {"timezone": "Europe/Paris"}),
        ("run1.1.002", "clock", {"timezone": "Mars/Olympus"}),
        ("run1.1.003", "calculator", {}),
    ]
    tools = {m["tool_call_id"]: json.loads(m["content"]) for m in messages if m["role"] == "tool"}
    assert tools["run1.0.000"] == 42
    assert tools["run1.1.001"] == {"time": "12:00"}
    assert tools["run1.1.002"]["error"] == "unknown time zone"
    assert tools["run1.1.003"] == 7


# -- malformed tool calls --------------------------------------------------------------------

MALFORMED: dict[str, tuple[dict[str, Any], str]] = {
    "bad_json": ({"name": "calculator", "arguments": '{"expression": "6*'}, "not valid JSON"),
    "unknown_tool": ({"name": "rm_rf", "arguments": {"path": "/"}}, "unknown tool 'rm_rf'"),
    "schema": ({"name": "calculator", "arguments": {"expression": 42}}, "42 is not of type"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
async def test_a_malformed_call_goes_back_to_the_model_once(
    fake: FakeOpenAI, make: Make, kind: str
) -> None:
    bad, reason = MALFORMED[kind]
    good = {"id": "ok", "name": "clock", "arguments": {"timezone": "UTC"}}
    fake.script(
        {
            "tool_calls": [{"id": "bad", **bad}, good],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3},
        },
        {
            "tool_calls": [
                {"name": "calculator", "arguments": {"expression": "6*7"}},
                {"name": "clock", "arguments": {"timezone": "UTC"}},
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 4},
        },
    )

    plan = await make().plan(PlanRequest(prompt="6*7 and the time", step=0, tools=TOOLS))

    assert [c.name for c in plan.calls] == ["calculator", "clock"]
    assert (plan.usage.prompt_tokens, plan.usage.completion_tokens) == (30, 7)
    first, second = fake.requests
    sent = second.body["messages"]
    assert sent[: len(first.body["messages"])] == first.body["messages"]
    echo, answers = sent[-3], {m["tool_call_id"]: m["content"] for m in sent[-2:]}
    assert echo["role"] == "assistant"
    assert [c["id"] for c in echo["tool_calls"]] == ["bad", "ok"]
    assert reason in answers["bad"]
    assert answers["bad"].startswith("error:")
    assert answers["ok"].startswith("not run")


@pytest.mark.parametrize("kind", sorted(MALFORMED))
async def test_a_call_malformed_twice_fails_the_plan_for_good(
    fake: FakeOpenAI, make: Make, kind: str
) -> None:
    bad, reason = MALFORMED[kind]
    fake.script({"tool_calls": [bad]}, {"tool_calls": [bad]}, {"content": "never asked"})

    with pytest.raises(ModelError) as raised:
        await make().plan(PlanRequest(prompt="6*7", step=0, tools=TOOLS))

    assert raised.value.retryable is False
    assert bad["name"] in str(raised.value)
    assert reason in str(raised.value)
    assert len(fake.requests) == 2


# -- composing -------------------------------------------------------------------------------


async def test_an_answer_streams_its_pieces_in_order_then_its_usage(
    fake: FakeOpenAI, make: Make
) -> None:
    pieces = ["Six ", "times ", "seven ", "is ", "42."]
    fake.script({"pieces": pieces, "usage": {"prompt_tokens": 30, "completion_tokens": 5}})

    composition = await make().compose(compose_request(step=0, max_steps=3))

    assert composition.next_step is False
    assert composition.deltas is not None
    got = [piece async for piece in composition.deltas]
    assert got == pieces
    usage = composition.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (30, 5, 35)
    body = fake.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert [tool["function"]["name"] for tool in body["tools"]] == ["calculator", "clock"]
    assert "tool_choice" not in body
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    assert json.loads(body["messages"][2]["tool_calls"][0]["function"]["arguments"]) == {
        "expression": "6*7"
    }


async def test_tool_calls_when_composing_go_on_to_the_next_step(
    fake: FakeOpenAI, make: Make
) -> None:
    fake.script(
        {
            "tool_calls": [{"name": "clock", "arguments": {"timezone": "Europe/Paris"}}],
            "usage": {"prompt_tokens": 31, "completion_tokens": 7},
        },
        {"content": "next"},
    )
    model = make()

    composition = await model.compose(compose_request(step=0, max_steps=3))

    assert composition.next_step is True
    assert composition.deltas is None
    # The usage of the stream's last chunk is charged, though no answer came.
    assert (composition.usage.prompt_tokens, composition.usage.completion_tokens) == (31, 7)
    # The stream was let go: the same connection serves the next request.
    later = await model.plan(PlanRequest(prompt="x", step=0, tools=TOOLS))
    assert later.answer == "next"


async def test_the_last_step_tells_the_model_to_answer(fake: FakeOpenAI, make: Make) -> None:
    fake.script({"content": "42."})

    composition = await make().compose(compose_request(step=2, max_steps=3))

    assert composition.deltas is not None
    assert [piece async for piece in composition.deltas] == ["42."]
    body = fake.requests[0].body
    assert body["tool_choice"] == "none"
    assert len(body["tools"]) == 2


async def test_a_stream_dropped_mid_answer_is_a_retryable_error(
    fake: FakeOpenAI, make: Make
) -> None:
    # Chunks: role, then the pieces; the connection drops after the second piece.
    fake.script({"pieces": ["one ", "two ", "three ", "four"], "drop_after": 3})

    composition = await make().compose(compose_request(step=2, max_steps=3))

    assert composition.deltas is not None
    got: list[str] = []

    async def drain(deltas: AsyncIterator[str]) -> None:
        async for piece in deltas:
            got.append(piece)

    with pytest.raises(ModelError) as raised:
        await drain(composition.deltas)
    assert got == ["one ", "two "]
    assert raised.value.retryable is True
    assert "stream" in str(raised.value)


# -- faults ----------------------------------------------------------------------------------


async def test_a_rate_limit_waits_as_retry_after_says_then_succeeds(
    fake: FakeOpenAI, make: Make
) -> None:
    fake.script(
        {
            "status": 429,
            "error": {"message": "slow down", "type": "rate_limit_error", "code": "rate_limit"},
            "headers": {"Retry-After": "1"},
        },
        {"content": "done"},
    )

    plan = await make(model_max_retries=2).plan(PlanRequest(prompt="x", step=0, tools=TOOLS))

    assert plan.answer == "done"
    first, second = fake.requests
    waited = second.at - first.at
    assert 0.9 <= waited < 30, waited


async def test_server_faults_are_retried_then_a_retryable_error(
    fake: FakeOpenAI, make: Make
) -> None:
    fault = {"status": 503, "error": {"message": "overloaded", "type": "server_error"}}
    fake.script(fault, fault, fault, {"content": "too late"})

    with pytest.raises(ModelError) as raised:
        await make(model_max_retries=2).plan(PlanRequest(prompt="x", step=0, tools=TOOLS))

    assert raised.value.retryable is True
    assert "503" in str(raised.value)
    assert "overloaded" in str(raised.value)
    assert len(fake.requests) == 3


async def test_a_refused_request_is_not_retried_and_keeps_the_endpoints_message(
    fake: FakeOpenAI, make: Make
) -> None:
    fake.script(
        {
            "status": 400,
            "error": {
                "message": "This model's maximum context length is 8192 tokens.",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            },
        },
        {"content": "never"},
    )

    with pytest.raises(ModelError) as raised:
        await make(model_max_retries=3).plan(PlanRequest(prompt="x", step=0, tools=TOOLS))

    assert raised.value.retryable is False
    assert "This model's maximum context length is 8192 tokens." in str(raised.value)
    assert len(fake.requests) == 1


async def test_a_slow_model_is_cut_at_the_runs_deadline(fake: FakeOpenAI, make: Make) -> None:
    fake.script({"content": "far too late", "delay": 60})
    model = make(model_timeout_s=120, model_max_retries=3)
    started = time.monotonic()

    with bind(FluxContext.new(deadline=time.time() + 0.5)), pytest.raises(ModelError) as raised:
        await model.plan(PlanRequest(prompt="x", step=0, tools=TOOLS))

    elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed  # the deadline, plus a loaded machine's slack; not 60 s
    assert "deadline" in str(raised.value)
    assert raised.value.retryable is False
    # The request's own timeout was the time left, not model_timeout_s.
    assert float(fake.requests[0].headers["x-stainless-read-timeout"]) <= 0.5


async def test_a_model_slower_than_its_timeout_is_retried_then_a_retryable_error(
    fake: FakeOpenAI, make: Make
) -> None:
    slow = {"content": "late", "delay": 60}
    fake.script(slow, slow, {"content": "never"})

    with pytest.raises(ModelError) as raised:
        await make(model_timeout_s=0.3, model_max_retries=1).plan(
            PlanRequest(prompt="x", step=0, tools=TOOLS)
        )

    assert raised.value.retryable is True
    assert "did not answer within 0.3 s" in str(raised.value)
    assert len(fake.requests) == 2


async def test_a_run_past_its_deadline_does_not_call_the_model(
    fake: FakeOpenAI, make: Make
) -> None:
    with bind(FluxContext.new(deadline=time.time() - 1)), pytest.raises(ModelError) as raised:
        await make().plan(PlanRequest(prompt="x", step=0, tools=TOOLS))
    assert raised.value.retryable is False
    assert fake.requests == []


# -- spans -----------------------------------------------------------------------------------


async def test_each_model_call_is_a_client_span_with_genai_attributes(
    fake: FakeOpenAI, make: Make, spans: InMemorySpanExporter
) -> None:
    fake.script(
        {
            "tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 9},
            "model": "test-model-2025",
        },
        {"pieces": ["forty", "-two"], "usage": {"prompt_tokens": 60, "completion_tokens": 2}},
        {"status": 401, "error": {"message": "bad key", "type": "invalid_api_key"}},
    )
    model = make()
    secret = "the secret prompt"

    await model.plan(PlanRequest(prompt=secret, step=0, tools=TOOLS))
    composition = await model.compose(compose_request(step=2, max_steps=3))
    assert composition.deltas is not None
    assert "".join([piece async for piece in composition.deltas]) == "forty-two"
    with pytest.raises(ModelError):
        await model.plan(PlanRequest(prompt=secret, step=0, tools=TOOLS))

    planned, composed, refused = spans.get_finished_spans()
    for span in (planned, composed, refused):
        assert span.name == f"chat {MODEL}"
        assert span.kind == SpanKind.CLIENT
        attributes = dict(span.attributes or {})
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == "openai"
        assert attributes["gen_ai.request.model"] == MODEL
        assert attributes["server.address"] == "127.0.0.1"
        assert not any(secret in str(value) for value in attributes.values())
        assert not any("forty" in str(value) for value in attributes.values())
    planned_at = dict(planned.attributes or {})
    assert planned_at["gen_ai.response.model"] == "test-model-2025"
    assert planned_at["gen_ai.usage.input_tokens"] == 40
    assert planned_at["gen_ai.usage.output_tokens"] == 9
    assert tuple(planned_at["gen_ai.response.finish_reasons"]) == ("tool_calls",)  # type: ignore[arg-type]
    composed_at = dict(composed.attributes or {})
    assert composed_at["gen_ai.usage.input_tokens"] == 60
    assert composed_at["gen_ai.usage.output_tokens"] == 2
    assert tuple(composed_at["gen_ai.response.finish_reasons"]) == ("stop",)  # type: ignore[arg-type]
    assert refused.status.status_code == StatusCode.ERROR
    assert dict(refused.attributes or {})["error.type"] == "401"
    assert any(event.name == "exception" for event in refused.events)


# -- settings and the registry ---------------------------------------------------------------


def test_the_provider_is_registered_and_its_settings_say_what_to_set(fake: FakeOpenAI) -> None:
    assert "openai" in PROVIDERS
    with pytest.raises(ValidationError, match="AGENTFLUX_MODEL_BASE_URL"):
        Settings(_env_file=None, model_base_url="localhost:8000")
    with pytest.raises(ValidationError, match="AGENTFLUX_MODEL_BASE_URL to the base"):
        Settings(_env_file=None, model_base_url=f"{fake.url}/chat/completions")
    with pytest.raises(ValidationError, match="AGENTFLUX_MODEL_NAME"):
        Settings(_env_file=None, model_provider="openai", model_base_url=fake.url)
    settings = Settings(
        _env_file=None,
        model_provider="openai",
        model_base_url=fake.url,
        model_name=MODEL,
        model_tenant_api_keys={"acme": "sk-acme"},
    )
    assert settings.model_tenant_api_keys["acme"].get_secret_value() == "sk-acme"
    assert "sk-acme" not in repr(settings)


def test_tenant_keys_are_read_from_the_environment_as_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTFLUX_MODEL_TENANT_API_KEYS", '{"acme": "sk-acme", "globex": "sk-g"}')
    settings = Settings(_env_file=None)
    keys = {
        tenant: key.get_secret_value() for tenant, key in settings.model_tenant_api_keys.items()
    }
    assert keys == {"acme": "sk-acme", "globex": "sk-g"}


# -- the fake as a process -------------------------------------------------------------------


async def test_the_fake_runs_as_a_process_from_a_script_file(tmp_path: Path, make: Make) -> None:
    script = tmp_path / "script.json"
    replies = {"replies": [{"content": "from the file"}], "then": {"content": "again"}}
    script.write_text(json.dumps(replies))
    record = tmp_path / "requests.jsonl"
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "tests.fakes.openai_server", "--port", "0"],
        *["--script", str(script), "--record", str(record)],
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
        assert line.startswith("OPENAI_URL="), line
        model = make(model_base_url=line.strip().removeprefix("OPENAI_URL="))
        first = await model.plan(PlanRequest(prompt="x", step=0, tools=TOOLS))
        second = await model.plan(PlanRequest(prompt="y", step=0, tools=TOOLS))
        assert (first.answer, second.answer) == ("from the file", "again")
        recorded = [json.loads(entry) for entry in record.read_text().splitlines()]
        assert [entry["body"]["messages"][-1]["content"] for entry in recorded] == ["x", "y"]
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
