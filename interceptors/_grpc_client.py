"""grpc.aio client interceptors: the bound context and trace go out with every call.

Each call gets a fresh request id (`x-request-id`) whose causation is the work being
handled; the correlation id, tenant, run and idempotency key come from the bound
context (a call made outside any context starts a new correlation). The remaining
time of the bound deadline caps the call's timeout, so a deadline set at the edge
holds across every hop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry.trace import SpanKind

from interceptors._carriers import GRPC
from interceptors._context import FluxContext, current, new_id
from interceptors._propagation import inject
from interceptors._spans import context_attributes
from interceptors._telemetry import Telemetry

__all__ = ["client_interceptors"]

_EXPIRED = grpc.StatusCode.DEADLINE_EXCEEDED


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
        with self.telemetry.tracer.start_as_current_span(
            name, kind=SpanKind.CLIENT, attributes=attrs
        ) as span:
            if ctx.expired():
                # A zero timeout does not stop grpc from sending on a ready channel:
                # refuse here, so no work starts after the edge's deadline.
                span.set_attribute("rpc.grpc.status_code", _EXPIRED.value[0])
                raise grpc.aio.AioRpcError(
                    _EXPIRED,
                    grpc.aio.Metadata(),
                    grpc.aio.Metadata(),
                    details="Deadline Exceeded: the bound deadline passed before the call",
                )
            call = await continuation(self._details(details, ctx), request)
            if isinstance(call, grpc.aio.UnaryUnaryCall | grpc.aio.StreamUnaryCall):
                # Keep the span open until the single response (or error) arrives.
                code = await call.code()
                span.set_attribute("rpc.grpc.status_code", code.value[0])
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
