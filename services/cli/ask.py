"""`agentflux ask`: submit a prompt to the gateway and follow the run as it happens.

`Submit`, then `StreamRun` until `finished`, showing the answer as it streams (see
`ask_view`). A lost stream is resumed after the last event seen, a few times with
backoff, so nothing is lost or shown twice. Exit codes: 0 the run completed, 1 the
request could not be made (gateway unreachable, invalid, timed out), 2 the run failed or
was cancelled, 130 interrupted (the run goes on; `--resume` follows it again)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

import grpc
import typer
from agentflux.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pydantic import SecretStr, ValidationError

from interceptors import FluxContext, Telemetry, bind, client_interceptors, new_id
from services.cli.ask_view import JsonView, TextView, View, trace_summary
from services.cli.spans import store_marks
from services.runtime.bearer import api_key_interceptors
from services.runtime.config import Settings
from services.runtime.tls import TLSSettingsError, gateway_channel

__all__ = ["ask"]


class Priority(StrEnum):
    """How urgently the run is served."""

    low = "low"
    normal = "normal"
    high = "high"
    urgent = "urgent"


_PRIORITY = {
    Priority.low: types_pb2.PRIORITY_LOW,
    Priority.normal: types_pb2.PRIORITY_NORMAL,
    Priority.high: types_pb2.PRIORITY_HIGH,
    Priority.urgent: types_pb2.PRIORITY_URGENT,
}
# A stream that ends with one of these was lost on the way, not refused: resume it.
_LOST = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}
RESUME_TRIES = 4
SUBMIT_TIMEOUT_S = 30.0


class AskError(Exception):
    """What to tell the user, and the exit code."""

    def __init__(self, message: str, code: int = 1, *, resumable: bool = False) -> None:
        super().__init__(message)
        self.message, self.code = message, code
        self.resumable = resumable  # the run goes on; `--resume` can follow it later


@dataclass
class Progress:
    """How far the command got: what a resume hint or the footer needs."""

    run_id: str = ""
    correlation_id: str = ""
    last_event: str = ""
    finished: gateway_pb2.RunFinished | None = None

    def resume_hint(self) -> str:
        after = f" --after {self.last_event}" if self.last_event else ""
        return f"agentflux ask --resume {self.run_id}{after}"


def _rpc_error(exc: grpc.aio.AioRpcError, target: str) -> AskError:
    code, details = exc.code(), exc.details() or ""
    try:
        status = rpc_status.from_call(exc)
    except ValueError:
        status = None
    if code is grpc.StatusCode.UNAVAILABLE and status is None:  # no gateway answered
        return AskError(
            f"cannot reach the gateway at {target} ({details})\n"
            "start it with `agentflux serve` (and the stack with `agentflux stack up`)\n"
            "a gateway serving TLS needs AGENTFLUX_TLS_CA_FILE (and, for mutual TLS, "
            "AGENTFLUX_TLS_CLIENT_CERT_FILE and AGENTFLUX_TLS_CLIENT_KEY_FILE)",
            resumable=True,
        )
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return AskError(
            f"{code.name}: {details}\n"
            "set AGENTFLUX_API_KEY (or pass --api-key) to an API key of your tenant; "
            "an operator makes one with `agentflux tenants add TENANT`"
        )
    lines = [f"{code.name}: {details}"]
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            lines = ["invalid request:"] + [
                f"  {v.field}: {v.description}" for v in bad.field_violations
            ]
    return AskError("\n".join(lines), resumable=code in _LOST)


def _correlation(metadata: object) -> str:
    pairs = metadata if isinstance(metadata, grpc.aio.Metadata) else ()
    return next((str(v) for k, v in pairs if k == "x-correlation-id"), "")


async def _submit(
    stub: gateway_pb2_grpc.AgentGatewayAsyncStub, request: gateway_pb2.SubmitRequest, got: Progress
) -> None:
    call = stub.Submit(request, timeout=SUBMIT_TIMEOUT_S)
    response = await call
    got.correlation_id = _correlation(await call.initial_metadata())
    got.run_id = response.run.run_id


async def _follow(stub: gateway_pb2_grpc.AgentGatewayAsyncStub, view: View, got: Progress) -> None:
    """Streams the run until `finished`, resuming a lost stream after the last event."""
    tries = 0
    while True:
        request = gateway_pb2.StreamRunRequest(run_id=got.run_id, after_event_id=got.last_event)
        call = stub.StreamRun(request)
        try:
            async for event in call:
                if not got.correlation_id:
                    got.correlation_id = _correlation(await call.initial_metadata())
                tries = 0  # progress: the stream is healthy again
                view.event(event)
                got.last_event = event.event_id
                if event.WhichOneof("event") == "finished":
                    got.finished = event.finished
            # Read to the end, not left after `finished`: the call then ends OK instead
            # of cancelled (the gateway ends the stream right after `finished`).
            if got.finished is not None:
                return
            if tries == RESUME_TRIES:
                raise AskError("the stream keeps ending before the run does", resumable=True)
            lost = "the stream ended before the run did"
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in _LOST or tries == RESUME_TRIES:
                raise
            lost = f"{exc.code().name}: {exc.details()}"
        tries += 1
        view.note(f"stream lost ({lost}); resuming after {got.last_event or 'the start'}")
        await asyncio.sleep(min(0.25 * 2 ** (tries - 1), 4.0))


async def _ask(
    settings: Settings, request: gateway_pb2.SubmitRequest | None, view: View, got: Progress
) -> None:
    target = settings.gateway_target
    telemetry = Telemetry.for_service("cli", settings, batch_delay_ms=100)
    try:
        try:
            interceptors = api_key_interceptors(settings.api_key.get_secret_value())
            interceptors += client_interceptors(telemetry)
            channel = gateway_channel(settings, interceptors=interceptors)
        except TLSSettingsError as exc:
            raise AskError(str(exc)) from None
        async with channel:
            stub = gateway_pb2_grpc.AgentGatewayStub(channel)
            # One context and one trace for both calls: Submit and StreamRun share the
            # correlation id, and `agentflux trace` shows them under one root.
            root = telemetry.tracer.start_as_current_span("agentflux ask")
            with bind(FluxContext.new()), root:
                try:
                    if request is not None:
                        await _submit(stub, request, got)
                    await _follow(stub, view, got)
                except grpc.aio.AioRpcError as exc:
                    raise _rpc_error(exc, target) from None
    finally:
        view.close()
        telemetry.shutdown()  # this process's spans are in the store before it is read


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        typer.secho(f"invalid configuration (see `agentflux config`): {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


def ask(
    prompt: Annotated[str, typer.Argument(help="What to ask the agent.", show_default=False)] = "",
    conversation: Annotated[
        str, typer.Option("--conversation", help="Continue this conversation id.")
    ] = "",
    priority: Annotated[
        Priority, typer.Option("--priority", help="How urgently the run is served.")
    ] = Priority.normal,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run's events as JSON lines, nothing else.")
    ] = False,
    resume: Annotated[
        str, typer.Option("--resume", help="Follow this existing run instead of asking.")
    ] = "",
    after: Annotated[
        str, typer.Option("--after", help="With --resume: only events after this event id.")
    ] = "",
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Give up after this many seconds.", min=0)
    ] = None,
    api_key: Annotated[
        str,
        typer.Option(
            "--api-key",
            help="The API key to present (default: AGENTFLUX_API_KEY, which keeps it out "
            "of the process list and shell history).",
            show_default=False,
        ),
    ] = "",
) -> None:
    """Ask the agent and stream its answer, with each tool call and the trace summary."""
    if bool(prompt.strip()) == bool(resume) or (after and not resume):
        typer.secho("give a prompt, or --resume RUN (optionally --after EVENT_ID)", err=True)
        raise typer.Exit(1)
    settings = _settings()
    if api_key:
        settings = settings.model_copy(update={"api_key": SecretStr(api_key)})
    request = None
    if not resume:
        request = gateway_pb2.SubmitRequest(
            prompt=prompt,
            conversation_id=conversation,
            priority=_PRIORITY[priority],
            request_id=new_id(),  # a retried Submit finds the same run
        )
    got = Progress(run_id=resume, last_event=after)
    view: View = JsonView() if as_json else TextView()
    # A new request's spans can only come after this moment: the summary looks there
    # (a resumed run's began before, anywhere in the store).
    store = settings.span_store_dir
    marks = store_marks(store) if store is not None and request is not None else None

    def say(line: str) -> None:
        typer.echo(line, err=as_json)  # --json: stdout carries the events alone

    try:
        asyncio.run(asyncio.wait_for(_ask(settings, request, view, got), timeout))
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted; the run goes on: {got.resume_hint()}", err=True)
        raise typer.Exit(130) from None
    except TimeoutError:
        typer.secho(f"no answer within {timeout or 0:g} s", fg="red", err=True)
        if got.run_id:
            typer.echo(f"the run goes on; follow it with: {got.resume_hint()}", err=True)
        raise typer.Exit(1) from None
    except AskError as exc:
        typer.secho(exc.message, fg="red", err=True)
        if exc.resumable and got.run_id:
            typer.echo(f"the run goes on; follow it with: {got.resume_hint()}", err=True)
        raise typer.Exit(exc.code) from None
    finished = got.finished
    assert finished is not None
    status = types_pb2.CompletionStatus.Name(finished.status).removeprefix("COMPLETION_STATUS_")
    say(f"run          {got.run_id} ({status.lower()})")
    say(f"correlation  {got.correlation_id}")
    summary = trace_summary(store, got.correlation_id, since=marks)
    if summary:
        say(f"trace        {summary}  (agentflux trace {got.correlation_id})")
    else:
        say(f"trace        not in the span store yet: agentflux trace {got.correlation_id}")
    if finished.status != types_pb2.COMPLETION_STATUS_COMPLETED:
        typer.secho(f"run {status.lower()}: {finished.error_message}", fg="red", err=True)
        raise typer.Exit(2)
