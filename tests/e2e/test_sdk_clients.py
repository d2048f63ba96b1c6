"""The Go, TypeScript and Java clients (sdk/, built by `make sdk`) against a live mesh,
each through its example program, which prints what it did as JSON lines (the same
program in every language; see each sdk/*/README.md). Each client:

- submits with the context headers and an API key, and the gateway echoes them;
- drops its stream on purpose and resumes it, and sees every event exactly once, in
  order, as one unbroken call does; the same idempotency key finds the same run;
- cancels a run while its tool runs, and follows it to CANCELLED;
- without a key, is refused with UNAUTHENTICATED and exits 1."""

from __future__ import annotations

import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agentflux.v1 import gateway_pb2, types_pb2

from tests.e2e.conftest import ROOT, Done, Mesh, http_server, run_program

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PROMPT = "what is 6*7 then add 8"
KINDS = {
    "accepted",
    "planned",
    "tool_started",
    "tool_finished",
    "answer_delta",
    "finished",
    "approval_requested",
    "approval_decided",
    "events_lost",
}


@dataclass(frozen=True)
class Client:
    """One language's example program: how to start it, and what builds it."""

    name: str
    runtime: tuple[str, ...]
    program: Path
    target: str

    def argv(self) -> list[str]:
        if not self.program.is_file():
            pytest.fail(f"{self.program} is missing: run `make {self.target}`", pytrace=False)
        for tool in self.runtime[:1]:
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} is not on PATH: the {self.name} client needs it")
        return [*self.runtime, str(self.program)]


CLIENTS = [
    Client("go", (), ROOT / "sdk/go/bin/agentflux-example", "sdk-go"),
    Client("typescript", ("node",), ROOT / "sdk/ts/dist/example.js", "sdk-ts"),
    # A JVM starts slowly on a loaded 2-core machine; the timeouts below allow for it.
    Client("java", ("java", "-jar"), ROOT / "sdk/java/target/agentflux-example.jar", "sdk-java"),
]


@pytest.fixture(params=CLIENTS, ids=[c.name for c in CLIENTS])
def client(request: pytest.FixtureRequest) -> Client:
    found: Client = request.param
    found.argv()  # fail before a mesh starts when it was not built
    return found


async def example(mesh: Mesh, client: Client, *args: str, key: bool = True) -> Done:
    """Runs the example with the target and key on its command line, never from the
    environment (so "no key" really is none)."""
    env = {k: v for k, v in mesh.env.items() if k not in ("AGENTFLUX_API_KEY", "AGENTFLUX_TARGET")}
    argv = [*client.argv(), "--target", mesh.settings.gateway_target]
    if key:
        argv += ["--api-key", mesh.key]
    return await run_program(*argv, *args, env=env, timeout=240)


def one(lines: list[dict[str, Any]], op: str) -> dict[str, Any]:
    found = [line for line in lines if line["op"] == op]
    assert len(found) == 1, (op, lines)
    return found[0]


def whole_stream(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events printed: every sequence from 1 to the last exactly once, in order,
    from `accepted` to `finished`."""
    events = [line for line in lines if line["op"] == "event"]
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1)), events
    assert {e["kind"] for e in events} <= KINDS, events
    assert events[0]["kind"] == "accepted", events
    assert events[-1]["kind"] == "finished", events
    return events


async def run_line(mesh: Mesh, run_id: str) -> dict[str, Any]:
    """The `run` line the example must print, from the Python client's GetRun."""
    run = (await mesh.gateway.GetRun(gateway_pb2.GetRunRequest(run_id=run_id))).run
    return {
        "op": "run",
        "run_id": run.run_id,
        "status": types_pb2.RunStatus.Name(run.status),
        "answer": run.answer.text,
        "error": run.error_message,
    }


async def test_a_dropped_stream_resumes_with_every_event_once(mesh: Mesh, client: Client) -> None:
    await mesh.start()
    correlation = f"{client.name}-corr-{uuid.uuid4().hex}"
    idempotency = f"{client.name}-key-{uuid.uuid4().hex}"
    args = ("run", "--prompt", PROMPT, "--idempotency-key", idempotency)
    done = await example(
        mesh, client, *args, "--disconnect-after", "2", "--correlation-id", correlation
    )
    assert done.code == 0, f"{done.stdout}\n{done.stderr}"
    lines = done.lines
    submitted = one(lines, "submitted")
    assert submitted["correlation_id"] == correlation  # the gateway's echo
    assert submitted["idempotency_key"] == idempotency
    assert submitted["request_id"]
    run_id = submitted["run_id"]
    # Two events, the drop, then the rest from a new call: none lost or repeated.
    assert [line["op"] for line in lines[:4]] == ["submitted", "event", "event", "disconnected"]
    assert one(lines, "disconnected")["after_sequence"] == 2
    events = whole_stream(lines)
    # Across the drop, the client saw the stream exactly as one unbroken call sees it.
    unbroken = await mesh.events(run_id)
    assert [(e["sequence"], e["kind"]) for e in events] == [
        (e.sequence, e.WhichOneof("event")) for e in unbroken
    ]
    final = lines[-1]
    assert final["status"] == "RUN_STATUS_COMPLETED", final
    assert "50" in final["answer"], final
    assert final == await run_line(mesh, run_id)

    # The gateway dedupes Submit on the idempotency key: the same run, not a new one.
    again = await example(mesh, client, *args)
    assert again.code == 0, again.stderr
    assert one(again.lines, "submitted")["run_id"] == run_id
    assert again.lines[-1] == final


async def test_cancel_while_a_tool_runs(mesh: Mesh, client: Client) -> None:
    release = threading.Event()

    def slow(path: str) -> tuple[int, bytes, float]:
        # Held until the test is done, so the fetch is still running when the cancel lands.
        if path.startswith("/slow"):
            release.wait(120)
        return 200, b"a slow page", 0.0

    correlation = f"{client.name}-cancel-{uuid.uuid4().hex}"
    with http_server(slow) as url:
        try:
            await mesh.start(AGENTFLUX_CANCEL_DEADLINE_S="2")
            done = await example(
                mesh,
                client,
                "cancel",
                "--prompt",
                f"fetch {url}/slow",
                "--correlation-id",
                correlation,
            )
        finally:
            release.set()
    assert done.code == 0, f"{done.stdout}\n{done.stderr}"
    lines = done.lines
    submitted = one(lines, "submitted")
    assert submitted["correlation_id"] == correlation
    ops = [line["op"] for line in lines]
    cancelled = ops.index("cancelled")
    # CancelRun came once the stream showed the tool running...
    assert lines[cancelled - 1]["kind"] == "tool_started", lines
    assert lines[cancelled]["status"] in ("RUN_STATUS_CANCELLING", "RUN_STATUS_CANCELLED")
    # ...and the client followed the run to its end, losing nothing.
    whole_stream(lines)
    final = lines[-1]
    assert final["status"] == "RUN_STATUS_CANCELLED", final
    assert final == await run_line(mesh, submitted["run_id"])


async def test_without_a_key_the_call_is_refused(mesh: Mesh, client: Client) -> None:
    await mesh.start("gateway")
    done = await example(mesh, client, "run", "--prompt", PROMPT, key=False)
    assert done.code == 1, done
    assert done.stderr.startswith("error: UNAUTHENTICATED"), done.stderr
    assert done.stdout == ""
