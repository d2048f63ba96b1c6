"""grpc.aio client interceptors: the bound context and trace go out with every call.

Each call gets a fresh request id (`x-request-id`) whose causation is the work being
handled; the correlation id, tenant, run and idempotency key come from the bound
context (a call made outside any context starts a new correlation). The remaining
time of the bound deadline caps the call's timeout, so a deadline set at the edge
holds across every hop.

The CLIENT span lasts as long as the call, for all four arities: it ends when the call
is done (the response or the last message read, the call cancelled, or failed), not
when the call object is made, and a non-OK status marks it as an error."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from interceptors._carriers import GRPC
from interceptors._context import FluxContext, current, new_id
from interceptors._propagation import inject
from interceptors._spans import context_attributes
from interceptors._telemetry import Telemetry

__all__ = ["client_interceptors"]

_EXPIRED = grpc.StatusCode.DEADLINE_EXCEEDED
_UNREAD = (grpc.StatusCode.UNKNOWN, "the call ended but its status could not be read")
# Spans whose status is being read after their call ended (see `_on_done`): held here,
# or the event loop's weak reference would let the task be collected mid-read.
_ending: set[asyncio.Task[None]] = set()


def _end(span: Span, code: grpc.StatusCode, details: str, end_time: int | None = None) -> None:
    """Ends a CLIENT span with its call's status. On the client side every non-OK code is
    an error (OpenTelemetry's gRPC conventions), a caller's own cancel included: the
    stream did not complete, and the description says who cancelled it."""
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(
            Status(StatusCode.ERROR, f"{code.name}: {details}" if details else code.name)
        )
    span.end(end_time)


async def _status(call: grpc.aio.Call) -> tuple[grpc.StatusCode, str]:
    return await call.code(), await call.details() or ""


def _on_done(span: Span, call: grpc.aio.Call) -> None:
    # Done callbacks cannot await, but a finished grpc call already holds its status:
    # `code()` and `details()` return at their first step, so the span ends right here,
    # at the call's end, before the caller can learn that the call ended.
    reading = _status(call)
    try:
        reading.send(None)
    except StopIteration as read:
        _end(span, *read.value)
        return
    except Exception as exc:
        span.record_exception(exc)
        _end(span, *_UNREAD)
        return
    reading.close()
    # A call type whose status is still a wait away (none of grpc's own): read it in a
    # task, keeping the time the call ended as the span's end.
    task = asyncio.get_running_loop().create_task(_end_later(span, call, time.time_ns()))
    _ending.add(task)
    task.add_done_callback(_ending.discard)


async def _end_later(span: Span, call: grpc.aio.Call, end_time: int) -> None:
    status = _UNREAD
    try:
        status = await _status(call)
    except Exception as exc:
        span.record_exception(exc)
    finally:  # cancelled at shutdown or not, the span ends, once
        _end(span, *status, end_time)


class _Outgoing:
    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def _details(
        self, details: grpc.aio.ClientCallDetails, ctx: FluxContext
    ) -> grpc.aio.ClientCallDetails:
        metadata: list[tuple[str, str]] = []
        binary: list[tuple[str, bytes]] = []  # the caller's `-bin` entries, passed through
        for k, v in details.metadata or ():
            if isinstance(v, str):
                metadata.append((k, v))
            else:
                binary.append((k, v))
        inject(GRPC, metadata, "grpc", ctx)
        timeout = details.timeout
        remaining = ctx.remaining()
        if remaining is not None and (timeout is None or remaining < timeout):
            timeout = remaining
        return grpc.aio.ClientCallDetails(
            details.method,
            timeout,
            grpc.aio.Metadata(*metadata, *binary),
            details.credentials,
            details.wait_for_ready,
        )

    def _context(self) -> FluxContext:
        parent = current()
        return FluxContext.new() if parent is None else parent.child(new_id())

    def _span_name(self, details: grpc.aio.ClientCallDetails) -> str:
        method: Any = details.method  # bytes at run time in grpc.aio, str in the stubs
        return (method.decode() if isinstance(method, bytes) else method).lstrip("/")

    async def _intercept(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        ctx = self._context()
        name = self._span_name(details)
        service, _, method = name.partition("/")
        attrs: dict[str, Any] = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        attrs.update(context_attributes(ctx))
        span = self.telemetry.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attrs)
        try:
            # Current only while the call starts, so the injected traceparent names it;
            # leaving this block neither ends it nor guesses a status.
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                if ctx.expired():
                    # A zero timeout does not stop grpc from sending on a ready channel:
                    # refuse here, so no work starts after the edge's deadline.
                    raise grpc.aio.AioRpcError(
                        _EXPIRED,
                        grpc.aio.Metadata(),
                        grpc.aio.Metadata(),
                        details="Deadline Exceeded: the bound deadline passed before the call",
                    )
                call: grpc.aio.Call = await continuation(self._details(details, ctx), request)
        except grpc.aio.AioRpcError as refused:
            _end(span, refused.code(), refused.details() or "")
            raise
        except BaseException as exc:
            # No call exists (a later interceptor failed, or the caller cancelled first):
            # say what happened without inventing a status code.
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.end()
            raise
        if call.done():  # a later interceptor answered without a call (e.g. from a cache)
            _on_done(span, call)
        else:
            call.add_done_callback(functools.partial(_on_done, span))
        return call


class _UnaryUnary(_Outgoing, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._intercept(continuation, details, request)


class _UnaryStream(_Outgoing, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._intercept(continuation, details, request)


class _StreamUnary(_Outgoing, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._intercept(continuation, details, requests)


class _StreamStream(_Outgoing, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._intercept(continuation, details, requests)


def client_interceptors(telemetry: Telemetry) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for `grpc.aio.insecure_channel(..., interceptors=...)`, one per arity."""
    return [
        _UnaryUnary(telemetry),
        _UnaryStream(telemetry),
        _StreamUnary(telemetry),
        _StreamStream(telemetry),
    ]
