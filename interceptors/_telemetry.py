"""One tracer provider per service: `service.name`, batched export, local span store.

Every component of the library takes a `Telemetry` instead of reaching for the global
tracer provider, so several services can run in one process (tests, `make demo`)
and still appear as themselves in a trace."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Tracer

from interceptors._spanstore import JsonLinesSpanExporter

__all__ = ["Telemetry"]

_SCOPE = "agentflux"


@dataclass(frozen=True)
class Telemetry:
    """A service's tracer and the provider that exports its spans."""

    service: str
    provider: TracerProvider
    tracer: Tracer

    @classmethod
    def create(
        cls,
        service: str,
        *,
        span_store: Path | None = None,
        otlp_endpoint: str = "",
        exporters: Sequence[SpanExporter] = (),
        batch_delay_ms: int = 500,
    ) -> Telemetry:
        """A provider for `service` exporting to the local span store (when a folder
        is given), to an OTLP/gRPC collector (when an endpoint is given) and to any
        extra `exporters`, each through a BatchSpanProcessor: exporting never runs on
        the request path."""
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        targets: list[SpanExporter] = list(exporters)
        if span_store is not None:
            targets.append(JsonLinesSpanExporter(span_store))
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            targets.append(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True))
        for exporter in targets:
            provider.add_span_processor(
                BatchSpanProcessor(exporter, schedule_delay_millis=batch_delay_ms)
            )
        return cls(service, provider, provider.get_tracer(_SCOPE))

    def flush(self, timeout_ms: int = 5_000) -> bool:
        """Exports every finished span now (before exit, or before reading the store)."""
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        """Flushes and stops the exporters."""
        self.provider.shutdown()
