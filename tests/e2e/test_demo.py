"""`agentflux demo` (what `make demo` runs) as a new user sees it: the mesh comes up,
every built-in tool answers, a two-step run completes, and its trace crosses every
system."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from tests.e2e.conftest import AGENTFLUX, ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def test_the_demo_runs_every_tool_and_prints_a_trace() -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [AGENTFLUX, "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}"
    assert out.startswith("$ agentflux serve")
    for tool in ("calculator", "memory", "retrieve", "clock", "http_get"):
        assert f"tool {tool} succeeded" in out, tool
    assert "42" in out
    assert "50" in out  # the two-step run
    assert out.count("(completed)") == 7
    waterfall = out[out.rindex("$ agentflux trace") :]
    for hop in ("gateway", "planner", "worker", "composer", "rabbitmq", "kafka", "redis"):
        assert hop in waterfall, hop
