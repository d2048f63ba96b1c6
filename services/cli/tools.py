"""`agentflux tools`: every tool a worker of these settings would offer, and from where.

Built-ins, entry-point tools and the tools of each MCP server of `AGENTFLUX_MCP_SERVERS`
(the servers are started or connected to for the listing, then stopped). A server that
cannot be reached is named with the reason, the others are still listed, and the command
exits with 1."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from services.runtime.config import Settings
from services.tools import (
    McpTools,
    ToolRegistrationError,
    ToolRegistry,
    load_mcp_tools,
    server_target,
)

__all__ = ["tools"]


async def _load(settings: Settings) -> tuple[ToolRegistry, McpTools]:
    registry = ToolRegistry.load(settings)
    mcp = await load_mcp_tools(registry, settings, strict=False)
    await mcp.aclose()
    return registry, mcp


def tools(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """List every tool: its source, timeout, side effects and description."""
    from services.cli import _settings  # the CLI's own reading of the settings

    settings = _settings()
    try:
        registry, mcp = asyncio.run(_load(settings))
    except ToolRegistrationError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    listed: list[dict[str, Any]] = [
        {
            "name": spec.name,
            "source": registry.source(spec.name),
            "timeout_s": spec.timeout_s,
            "side_effects": spec.side_effects,
            "needs_approval": spec.needs_approval,
            "description": spec.description,
        }
        for spec in registry.specs()
    ]
    servers: list[dict[str, Any]] = [
        {
            "name": name,
            "target": source.target,
            "ok": True,
            "tools": len(source.tools),
            "skipped": [{"tool": tool, "reason": why} for tool, why in source.skipped],
        }
        for name, source in sorted(mcp.sources.items())
    ]
    servers += [
        {
            "name": name,
            "target": server_target(settings.mcp_servers[name]),
            "ok": False,
            "error": why,
        }
        for name, why in sorted(mcp.failures.items())
    ]
    servers.sort(key=lambda s: str(s["name"]))
    if as_json:
        typer.echo(json.dumps({"tools": listed, "mcp_servers": servers}, indent=2))
    else:
        width = max((len(t["name"]) for t in listed), default=4)
        for t in listed:
            effects = "side effects" if t["side_effects"] else "read-only"
            approval = ", needs approval" if t["needs_approval"] else ""
            typer.echo(
                f"{t['name']:<{width}}  {t['source']}  {t['timeout_s']:g} s  {effects}{approval}"
            )
            typer.echo(typer.style(f"    {t['description']}", dim=True))
        for s in servers:
            if s["ok"]:
                for skipped in s["skipped"]:
                    typer.secho(
                        f"MCP server {s['name']}: tool {skipped['tool']!r} not offered: "
                        f"{skipped['reason']}",
                        fg="yellow",
                        err=True,
                    )
            else:
                typer.secho(
                    f"MCP server {s['name']} ({s['target']}) failed: {s['error']}",
                    fg="red",
                    err=True,
                )
    if mcp.failures:
        raise typer.Exit(1)
