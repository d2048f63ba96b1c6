"""A real MCP server for the MCP tool-source tests, built with the `mcp` package.

    python -m tests.fakes.mcp_server --transport stdio|http [--port N] [--protocol-version V]

Tools: `echo` (returns its arguments and the `_meta` it received), `add` (two numbers,
structured output), `fail` (an `isError` result), `slow` (sleeps `seconds`), `crash` (the
process exits abruptly mid-call), and `drop` (a name agentflux cannot use, so it is skipped).
`tools/list` answers two tools per page, so a client has to follow the cursor.

Over HTTP it prints `MCP_URL=http://127.0.0.1:<port>/mcp` once it accepts connections:
tests wait on that line. `--protocol-version` makes a server of that revision: a
handshake-era one (e.g. 2025-11-25) refuses `server/discover` and answers `initialize`
with that version; without it the server speaks every revision the package does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, KNOWN_PROTOCOL_VERSIONS

_OBJECT: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}

TOOLS = [
    types.Tool(
        name="echo",
        description="Returns its arguments and the request's _meta.",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
        annotations=types.ToolAnnotations(read_only_hint=True),
    ),
    types.Tool(
        name="add",
        description="Adds two numbers.",
        input_schema={
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {"sum": {"type": "number"}},
            "required": ["sum"],
        },
        annotations=types.ToolAnnotations(read_only_hint=True),
    ),
    types.Tool(
        name="fail",
        description="Always fails with an isError result.",
        input_schema=_OBJECT,
        annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=True),
    ),
    types.Tool(
        name="slow",
        description="Sleeps for `seconds`, then answers.",
        input_schema={
            "type": "object",
            "properties": {"seconds": {"type": "number", "minimum": 0}},
            "required": ["seconds"],
        },
    ),
    types.Tool(name="crash", description="Exits the server mid-call.", input_schema=_OBJECT),
    types.Tool(name="drop.me", description="A name agentflux cannot use.", input_schema=_OBJECT),
]
_PAGE = 2


def _text(text: str) -> list[types.ContentBlock]:
    return [types.TextContent(type="text", text=text)]


async def _list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    start = int(params.cursor) if params is not None and params.cursor else 0
    end = start + _PAGE
    return types.ListToolsResult(
        tools=TOOLS[start:end], next_cursor=str(end) if end < len(TOOLS) else None
    )


async def _call_tool(
    ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
) -> types.CallToolResult:
    args = params.arguments or {}
    if params.name == "echo":
        meta = dict(params.meta or {})
        out = {"arguments": args, "meta": meta, "protocol_version": ctx.protocol_version}
        return types.CallToolResult(content=_text(json.dumps(out)), structured_content=out)
    if params.name == "add":
        total = args["a"] + args["b"]
        return types.CallToolResult(content=_text(str(total)), structured_content={"sum": total})
    if params.name == "fail":
        return types.CallToolResult(content=_text("the fail tool failed, as asked"), is_error=True)
    if params.name == "slow":
        await anyio.sleep(float(args["seconds"]))
        return types.CallToolResult(content=_text(f"slept {args['seconds']} s"))
    if params.name == "crash":
        sys.stdout.flush()
        os._exit(3)  # no response, no clean shutdown: the process is simply gone
    raise MCPError(code=types.INVALID_PARAMS, message=f"unknown tool {params.name!r}")


def build(protocol_version: str | None) -> Server[Any]:
    """The server; pinned to a handshake-era `protocol_version` when one is given."""
    server: Server[Any] = Server(
        "agentflux-test", version="1.0", on_list_tools=_list_tools, on_call_tool=_call_tool
    )
    if protocol_version is None:
        return server

    async def no_discover(ctx: ServerRequestContext[Any], params: Any) -> types.DiscoverResult:
        raise MCPError(code=types.METHOD_NOT_FOUND, message="Method not found")

    async def pin_version(
        ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.method == "initialize" and isinstance(ctx.params, Mapping):
            ctx = replace(ctx, params={**ctx.params, "protocolVersion": protocol_version})
        return await call_next(ctx)

    server.add_request_handler("server/discover", types.RequestParams, no_discover)
    server.middleware.append(pin_version)
    return server


async def _serve_stdio(server: Server[Any], legacy: bool) -> None:
    from mcp.server.runner import serve_loop
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read, write):
        if not legacy:
            await server.run(read, write, server.create_initialization_options())
            return
        # The handshake-only loop: a `server/discover` probe is not a request it knows.
        async with server.lifespan(server) as state:
            await serve_loop(
                server,
                read,
                write,
                lifespan_state=state,
                init_options=server.create_initialization_options(),
            )


async def _serve_http(server: Server[Any], port: int) -> None:
    import uvicorn

    app = server.streamable_http_app(host="127.0.0.1")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    web = uvicorn.Server(config)
    serving = asyncio.create_task(web.serve(sockets=[sock]))
    while not web.started:
        if serving.done():
            serving.result()
            return
        await asyncio.sleep(0.01)
    print(f"MCP_URL=http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    await serving


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.mcp_server")
    parser.add_argument("--transport", choices=("stdio", "http"), required=True)
    parser.add_argument("--port", type=int, default=0, help="HTTP port; 0 picks a free one")
    parser.add_argument("--protocol-version", choices=KNOWN_PROTOCOL_VERSIONS, default=None)
    opts = parser.parse_args()
    pinned = opts.protocol_version if opts.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS else None
    server = build(pinned)
    if opts.transport == "stdio":
        anyio.run(_serve_stdio, server, pinned is not None)
    else:
        asyncio.run(_serve_http(server, opts.port))


if __name__ == "__main__":
    main()
