"""Tools without services: the calculator, argument checks, the registry and its entry
points, the clock, and http_get's host checks (refused before any request is made)."""

from __future__ import annotations

import sys
import textwrap
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from services.runtime.config import Settings
from services.tools import (
    BUILTIN,
    ENTRY_POINT_GROUP,
    JSON,
    FieldViolation,
    Tool,
    ToolArgumentsError,
    ToolContext,
    ToolError,
    ToolRegistrationError,
    ToolRegistry,
    ToolSpec,
    UnknownToolError,
    builtin_tools,
)
from services.tools._calculator import Calculator, evaluate
from services.tools._clock import Clock
from services.tools._http_get import HttpGet
from services.tools._retrieve import Retrieve


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(http_get_allowed_hosts=["Example.COM", "docs.example.org"])


def context(settings: Settings, **changes: Any) -> ToolContext:
    # No Redis: these tools never touch it (a call that did would fail on None).
    fields: dict[str, Any] = {
        "tenant_id": "acme",
        "run_id": "run-1",
        "conversation_id": "conv-1",
        "tool_call_id": "call-1",
        "idempotency_key": "idem-1",
        "attempt": 1,
        "settings": settings,
        "redis": cast(Any, None),
    }
    fields.update(changes)
    return ToolContext(**fields)


class Echo:
    """A user's tool, as a plugin would write it."""

    def __init__(self, name: str = "echo", schema: Mapping[str, Any] | None = None) -> None:
        self.spec = ToolSpec(
            name=name,
            description="Says what it is told.",
            schema=schema
            or {
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"],
                "additionalProperties": False,
            },
        )

    async def __call__(self, args: Mapping[str, Any], ctx: ToolContext) -> JSON:
        return args["text"]


# -- calculator ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3.5),
        ("8 / 2", 4),  # integral: an int
        ("7 // 2", 3),
        ("-7 % 3", 2),
        ("2 ** 10", 1024),
        ("2 ** -1", 0.5),
        ("-(3 - 5)", 2),
        ("+4", 4),
        ("sqrt(16) + abs(-2.5)", 6.5),
        ("round(2.567, 2)", 2.57),
        ("round(2.5)", 2),
        ("min(3, 1, 2) + max(4, 9)", 10),
        ("1_000 * 3", 3000),
        ("2 ** 0.5", 2**0.5),
        ("10 ** 300 // 10 ** 299", 10),
        ("  1 + 1  ", 2),
        # As deep as 200 characters allow: bounded, and evaluated.
        ("(" * 99 + "1" + ")" * 99, 1),
        ("-" * 199 + "1", -1),
    ],
)
def test_calculator_computes(expression: str, value: float) -> None:
    result = evaluate(expression)
    assert result == value
    assert type(result) is type(value)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os')", "'__import__' is not an allowed function"),
        ("__import__('os').system('true')", "is not an allowed function"),
        ("().__class__", "is not allowed"),
        ("(1).__class__.__bases__", "attribute access is not allowed"),
        ("open('/etc/passwd')", "'open' is not an allowed function"),
        ("eval('1')", "'eval' is not an allowed function"),
        ("(lambda: 1)()", "is not an allowed function"),
        ("[1, 2][0]", "indexing is not allowed"),
        ("'a' * 3", "'a' is not a number"),
        ("x + 1", "unknown name 'x'"),
        ("1 if 1 else 2", "if/else is not allowed"),
        ("1 < 2", "comparisons is not allowed"),
        ("True + 1", "True is not a number"),
        ("1j * 2", "1j is not a number"),
        ("f'{1}'", "strings is not allowed"),
        ("sqrt(x=4)", "takes no keyword arguments"),
        ("9**9**9", "is too large"),
        ("2 ** 100000", "is too large"),
        ("(10 ** 308) * (10 ** 308)", "exceeds 1024 bits"),
        ("1e308 * 10", "too large"),
        ("1 / 0", "division by zero"),
        ("5 // 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("sqrt(-1)", "sqrt of a negative number"),
        ("(-8) ** (1 / 3)", "not a real number"),
        ("round(1.5, 10 ** 6)", "round's digits"),
        ("1 +", "not valid arithmetic"),
        ("", "empty"),
        ("1" + "+1" * 100, "longer than 200 characters"),
        ("(" * 150 + "1" + ")" * 150, "longer than 200"),
    ],
)
def test_calculator_refuses_without_running_anything(expression: str, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ToolError) as caught:
        evaluate(expression)
    # Refused at once: nothing was evaluated that could pin the worker.
    assert time.perf_counter() - started < 0.5
    assert message in str(caught.value)
    assert caught.value.retryable is False


async def test_calculator_tool_returns_the_number(settings: Settings) -> None:
    calc = Calculator(settings)
    assert calc.spec.cacheable
    assert not calc.spec.side_effects
    assert calc.spec.timeout_s == settings.tool_timeout_s
    assert await calc({"expression": "6 * 7"}, context(settings)) == 42
    with pytest.raises(ToolError, match="as a string"):
        await calc({"expression": 42}, context(settings))


# -- argument checks -------------------------------------------------------------------


def test_validate_names_every_field_at_fault(settings: Settings) -> None:
    registry = ToolRegistry(builtin_tools(settings))
    with pytest.raises(ToolArgumentsError) as caught:
        registry.validate("retrieve", {"query": 5, "limit": 50, "tenant": "other"})
    error = caught.value
    assert error.retryable is False
    assert error.tool == "retrieve"
    fields = {v.field: v.description for v in error.violations}
    assert set(fields) == {"query", "limit", "tenant"}
    assert "is not of type 'string'" in fields["query"]
    assert "maximum of 20" in fields["limit"]
    assert fields["tenant"] == "is not allowed (known fields: limit, query)"
    assert "invalid arguments for tool 'retrieve'" in str(error)
    assert "limit: 50 is greater than the maximum of 20" in str(error)


def test_validate_names_a_missing_field(settings: Settings) -> None:
    registry = ToolRegistry(builtin_tools(settings))
    with pytest.raises(ToolArgumentsError) as caught:
        registry.validate("memory", {"action": "remember"})
    assert caught.value.violations == (FieldViolation("text", "is required"),)
    with pytest.raises(ToolArgumentsError, match=r"action: 'shout' is not one of"):
        registry.validate("memory", {"action": "shout"})
    # recall and forget need no text; the arguments come back as given.
    args = {"action": "recall"}
    assert registry.validate("memory", args) is args


def test_validate_refuses_arguments_that_are_not_an_object(settings: Settings) -> None:
    registry = ToolRegistry(builtin_tools(settings))
    with pytest.raises(ToolArgumentsError) as caught:
        registry.validate("calculator", ["1 + 1"])
    assert caught.value.violations[0].field == ""
    assert "(arguments): ['1 + 1'] is not of type 'object'" in str(caught.value)


def test_validate_gives_nested_paths_and_shortens_quoted_values() -> None:
    schema = {
        "type": "object",
        "properties": {
            "people": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string", "maxLength": 5}},
                    "required": ["name"],
                },
            }
        },
    }
    registry = ToolRegistry([Echo("people", schema)], source="test")
    with pytest.raises(ToolArgumentsError) as caught:
        registry.validate("people", {"people": [{"name": "x" * 5000}, {}]})
    fields = {v.field: v.description for v in caught.value.violations}
    assert set(fields) == {"people[0].name", "people[1].name"}
    assert fields["people[1].name"] == "is required"
    assert len(fields["people[0].name"]) <= 200  # the 5000 characters are not echoed


def test_validate_an_unknown_tool(settings: Settings) -> None:
    registry = ToolRegistry(builtin_tools(settings))
    with pytest.raises(UnknownToolError, match="unknown tool 'nope'"):
        registry.validate("nope", {})


# -- registry --------------------------------------------------------------------------


def test_registry_lists_the_builtins(settings: Settings) -> None:
    registry = ToolRegistry.load(settings, entry_points=False)
    assert registry.names() == ["calculator", "clock", "http_get", "memory", "retrieve"]
    assert [s.name for s in registry.specs()] == registry.names()
    assert all(registry.source(n) == BUILTIN for n in registry.names())
    assert "memory" in registry
    assert len(registry) == 5
    for spec in registry.specs():
        assert spec.schema["additionalProperties"] is False
        assert spec.timeout_s == settings.tool_timeout_s
        assert spec.description
    assert registry.get("memory").spec.side_effects is True


def test_unknown_tool_is_a_key_error_naming_the_known_ones(settings: Settings) -> None:
    registry = ToolRegistry(builtin_tools(settings))
    with pytest.raises(KeyError) as caught:
        registry.get("calculater")
    error = caught.value
    assert isinstance(error, UnknownToolError)
    assert isinstance(error, ToolError)
    assert error.retryable is False
    assert str(error) == (
        "unknown tool 'calculater'; known tools: calculator, clock, http_get, memory, retrieve"
    )
    with pytest.raises(UnknownToolError):
        registry.source("calculater")


def test_a_name_cannot_be_registered_twice(settings: Settings) -> None:
    registry = ToolRegistry(builtin_tools(settings))
    with pytest.raises(ToolRegistrationError, match=r"'calculator' from pkg\.mod:calc is already"):
        registry.register(Echo("calculator"), source="pkg.mod:calc")
    assert registry.source("calculator") == BUILTIN


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        (
            Echo("bad", {"type": "object", "properties": {"a": {"type": "strng"}}}),
            "'bad' from test: its argument schema is not valid JSON Schema "
            "(Draft 2020-12) at properties/a/type",
        ),
        (Echo("bad", {"type": "object", "required": "a"}), "at required"),
        (Echo("bad", {"type": "string"}), 'must describe an object ("type": "object")'),
        (Echo("no spaces"), "tool name 'no spaces' from test is not valid"),
        (object(), "is not a tool"),
    ],
)
def test_a_bad_tool_is_refused_at_registration(tool: Any, message: str) -> None:
    registry = ToolRegistry()
    with pytest.raises(ToolRegistrationError) as caught:
        registry.register(tool, source="test")
    assert message in str(caught.value)
    assert len(registry) == 0


def test_a_tool_must_be_async_and_honest_about_effects() -> None:
    class Sync:
        spec = ToolSpec("sync", "", {"type": "object"})

        def __call__(self, args: Mapping[str, Any], ctx: ToolContext) -> JSON:
            return None

    with pytest.raises(ToolRegistrationError, match="must be a coroutine"):
        ToolRegistry().register(cast(Tool, Sync()))
    cached_effect = Echo()
    cached_effect.spec = ToolSpec(
        "effect", "", {"type": "object"}, side_effects=True, cacheable=True
    )
    with pytest.raises(ToolRegistrationError, match="side effects cannot be cacheable"):
        ToolRegistry().register(cached_effect)


# -- entry points: a real (fake) distribution on sys.path ------------------------------

PLUGIN = """
from services.tools import ToolSpec

class Shout:
    def __init__(self, settings, name="shout"):
        self.spec = ToolSpec(
            name=name,
            description="Upper-cases text.",
            schema={"type": "object", "properties": {"text": {"type": "string"}},
                    "required": ["text"], "additionalProperties": False},
            timeout_s=settings.tool_timeout_s,
        )

    async def __call__(self, args, ctx):
        return args["text"].upper()

def tools(settings):
    return [Shout(settings, "shout"), Shout(settings, "yell")]

class Whisper(Shout):
    def __init__(self, settings):
        super().__init__(settings, "whisper")

single = Shout.__new__(Shout)
single.spec = ToolSpec("single", "One object.", {"type": "object"})

def calculator(settings):
    return Shout(settings, "calculator")

def broken(settings):
    return 42

bad_schema = Shout.__new__(Shout)
bad_schema.spec = ToolSpec("bad_schema", "", {"type": "object", "minProperties": -1})
"""


def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: str) -> str:
    """A distribution `fake-tools` with a module and `entries` in `agentflux.tools`,
    found by importlib.metadata the way an installed package is. Returns the module."""
    module = f"fake_tools_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(PLUGIN)
    info = tmp_path / "fake_tools-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-tools\nVersion: 1.0\n")
    lines = textwrap.dedent(entries).strip().replace("MOD", module)
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    return module


async def test_entry_points_add_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    module = install_plugin(
        tmp_path,
        monkeypatch,
        """
        loud = MOD:tools
        whisper = MOD:Whisper
        single = MOD:single
        """,
    )
    registry = ToolRegistry.load(settings)
    assert {"shout", "yell", "whisper", "single", "calculator"} <= set(registry.names())
    assert registry.source("shout") == f"{module}:tools"
    assert registry.source("yell") == f"{module}:tools"
    assert registry.source("whisper") == f"{module}:Whisper"
    assert registry.source("single") == f"{module}:single"
    assert registry.source("calculator") == BUILTIN
    args = registry.validate("shout", {"text": "hi"})
    assert await registry.get("shout")(args, context(settings)) == "HI"
    with pytest.raises(ToolArgumentsError, match="text: is required"):
        registry.validate("yell", {})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "calc = MOD:calculator",
            "tool 'calculator' from MOD:calculator is already registered by builtin",
        ),
        ("gone = no_such_module_xyz:tools", "entry point gone = no_such_module_xyz:tools"),
        ("broken = MOD:broken", "it returned 42, not a tool"),
        ("bad = MOD:bad_schema", "'bad_schema' from MOD:bad_schema: its argument schema"),
    ],
)
def test_a_bad_entry_point_stops_the_load_with_a_clear_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    entry: str,
    message: str,
) -> None:
    module = install_plugin(tmp_path, monkeypatch, entry)
    with pytest.raises(ToolRegistrationError) as caught:
        ToolRegistry.load(settings)
    assert message.replace("MOD", module) in str(caught.value)


# -- clock -----------------------------------------------------------------------------


async def test_clock_tells_the_time_in_a_zone(settings: Settings) -> None:
    clock = Clock(settings, now=lambda: datetime(2026, 7, 14, 10, 30, 5, tzinfo=UTC))
    paris = await clock({"timezone": "Europe/Paris"}, context(settings))
    assert paris == {
        "timezone": "Europe/Paris",
        "iso": "2026-07-14T12:30:05+02:00",
        "date": "2026-07-14",
        "time": "12:30:05",
        "weekday": "Tuesday",
        "utc_offset": "+02:00",
        "unix": 1784025005,
    }
    utc = await clock({}, context(settings))
    assert utc["iso"] == "2026-07-14T10:30:05+00:00"
    assert utc["timezone"] == "UTC"


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "America", "../../etc/passwd", "/etc"])
async def test_clock_refuses_an_unknown_zone(settings: Settings, zone: str) -> None:
    with pytest.raises(ToolError, match="unknown time zone") as caught:
        await Clock(settings)({"timezone": zone}, context(settings))
    assert caught.value.retryable is False


def test_clock_schema_keeps_paths_out(settings: Settings) -> None:
    registry = ToolRegistry(builtin_tools(settings))
    with pytest.raises(ToolArgumentsError, match="timezone: "):
        registry.validate("clock", {"timezone": "../../etc/passwd"})
    registry.validate("clock", {"timezone": "America/Argentina/Buenos_Aires"})


# -- retrieve --------------------------------------------------------------------------


async def test_retrieve_searches_the_callers_tenant(settings: Settings) -> None:
    seen: list[tuple[str, str, int]] = []

    async def search(tenant: str, query: str, limit: int) -> list[dict[str, Any]]:
        seen.append((tenant, query, limit))
        return [{"run_id": "r1", "snippet": "blue", "score": 1.0}]

    tool = Retrieve(settings)
    result = await tool({"query": "colour"}, context(settings, search=search))
    assert result == {
        "query": "colour",
        "matches": [{"run_id": "r1", "snippet": "blue", "score": 1.0}],
    }
    await tool({"query": "colour", "limit": 2}, context(settings, search=search))
    assert seen == [("acme", "colour", 5), ("acme", "colour", 2)]


async def test_retrieve_without_an_index_is_retryable(settings: Settings) -> None:
    with pytest.raises(ToolError, match="the response index is not available") as caught:
        await Retrieve(settings)({"query": "x"}, context(settings))
    assert caught.value.retryable is True


# -- http_get: refused before any request ---------------------------------------------


def no_network() -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"a refused URL was fetched: {request.url}")

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://evil.example.net/", "host 'evil.example.net' is not allowed"),
        ("https://example.com.evil.net/", "host 'example.com.evil.net' is not allowed"),
        ("https://sub.example.com/", "host 'sub.example.com' is not allowed"),
        ("http://169.254.169.254/latest/meta-data/", "host '169.254.169.254' is not allowed"),
        ("https://evil.net#@example.com/", "host 'evil.net' is not allowed"),
        ("https://example.com@evil.net/", "credentials"),
        ("https://user:pw@example.com/", "credentials"),
        ("ftp://example.com/file", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("example.com/page", "only http and https"),
        ("http://[::1/", "is not a valid URL"),
    ],
)
async def test_http_get_refuses_hosts_not_allowed(
    settings: Settings, url: str, message: str
) -> None:
    tool = HttpGet(settings, transport=no_network())
    with pytest.raises(ToolError) as caught:
        await tool({"url": url}, context(settings))
    assert message in str(caught.value)
    assert caught.value.retryable is False


async def test_http_get_with_no_allowed_host_names_the_setting() -> None:
    settings = Settings(http_get_allowed_hosts=[])
    tool = HttpGet(settings, transport=no_network())
    with pytest.raises(ToolError, match="AGENTFLUX_HTTP_GET_ALLOWED_HOSTS") as caught:
        await tool({"url": "https://example.com/"}, context(settings))
    assert "http_get_allowed_hosts" in str(caught.value)
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    "url", ["https://example.com/a", "HTTP://EXAMPLE.com:8080/a?b=c", "https://example.com./a"]
)
def test_http_get_allows_listed_hosts_case_insensitively(settings: Settings, url: str) -> None:
    assert HttpGet(settings).check_url(url).path == "/a"


async def test_http_get_refuses_a_redirect_to_another_host(settings: Settings) -> None:
    fetched: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        fetched.append(str(request.url))
        if request.url.host == "example.com":
            return httpx.Response(302, headers={"location": "https://docs.example.org/"})
        return httpx.Response(200, text="should not be reached")

    tool = HttpGet(settings, transport=httpx.MockTransport(handler))
    with pytest.raises(ToolError, match="redirects are followed only on the same host"):
        await tool({"url": "https://example.com/"}, context(settings))
    # Even another allowed host: the redirect is not followed.
    assert fetched == ["https://example.com/"]
