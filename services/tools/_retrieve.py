"""`retrieve`: earlier answers of the tenant that match a query, from the response index.

The index is the indexer's (a projection of `agent.completed`); the worker injects the
search function as `ToolContext.search`. The tenant is always the caller's: a model
cannot name another tenant's index.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.runtime.config import Settings
from services.tools._spec import JSON, ToolContext, ToolError, ToolSpec

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "Retrieve"]

DEFAULT_LIMIT = 5
MAX_LIMIT = 20
MAX_QUERY = 500


class Retrieve:
    """The `retrieve` tool: search the tenant's earlier answers."""

    def __init__(self, settings: Settings) -> None:
        self.spec = ToolSpec(
            name="retrieve",
            description=(
                "Search earlier answers of this tenant for `query`; returns the best "
                f"matches (at most `limit`, default {DEFAULT_LIMIT}), best first."
            ),
            schema={
                "type": "object",
                "properties": {
                    "query": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY},
                    "limit": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_LIMIT,
                        "default": DEFAULT_LIMIT,
                    },
                },
                "required": ["query"],
                "additionalProperties": False,
            },
            timeout_s=settings.tool_timeout_s,
            # Not cacheable: the index grows with every completed run.
        )

    async def __call__(self, args: Mapping[str, Any], ctx: ToolContext) -> JSON:
        query, limit = args.get("query"), args.get("limit", DEFAULT_LIMIT)
        if not isinstance(query, str) or not query.strip():
            raise ToolError("give a non-empty `query` to search for")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ToolError(f"limit must be an integer from 1 to {MAX_LIMIT}")
        if ctx.search is None:
            # The worker runs without its index client (not configured, or starting):
            # another attempt, on this worker or another, may have it.
            raise ToolError("the response index is not available", retryable=True)
        matches = await ctx.search(ctx.tenant_id, query, limit)
        return {"query": query, "matches": list(matches[:limit])}
