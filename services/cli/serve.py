"""`agentflux serve [SERVICE...]`: run services of the mesh in this process.

Each service starts (connects, declares, warms), then a `ready` line names them and the
health port; the process serves until SIGTERM or Ctrl-C, then every service drains
(finishes or hands back its work within the grace period) and the clients close. Run
several processes of a service to share its work: consumer groups for the Kafka
services, competing consumers for workers, stateless gateways behind a balancer. A
service that fails stops the others and the process exits 1, for its supervisor to
restart it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from interceptors import Telemetry, instrument_caches
from services.composer import ComposerService
from services.gateway import GatewayService
from services.indexer import IndexerService
from services.planner import PlannerService
from services.runtime.config import Settings
from services.runtime.lifecycle import freeze_startup_heap, stop_on_signals
from services.runtime.mesh import Mesh, Service
from services.worker import WorkerService

__all__ = ["SERVICES", "serve_forever"]

log = logging.getLogger(__name__)

SERVICES: dict[str, type[Service]] = {
    "gateway": GatewayService,
    "planner": PlannerService,
    "worker": WorkerService,
    "composer": ComposerService,
    "indexer": IndexerService,
}


async def serve_forever(
    settings: Settings, names: Sequence[str], say: Callable[[str], None]
) -> int:
    """Runs `names` until a signal; returns the exit code."""
    mesh = Mesh.connect(settings)
    services: list[Service] = []
    health_server: grpc.aio.Server | None = None
    try:
        await mesh.declare()
        services = [SERVICES[name](mesh) for name in names]
        # Redis and Memcached commands as spans of whichever service's work runs them.
        instrument_caches(Telemetry.for_service("agentflux", settings))
        await asyncio.gather(*(s.start() for s in services))
        health_server, port = await _health(settings, names)
        frozen = freeze_startup_heap()
        log.info("%d objects from start-up frozen: full collections skip them", frozen)
        namespace = settings.namespace or "-"
        say(f"ready: {', '.join(names)} (namespace {namespace}, health {settings.host}:{port})")
        stop = asyncio.Event()
        stop_on_signals(stop)
        return await _run(services, stop)
    finally:
        if health_server is not None:
            await health_server.stop(None)
        for service in services:
            try:
                await service.close()
            except Exception:
                log.exception("closing %s failed", service.name)
        await mesh.close()


async def _run(services: list[Service], stop: asyncio.Event) -> int:
    tasks = {asyncio.create_task(s.run(stop), name=s.name): s for s in services}
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    failed = [t for t in done if not t.cancelled() and t.exception() is not None]
    if failed:
        stop.set()  # one service broke: drain the others and exit for a restart
        for task in failed:
            log.error(
                "%s stopped: %r", task.get_name(), task.exception(), exc_info=task.exception()
            )
    await asyncio.gather(*tasks, return_exceptions=True)
    return 1 if failed else 0


async def _health(settings: Settings, names: Sequence[str]) -> tuple[grpc.aio.Server, int]:
    """gRPC health for every service of the process (`agentflux.<name>`, and "")."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.health_port}")
    await server.start()
    for name in names:
        await servicer.set(f"agentflux.{name}", health_pb2.HealthCheckResponse.SERVING)
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port
