"""`GatewayService`: the grpc.aio server of `AgentGateway`, with health and reflection.

gRPC health reports NOT_SERVING from the moment the port is open until `start` has
warmed every client (the Kafka producer has its producer id and the topic's metadata,
Redis answered), so the first request a load balancer sends is as fast as the rest;
and NOT_SERVING again as soon as the service is asked to stop. Server reflection makes
`grpcurl -plaintext <host>:<port> list` work without the .proto files."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import grpc
import redis.asyncio as aioredis
from agentflux.v1 import gateway_pb2, gateway_pb2_grpc, index_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from interceptors import (
    EventProducer,
    ServerContextInterceptor,
    TaskPublisher,
    Telemetry,
    client_interceptors,
)
from services.gateway._auth import auth_interceptor
from services.gateway._servicer import AgentGateway
from services.runs import RunStore
from services.runtime.adapters.redis import connect_redis
from services.runtime.mesh import Mesh, Service
from services.runtime.tls import add_port, server_tls

__all__ = ["GatewayService"]

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]

GATEWAY = gateway_pb2.DESCRIPTOR.services_by_name["AgentGateway"].full_name
# Probes and tooling: no context to carry, and a span per probe would bury the traces.
_UNTRACED = ("/grpc.health.v1.", "/grpc.reflection.")
# Each open StreamRun holds one connection while it waits for the run's next event.
STREAM_CONNECTIONS = 1_000


class _Interceptor(ServerContextInterceptor):
    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        method: str = details.method
        if method.startswith(_UNTRACED):
            return await continuation(details)
        return await super().intercept_service(continuation, details)


class GatewayService(Service):
    """The public gRPC entry point of the mesh (see the module doc)."""

    name = "gateway"

    def __init__(self, mesh: Mesh) -> None:
        super().__init__(mesh)
        settings = mesh.settings
        self.telemetry = Telemetry.for_service("gateway", settings)

        def store(client: aioredis.Redis) -> RunStore:
            return RunStore.for_settings(client, settings)

        self.store = store(mesh.redis)
        # Streams get their own pool: a crowd of followers never starves Submit.
        self.stream_redis = connect_redis(settings, max_connections=STREAM_CONNECTIONS)
        self.streams = store(self.stream_redis)
        self.health = health.aio.HealthServicer()
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._index: grpc.aio.Channel | None = None
        self._closed = False

    async def _set_health(self, status: int) -> None:
        for service in (GATEWAY, ""):
            await self.health.set(service, status)

    async def start(self) -> None:
        settings, mesh = self.mesh.settings, self.mesh
        # TLS files are checked before anything else: a bad one stops the start here.
        tls = server_tls(settings)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._index = grpc.aio.insecure_channel(
            settings.indexer_target, interceptors=client_interceptors(self.telemetry)
        )
        servicer = AgentGateway(
            settings,
            store=self.store,
            streams=self.streams,
            events=EventProducer(
                mesh.producer,
                self.telemetry,
                source="/agentflux/gateway",
                topic_prefix=mesh.namespace,
            ),
            index=index_pb2_grpc.ResponseIndexServiceStub(self._index),
            tasks=TaskPublisher(
                await mesh.rabbit(),
                self.telemetry,
                source="/agentflux/gateway",
                name_prefix=mesh.namespace,
            ),
        )
        # No SO_REUSEPORT: a second gateway on a taken port fails here, instead of
        # silently sharing the port (and its calls) with a forgotten one.
        # The caller's tenant (API key) is resolved inside the context the first binds.
        server = grpc.aio.server(
            interceptors=[_Interceptor(self.telemetry), auth_interceptor(settings, mesh.redis)],
            # A request larger than this is refused by gRPC itself (RESOURCE_EXHAUSTED)
            # before it is read into memory whole.
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", settings.max_request_bytes),
            ],
        )
        gateway_pb2_grpc.add_AgentGatewayServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (GATEWAY, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"{settings.host}:{settings.gateway_port}"
        try:
            self.port = add_port(server, address, tls)
        except RuntimeError as exc:
            raise RuntimeError(f"gateway: cannot listen on {address} (in use?)") from exc
        await server.start()
        self._server = server
        mode = tls.mode if tls is not None else "plaintext"
        log.info("gateway serves %s on %s:%d", mode, settings.host, self.port)
        await mesh.producer.warm([mesh.topic("agent.requested")])
        await asyncio.gather(mesh.redis.ping(), self.stream_redis.ping())
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()
        # Probes see NOT_SERVING first, so balancers stop sending before the port closes.
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(self.mesh.settings.grace_s)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            await self._server.stop(0)
            self._server = None
        if self._index is not None:
            await self._index.close()
            self._index = None
        await self.stream_redis.aclose()
        await asyncio.to_thread(self.telemetry.shutdown)
