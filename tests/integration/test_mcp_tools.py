"""MCP servers as tool sources, against real MCP servers (tests/fakes/mcp_server.py) over
stdio and streamable HTTP. No broker is needed: the tools are called the way the worker
calls them, with a ToolContext."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from services.runtime.config import Settings
from services.tools import (
    META_IDEMPOTENCY_KEY,
    McpStartError,
    McpTools,
    ToolContext,
    ToolError,
    ToolRegistry,
    load_mcp_tools,
)
from tests.fakes.mcp_server import TOOLS

ROOT = Path(__file__).resolve().parents[2]
AGENTFLUX = str(Path(sys.executable).with_name("agentflux"))
FAKE = [sys.executable, "-m", "tests.fakes.mcp_server"]
PREVIOUS = "2025-11-25"
CURRENT = "2026-07-28"
# Generous for a loaded 2-core machine: a server process starts in about a second.
START_S = 60.0


class HttpServer:
    """The fake server over HTTP, in a process of its own that a test can restart."""

    def __init__(self, *extra: str) -> None:
        self.extra = extra
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.url = ""

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *FAKE,
            "--transport",
            "http",
            "--port",
            str(self.port),
            *self.extra,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(START_S):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError(f"the server exited ({await self.proc.wait()})")
                if line.startswith("MCP_URL="):
                    self.url = line.removeprefix("MCP_URL=").strip()
                    self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])
                    return

    async def exited(self) -> int:
        assert self.proc is not None
        async with asyncio.timeout(START_S):
            return await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.exited()


def stdio_config(*extra: str, **more: Any) -> dict[str, Any]:
    return {"command": [*FAKE, "--transport", "stdio", *extra], "cwd": str(ROOT), **more}


def context(settings: Settings, key: str = "run-1:call-1") -> ToolContext:
    return ToolContext(
        tenant_id="t1",
        run_id="run-1",
        conversation_id="conv-1",
        tool_call_id="call-1",
        idempotency_key=key,
        attempt=1,
        settings=settings,
        redis=None,  # type: ignore[arg-type]  # MCP tools never touch Redis
    )


Loaded = tuple[ToolRegistry, McpTools, Settings, HttpServer | None]


@pytest.fixture
async def mcp_tools(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[..., Awaitable[Loaded]]]:
    """load(transport, *server_args, timeout_s=...) -> (registry, tools, settings, server);
    everything started is stopped after the test."""
    opened: list[McpTools] = []
    servers: list[HttpServer] = []

    async def load(transport: str, *extra: str, **config: Any) -> Loaded:
        server = None
        if transport == "http":
            server = HttpServer(*extra)
            servers.append(server)
            await server.start()
            entry = {"url": server.url, **config}
        else:
            entry = stdio_config(*extra, **config)
        settings = Settings(mcp_servers={"fake": entry}, mcp_connect_timeout_s=START_S)
        registry = ToolRegistry.load(settings, entry_points=False)
        tools = await load_mcp_tools(registry, settings)
        opened.append(tools)
        return registry, tools, settings, server

    yield load
    for tools in opened:
        await tools.aclose()
    for server in servers:
        await server.stop()


TRANSPORTS = pytest.mark.parametrize("transport", ["stdio", "http"])


@TRANSPORTS
async def test_tools_are_listed_and_registered(mcp_tools: Any, transport: str) -> None:
    registry, tools, settings, _ = await mcp_tools(transport)
    source = tools.sources["fake"]
    assert source.protocol_version == CURRENT
    # Every page of tools/list (the server answers two tools a page), beside the built-ins.
    mcp_names = [n for n in registry.names() if n.startswith("fake__")]
    assert mcp_names == ["fake__add", "fake__crash", "fake__echo", "fake__fail", "fake__slow"]
    assert "calculator" in registry
    assert registry.source("calculator") == "builtin"
    by_name = {t.name: t for t in TOOLS}
    for name in mcp_names:
        spec = registry.get(name).spec
        mcp_name = name.removeprefix("fake__")
        assert registry.source(name) == "mcp:fake"
        assert spec.schema == by_name[mcp_name].input_schema
        assert spec.description == by_name[mcp_name].description
        assert spec.timeout_s == settings.mcp_tool_timeout_s
        assert not spec.cacheable
    assert not registry.get("fake__echo").spec.side_effects  # readOnlyHint
    assert registry.get("fake__slow").spec.side_effects
    assert registry.get("fake__fail").spec.needs_approval  # destructiveHint, explicitly
    assert not registry.get("fake__slow").spec.needs_approval
    assert source.skipped == [
        ("drop.me", "its name has characters other than letters, digits, '_' and '-'")
    ]
    # The registry checks arguments against the server's schema.
    with pytest.raises(ToolError, match="b: is required"):
        registry.validate("fake__add", {"a": 1})


@TRANSPORTS
async def test_a_call_carries_the_idempotency_key_and_trace_context(
    mcp_tools: Any, transport: str
) -> None:
    registry, tools, settings, _ = await mcp_tools(transport)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tools.sources["fake"]._tracer = provider.get_tracer("test")
    with provider.get_tracer("test").start_as_current_span("worker tool") as outer:
        out = await registry.get("fake__echo")({"text": "hi"}, context(settings, "run-1:c-9"))
    assert out["arguments"] == {"text": "hi"}
    meta = out["meta"]
    assert meta[META_IDEMPOTENCY_KEY] == "run-1:c-9"
    _, trace_id, parent_id, _ = meta["traceparent"].split("-")
    assert int(trace_id, 16) == outer.get_span_context().trace_id
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "tools/call echo"]
    assert span.kind == trace.SpanKind.CLIENT
    assert span.parent is not None
    assert span.parent.span_id == outer.get_span_context().span_id
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # No global provider: the package's own span is not recorded, so the server's
        # parent is the call's span itself.
        assert int(parent_id, 16) == span.context.span_id
    assert span.attributes is not None
    assert span.attributes["mcp.method.name"] == "tools/call"
    assert span.attributes["gen_ai.tool.name"] == "echo"
    assert span.attributes["agentflux.mcp.server"] == "fake"
    assert span.attributes["mcp.protocol.version"] == CURRENT
    assert await registry.get("fake__add")({"a": 2, "b": 3.5}, context(settings)) == {"sum": 5.5}


@TRANSPORTS
async def test_an_error_result_is_a_tool_error_that_is_not_retried(
    mcp_tools: Any, transport: str
) -> None:
    registry, _, settings, _ = await mcp_tools(transport)
    with pytest.raises(ToolError, match="the fail tool failed, as asked") as failed:
        await registry.get("fake__fail")({}, context(settings))
    assert not failed.value.retryable
    assert await registry.get("fake__add")({"a": 1, "b": 1}, context(settings)) == {"sum": 2}


@TRANSPORTS
async def test_a_call_that_outlasts_its_timeout_is_retryable(
    mcp_tools: Any, transport: str
) -> None:
    registry, _, settings, _ = await mcp_tools(transport, timeout_s=1)
    tool = registry.get("fake__slow")
    assert tool.spec.timeout_s == 1
    began = time.monotonic()
    with pytest.raises(ToolError, match="did not answer 'slow' within 1 s") as failed:
        await tool({"seconds": 30}, context(settings))
    assert failed.value.retryable
    assert time.monotonic() - began < 5  # the tool's own timeout, not the server's 30 s
    # The session outlives an abandoned call.
    assert await registry.get("fake__add")({"a": 1, "b": 2}, context(settings)) == {"sum": 3}


async def test_a_stdio_server_that_crashes_is_restarted_by_the_next_call(
    mcp_tools: Any,
) -> None:
    registry, tools, settings, _ = await mcp_tools("stdio")
    with pytest.raises(ToolError, match="went away during the call") as failed:
        await registry.get("fake__crash")({}, context(settings))
    assert failed.value.retryable
    # Concurrent callers share one reconnect (a new process) and one session.
    outs = await asyncio.gather(
        *(registry.get("fake__add")({"a": i, "b": 1}, context(settings)) for i in range(5))
    )
    assert outs == [{"sum": i + 1} for i in range(5)]
    assert tools.sources["fake"].connects == 2


async def test_an_http_server_that_crashes_is_reconnected_once_it_is_back(
    mcp_tools: Any,
) -> None:
    registry, tools, settings, server = await mcp_tools("http")
    with pytest.raises(ToolError, match="went away during the call") as failed:
        await registry.get("fake__crash")({}, context(settings))
    assert failed.value.retryable
    assert await server.exited() == 3
    with pytest.raises(ToolError, match="unavailable") as down:
        await registry.get("fake__add")({"a": 1, "b": 2}, context(settings))
    assert down.value.retryable
    await server.start()  # the same port
    outs = await asyncio.gather(
        *(registry.get("fake__add")({"a": i, "b": 1}, context(settings)) for i in range(5))
    )
    assert outs == [{"sum": i + 1} for i in range(5)]
    assert tools.sources["fake"].connects == 2


@TRANSPORTS
async def test_a_server_of_the_previous_protocol_version(mcp_tools: Any, transport: str) -> None:
    registry, tools, settings, _ = await mcp_tools(transport, "--protocol-version", PREVIOUS)
    assert tools.sources["fake"].protocol_version == PREVIOUS
    out = await registry.get("fake__echo")({}, context(settings))
    assert out["protocol_version"] == PREVIOUS
    assert out["meta"][META_IDEMPOTENCY_KEY] == "run-1:call-1"


async def test_servers_that_cannot_be_reached_fail_the_start_by_name() -> None:
    settings = Settings(
        mcp_servers={
            "nocmd": {"command": ["/nonexistent/mcp-server"]},
            "closed": {"url": "http://127.0.0.1:9/mcp"},
            "exits": {"command": [sys.executable, "-c", "raise SystemExit(4)"]},
        },
        mcp_connect_timeout_s=START_S,
    )
    registry = ToolRegistry.load(settings, entry_points=False)
    before = registry.names()
    with pytest.raises(McpStartError) as failed:
        await load_mcp_tools(registry, settings)
    assert set(failed.value.failures) == {"nocmd", "closed", "exits"}
    assert "No such file or directory" in failed.value.failures["nocmd"]
    assert "ConnectError" in failed.value.failures["closed"]
    assert "closed the connection" in failed.value.failures["exits"]
    assert "closed:" in str(failed.value)
    assert "nocmd:" in str(failed.value)
    assert registry.names() == before


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ({"Files": {"url": "http://x/mcp"}}, "MCP server name 'Files' is not valid"),
        ({"a__b": {"url": "http://x/mcp"}}, "MCP server name 'a__b' is not valid"),
        ({"a": {}}, 'give either "command"'),
        ({"a": {"url": "http://x/mcp", "command": ["x"]}}, "not both"),
        ({"a": {"url": "ftp://x/mcp"}}, '"url" must be an http(s) URL'),
        ({"a": {"command": []}}, '"command" must be a non-empty list of strings'),
        ({"a": {"command": "python -m x"}}, '"command" must be a non-empty list of strings'),
        ({"a": {"command": ["x"], "headers": {"A": "b"}}}, '"headers" go with "url" only'),
        ({"a": {"url": "http://x/mcp", "env": {"A": "b"}}}, '"env" and "cwd" go with'),
        ({"a": {"command": ["x"], "env": {"A": 1}}}, '"env" must map names to strings'),
        ({"a": {"command": ["x"], "timeout_s": 0}}, '"timeout_s" must be seconds'),
        ({"a": {"command": ["x"], "comand": ["y"]}}, "unknown key(s) comand"),
    ],
)
def test_bad_mcp_settings_are_refused_clearly(servers: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as bad:
        Settings(mcp_servers=servers)
    assert message in str(bad.value)


def test_mcp_servers_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AGENTFLUX_MCP_SERVERS",
        json.dumps(
            {
                "files": {"command": ["python", "-m", "x"], "env": {"TOKEN": "s3cret"}},
                "search": {"url": "http://127.0.0.1:9000/mcp", "headers": {"X-Key": "k"}},
            }
        ),
    )
    servers = Settings().mcp_servers
    assert servers["files"]["command"] == ["python", "-m", "x"]
    assert servers["files"]["env"]["TOKEN"].get_secret_value() == "s3cret"
    assert servers["search"]["headers"]["X-Key"].get_secret_value() == "k"
    assert "s3cret" not in str(servers)
    assert "'k'" not in str(servers)


def test_agentflux_tools_lists_builtins_and_mcp_tools() -> None:
    env = dict(os.environ)
    env["AGENTFLUX_MCP_SERVERS"] = json.dumps(
        {"fake": stdio_config(), "down": {"url": "http://127.0.0.1:9/mcp"}}
    )
    done = subprocess.run(
        [AGENTFLUX, "tools", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 1, done.stderr  # one server is down
    listed = json.loads(done.stdout)
    sources = {t["name"]: t["source"] for t in listed["tools"]}
    assert sources["calculator"] == "builtin"
    assert sources["http_get"] == "builtin"
    assert sources["fake__echo"] == "mcp:fake"
    assert sources["fake__add"] == "mcp:fake"
    echo = next(t for t in listed["tools"] if t["name"] == "fake__echo")
    assert echo["side_effects"] is False
    assert echo["timeout_s"] == 10.0
    servers = {s["name"]: s for s in listed["mcp_servers"]}
    assert servers["fake"]["ok"]
    assert servers["fake"]["tools"] == 5
    assert servers["fake"]["skipped"][0]["tool"] == "drop.me"
    assert not servers["down"]["ok"]
    assert "ConnectError" in servers["down"]["error"]
