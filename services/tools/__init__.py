"""Tools: what an agent can do besides answering, and the registry that finds them.

A tool is a `ToolSpec` (name, JSON schema of its arguments, timeout, side effects) and
an async call (`Tool`). `ToolRegistry.load(settings)` holds the built-ins (calculator,
clock, http_get, memory, retrieve; `builtin_tools`) and every tool that installed
packages declare in the `agentflux.tools` entry-point group. `ToolRegistry.validate`
checks a call's arguments against the tool's schema before it runs.
`load_mcp_tools(registry, settings)` adds the tools of the MCP servers of
`AGENTFLUX_MCP_SERVERS` (named `<server>__<tool>`, source `mcp:<server>`).

Errors, all raised by tools or the registry:

- `ToolError`: a call failed; `retryable` says whether another attempt may succeed.
  - `ToolArgumentsError`: the arguments do not match the schema; lists each
    `FieldViolation` (path and message). Never retryable.
  - `UnknownToolError` (also a `KeyError`): no tool has that name. Never retryable.
- `ToolRegistrationError` (a `ValueError`): a tool cannot join the registry (bad spec or
  schema, name taken, entry point that does not load), raised when the registry is built.
"""

from services.tools._builtin import builtin_tools
from services.tools._mcp import (
    META_IDEMPOTENCY_KEY,
    McpStartError,
    McpTool,
    McpTools,
    McpToolSource,
    load_mcp_tools,
    server_target,
)
from services.tools._registry import (
    BUILTIN,
    ENTRY_POINT_GROUP,
    ToolRegistrationError,
    ToolRegistry,
    UnknownToolError,
)
from services.tools._spec import (
    JSON,
    Search,
    Tool,
    ToolContext,
    ToolError,
    ToolSpec,
    needs_approval,
)
from services.tools._validation import FieldViolation, ToolArgumentsError

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "JSON",
    "META_IDEMPOTENCY_KEY",
    "FieldViolation",
    "McpStartError",
    "McpTool",
    "McpToolSource",
    "McpTools",
    "Search",
    "Tool",
    "ToolArgumentsError",
    "ToolContext",
    "ToolError",
    "ToolRegistrationError",
    "ToolRegistry",
    "ToolSpec",
    "UnknownToolError",
    "builtin_tools",
    "load_mcp_tools",
    "needs_approval",
    "server_target",
]
