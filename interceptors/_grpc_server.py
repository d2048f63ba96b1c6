"""grpc.aio server interceptor: context in, span around, errors out as rich statuses.

For every call: read the context from metadata (malformed -> INVALID_ARGUMENT naming
the key), create the correlation and request ids when absent and echo them back in
the initial metadata, turn the call's remaining time into the context deadline, open
a SERVER span parented to the caller's trace, bind the context for the handler, and
map a `FluxError` to its status code with `google.rpc.Status` details. One wrapper
serves all four RPC arities: only the response side (one message or a stream) differs."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from interceptors._carriers import CONTEXT_KEYS, GRPC
from interceptors._context import FluxContext, bind
from interceptors._errors import DOMAIN, FluxError, InvalidArgument, ResourceExhausted
from interceptors._propagation import extract
from interceptors._spans import context_attributes
from interceptors._telemetry import Telemetry, serving

log = logging.getLogger(__name__)

__all__ = ["ServerContextInterceptor", "status_of", "wrap_handler"]

if TYPE_CHECKING:
    # Generic only in the type stubs: subscripting grpc.RpcMethodHandler at run time
    # raises TypeError, so the aliases exist for the type checker alone.
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]
_FACTORIES: dict[str, Callable[..., Handler]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}
_ECHO = {k.field: k.grpc for k in CONTEXT_KEYS if k.field in ("correlation_id", "event_id")}


def wrap_handler(
    handler: Handler, around: Callable[[Context], AbstractAsyncContextManager[Any]]
) -> Handler:
    """`handler` (of any arity) with each call run inside `around(context)`: what a
    server interceptor needs to act around the call itself, in its task and context,
    rather than only before the handler is looked up."""
    for kind, factory in _FACTORIES.items():
        behavior = getattr(handler, kind)
        if behavior is not None:
            new: Handler = factory(
                _around(behavior, around, streaming=handler.response_streaming),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            return new
    return handler


def _around(
    behavior: Any, around: Callable[[Context], AbstractAsyncContextManager[Any]], *, streaming: bool
) -> Any:
    if streaming:

        async def stream(request: Any, context: Context) -> Any:
            async with around(context):
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for response in result:
                        yield response
                else:  # a coroutine that writes with context.write()
                    await result

        return stream

    async def unary(request: Any, context: Context) -> Any:
        async with around(context):
            return await behavior(request, context)

    return unary


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_of(error: FluxError, correlation_id: str) -> grpc.Status:
    """The gRPC status of `error`: code, message and `google.rpc.Status` details
    (ErrorInfo always; BadRequest naming the fields at fault; QuotaFailure naming the
    quotas; RetryInfo when retrying helps)."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason,
        domain=DOMAIN,
        metadata={**error.metadata, "correlation_id": correlation_id},
    )
    details = [_pack(info)]
    if isinstance(error, InvalidArgument):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in error.violations
        ]
        details.append(_pack(error_details_pb2.BadRequest(field_violations=violations)))
    if isinstance(error, ResourceExhausted) and error.quota:
        quota = [
            error_details_pb2.QuotaFailure.Violation(subject=subject, description=description)
            for subject, description in error.quota
        ]
        details.append(_pack(error_details_pb2.QuotaFailure(violations=quota)))
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    code: int = error.code.value[0]
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code, message=error.message, details=details)
    )
    return status


class ServerContextInterceptor(grpc.aio.ServerInterceptor):
    """The server side of the context and tracing chain (see the module doc)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        # The wrapped handler of each method, made once: a server's handlers are fixed
        # at start, and wrapping builds closures and a method handler on every call.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = wrap_handler(handler, lambda context: self._call(method, context))
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    @asynccontextmanager
    async def _call(self, method: str, context: Context) -> AsyncIterator[Span]:
        service, _, name = method.lstrip("/").partition("/")
        attrs: dict[str, Any] = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        metadata = tuple(context.invocation_metadata() or ())
        try:
            got = extract(GRPC, metadata, "grpc", strict=True)
        except InvalidArgument as bad:
            # The caller's metadata is wrong: answer before any work, naming the key.
            with self.telemetry.tracer.start_as_current_span(
                method.lstrip("/"), kind=SpanKind.SERVER, attributes=attrs
            ) as span:
                span.set_status(Status(StatusCode.ERROR, bad.message))
                span.set_attribute("rpc.grpc.status_code", bad.code.value[0])
                await context.abort_with_status(status_of(bad, ""))
            raise AssertionError("abort_with_status returned") from bad  # pragma: no cover
        ctx: FluxContext = got.context
        remaining = context.time_remaining()
        if remaining is not None:
            ctx = ctx.with_(deadline=time.time() + remaining)
        await context.send_initial_metadata(
            tuple((key, getattr(ctx, field)) for field, key in _ECHO.items())
        )
        # The context attributes at the start for a span that will record, else only if
        # it does (see `Telemetry.will_record`).
        full = self.telemetry.will_record(got.trace_parent)
        if full:
            attrs.update(context_attributes(ctx))
        with self.telemetry.tracer.start_as_current_span(
            method.lstrip("/"),
            context=got.trace_parent,
            kind=SpanKind.SERVER,
            attributes=attrs,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            if not full and span.is_recording():
                span.set_attributes(context_attributes(ctx))
            try:
                with bind(ctx), serving(self.telemetry):
                    yield span
            except FluxError as error:
                span.set_status(Status(StatusCode.ERROR, error.message))
                span.set_attribute("rpc.grpc.status_code", error.code.value[0])
                await context.abort_with_status(status_of(error, ctx.correlation_id))
            except grpc.aio.AbortError:
                code = context.code()
                span.set_attribute("rpc.grpc.status_code", code.value[0] if code else 2)
                span.set_status(Status(StatusCode.ERROR, context.details() or ""))
                raise
            except Exception as exc:
                # Never leak internals to the caller; the log, the span and the id tie
                # them up.
                log.exception("%s failed; correlation id %s", method, ctx.correlation_id)
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, repr(exc)))
                span.set_attribute("rpc.grpc.status_code", code_pb2.INTERNAL)
                internal = FluxError(f"internal error; correlation id {ctx.correlation_id}")
                await context.abort_with_status(status_of(internal, ctx.correlation_id))
            else:
                span.set_attribute("rpc.grpc.status_code", code_pb2.OK)
