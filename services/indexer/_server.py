"""The indexer's gRPC server: `ResponseIndexService`, health checking and reflection.

Health answers NOT_SERVING for "" and for `agentflux.v1.ResponseIndexService` until
`start()` has finished (`serving()`), and again from the moment a stop begins
(`draining()`), so a load balancer sends searches only to a replica that is ready.

Only the search service runs through `ServerContextInterceptor`: a load balancer's
health probes every few seconds, or a grpcurl session, would otherwise fill the span
store with spans no one reads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from agentflux.v1 import gateway_pb2, index_pb2, index_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from interceptors import PermissionDenied, ServerContextInterceptor, Telemetry, current
from services.indexer._query import MAX_OFFSET, page_token, parse_request
from services.indexer._schema import Hit
from services.indexer._store import IndexStore

__all__ = ["SERVICE_NAME", "IndexServer", "SearchServicer"]

SERVICE_NAME: str = index_pb2.DESCRIPTOR.services_by_name["ResponseIndexService"].full_name

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]


class SearchServicer(index_pb2_grpc.ResponseIndexServiceServicer):
    """`SearchIndex` over an `IndexStore`."""

    def __init__(self, store: IndexStore) -> None:
        self.store = store

    async def SearchIndex(  # noqa: N802 - the generated servicer's method name
        self, request: index_pb2.SearchIndexRequest, context: Any
    ) -> index_pb2.SearchIndexResponse:
        search = parse_request(request)
        ctx = current()
        # The gateway and the retrieve tool pass the caller's tenant both ways; when the
        # call's context names another tenant, one of them is wrong: answer nothing.
        if ctx is not None and ctx.tenant_id and ctx.tenant_id != search.tenant_id:
            raise PermissionDenied("tenant_id differs from the call's x-tenant-id")
        page = await self.store.search(search)
        response = index_pb2.SearchIndexResponse(results=[_result(h) for h in page.hits])
        following = search.offset + len(page.hits)
        if page.more and following <= MAX_OFFSET:
            response.next_page_token = page_token(following, page.max_id, search.fingerprint)
        return response


def _result(hit: Hit) -> gateway_pb2.SearchResult:
    result = gateway_pb2.SearchResult(
        run_id=hit.run_id,
        conversation_id=hit.conversation_id,
        prompt=hit.prompt,
        snippet=hit.snippet,
        score=hit.score,
    )
    if hit.complete_time_ns:
        stamp = Timestamp()
        stamp.FromNanoseconds(hit.complete_time_ns)
        result.complete_time.CopyFrom(stamp)
    return result


class _SearchOnly(grpc.aio.ServerInterceptor):
    """Applies `inner` to the search service's methods only (see the module doc)."""

    def __init__(self, inner: grpc.aio.ServerInterceptor) -> None:
        self.inner = inner
        self.prefix = f"/{SERVICE_NAME}/"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method: str = details.method
        if method.startswith(self.prefix):
            return await self.inner.intercept_service(continuation, details)
        return await continuation(details)


class IndexServer:
    """The grpc.aio server of one indexer process (see the module doc)."""

    def __init__(self, store: IndexStore, telemetry: Telemetry) -> None:
        self.server = grpc.aio.server(
            interceptors=[_SearchOnly(ServerContextInterceptor(telemetry))],
            # gRPC sets SO_REUSEPORT by default: a second replica given the same port
            # would then share it silently instead of failing to start.
            options=[("grpc.so_reuseport", 0)],
        )
        self.health = health.aio.HealthServicer()
        index_pb2_grpc.add_ResponseIndexServiceServicer_to_server(
            SearchServicer(store), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = 0

    async def start(self, address: str) -> int:
        """Binds `address` (host:port) and starts serving, NOT_SERVING on health;
        returns the bound port. Raises RuntimeError naming the address when it is taken."""
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"indexer: cannot listen on {address} ({exc})") from exc
        await self.server.start()
        return self.port

    async def serving(self) -> None:
        """Tells health checks the index answers."""
        await self._set(health_pb2.HealthCheckResponse.SERVING)

    async def draining(self) -> None:
        """Tells health checks to send no more searches here (stays NOT_SERVING)."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float | None) -> None:
        """Refuses new calls and gives calls in flight `grace_s` to finish."""
        await self.server.stop(grace_s)

    async def _set(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
