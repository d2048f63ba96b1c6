"""The client side of API keys: a grpc.aio channel that presents one on every call.

`grpc.metadata_call_credentials` would do the same on a TLS channel only; the local
stack's gateway speaks plaintext on loopback, so a small interceptor adds the header
instead, whatever the channel. A call that brings its own `authorization` or
`x-api-key` keeps it (a client may act with another key for one call)."""

from __future__ import annotations

from typing import Any

import grpc

__all__ = ["CREDENTIAL_KEYS", "api_key_interceptors", "key_metadata"]

# The metadata keys that carry an API key (docs/wire-protocol.md lists them).
CREDENTIAL_KEYS = ("authorization", "x-api-key")


def key_metadata(key: str) -> tuple[tuple[str, str], ...]:
    """The metadata that presents `key` (as `authorization: Bearer <key>`)."""
    return (("authorization", f"Bearer {key}"),)


class _Present:
    def __init__(self, key: str) -> None:
        self.metadata = key_metadata(key)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        own = list(details.metadata or ())
        if any(k in CREDENTIAL_KEYS for k, _ in own):
            return details
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*own, *self.metadata),
            details.credentials,
            details.wait_for_ready,
        )


class _UnaryUnary(_Present, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_Present, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_Present, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStream(_Present, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def api_key_interceptors(key: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for `grpc.aio.*_channel(..., interceptors=...)` that present `key`
    on every call, one per arity; an empty key presents nothing."""
    if not key:
        return []
    return [_UnaryUnary(key), _UnaryStream(key), _StreamUnary(key), _StreamStream(key)]
