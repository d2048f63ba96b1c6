"""`agentflux ask` as a user runs it: a subprocess against the gateway in-process.

The test plays the rest of the mesh: once the run's `AgentRequested` reaches Kafka, it
plans, runs one tool and streams the answer through `RunStore`, then ends the run."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from agentflux.v1 import events_pb2, types_pb2

from services.gateway import GatewayService
from services.runtime.config import Settings
from tests.integration.test_gateway import (
    Rig,
    delta,
    free_port,
    play_tools,
    read_requested,
    running_gateway,
)

pytestmark = pytest.mark.integration

AGENTFLUX = str(Path(sys.executable).with_name("agentflux"))
ROOT = Path(__file__).resolve().parents[2]
ANSWER = ["The answer ", "is ", "42."]


@dataclass
class Done:
    code: int
    out: str
    err: str


@pytest_asyncio.fixture(scope="module")
async def rig(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with running_gateway(tmp_path_factory.mktemp("stack")) as got:
        yield got


def cli_env(rig: Rig, gateway_port: int | None = None) -> dict[str, str]:
    """The CLI's settings: the rig's gateway (or another port) and span store."""
    return {
        "AGENTFLUX_GATEWAY_PORT": str(gateway_port or rig.settings.gateway_port),
        "AGENTFLUX_INDEXER_PORT": str(rig.settings.indexer_port),
        "AGENTFLUX_STACK_DIR": str(rig.settings.stack_dir),
    }


async def ask(rig: Rig, *args: str, gateway_port: int | None = None) -> Done:
    """Runs `agentflux ask ARGS` against the rig's gateway (and its span store)."""
    env = {**os.environ, **cli_env(rig, gateway_port)}
    proc = await asyncio.create_subprocess_exec(
        AGENTFLUX,
        "ask",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


async def requested(rig: Rig, prompt: str) -> events_pb2.AgentRequested:
    records = await asyncio.to_thread(
        read_requested, rig.settings, rig.topic, lambda e: e.prompt == prompt
    )
    return records[-1][0]


async def answer(rig: Rig, event: events_pb2.AgentRequested) -> None:
    """The planner, a worker and the composer: one tool call, then the answer."""
    run = types_pb2.Run(run_id=event.run_id, tenant_id=event.tenant_id)
    await play_tools(rig.store, run)
    for i, text in enumerate(ANSWER):
        await rig.store.append_once(run.tenant_id, run.run_id, f"delta:0:{i}", delta(text))
    done = types_pb2.Answer(text="".join(ANSWER))
    await rig.store.finish(
        run.tenant_id, run.run_id, types_pb2.RUN_STATUS_COMPLETED, answer=done, steps=1
    )


async def fail(rig: Rig, event: events_pb2.AgentRequested) -> None:
    await rig.store.set_running(event.tenant_id, event.run_id, 0)
    await rig.store.finish(
        event.tenant_id, event.run_id, types_pb2.RUN_STATUS_FAILED, error="the model is down"
    )


async def ask_while(
    rig: Rig,
    prompt: str,
    mesh: Callable[[Rig, events_pb2.AgentRequested], Awaitable[None]],
    *args: str,
) -> tuple[Done, events_pb2.AgentRequested]:
    """`agentflux ask PROMPT ARGS` while `mesh` plays the services for its run."""

    async def play() -> events_pb2.AgentRequested:
        event = await requested(rig, prompt)
        await mesh(rig, event)
        return event

    playing = asyncio.create_task(play())
    try:
        done = await ask(rig, prompt, *args)
    finally:
        if not playing.done():
            playing.cancel()
    return done, await playing


def unique(text: str) -> str:
    return f"{text} ({uuid.uuid4().hex[:8]})"


async def test_ask_streams_the_answer_and_prints_the_run(rig: Rig) -> None:
    done, event = await ask_while(rig, unique("what is 6*7?"), answer)
    assert done.code == 0, done.err
    assert "The answer is 42." in done.out
    assert "tool calculator started" in done.out
    assert "tool calculator succeeded (3 ms)" in done.out
    assert f"run          {event.run_id} (completed)" in done.out
    lines = done.out.splitlines()
    [correlation] = [ln.split()[1] for ln in lines if ln.startswith("correlation ")]
    [trace] = [ln for ln in lines if ln.startswith("trace ")]
    assert " spans · " in trace, trace
    assert "gateway" in trace, trace
    assert f"agentflux trace {correlation}" in trace
    # The id the CLI shows is the one the request carried through Kafka.
    records = await asyncio.to_thread(
        read_requested, rig.settings, rig.topic, lambda e: e.run_id == event.run_id
    )
    assert records[-1][1]["ce_correlationid"] == correlation.encode()


async def test_ask_json_prints_the_events_as_json_lines_and_resume_follows_again(
    rig: Rig,
) -> None:
    done, event = await ask_while(rig, unique("what is 6*7?"), answer, "--json")
    assert done.code == 0, done.err
    events = [json.loads(line) for line in done.out.splitlines()]
    assert "accepted" in events[0]
    assert "finished" in events[-1]
    assert "".join(e["answerDelta"]["text"] for e in events if "answerDelta" in e) == "".join(
        ANSWER
    )
    assert events[-1]["finished"]["answer"]["text"] == "".join(ANSWER)
    assert event.run_id in done.err  # the run id, on stderr: stdout is the events alone
    # Following the run again from after its second delta gives exactly the rest.
    second = [e for e in events if "answerDelta" in e][1]["eventId"]
    again = await ask(rig, "--resume", event.run_id, "--after", second, "--json")
    assert again.code == 0, again.err
    rest = [json.loads(line) for line in again.out.splitlines()]
    assert [e["eventId"] for e in rest] == [e["eventId"] for e in events[-2:]]


async def test_a_failed_run_exits_2_with_its_error(rig: Rig) -> None:
    done, _ = await ask_while(rig, unique("please fail"), fail)
    assert done.code == 2, (done.out, done.err)
    assert "the model is down" in done.err


async def test_an_invalid_request_names_the_field(rig: Rig) -> None:
    done = await ask(rig, "hello", "--conversation", "not an id")
    assert done.code == 1
    assert "invalid request:" in done.err
    assert "conversation_id:" in done.err


async def test_without_a_gateway_ask_exits_1_and_says_how_to_start_it(rig: Rig) -> None:
    done = await ask(rig, "anyone there?", gateway_port=free_port())
    assert done.code == 1
    assert "cannot reach the gateway" in done.err
    assert "agentflux serve" in done.err


async def test_a_lost_stream_is_resumed_after_the_last_event_seen(
    settings: Settings, tmp_path: Path
) -> None:
    async with running_gateway(tmp_path) as own:
        prompt = unique("what is 6*7?")
        proc = await asyncio.create_subprocess_exec(
            AGENTFLUX,
            "ask",
            prompt,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, **cli_env(own)},
            cwd=ROOT,
        )
        replacement: GatewayService | None = None
        try:
            event = await requested(own, prompt)
            run = types_pb2.Run(run_id=event.run_id, tenant_id=event.tenant_id)
            await play_tools(own.store, run)
            assert proc.stdout is not None
            seen = await asyncio.wait_for(read_until(proc.stdout, "succeeded"), 60)
            # The gateway goes away mid-run; the rest of the run happens meanwhile.
            await own.gateway.close()
            for i, text in enumerate(ANSWER):
                await own.store.append_once(run.tenant_id, run.run_id, f"delta:0:{i}", delta(text))
            done = types_pb2.Answer(text="".join(ANSWER))
            await own.store.finish(
                run.tenant_id, run.run_id, types_pb2.RUN_STATUS_COMPLETED, answer=done
            )
            replacement = GatewayService(own.gateway.mesh)
            await replacement.start()
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if replacement is not None:
                await replacement.close()
    text = seen + out.decode()
    assert proc.returncode == 0, err.decode()
    assert "stream lost" in text
    # Nothing lost, nothing shown twice: the answer once, each tool line once.
    assert text.count("The answer is 42.") == 1
    assert text.count("tool calculator started") == 1
    assert text.count("tool calculator succeeded") == 1


async def read_until(stream: asyncio.StreamReader, needle: str) -> str:
    """What `stream` printed up to and including the first line containing `needle`."""
    seen = ""
    while needle not in seen:
        line = await stream.readline()
        assert line, f"the stream ended before {needle!r}: {seen!r}"
        seen += line.decode()
    return seen
