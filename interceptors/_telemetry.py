"""One tracer provider per service: `service.name`, batched export, local span store.

Every component of the library takes a `Telemetry` instead of reaching for the global
tracer provider, so several services can run in one process (tests, `make demo`)
and still appear as themselves in a trace."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer

from interceptors._context import Bound
from interceptors._spanstore import JsonLinesSpanExporter
from services.runtime.config import Settings

__all__ = ["RoutingTracerProvider", "Telemetry", "serving"]

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
        service_namespace: str = "",
        sample_ratio: float | None = None,
    ) -> Telemetry:
        """A provider for `service` exporting to the local span store (when a folder
        is given), to an OTLP/gRPC collector (when an endpoint is given) and to any
        extra `exporters`, each through a BatchSpanProcessor: exporting never runs on
        the request path.

        `sample_ratio` (0..1) records that share of new traces and follows the parent's
        sampled flag otherwise, so every service keeps or drops a trace as a whole; None
        leaves it to `OTEL_TRACES_SAMPLER` (default: every trace)."""
        attributes = {"service.name": service}
        if service_namespace:
            attributes["service.namespace"] = service_namespace
        # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES, and TracerProvider reads
        # OTEL_TRACES_SAMPLER(_ARG) when no sampler is given: the standard knobs work.
        sampler = None
        if sample_ratio is not None:
            if not 0.0 <= sample_ratio <= 1.0:
                raise ValueError(f"sample_ratio must be within 0..1, got {sample_ratio}")
            sampler = ParentBased(
                ALWAYS_ON if sample_ratio >= 1.0 else TraceIdRatioBased(sample_ratio)
            )
        provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
        targets: list[SpanExporter] = list(exporters)
        if span_store is not None:
            targets.append(JsonLinesSpanExporter(span_store))
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            # A bare host:port or http:// is plaintext; https:// uses TLS.
            secure = otlp_endpoint.startswith("https://")
            targets.append(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=not secure))
        for exporter in targets:
            provider.add_span_processor(
                BatchSpanProcessor(exporter, schedule_delay_millis=batch_delay_ms)
            )
        return cls(service, provider, provider.get_tracer(_SCOPE))

    @classmethod
    def for_service(cls, service: str, settings: Settings, **kw: Any) -> Telemetry:
        """`create` with what the settings say: the span store, the OTLP collector
        (`AGENTFLUX_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`), the namespace and
        the sampling ratio (when `AGENTFLUX_TRACE_SAMPLE_RATIO` is not set,
        `OTEL_TRACES_SAMPLER` still applies)."""
        if "trace_sample_ratio" in settings.model_fields_set:
            kw.setdefault("sample_ratio", settings.trace_sample_ratio)
        return cls.create(
            service,
            span_store=settings.span_store_dir,
            otlp_endpoint=settings.otlp_endpoint,
            service_namespace=settings.service_namespace,
            **kw,
        )

    def will_record(self, parent: otel_context.Context | None = None) -> bool:
        """Whether a span started now under `parent` (the current context when None)
        will record, as far as can be told before starting it: a child follows its
        parent's sampled flag under the parent-based samplers `create` sets up, and a
        root span records when the sampler records every root (the default).

        The SDK cleans a span's attributes in one pass per call that sets them (about
        4 µs a call, 0.5 µs an attribute here). So the hops give a span that will record
        all its attributes when it starts, and any other span the few the sampler sees,
        adding the rest only if `is_recording()` says so: a sampled-out message stays
        nearly free, and a wrong guess costs time, never an attribute."""
        got = trace.get_current_span(parent).get_span_context()
        if got.is_valid:
            return got.trace_flags.sampled
        return self._roots_recorded

    @cached_property
    def _roots_recorded(self) -> bool:
        # Asked once: the root span with the highest trace id, which of the standard
        # samplers only one that records every root records (a ratio below 1 does not).
        result = self.provider.sampler.should_sample(None, (1 << 128) - 1, "probe")
        return result.decision is Decision.RECORD_AND_SAMPLE

    def flush(self, timeout_ms: int = 5_000) -> bool:
        """Exports every finished span now (before exit, or before reading the store)."""
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        """Flushes and stops the exporters."""
        self.provider.shutdown()


_serving: ContextVar[Telemetry | None] = ContextVar("agentflux_telemetry", default=None)


def serving(telemetry: Telemetry) -> AbstractContextManager[Telemetry]:
    """Marks the block as work of `telemetry`'s service (set around every handled call
    and message), so process-wide instrumentation attributes its spans correctly."""
    return Bound(_serving, telemetry)


class RoutingTracerProvider(trace.TracerProvider):
    """A provider for process-wide instrumentations (Redis, Memcached): each span goes
    to the provider of the service whose work is running (`serving`), else `fallback`."""

    def __init__(self, fallback: Telemetry) -> None:
        self.fallback = fallback

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> Tracer:
        return _RoutingTracer(
            self.fallback, instrumenting_module_name, instrumenting_library_version
        )


class _RoutingTracer(Tracer):
    def __init__(self, fallback: Telemetry, name: str, version: str | None) -> None:
        self._fallback = fallback
        self._name = name
        self._version = version
        # One tracer per service: get_tracer builds a new one (and its scope) each call,
        # which would cost every Redis and Memcached command tens of microseconds.
        self._tracers: dict[int, Tracer] = {}

    def _target(self) -> Tracer:
        telemetry = _serving.get() or self._fallback
        tracer = self._tracers.get(id(telemetry.provider))
        if tracer is None:
            tracer = telemetry.provider.get_tracer(self._name, self._version)
            self._tracers[id(telemetry.provider)] = tracer
        return tracer

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._target().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._target().start_as_current_span(*args, **kwargs)
