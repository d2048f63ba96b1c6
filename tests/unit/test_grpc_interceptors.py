"""The gRPC interceptors end to end: a real grpc.aio server and client on loopback.

The servicer answers with what it sees of the bound context, so every assertion is
about what a caller observes: the response, the initial metadata, the status code and
its `google.rpc.Status` details, and the spans each side exports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pytest
from agentflux.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

from interceptors._context import FluxContext, bind, check_id, current
from interceptors._errors import InvalidArgument, NotFound
from interceptors._grpc_client import client_interceptors
from interceptors._grpc_server import ServerContextInterceptor
from interceptors._telemetry import Telemetry

SERVICE = "agentflux.v1.AgentGateway"
ECHO = "test.Echo"
M = TypeVar("M", bound=Message)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


@dataclass
class Seen:
    """What a handler observed while it ran."""

    ctx: FluxContext
    span: SpanContext
    metadata: dict[str, Any]


@dataclass
class Gateway(gateway_pb2_grpc.AgentGatewayServicer):
    """A tiny gateway echoing the bound context back in its answers."""

    seen: list[Seen] = field(default_factory=list)

    def _observe(self, context: grpc.aio.ServicerContext[Any, Any]) -> FluxContext:
        ctx = current()
        assert ctx is not None, "the interceptor did not bind a context"
        span = trace.get_current_span().get_span_context()
        self.seen.append(Seen(ctx, span, dict(context.invocation_metadata() or ())))
        return ctx

    async def Submit(  # noqa: N802 - generated servicer method names
        self, request: gateway_pb2.SubmitRequest, context: Any
    ) -> gateway_pb2.SubmitResponse:
        ctx = self._observe(context)
        remaining = ctx.remaining()
        run = types_pb2.Run(
            run_id=ctx.event_id,
            conversation_id=ctx.correlation_id,
            tenant_id=ctx.tenant_id,
            prompt=ctx.causation_id,
            error_message="" if remaining is None else repr(remaining),
        )
        return gateway_pb2.SubmitResponse(run=run)

    async def StreamRun(  # noqa: N802
        self, request: gateway_pb2.StreamRunRequest, context: Any
    ) -> AsyncIterator[gateway_pb2.StreamRunResponse]:
        self._observe(context)
        for i in range(3):
            ctx = current()  # still bound after each yield
            assert ctx is not None
            yield gateway_pb2.StreamRunResponse(event_id=f"{ctx.correlation_id}/{i}")

    async def GetRun(  # noqa: N802
        self, request: gateway_pb2.GetRunRequest, context: Any
    ) -> gateway_pb2.GetRunResponse:
        self._observe(context)
        raise NotFound(f"no run {request.run_id}", metadata={"run_id": request.run_id})

    async def CancelRun(  # noqa: N802
        self, request: gateway_pb2.CancelRunRequest, context: Any
    ) -> gateway_pb2.CancelRunResponse:
        self._observe(context)
        raise InvalidArgument("run_id", "required")

    async def SearchResponses(  # noqa: N802
        self, request: gateway_pb2.SearchResponsesRequest, context: Any
    ) -> gateway_pb2.SearchResponsesResponse:
        self._observe(context)
        raise RuntimeError("secret detail")


def _bound() -> bytes:
    ctx = current()
    assert ctx is not None
    return ctx.correlation_id.encode()


async def _collect(requests: AsyncIterator[bytes], context: Any) -> bytes:
    """stream -> unary: joins the requests and names the bound correlation id."""
    got = [r async for r in requests]
    return b",".join(got) + b"|" + _bound()


async def _chat(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    """stream -> stream: answers each request; "missing" is a NOT_FOUND mid-stream."""
    async for r in requests:
        if r == b"missing":
            raise NotFound("no such thing")
        yield r + b"|" + _bound()


def pace(count: int, gap: float, *, fail: str = "") -> bytes:
    """The request of `Paced`: `count` messages `gap` seconds apart, then NOT_FOUND
    with the text `fail` when one is given."""
    return f"{count} {gap} {fail}".encode()


async def _paced(request: bytes, context: Any) -> AsyncIterator[bytes]:
    """unary -> stream, at the pace `pace()` asks for: a stream that takes its time."""
    count, gap, fail = request.decode().split(" ", 2)
    for i in range(int(count)):
        if i:
            await asyncio.sleep(float(gap))
        yield str(i).encode()
    if fail:
        raise NotFound(fail)


class Ends(SpanProcessor):
    """Every span as it ends, and a way to wait for one.

    A SERVER span ends a moment after its caller has the answer (the status goes out
    first), so tests wait for it instead of racing it. All spans here end on the event
    loop's thread, where the event is safe to set."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self._ended = asyncio.Event()

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)
        self._ended.set()

    def of(self, correlation_id: str, kind: SpanKind) -> list[ReadableSpan]:
        return [
            s
            for s in self.spans
            if s.kind is kind
            and (s.attributes or {}).get("agentflux.correlation_id") == correlation_id
        ]

    async def wait(self, correlation_id: str, kind: SpanKind) -> None:
        async with asyncio.timeout(5):
            while not self.of(correlation_id, kind):
                self._ended.clear()
                await self._ended.wait()


@dataclass
class Rig:
    servicer: Gateway
    client: Telemetry
    server: Telemetry
    client_spans: InMemorySpanExporter
    server_spans: InMemorySpanExporter
    client_ends: Ends
    server_ends: Ends
    address: str
    channel: grpc.aio.Channel  # with the client interceptors
    raw: grpc.aio.Channel  # without any: the metadata is exactly what the test sends
    stub: gateway_pb2_grpc.AgentGatewayStub
    raw_stub: gateway_pb2_grpc.AgentGatewayStub

    def client_open(self, correlation_id: str) -> bool:
        """Whether the call's CLIENT span has not ended yet."""
        return not self.client_ends.of(correlation_id, SpanKind.CLIENT)

    async def spans(self, correlation_id: str) -> tuple[ReadableSpan, ReadableSpan]:
        """The one CLIENT and the one SERVER span of a call, once both have ended, as
        exported."""
        await self.client_ends.wait(correlation_id, SpanKind.CLIENT)
        await self.server_ends.wait(correlation_id, SpanKind.SERVER)
        assert self.client.flush()
        assert self.server.flush()
        mine = [
            s
            for s in (
                *self.client_spans.get_finished_spans(),
                *self.server_spans.get_finished_spans(),
            )
            if (s.attributes or {}).get("agentflux.correlation_id") == correlation_id
        ]
        clients = [s for s in mine if s.kind is SpanKind.CLIENT]
        servers = [s for s in mine if s.kind is SpanKind.SERVER]
        assert len(clients) == 1, mine
        assert len(servers) == 1, mine
        return clients[0], servers[0]


@pytest.fixture(scope="module")
async def rig() -> AsyncIterator[Rig]:
    client_spans, server_spans = InMemorySpanExporter(), InMemorySpanExporter()
    client_tel = Telemetry.create("test-client", exporters=[client_spans])
    server_tel = Telemetry.create("test-server", exporters=[server_spans])
    client_ends, server_ends = Ends(), Ends()
    client_tel.provider.add_span_processor(client_ends)
    server_tel.provider.add_span_processor(server_ends)
    server = grpc.aio.server(interceptors=[ServerContextInterceptor(server_tel)])
    servicer = Gateway()
    gateway_pb2_grpc.add_AgentGatewayServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                ECHO,
                {
                    "Collect": grpc.stream_unary_rpc_method_handler(_collect),
                    "Chat": grpc.stream_stream_rpc_method_handler(_chat),
                    "Paced": grpc.unary_stream_rpc_method_handler(_paced),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    addr = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(addr, interceptors=client_interceptors(client_tel))
    raw = grpc.aio.insecure_channel(addr)
    try:
        yield Rig(
            servicer,
            client_tel,
            server_tel,
            client_spans,
            server_spans,
            client_ends,
            server_ends,
            addr,
            channel,
            raw,
            gateway_pb2_grpc.AgentGatewayStub(channel),
            gateway_pb2_grpc.AgentGatewayStub(raw),
        )
    finally:
        await channel.close()
        await raw.close()
        await server.stop(None)
        client_tel.shutdown()
        server_tel.shutdown()


def client_context(**fields: Any) -> FluxContext:
    return FluxContext.new(tenant_id="acme", **fields)


def submit() -> gateway_pb2.SubmitRequest:
    return gateway_pb2.SubmitRequest(prompt="hello")


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    status = rpc_status.from_call(error)  # also checks code and message agree
    assert status is not None, "no google.rpc.Status in the trailing metadata"
    return status  # type: ignore[no-any-return]


def detail(status: status_pb2.Status, kind: type[M]) -> M:
    found = [d for d in status.details if d.Is(kind.DESCRIPTOR)]
    assert len(found) == 1, f"expected one {kind.__name__} in {status.details}"
    message = kind()
    found[0].Unpack(message)
    return message


def echoed(metadata: Sequence[tuple[str, Any]] | None) -> dict[str, Any]:
    return dict(metadata or ())


def times(span: ReadableSpan) -> tuple[int, int]:
    """When an ended span started and ended (ns since the epoch, one clock for both
    sides: client and server run in this process)."""
    assert span.start_time is not None
    assert span.end_time is not None
    return span.start_time, span.end_time


# --- correlation and request ids ---------------------------------------------------------


async def test_bound_client_context_reaches_the_handler_and_is_echoed(rig: Rig) -> None:
    ctx = client_context(run_id="run-7", idempotency_key="run-7:1")
    with bind(ctx):
        call = rig.stub.Submit(submit())
        answer = await call
        initial = echoed(await call.initial_metadata())

    assert answer.run.conversation_id == ctx.correlation_id
    assert answer.run.tenant_id == "acme"
    assert initial["x-correlation-id"] == ctx.correlation_id
    # Each call gets its own request id, caused by the bound event.
    request_id = answer.run.run_id
    assert initial["x-request-id"] == request_id
    assert request_id != ctx.event_id
    check_id("x-request-id", request_id)
    assert answer.run.prompt == ctx.event_id  # causation id seen by the server
    seen = rig.servicer.seen[-1].ctx
    assert (seen.run_id, seen.idempotency_key) == ("run-7", "run-7:1")


async def test_raw_metadata_correlation_and_request_ids_are_used_and_echoed(rig: Rig) -> None:
    metadata = (("x-correlation-id", "corr-raw-1"), ("x-request-id", "req-raw-1"))
    call = rig.raw_stub.Submit(submit(), metadata=metadata)
    answer = await call
    initial = echoed(await call.initial_metadata())

    assert answer.run.conversation_id == "corr-raw-1"
    assert answer.run.run_id == "req-raw-1"
    assert initial["x-correlation-id"] == "corr-raw-1"
    assert initial["x-request-id"] == "req-raw-1"


async def test_without_ids_the_server_creates_and_echoes_them(rig: Rig) -> None:
    calls = [rig.raw_stub.Submit(submit()) for _ in range(2)]
    answers = [await c for c in calls]
    initials = [echoed(await c.initial_metadata()) for c in calls]

    for answer, initial in zip(answers, initials, strict=True):
        check_id("x-correlation-id", initial["x-correlation-id"])
        assert initial["x-correlation-id"] == answer.run.conversation_id
        assert initial["x-request-id"] == answer.run.run_id
        assert answer.run.prompt == ""  # nothing caused it: this call is the edge
    assert initials[0]["x-correlation-id"] != initials[1]["x-correlation-id"]


async def test_a_call_outside_any_context_starts_a_new_correlation(rig: Rig) -> None:
    assert current() is None
    call = rig.stub.Submit(submit())
    answer = await call
    initial = echoed(await call.initial_metadata())
    check_id("x-correlation-id", answer.run.conversation_id)
    assert initial["x-correlation-id"] == answer.run.conversation_id
    assert answer.run.tenant_id == ""


async def test_client_interceptor_keeps_the_callers_other_metadata(rig: Rig) -> None:
    with bind(client_context()):
        await rig.stub.Submit(
            submit(), metadata=(("x-custom", "kept"), ("blob-bin", b"\x00\x01\xff"))
        )
    got = rig.servicer.seen[-1].metadata
    assert got["x-custom"] == "kept"
    assert got["blob-bin"] == b"\x00\x01\xff"


# --- malformed metadata -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("x-correlation-id", "c" * 300),
        ("x-tenant-id", "acme corp"),
        ("x-request-id", "r" * 257),
        ("traceparent", "00-not-a-trace"),
        ("traceparent", f"00-{TRACE_ID}-{SPAN_ID}"),
    ],
)
async def test_malformed_metadata_is_invalid_argument_naming_the_key(
    rig: Rig, key: str, value: str
) -> None:
    handled = len(rig.servicer.seen)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rig.raw_stub.Submit(submit(), metadata=((key, value),))

    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert key in (caught.value.details() or "")
    status = rich_status(caught.value)
    bad = detail(status, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == [key]
    assert detail(status, error_details_pb2.ErrorInfo).reason == "INVALID_CONTEXT"
    assert len(rig.servicer.seen) == handled  # refused before any work


async def test_malformed_metadata_is_refused_on_a_stream_too(rig: Rig) -> None:
    call = rig.raw_stub.StreamRun(
        gateway_pb2.StreamRunRequest(run_id="r"), metadata=(("x-tenant-id", "acme corp"),)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _ = [m async for m in call]
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    bad = detail(rich_status(caught.value), error_details_pb2.BadRequest)
    assert bad.field_violations[0].field == "x-tenant-id"


# --- errors ------------------------------------------------------------------------------


async def test_not_found_maps_to_not_found_with_error_info(rig: Rig) -> None:
    ctx = client_context()
    with bind(ctx), pytest.raises(grpc.aio.AioRpcError) as caught:
        await rig.stub.GetRun(gateway_pb2.GetRunRequest(run_id="run-x"))

    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "no run run-x"
    info = detail(rich_status(caught.value), error_details_pb2.ErrorInfo)
    assert info.reason == "NOT_FOUND"
    assert info.domain == "agentflux.dev"
    assert info.metadata["correlation_id"] == ctx.correlation_id
    assert info.metadata["run_id"] == "run-x"


async def test_invalid_argument_names_the_field(rig: Rig) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rig.stub.CancelRun(gateway_pb2.CancelRunRequest())
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    status = rich_status(caught.value)
    violations = detail(status, error_details_pb2.BadRequest).field_violations
    assert [(v.field, v.description) for v in violations] == [("run_id", "required")]
    assert detail(status, error_details_pb2.ErrorInfo).reason == "INVALID_ARGUMENT"


async def test_unexpected_errors_are_internal_without_leaking_the_text(rig: Rig) -> None:
    ctx = client_context()
    with bind(ctx), pytest.raises(grpc.aio.AioRpcError) as caught:
        await rig.stub.SearchResponses(gateway_pb2.SearchResponsesRequest(query="q"))

    error = caught.value
    assert error.code() is grpc.StatusCode.INTERNAL
    message = error.details() or ""
    assert "secret detail" not in message
    assert "RuntimeError" not in message
    assert ctx.correlation_id in message
    status = rich_status(error)
    assert b"secret detail" not in status.SerializeToString()
    for key, value in error.trailing_metadata() or ():
        assert b"secret detail" not in (value if isinstance(value, bytes) else value.encode()), key
    info = detail(status, error_details_pb2.ErrorInfo)
    assert info.metadata["correlation_id"] == ctx.correlation_id

    # The operator still finds it: on the server span, tied up by the correlation id.
    _, server = await rig.spans(ctx.correlation_id)
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    assert any("secret detail" in str(e.attributes) for e in server.events)


# --- deadlines ---------------------------------------------------------------------------


# gRPC rounds the grpc-timeout header up to its unit (1 ms below 1 s, 10 ms up to 10 s).
GRPC_TIMEOUT_UNIT = 0.010


def remaining_seen(answer: gateway_pb2.SubmitResponse) -> float:
    assert answer.run.error_message, "the server saw no deadline"
    return float(answer.run.error_message)


async def test_bound_deadline_caps_the_call_timeout(rig: Rig) -> None:
    with bind(client_context(deadline=time.time() + 2)):
        capped = await rig.stub.Submit(submit())
        # An explicit, longer timeout is capped by the deadline too.
        longer = await rig.stub.Submit(submit(), timeout=30)
        # A shorter explicit timeout stands.
        shorter = await rig.stub.Submit(submit(), timeout=0.5)

    assert 1.0 < remaining_seen(capped) <= 2.0 + GRPC_TIMEOUT_UNIT
    assert 1.0 < remaining_seen(longer) <= 2.0 + GRPC_TIMEOUT_UNIT
    assert 0.0 < remaining_seen(shorter) <= 0.5 + GRPC_TIMEOUT_UNIT


async def test_call_without_deadline_has_none_on_the_server(rig: Rig) -> None:
    with bind(client_context()):
        answer = await rig.stub.Submit(submit())
    assert answer.run.error_message == ""


async def test_raw_timeout_becomes_the_server_deadline(rig: Rig) -> None:
    answer = await rig.raw_stub.Submit(submit(), timeout=1.5)
    assert 0.5 < remaining_seen(answer) <= 1.5 + GRPC_TIMEOUT_UNIT


async def test_an_expired_deadline_fails_fast_without_reaching_the_server(rig: Rig) -> None:
    await rig.stub.Submit(submit())  # the channel is connected: grpc would send at once
    handled = len(rig.servicer.seen)
    ctx = client_context(deadline=time.time() - 1)
    with bind(ctx):
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await rig.stub.Submit(submit())
        with pytest.raises(grpc.aio.AioRpcError) as stream:
            _ = [e async for e in rig.stub.StreamRun(gateway_pb2.StreamRunRequest(run_id="r"))]
    assert unary.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert stream.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(rig.servicer.seen) == handled  # no work started after the deadline
    assert rig.client.flush()
    refused = [
        s
        for s in rig.client_spans.get_finished_spans()
        if (s.attributes or {}).get("agentflux.correlation_id") == ctx.correlation_id
    ]
    assert len(refused) == 2
    for span in refused:
        assert span.attributes is not None
        assert span.attributes["rpc.grpc.status_code"] == 4
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == (
            "DEADLINE_EXCEEDED: Deadline Exceeded: the bound deadline passed before the call"
        )


# --- the other arities -------------------------------------------------------------------


async def test_server_streaming_through_the_interceptor(rig: Rig) -> None:
    ctx = client_context()
    with bind(ctx):
        call = rig.stub.StreamRun(gateway_pb2.StreamRunRequest(run_id="run-1"))
        events = [e.event_id async for e in call]
        initial = echoed(await call.initial_metadata())
        code = await call.code()

    assert events == [f"{ctx.correlation_id}/{i}" for i in range(3)]
    assert initial["x-correlation-id"] == ctx.correlation_id
    assert code is grpc.StatusCode.OK
    assert rig.servicer.seen[-1].ctx.causation_id == ctx.event_id


async def _requests(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def test_client_streaming_through_the_interceptors(rig: Rig) -> None:
    collect = rig.channel.stream_unary(f"/{ECHO}/Collect")
    ctx = client_context()
    with bind(ctx):
        call = collect(_requests(b"a", b"b", b"c"))
        answer = await call
        initial = echoed(await call.initial_metadata())
    assert answer == b"a,b,c|" + ctx.correlation_id.encode()
    assert initial["x-correlation-id"] == ctx.correlation_id
    client, server = await rig.spans(ctx.correlation_id)
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id


async def test_bidi_streaming_through_the_interceptors(rig: Rig) -> None:
    chat = rig.channel.stream_stream(f"/{ECHO}/Chat")
    ctx = client_context()
    with bind(ctx):
        call = chat(_requests(b"x", b"y"))
        replies = [r async for r in call]
        initial = echoed(await call.initial_metadata())
    corr = ctx.correlation_id.encode()
    assert replies == [b"x|" + corr, b"y|" + corr]
    assert initial["x-correlation-id"] == ctx.correlation_id
    client, server = await rig.spans(ctx.correlation_id)
    # The CLIENT span covers the whole exchange, the server's part included.
    (client_start, client_end), (server_start, server_end) = times(client), times(server)
    assert client_start <= server_start
    assert client_end >= server_end
    assert client.status.status_code is StatusCode.UNSET


async def test_bidi_streaming_with_write_calls(rig: Rig) -> None:
    chat = rig.channel.stream_stream(f"/{ECHO}/Chat")
    ctx = client_context()
    with bind(ctx):
        call = chat()
        await call.write(b"one")
        first = await call.read()
        await call.done_writing()
        rest = [r async for r in call]
    assert first == b"one|" + ctx.correlation_id.encode()
    assert rest == []


async def test_error_mid_stream_keeps_what_was_sent_and_maps_the_status(rig: Rig) -> None:
    chat = rig.channel.stream_stream(f"/{ECHO}/Chat")
    ctx = client_context()
    replies: list[bytes] = []
    answered, finished = asyncio.Event(), asyncio.Event()

    async def requests() -> AsyncIterator[bytes]:
        yield b"ok"
        await answered.wait()
        yield b"missing"
        # Sending on after the server has failed the call races its status: grpc then
        # reports the failed write (INTERNAL) instead of the server's NOT_FOUND.
        await finished.wait()

    async def read_all() -> None:
        async for reply in chat(requests()):
            replies.append(reply)
            answered.set()

    try:
        with bind(ctx), pytest.raises(grpc.aio.AioRpcError) as caught:
            await read_all()
    finally:
        finished.set()
    assert replies == [b"ok|" + ctx.correlation_id.encode()]
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    info = detail(rich_status(caught.value), error_details_pb2.ErrorInfo)
    assert info.metadata["correlation_id"] == ctx.correlation_id
    client, _ = await rig.spans(ctx.correlation_id)
    assert client.status.status_code is StatusCode.ERROR
    assert client.status.description == "NOT_FOUND: no such thing"
    assert client.attributes is not None
    assert client.attributes["rpc.grpc.status_code"] == 5


# --- spans -------------------------------------------------------------------------------


async def test_client_and_server_spans_form_one_trace(rig: Rig) -> None:
    ctx = client_context()
    with bind(ctx):
        await rig.stub.Submit(submit())
    client, server = await rig.spans(ctx.correlation_id)
    seen = rig.servicer.seen[-1]

    assert client.name == server.name == f"{SERVICE}/Submit"
    assert client.context.trace_id == server.context.trace_id
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id
    assert server.parent.is_remote
    # The handler runs inside the SERVER span: its own spans would be children of it.
    assert seen.span.span_id == server.context.span_id
    # The causation chain: the server's causation id is the client's bound event id.
    assert seen.ctx.causation_id == ctx.event_id
    assert server.attributes is not None
    assert client.attributes is not None
    assert server.attributes["agentflux.causation_id"] == ctx.event_id
    assert server.attributes["agentflux.tenant_id"] == "acme"
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.service"] == SERVICE
    assert server.attributes["rpc.method"] == "Submit"
    assert client.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.status.is_ok
    assert client.status.status_code is StatusCode.UNSET  # OK is not an error, nor more
    assert server.resource.attributes["service.name"] == "test-server"
    assert client.resource.attributes["service.name"] == "test-client"


async def test_an_active_client_span_parents_the_call(rig: Rig) -> None:
    ctx = client_context()
    with rig.client.tracer.start_as_current_span("outer") as outer, bind(ctx):
        await rig.stub.Submit(submit())
    client, server = await rig.spans(ctx.correlation_id)
    assert client.parent is not None
    assert client.parent.span_id == outer.get_span_context().span_id
    assert server.context.trace_id == outer.get_span_context().trace_id


async def test_error_status_codes_are_recorded_on_both_spans(rig: Rig) -> None:
    ctx = client_context()
    with bind(ctx), pytest.raises(grpc.aio.AioRpcError):
        await rig.stub.GetRun(gateway_pb2.GetRunRequest(run_id="run-x"))
    client, server = await rig.spans(ctx.correlation_id)
    assert client.attributes is not None
    assert server.attributes is not None
    assert client.attributes["rpc.grpc.status_code"] == 5
    assert server.attributes["rpc.grpc.status_code"] == 5
    assert client.status.status_code is StatusCode.ERROR
    assert client.status.description == "NOT_FOUND: no run run-x"
    assert not server.status.is_ok
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id


async def test_raw_traceparent_parents_the_server_span(rig: Rig) -> None:
    metadata = (
        ("x-correlation-id", "corr-traced-1"),
        ("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01"),
    )
    await rig.raw_stub.Submit(submit(), metadata=metadata)
    assert rig.server.flush()
    (server,) = [
        s
        for s in rig.server_spans.get_finished_spans()
        if (s.attributes or {}).get("agentflux.correlation_id") == "corr-traced-1"
    ]
    assert server.context.trace_id == int(TRACE_ID, 16)
    assert server.parent is not None
    assert server.parent.span_id == int(SPAN_ID, 16)


# --- how long a CLIENT span lasts --------------------------------------------------------


def paced_stream(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    return channel.unary_stream(f"/{ECHO}/Paced")


async def test_a_server_stream_span_lasts_until_the_stream_ends(rig: Rig) -> None:
    ctx = client_context()
    got: list[bytes] = []
    with bind(ctx):
        async for message in paced_stream(rig.channel)(pace(3, 0.1)):
            # Each message comes before the end of the call: the span is still open.
            assert rig.client_open(ctx.correlation_id)
            got.append(message)
    assert got == [b"0", b"1", b"2"]

    client, server = await rig.spans(ctx.correlation_id)
    (client_start, client_end), (server_start, server_end) = times(client), times(server)
    # The server span ends after its last message is written; the client's after that.
    assert client_start <= server_start
    assert client_end >= server_end
    assert client_end - client_start >= 0.2e9  # two 100 ms gaps, at least
    assert client.status.status_code is StatusCode.UNSET
    assert client.attributes is not None
    assert client.attributes["rpc.grpc.status_code"] == 0
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id


@pytest.mark.parametrize("stop", ["cancel the call", "cancel the reading task"])
async def test_a_stream_stopped_half_way_ends_its_span_cancelled(rig: Rig, stop: str) -> None:
    """The caller's own cancel is an error on the CLIENT span, as every non-OK code is
    (OpenTelemetry's gRPC conventions; contrib does the same): the stream did not
    complete, and the description says who stopped it."""
    ctx = client_context()
    with bind(ctx):
        call = paced_stream(rig.channel)(pace(3, 0.5))
    first = asyncio.Event()

    async def read() -> None:
        async for _ in call:
            first.set()

    reader = asyncio.create_task(read())
    await first.wait()
    assert rig.client_open(ctx.correlation_id)
    if stop == "cancel the call":
        call.cancel()
    else:  # e.g. a timeout around the loop: grpc cancels the call it was reading
        reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    stopped = time.time_ns()

    client, _ = await rig.spans(ctx.correlation_id)
    assert times(client)[1] <= stopped  # ended by the cancel, not by the stream running out
    assert client.status.status_code is StatusCode.ERROR
    assert client.status.description == "CANCELLED: Locally cancelled by application!"
    assert client.attributes is not None
    assert client.attributes["rpc.grpc.status_code"] == 1


async def test_an_abandoned_stream_span_ends_when_grpc_ends_the_call(rig: Rig) -> None:
    """A caller that stops reading without cancelling leaves the call open: grpc hands
    out the status only after every message is read. The span stays open as long as
    the call does, and ends once when grpc ends it (here: the channel closes)."""
    channel = grpc.aio.insecure_channel(rig.address, interceptors=client_interceptors(rig.client))
    ctx = client_context()
    try:
        with bind(ctx):
            async for _ in paced_stream(channel)(pace(3, 0.01)):
                break
        await rig.server_ends.wait(ctx.correlation_id, SpanKind.SERVER)
        assert rig.client_open(ctx.correlation_id)  # the server is done, the call is not
    finally:
        await channel.close()

    client, _ = await rig.spans(ctx.correlation_id)
    assert client.status.status_code is StatusCode.ERROR
    assert (client.status.description or "").startswith("CANCELLED")


async def test_a_stream_failing_half_way_ends_its_span_with_the_code(rig: Rig) -> None:
    ctx = client_context()
    got: list[bytes] = []

    async def read_all() -> None:
        async for message in paced_stream(rig.channel)(pace(2, 0.05, fail="run r-9 is gone")):
            got.append(message)

    with bind(ctx), pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_all()
    assert got == [b"0", b"1"]
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND

    client, server = await rig.spans(ctx.correlation_id)
    assert client.status.status_code is StatusCode.ERROR
    assert client.status.description == "NOT_FOUND: run r-9 is gone"
    assert client.attributes is not None
    assert client.attributes["rpc.grpc.status_code"] == 5
    assert times(client)[1] - times(server)[0] >= 0.05e9  # not before the second message


class _StatusLater(grpc.aio.UnaryUnaryCall[Any, Any]):
    """A later interceptor's call type whose status takes one more step even once the
    call is done (say, it records the status somewhere first)."""

    def __init__(self, call: grpc.aio.UnaryUnaryCall[Any, Any]) -> None:
        self._call = call

    def cancel(self) -> bool:
        return self._call.cancel()

    def cancelled(self) -> bool:
        return self._call.cancelled()

    def done(self) -> bool:
        return self._call.done()

    def add_done_callback(self, callback: Any) -> None:
        self._call.add_done_callback(lambda _: callback(self))

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        await asyncio.sleep(0)  # one more step of the event loop, not a wait
        return await self._call.code()

    async def details(self) -> str:
        await asyncio.sleep(0)
        return await self._call.details()

    async def wait_for_connection(self) -> None:
        await self._call.wait_for_connection()

    def __await__(self) -> Any:
        return self._call.__await__()


class _LaterStatusInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return _StatusLater(await continuation(details, request))


async def test_a_status_read_after_the_call_keeps_the_calls_end_time(rig: Rig) -> None:
    channel = grpc.aio.insecure_channel(
        rig.address, interceptors=[*client_interceptors(rig.client), _LaterStatusInterceptor()]
    )
    ctx = client_context()
    try:
        with bind(ctx), pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway_pb2_grpc.AgentGatewayStub(channel).GetRun(
                gateway_pb2.GetRunRequest(run_id="run-y")
            )
        failed = time.time_ns()
    finally:
        await channel.close()
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND

    client, _ = await rig.spans(ctx.correlation_id)
    assert client.status.status_code is StatusCode.ERROR
    assert client.status.description == "NOT_FOUND: no run run-y"
    assert times(client)[1] <= failed  # the call's end, not the later status read's


@pytest.fixture(autouse=True)
def _no_context_leaks() -> Iterator[None]:
    assert current() is None
    yield
    assert current() is None


@pytest.fixture(autouse=True)
def _spans_end_once_and_no_task_is_lost(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    # Both are logged, not warned, so filterwarnings=error would not catch them.
    yield
    for record in caplog.get_records("call"):
        message = record.getMessage()
        assert "on an ended span" not in message, message
        assert "Task was destroyed" not in message, message
