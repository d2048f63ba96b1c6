"""How `agentflux ask` shows a run: the answer as it streams, the plan and every tool call
as one line each, a spinner while nothing else moves (rich, on a terminal only), or the
raw events as JSON lines; and the one-line trace summary read from the span store."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Protocol

from agentflux.v1 import gateway_pb2, types_pb2
from google.protobuf import json_format
from rich.console import Console
from rich.status import Status

from services.cli.spans import Mark
from services.cli.waterfall import traces_in

__all__ = ["JsonView", "TextView", "View", "trace_summary"]

Event = gateway_pb2.StreamRunResponse
_ENDED = {
    types_pb2.TOOL_CALL_STATUS_SUCCEEDED: ("succeeded", "✓", "green"),
    types_pb2.TOOL_CALL_STATUS_FAILED: ("failed", "✗", "red"),
    types_pb2.TOOL_CALL_STATUS_TIMED_OUT: ("timed out", "✗", "red"),
    types_pb2.TOOL_CALL_STATUS_CANCELLED: ("cancelled", "-", "yellow"),
}


class View(Protocol):
    """Where the events of a run go as they arrive."""

    def event(self, event: Event) -> None:
        """Shows one event."""

    def note(self, text: str) -> None:
        """Shows a remark about the stream itself (a resume), apart from the run."""

    def close(self) -> None:
        """Ends the display (the spinner, an unfinished line)."""


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


class TextView:
    """The answer on stdout as it streams, one line per plan and tool call; a spinner on
    a terminal (rich), plain lines otherwise."""

    def __init__(self, out: IO[str] | None = None, *, tty: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self._console = Console(file=self.out, highlight=False) if self.tty else None
        self._status: Status | None = None
        self._started: dict[str, float] = {}
        self._mid_line = False
        self._streamed = False
        self._lines = 0

    def _spin(self, text: str) -> None:
        if self._console is None:
            return
        if self._status is None:
            self._status = self._console.status(text)
            self._status.start()
        else:
            self._status.update(text)

    def _line(self, text: str, style: str = "") -> None:
        self._lines += 1
        if self._mid_line:
            self.out.write("\n")
            self._mid_line = False
        if self._console is not None:
            self._console.print(text, style=style or None, markup=False)
        else:
            self.out.write(text + "\n")
            self.out.flush()

    def event(self, event: Event) -> None:
        kind = event.WhichOneof("event")
        if kind == "accepted":
            self._spin("waiting for the planner…")
        elif kind == "planned":
            calls = event.planned.tool_calls
            names = ", ".join(c.name for c in calls) or "no tools: answering directly"
            self._line(f"plan (step {event.planned.step}): {names}", "dim")
            self._spin("running tools…" if calls else "writing the answer…")
        elif kind == "tool_started":
            call, attempt = event.tool_started.call, event.tool_started.attempt
            self._started[call.tool_call_id] = time.monotonic()
            again = f" (attempt {attempt})" if attempt > 1 else ""
            self._line(
                f"▸ {call.name} started{again}" if self.tty else f"tool {call.name} started{again}"
            )
        elif kind == "tool_finished":
            self._tool_finished(event.tool_finished.result)
        elif kind == "answer_delta":
            self._stop_spinner()
            if not self._streamed and self._lines:
                self.out.write("\n")  # the answer apart from the progress lines
            self.out.write(event.answer_delta.text)
            self.out.flush()
            self._mid_line = not event.answer_delta.text.endswith("\n")
            self._streamed = True
        elif kind == "finished":
            self._stop_spinner()
            answer = event.finished.answer.text
            if answer and not self._streamed:  # a run that answered without streaming
                self._line(answer)

    def _tool_finished(self, result: types_pb2.ToolResult) -> None:
        word, mark, color = _ENDED.get(result.status, ("ended", "?", "yellow"))
        began = self._started.pop(result.tool_call_id, None)
        if result.HasField("duration"):
            took = result.duration.ToNanoseconds() / 1e9
        else:  # measured here, from the started event
            took = time.monotonic() - (began or time.monotonic())
        why = f": {result.error_message}" if result.error_message else ""
        if self.tty:
            self._line(f"{mark} {result.name} {word} in {_ms(took)}{why}", color)
        else:
            self._line(f"tool {result.name} {word} ({_ms(took)}){why}")
        if self._status is not None:
            self._spin("running tools…" if self._started else "waiting for the model…")

    def _stop_spinner(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def note(self, text: str) -> None:
        self._line(text, "yellow")

    def close(self) -> None:
        self._stop_spinner()
        if self._mid_line or self._streamed:
            self.out.write("\n" if self._mid_line else "")
            self.out.write("\n")  # the footer apart from the answer
            self.out.flush()
            self._mid_line = False


class JsonView:
    """Each event as one JSON line on stdout (protobuf's JSON mapping); nothing else."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout

    def event(self, event: Event) -> None:
        self.out.write(json.dumps(json_format.MessageToDict(event), ensure_ascii=False) + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        sys.stderr.write(text + "\n")

    def close(self) -> None:
        return None


def trace_summary(
    folder: Path | None,
    correlation_id: str,
    *,
    wait_s: float = 3.0,
    since: Mapping[str, Mark] | None = None,
) -> str | None:
    """`N spans · services · total ms` of the request's traces, or None when the span
    store has none. Services export in batches (every 0.5 s by default), so this waits,
    at most `wait_s`, until the spans of a service besides this CLI arrived and no new
    span came for longer than one batch. `since`: the store's marks from before the
    request began (`store_marks`), so that each look reads what came after, not the
    whole store again."""
    if folder is None or not correlation_id:
        return None
    deadline = time.monotonic() + wait_s
    count, steady_since = -1, time.monotonic()
    spans: list[dict[str, object]] = []
    while True:
        if folder.is_dir():
            traces = traces_in(folder, correlation_id, since)
            spans = [s for group in traces.values() for s in group]
        now = time.monotonic()
        if len(spans) != count:
            count, steady_since = len(spans), now
        services = {str(s.get("service", "")) for s in spans}
        if (services - {"cli"} and now - steady_since > 0.6) or now > deadline:
            break
        time.sleep(0.1)
    if not spans:
        return None
    start = min(int(str(s.get("start_ns") or 0)) for s in spans)
    end = max(int(str(s.get("end_ns") or 0)) for s in spans)
    names = ", ".join(sorted(services - {""}))
    return f"{len(spans)} spans · {names} · {(end - start) / 1e6:.1f} ms"
