"""A run driven by an OpenAI-compatible model that uses an MCP server's tool and a
built-in tool, as a user sets it up: the mesh started through the CLI with
`AGENTFLUX_MODEL_PROVIDER=openai` pointed at a chat-completions server on loopback
(tests/fakes/openai_server.py, a separate process speaking the API's wire format) and
`AGENTFLUX_MCP_SERVERS` naming a stdio MCP server (tests/fakes/mcp_server.py, built with
the `mcp` package), then `agentflux ask` and `agentflux trace`."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import AGENTFLUX, ROOT, Mesh, eventually, run_program

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MODEL = "fake-chat-1"
ANSWER = "6*7 is 42, and the MCP server echoed back what it was asked."


@pytest.fixture
async def model(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """The chat-completions server as its own process: its URL and its request log."""
    import asyncio

    script = tmp_path / "script.json"
    record = tmp_path / "requests.jsonl"
    script.write_text(
        json.dumps(
            {
                "replies": [
                    # Planning step 0: two calls at once, a built-in and an MCP tool.
                    {
                        "tool_calls": [
                            {"name": "calculator", "arguments": {"expression": "6*7"}},
                            {"name": "files__echo", "arguments": {"text": "hello"}},
                        ]
                    },
                    # Composing once both results are in: the answer, streamed.
                    {"content": ANSWER},
                ]
            }
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.openai_server",
        "--port",
        "0",
        "--script",
        str(script),
        "--record",
        str(record),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("OPENAI_URL="), line
        yield line.strip().removeprefix("OPENAI_URL="), record
    finally:
        proc.terminate()
        await proc.wait()


def _requests(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


async def test_a_run_uses_a_model_endpoint_an_mcp_tool_and_a_builtin_one(
    mesh: Mesh, model: tuple[str, Path]
) -> None:
    url, record = model
    servers = {
        "files": {
            "command": [sys.executable, "-m", "tests.fakes.mcp_server", "--transport", "stdio"],
            "cwd": str(ROOT),
        }
    }
    env = {
        "AGENTFLUX_MODEL_PROVIDER": "openai",
        "AGENTFLUX_MODEL_BASE_URL": url,
        "AGENTFLUX_MODEL_NAME": MODEL,
        "AGENTFLUX_MODEL_API_KEY": "sk-test-not-secret",
        "AGENTFLUX_MCP_SERVERS": json.dumps(servers),
    }
    await mesh.start(**env)
    # `agentflux tools` shows where each tool comes from.
    listed = await run_program(AGENTFLUX, "tools", "--json", env={**mesh.env, **env}, timeout=120)
    assert listed.code == 0, listed.stderr
    sources = {t["name"]: t["source"] for t in json.loads(listed.stdout)["tools"]}
    assert sources["calculator"] == "builtin"
    assert sources["files__echo"] == "mcp:files"

    done = await run_program(
        AGENTFLUX, "ask", "what is 6*7, and echo hello", "--json", env={**mesh.env, **env}
    )
    assert done.code == 0, f"{done.stdout}\n{done.stderr}"
    events = done.lines
    # proto3 JSON of StreamRunResponse: the event's kind is its one other key.
    kinds = [next(k for k in e if k not in ("eventId", "eventTime", "sequence")) for e in events]
    # The answer arrived as it was written, in pieces, and completed the run.
    deltas = [e["answerDelta"]["text"] for e in events if "answerDelta" in e]
    assert len(deltas) > 1, kinds
    assert "".join(deltas) == ANSWER
    assert kinds[-1] == "finished", kinds
    started = {e["toolStarted"]["call"]["name"] for e in events if "toolStarted" in e}
    assert started == {"calculator", "files__echo"}, kinds

    # The endpoint saw what a model server sees: the key, every tool with its schema, and
    # on the second request both results as tool messages.
    first, second = _requests(record)
    assert first["headers"].get("authorization") == "Bearer sk-test-not-secret"
    offered = {t["function"]["name"]: t["function"] for t in first["body"]["tools"]}
    assert {"calculator", "files__echo"} <= set(offered)
    assert offered["files__echo"]["parameters"]["type"] == "object"
    assert second["body"]["stream"] is True
    tool_messages = [m for m in second["body"]["messages"] if m["role"] == "tool"]
    assert len(tool_messages) == 2
    echoed = next(m for m in tool_messages if "hello" in m["content"])
    # The MCP call carried the run's idempotency key and trace context in its _meta.
    meta = json.loads(echoed["content"])["meta"]
    assert meta["io.agentflux/idempotency-key"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", meta["traceparent"])

    # The trace shows the model calls and the MCP call as spans of the run.
    correlation = re.search(r"^correlation\s+(\S+)", done.stderr, re.M)
    assert correlation, done.stderr

    async def spans() -> list[dict[str, Any]] | None:
        shown = await run_program(
            AGENTFLUX, "trace", correlation.group(1), "--json", env=mesh.env, timeout=60
        )
        if shown.code != 0:
            return None
        got = shown.lines
        names = {s["name"] for s in got}
        wanted = {f"chat {MODEL}", "tools/call echo"}
        return got if wanted <= names else None

    got = await eventually(spans, timeout=60, what="the model and MCP spans in the trace")
    chats = [s for s in got if s["name"] == f"chat {MODEL}"]
    assert {s["service"] for s in chats} == {"planner", "composer"}
    assert all(s["kind"] == "CLIENT" for s in chats)
    assert {s["attributes"]["gen_ai.request.model"] for s in chats} == {MODEL}
    (mcp,) = [s for s in got if s["name"] == "tools/call echo"]
    assert mcp["service"] == "worker"
    assert meta["traceparent"].split("-")[2] == mcp["span_id"]
