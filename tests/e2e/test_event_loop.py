"""`agentflux serve` on either event loop (AGENTFLUX_EVENT_LOOP): uvloop by default where
it is installed, the standard library's on request. Each serves a whole run and drains on
SIGTERM, and a loop that is no choice is refused before anything starts."""

from __future__ import annotations

import re
import signal

import pytest
from agentflux.v1 import types_pb2

from tests.e2e.conftest import Mesh

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.mark.parametrize(
    ("choice", "said"), [(None, "event loop: uvloop "), ("asyncio", "event loop: asyncio")]
)
async def test_serve_runs_an_agent_and_drains_on_its_event_loop(
    mesh: Mesh, choice: str | None, said: str
) -> None:
    if choice is None:
        pytest.importorskip("uvloop")
        env = {}
    else:
        env = {"AGENTFLUX_EVENT_LOOP": choice}
    proc = await mesh.start(**env)
    assert said in proc.output
    # What start-up made is out of the full collections' way before the first run.
    frozen = re.search(r"(\d+) objects from start-up frozen", proc.output)
    assert frozen is not None, proc.output
    assert int(frozen.group(1)) > 10_000, proc.output
    run = await mesh.submit("what is 6*7")
    done = await mesh.finished(run.run_id)
    assert done.status == types_pb2.RUN_STATUS_COMPLETED, done
    assert "42" in done.answer.text
    proc.signal(signal.SIGTERM)
    assert await proc.exited() == 0, proc.output
    assert "SIGTERM: stopping gracefully" in proc.output


async def test_serve_refuses_a_loop_that_is_no_choice(mesh: Mesh) -> None:
    proc = await mesh.start("gateway", wait=False, AGENTFLUX_EVENT_LOOP="gevent")
    assert await proc.exited() == 2  # a usage error, as for any invalid setting
    assert "invalid configuration" in proc.output
    assert "AGENTFLUX_EVENT_LOOP" in proc.output
    assert "'auto', 'uvloop' or 'asyncio'" in proc.output
    assert "ready:" not in proc.output
