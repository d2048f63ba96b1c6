"""`agentflux demo` (what `make demo` runs) as a new user sees it: the mesh comes up,
every built-in tool answers, a two-step run completes, and its trace crosses every
system."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import pytest

from services.demo import DEMO_TENANT, KEY_TTL_S, NAMESPACE
from services.runtime.adapters.redis import connect_redis
from services.runtime.apikeys import ApiKeyStore
from services.runtime.config import Settings
from services.runtime.keys import Keys
from tests.e2e.conftest import AGENTFLUX, ROOT, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def _demo_keys(forget: Iterable[str] = ()) -> dict[str, int]:
    """The demo tenant's API keys in Redis, each with its time to live (ms; -1: none);
    those in `forget` are deleted first."""
    client = connect_redis(Settings())
    try:
        store = ApiKeyStore(client, namespace=NAMESPACE)
        for key_id in forget:
            await store.delete(key_id)
        ids = [k.key_id for k in await store.list(DEMO_TENANT)]
        return {i: await client.pttl(Keys(NAMESPACE).api_key_id(i)) for i in ids}
    finally:
        await client.aclose()


async def test_the_demo_runs_every_tool_and_prints_a_trace() -> None:
    before = await _demo_keys()
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
    assert set(await _demo_keys()) <= set(before)  # its key deleted at its end


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
    # gets SIGTERM from the kernel and drains, instead of serving on alone; its API key
    # expires by itself.
    before = await _demo_keys()
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
            left = {i: ttl for i, ttl in (await _demo_keys()).items() if i not in before}
            assert len(left) == 1, left
            assert all(0 < ttl <= KEY_TTL_S * 1000 for ttl in left.values()), left
            await _demo_keys(forget=left)  # not left for its two minutes
        finally:
            demo.kill()  # a no-op once it is dead
            for pid in filter(_alive, children):  # what it left, on a failure
                os.kill(pid, signal.SIGTERM)
