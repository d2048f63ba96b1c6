"""MCP servers as tool sources: every tool of every configured server is an agentflux tool.

`mcp_servers` (`AGENTFLUX_MCP_SERVERS`, JSON by server name) names each server: a stdio
`command` (argv, no shell; the process is started by the source and stopped by `aclose()`;
it inherits only HOME, LOGNAME, PATH, SHELL, TERM and USER, plus its `env`, never our
credentials) or a streamable HTTP `url` (with its `headers`). `load_mcp_tools` connects to
all of them, lists their tools (every page) and registers one tool per MCP tool, from
source `mcp:<server>`:

- name `<server>__<tool>`: server names have no "__", so the first one ends the prefix.
  An MCP tool whose name cannot follow (characters other than letters, digits, `_` and
  `-`, or longer than 64 in all), or whose input schema is not valid JSON Schema, is
  skipped with a warning and listed in `McpToolSource.skipped`, never registered half-made.
- schema: the MCP `inputSchema`, unchanged; timeout: the server's `timeout_s`, else
  `mcp_tool_timeout_s`.
- `side_effects` unless the server says `readOnlyHint: true`; never `cacheable` (a server's
  hint is not a promise that the same arguments give the same answer). `needs_approval`
  when the server says `destructiveHint: true` explicitly (and not `readOnlyHint`): a hint
  may make agentflux more careful, never less, and the protocol's default of
  `destructiveHint` (true) would otherwise hold every unannotated tool for a person;
  `AGENTFLUX_APPROVAL_TOOLS` names any other tool that needs one.

Protocol version: the pinned `mcp` package's own negotiation. It probes `server/discover`
at the current revision (2026-07-28) and, when the server does not speak it, falls back to
the `initialize` handshake at the previous one (2025-11-25), accepting an older revision
the package still speaks (2024-11-05 on) when the server answers with it.
`McpToolSource.protocol_version` says which one a server speaks.

A call sends `_meta` keys (the spec's rule: an optional reverse-DNS prefix and a name;
`io.modelcontextprotocol/` and `mcp/` prefixes are reserved):

- `io.agentflux/idempotency-key`: the call's `ToolContext.idempotency_key`, the same on
  every attempt, for the server to deduplicate a repeated effect;
- `traceparent` and `tracestate`: the W3C trace context of the call's span (unprefixed, as
  the OpenTelemetry MCP conventions propagate it; the `mcp` package writes them too).

Outcome: `structuredContent` when the server gives it, else the text of the result (one
string, blocks joined by newlines; non-text blocks as small descriptions, their bytes
left out). `isError: true` fails the call for good (`ToolError`, the server's text). A
server that is gone (process exited, connection refused or reset, session ended) fails the
call with a retryable `ToolError`, so the worker's delay tiers and dead letters apply;
the next call reconnects (starting the process again for stdio) and lists the tools again.
Concurrent calls share one session, and one reconnect serves them all.

At start, a server that cannot be reached fails `load_mcp_tools` with `McpStartError`
naming each such server and why: a worker that silently lacked tools the planner offers
would fail every run that uses them, one call at a time.

Each call is a CLIENT span named `tools/call <tool>` with the OpenTelemetry MCP attributes
(`mcp.method.name`, `gen_ai.tool.name`, `gen_ai.operation.name`, `mcp.protocol.version`,
`network.transport`, `server.address`/`server.port`, `error.type`,
`rpc.response.status_code`) and `agentflux.mcp.server` (the configured server name).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from jsonschema.exceptions import SchemaError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.runtime.config import Settings
from services.tools._registry import ToolRegistry
from services.tools._spec import JSON, ToolContext, ToolError, ToolSpec
from services.tools._validation import compile_schema

if TYPE_CHECKING:
    # The `mcp` package takes about a second to import: a process with no MCP server
    # never loads it (each function below imports what it uses).
    import mcp_types
    from mcp import Client

__all__ = [
    "META_IDEMPOTENCY_KEY",
    "META_TRACEPARENT",
    "META_TRACESTATE",
    "SEPARATOR",
    "McpStartError",
    "McpTool",
    "McpToolSource",
    "McpTools",
    "load_mcp_tools",
]

log = logging.getLogger(__name__)

META_IDEMPOTENCY_KEY = "io.agentflux/idempotency-key"
META_TRACEPARENT = "traceparent"
META_TRACESTATE = "tracestate"
SEPARATOR = "__"

_MAX_NAME = 64  # the registry's name rule: a letter, then up to 63 of [A-Za-z0-9_-]
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_MAX_PAGES = 100  # a server whose cursor never ends cannot hang a start
_MAX_ERROR_TEXT = 2000
_CLOSE_TIMEOUT_S = 10.0  # stdio shutdown: stdin closed, 2 s grace, SIGTERM, 2 s, SIGKILL
_W3C = TraceContextTextMapPropagator()


def _version() -> str:
    try:
        return metadata.version("agentflux")
    except metadata.PackageNotFoundError:
        return "0"


class McpStartError(RuntimeError):
    """MCP servers could not be reached at start; `failures` maps each to why."""

    def __init__(self, failures: Mapping[str, str]) -> None:
        self.failures = dict(failures)
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(self.failures.items()))
        super().__init__(f"MCP server(s) unavailable at start (setting mcp_servers): {listed}")


class _Unavailable(Exception):  # noqa: N818 - a state of the server, not our bug
    """The server cannot be reached or went away; the message says why."""


def _describe(exc: BaseException) -> str:
    """One line saying why a connection failed, from the innermost real cause."""
    import mcp_types
    from mcp import MCPError

    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        if exc.code == mcp_types.CONNECTION_CLOSED:
            return (
                "the server closed the connection (for stdio: its process exited; see its stderr)"
            )
        return f"{exc.error.message} (JSON-RPC error {exc.code})"
    if isinstance(exc, FileNotFoundError):
        return f"cannot start the command: {exc}"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_gone(exc: BaseException) -> bool:
    """Whether `exc` says the server or the connection is gone (worth reconnecting)."""
    import anyio
    import httpx2
    import mcp_types
    from mcp import MCPError

    if isinstance(exc, MCPError):
        closed = exc.code == mcp_types.CONNECTION_CLOSED
        # An HTTP server that restarted no longer knows the session it handed out.
        ended = exc.code == mcp_types.INVALID_REQUEST and "session terminated" in (
            exc.error.message.lower()
        )
        return closed or ended
    gone = (
        OSError,
        httpx2.TransportError,
        anyio.BrokenResourceError,
        anyio.ClosedResourceError,
        anyio.EndOfStream,
    )
    return isinstance(exc, gone)


class _Connection:
    """One live `Client`, owned by a task of its own: anyio's task groups and cancel scopes
    must be left by the task that entered them, and the calls come from many tasks."""

    def __init__(self, server: str, config: Mapping[str, Any]) -> None:
        self.server = server
        self.config = config
        self.client: Client | None = None
        self.failure: str | None = None
        self.broken = False
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def usable(self) -> bool:
        return (
            self.client is not None
            and not self.broken
            and self._task is not None
            and not self._task.done()
        )

    async def open(self, timeout_s: float) -> list[mcp_types.Tool]:
        """Starts the connection; the server's tools (every page) once it is ready, or
        `_Unavailable` saying why not."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[list[mcp_types.Tool]] = loop.create_future()
        self._task = asyncio.create_task(self._run(ready), name=f"mcp:{self.server}")
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(ready)
        except TimeoutError:
            await self.aclose()
            raise _Unavailable(
                f"no answer within {timeout_s:g} s (setting mcp_connect_timeout_s)"
            ) from None
        except BaseException:
            await self.aclose()
            raise

    async def _run(self, ready: asyncio.Future[list[mcp_types.Tool]]) -> None:
        import mcp_types
        from mcp import Client, StdioServerParameters, stdio_client
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        try:
            async with contextlib.AsyncExitStack() as stack:
                transport: Any
                if "command" in self.config:
                    argv = self.config["command"]
                    params = StdioServerParameters(
                        command=argv[0],
                        args=argv[1:],
                        env={k: v.get_secret_value() for k, v in self.config["env"].items()}
                        or None,
                        cwd=self.config["cwd"],
                    )
                    # The server's stderr is ours: its start-up errors land in our log.
                    transport = stdio_client(params, errlog=sys.stderr)
                else:
                    headers = {k: v.get_secret_value() for k, v in self.config["headers"].items()}
                    http = await stack.enter_async_context(create_mcp_http_client(headers=headers))
                    transport = streamable_http_client(self.config["url"], http_client=http)
                client = Client(
                    transport,
                    mode="auto",
                    cache=None,
                    client_info=mcp_types.Implementation(name="agentflux", version=_version()),
                )
                await stack.enter_async_context(client)
                tools = await _list_tools(client)
                self.client = client
                if not ready.done():
                    ready.set_result(tools)
                await self._stop.wait()
        except Exception as exc:
            self.failure = _describe(exc)
            if not ready.done():
                ready.set_exception(_Unavailable(self.failure))
            elif not self._stop.is_set():
                log.warning("MCP server %r: connection lost: %s", self.server, self.failure)
        finally:
            self.broken = True
            if not ready.done():  # cancelled before it was ready
                ready.set_exception(_Unavailable("closed while connecting"))

    async def aclose(self) -> None:
        """Ends the session (a stdio server's process is stopped) and waits for it."""
        self.broken = True
        self._stop.set()
        task = self._task
        if task is None or task.done():
            return
        done, _ = await asyncio.wait({task}, timeout=_CLOSE_TIMEOUT_S)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=_CLOSE_TIMEOUT_S)


async def _list_tools(client: Client) -> list[mcp_types.Tool]:
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    seen: set[str] = set()
    for _ in range(_MAX_PAGES):
        page = await client.list_tools(cursor=cursor, cache_mode="bypass")
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return tools
        if cursor in seen:
            raise _Unavailable(f"tools/list repeated the cursor {cursor!r}")
        seen.add(cursor)
    raise _Unavailable(f"tools/list did not end within {_MAX_PAGES} pages")


@dataclass(frozen=True, slots=True)
class _Listed:
    """An MCP tool as agentflux offers it."""

    spec: ToolSpec
    mcp_name: str


class McpTool:
    """An agentflux tool that calls one tool of an MCP server."""

    def __init__(self, source: McpToolSource, spec: ToolSpec, mcp_name: str) -> None:
        self.spec = spec
        self.source = source
        self.mcp_name = mcp_name

    async def __call__(self, args: Mapping[str, Any], ctx: ToolContext) -> JSON:
        return await self.source.call(self, args, ctx)


class McpToolSource:
    """One configured MCP server: its connection, its tools, and the calls to them."""

    def __init__(
        self,
        name: str,
        config: Mapping[str, Any],
        settings: Settings,
        *,
        tracer: Tracer | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.source = f"mcp:{name}"
        self.timeout_s = float(config.get("timeout_s") or settings.mcp_tool_timeout_s)
        self.connect_timeout_s = settings.mcp_connect_timeout_s
        self.tools: list[McpTool] = []
        self.skipped: list[tuple[str, str]] = []  # (MCP tool name, why it is not offered)
        self.connects = 0
        self._tracer = tracer or trace.get_tracer("agentflux.tools.mcp")
        self._offered: dict[str, mcp_types.Tool] = {}
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        if "url" in config:
            parts = urlsplit(config["url"])
            self._transport = "tcp"
            self._address = parts.hostname or ""
            self._port = parts.port or (443 if parts.scheme == "https" else 80)
        else:
            self._transport, self._address, self._port = "pipe", "", 0

    @property
    def target(self) -> str:
        """What `agentflux tools` shows: the URL, or the command line."""
        return server_target(self.config)

    @property
    def protocol_version(self) -> str | None:
        """The revision the live session speaks, or None while there is none."""
        conn = self._conn
        if conn is None or conn.client is None or not conn.usable:
            return None
        return conn.client.protocol_version

    async def start(self) -> list[McpTool]:
        """Connects and makes the tools; `_Unavailable` (a message) when it cannot."""
        await self._connection()
        return self.tools

    async def aclose(self) -> None:
        """Ends the session; a stdio server's process is stopped."""
        self._closed = True
        async with self._lock:
            if self._conn is not None:
                await self._conn.aclose()
                self._conn = None

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        async with self._lock:
            conn = self._conn
            if conn is not None and conn.usable:
                return conn
            if self._closed:
                raise _Unavailable("the tool source is closed")
            if conn is not None:
                await conn.aclose()
                self._conn = None
            conn = _Connection(self.name, self.config)
            listed = await conn.open(self.connect_timeout_s)
            self._absorb(listed)
            self._conn = conn
            self.connects += 1
            if self.connects > 1:
                log.info("MCP server %r: reconnected", self.name)
            return conn

    def _absorb(self, listed: Sequence[mcp_types.Tool]) -> None:
        """Takes a fresh listing: the first makes the tools; a later one (after a
        reconnect) can only be compared, since the registry already holds the specs."""
        offered = {tool.name: tool for tool in listed}
        if self.tools:
            known = {tool.mcp_name for tool in self.tools}
            gone = sorted(known - set(offered))
            if gone:
                log.warning("MCP server %r no longer offers %s", self.name, ", ".join(gone))
            self._offered = offered
            return
        self._offered = offered
        seen: set[str] = set()
        for tool in listed:
            if tool.name in seen:
                self.skipped.append((tool.name, "listed twice"))
                continue
            seen.add(tool.name)
            made = self._spec(tool)
            if isinstance(made, str):
                self.skipped.append((tool.name, made))
                log.warning("MCP server %r: tool %r skipped: %s", self.name, tool.name, made)
            else:
                self.tools.append(McpTool(self, made.spec, made.mcp_name))

    def _spec(self, tool: mcp_types.Tool) -> _Listed | str:
        """The tool's spec, or why it cannot be offered."""
        name = f"{self.name}{SEPARATOR}{tool.name}"
        if not tool.name or not set(tool.name) <= _NAME_CHARS:
            return "its name has characters other than letters, digits, '_' and '-'"
        if len(name) > _MAX_NAME:
            return f"{name!r} would be longer than {_MAX_NAME} characters"
        schema = dict(tool.input_schema)
        try:
            compile_schema(schema)
        except SchemaError as exc:
            return f"its input schema is not valid JSON Schema: {exc.message}"
        if schema.get("type") != "object":
            return 'its input schema does not describe an object ("type": "object")'
        hints = tool.annotations
        read_only = hints is not None and hints.read_only_hint is True
        destructive = hints is not None and hints.destructive_hint is True and not read_only
        description = tool.description or tool.title or f"{tool.name} (MCP server {self.name})"
        spec = ToolSpec(
            name=name,
            description=description,
            schema=schema,
            timeout_s=self.timeout_s,
            side_effects=not read_only,
            cacheable=False,
            needs_approval=destructive,
        )
        return _Listed(spec, tool.name)

    async def call(self, tool: McpTool, args: Mapping[str, Any], ctx: ToolContext) -> JSON:
        """Runs one `tools/call` under the tool's timeout (see the module doc)."""
        attributes: dict[str, Any] = {
            "mcp.method.name": "tools/call",
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool.mcp_name,
            "agentflux.mcp.server": self.name,
            "network.transport": self._transport,
        }
        if self._address:
            attributes |= {"server.address": self._address, "server.port": self._port}
        with self._tracer.start_as_current_span(
            f"tools/call {tool.mcp_name}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await self._call(tool, args, ctx, span)
            except ToolError as failed:
                span.record_exception(failed)
                span.set_status(Status(StatusCode.ERROR, str(failed)))
                raise

    async def _call(
        self, tool: McpTool, args: Mapping[str, Any], ctx: ToolContext, span: trace.Span
    ) -> JSON:
        from mcp import MCPError

        timeout = tool.spec.timeout_s
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(timeout):
                try:
                    conn = await self._connection()
                except _Unavailable as exc:
                    span.set_attribute("error.type", "unavailable")
                    raise ToolError(
                        f"MCP server {self.name!r} is unavailable: {exc}", retryable=True
                    ) from exc
                client = conn.client
                assert client is not None
                span.set_attribute("mcp.protocol.version", client.protocol_version)
                if tool.mcp_name not in self._offered:
                    span.set_attribute("error.type", "tool_not_offered")
                    raise ToolError(f"MCP server {self.name!r} no longer offers {tool.mcp_name!r}")
                result = await client.call_tool(
                    tool.mcp_name,
                    dict(args),
                    meta=cast("mcp_types.RequestParamsMeta", _meta(ctx, span)),
                )
        except TimeoutError:
            span.set_attribute("error.type", "timeout")
            raise ToolError(
                f"MCP server {self.name!r} did not answer {tool.mcp_name!r} within {timeout:g} s",
                retryable=True,
            ) from None
        except MCPError as exc:
            raise self._error(conn, exc, span) from exc
        except ToolError:
            raise
        except RuntimeError as exc:  # a result that breaks the tool's output schema
            span.set_attribute("error.type", type(exc).__name__)
            raise ToolError(f"MCP server {self.name!r}: {exc}") from exc
        except Exception as exc:
            if not _is_gone(exc):
                raise
            raise self._error(conn, exc, span) from exc
        if result.is_error:
            span.set_attribute("error.type", "tool_error")
            raise ToolError(
                f"{tool.mcp_name} (MCP server {self.name}) failed: "
                f"{_text(result.content) or 'no message'}"[:_MAX_ERROR_TEXT]
            )
        return _output(result)

    def _error(self, conn: _Connection | None, exc: Exception, span: trace.Span) -> ToolError:
        """The `ToolError` of a call that ended in `exc`."""
        import mcp_types
        from mcp import MCPError

        if isinstance(exc, MCPError):
            span.set_attributes(
                {"error.type": str(exc.code), "rpc.response.status_code": str(exc.code)}
            )
        else:
            span.set_attribute("error.type", type(exc).__name__)
        if _is_gone(exc):
            if conn is not None:
                conn.broken = True
            why = (conn.failure if conn is not None else None) or _describe(exc)
            return ToolError(
                f"MCP server {self.name!r} went away during the call: {why}; "
                "the next attempt reconnects",
                retryable=True,
            )
        assert isinstance(exc, MCPError)
        # An internal error may pass; invalid params, an unknown tool, ... will not.
        retryable = exc.code in (mcp_types.INTERNAL_ERROR, mcp_types.REQUEST_TIMEOUT)
        return ToolError(
            f"MCP server {self.name!r}: {exc.error.message} (JSON-RPC error {exc.code})",
            retryable=retryable,
        )


def _meta(ctx: ToolContext, span: trace.Span) -> dict[str, Any]:
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(span))
    meta: dict[str, Any] = {META_IDEMPOTENCY_KEY: ctx.idempotency_key}
    for key in (META_TRACEPARENT, META_TRACESTATE):
        if carrier.get(key):
            meta[key] = carrier[key]
    return meta


def _text(content: Sequence[mcp_types.ContentBlock]) -> str:
    import mcp_types

    return "\n".join(block.text for block in content if isinstance(block, mcp_types.TextContent))


def _output(result: mcp_types.CallToolResult) -> JSON:
    import mcp_types

    if result.structured_content is not None:
        return result.structured_content
    if all(isinstance(block, mcp_types.TextContent) for block in result.content):
        return _text(result.content)
    blocks: list[JSON] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            blocks.append({"type": "text", "text": block.text})
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            # Bytes are not something a model reads from a tool result; say what it was.
            blocks.append({"type": block.type, "mime_type": block.mime_type})
        else:
            blocks.append(json.loads(block.model_dump_json(by_alias=True, exclude_none=True)))
    return blocks


@dataclass(slots=True)
class McpTools:
    """The MCP tool sources of a process: `aclose()` stops them (stdio servers exit)."""

    sources: dict[str, McpToolSource] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # only with strict=False

    async def aclose(self) -> None:
        await asyncio.gather(*(s.aclose() for s in self.sources.values()))


def server_target(config: Mapping[str, Any]) -> str:
    """Where a configured MCP server is: its URL, or its command line."""
    if "url" in config:
        return str(config["url"])
    return " ".join(config["command"])


async def load_mcp_tools(
    registry: ToolRegistry,
    settings: Settings,
    *,
    tracer: Tracer | None = None,
    strict: bool = True,
) -> McpTools:
    """Connects to every server of `settings.mcp_servers` (all at once), registers their
    tools in `registry` from source `mcp:<server>`, and returns the handle that stops them.

    `strict` (services): a server that cannot be reached fails the start with
    `McpStartError` naming each such server and why (the others are stopped). Not strict
    (`agentflux tools`): such servers are left out and listed in `McpTools.failures`."""
    sources = {
        name: McpToolSource(name, config, settings, tracer=tracer)
        for name, config in settings.mcp_servers.items()
    }
    outcomes = await asyncio.gather(
        *(source.start() for source in sources.values()), return_exceptions=True
    )
    loaded = McpTools()
    for (name, source), outcome in zip(sources.items(), outcomes, strict=True):
        if isinstance(outcome, _Unavailable):
            loaded.failures[name] = str(outcome)
        elif isinstance(outcome, BaseException):
            loaded.failures[name] = _describe(outcome)
        else:
            loaded.sources[name] = source
    if loaded.failures and strict:
        await loaded.aclose()
        raise McpStartError(loaded.failures)
    try:
        for source in loaded.sources.values():
            for tool in source.tools:
                registry.register(tool, source=source.source)
    except BaseException:
        await loaded.aclose()
        raise
    return loaded
