"""`agentflux demo` (what `make demo` runs) as a new user sees it: the mesh comes up,
every built-in tool answers, a two-step run completes, and its trace crosses every
system."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import IO

import pytest

from tests.e2e.conftest import AGENTFLUX, ROOT, eventually

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


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _argv(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _alive(pid: int) -> bool:
    """Running: neither gone nor a zombie its new parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _until_ready(out: IO[str]) -> str:
    for line in out:
        if line.startswith("ready:"):
            return line
    raise AssertionError("the demo ended before its mesh was ready")


async def test_a_demo_killed_outright_takes_its_mesh_with_it() -> None:
    # SIGKILL runs none of the demo's own clean-up: its mesh, `agentflux serve --parent`,
    # gets SIGTERM from the kernel and drains, instead of serving on alone.
    with subprocess.Popen(  # noqa: ASYNC220 - returns at once; read on a thread
        [AGENTFLUX, "demo"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as demo:
        children: list[int] = []
        try:
            assert demo.stdout is not None
            await asyncio.wait_for(asyncio.to_thread(_until_ready, demo.stdout), 120)
            demo.send_signal(signal.SIGSTOP)  # no new child between the count and the kill
            children = _children(demo.pid)
            serves = [p for p in children if "serve" in _argv(p)]
            assert len(serves) == 1, children
            demo.send_signal(signal.SIGKILL)
            demo.wait(30)

            async def all_gone() -> bool:
                return not any(_alive(p) for p in children)

            await eventually(all_gone, timeout=90, what="the killed demo's mesh to stop")
        finally:
            demo.kill()  # a no-op once it is dead
            for pid in filter(_alive, children):  # what it left, on a failure
                os.kill(pid, signal.SIGTERM)
