"""The gateway: the public gRPC API of agentflux (`agentflux.v1.AgentGateway`).

It validates and accepts runs (`Submit` stores the run and emits `AgentRequested` to
Kafka), streams their progress from the shared run records (`StreamRun`, resumable
after any event id), answers `GetRun`, `ListRuns` and `CancelRun` from the same records,
and forwards `SearchResponses` to the indexer. Stateless: run as many as needed."""

from services.gateway._service import GatewayService
from services.gateway._servicer import AgentGateway

__all__ = ["AgentGateway", "GatewayService"]
