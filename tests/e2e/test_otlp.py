"""Spans leave over OTLP when the standard variable says where: every service of the
mesh and the CLI export to a real OTLP/gRPC receiver on loopback, under the
`service.namespace` named by OTEL_SERVICE_NAME."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.e2e.conftest import AGENTFLUX, ROOT, Mesh, eventually, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, str], Any]] = []

    async def Export(  # noqa: N802 - the OTLP service's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                self.spans += [(attrs, span) for span in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    server = grpc.aio.server()
    kept = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(kept, server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    try:
        yield kept, address
    finally:
        await server.stop(None)


async def test_every_service_and_the_cli_export_over_otlp(
    mesh: Mesh, receiver: tuple[Receiver, str]
) -> None:
    kept, address = receiver
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{address}", "OTEL_SERVICE_NAME": "acme-agents"}
    await mesh.start(**otel)
    done = await asyncio.to_thread(
        subprocess.run,
        [AGENTFLUX, "ask", "what is 6*7"],
        cwd=ROOT,
        env={**mesh.env, **otel},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "42" in done.stdout
    wanted = {"cli", "gateway", "planner", "worker", "composer", "indexer"}

    async def all_services() -> bool:
        return wanted <= {attrs.get("service.name") for attrs, _ in kept.spans}

    await eventually(all_services, timeout=60, what=f"spans of {sorted(wanted)} over OTLP")
    assert {attrs.get("service.namespace") for attrs, _ in kept.spans} == {"acme-agents"}
    # One trace runs from the CLI through every hop.
    cli_traces = {span.trace_id for attrs, span in kept.spans if attrs["service.name"] == "cli"}
    worker = [span for attrs, span in kept.spans if attrs["service.name"] == "worker"]
    assert any(span.trace_id in cli_traces for span in worker)
    assert os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") is None  # the test leaked nothing
