"""The services' Memcached commands (`AsyncMemcached`) as CLIENT spans.

Shaped as `opentelemetry-instrumentation-pymemcache` shapes the spans of pymemcache
(which stays traced by that instrumentation for synchronous code): named after the
command, with `db.system` "memcached", `db.statement` (the command and its key, no
value), the peer and the transport. A span is a child of whatever span is current and
is not made current itself (a command has no child). A failed command records its
exception and ERROR status and raises as before."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final

from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from services.runtime.adapters.memcached import AsyncMemcached

__all__ = ["instrument_memcached", "memcached_instrumented", "uninstrument_memcached"]

Method = Callable[..., Any]

_COMMANDS: Final = ("get", "set", "delete")
_tracer: Tracer | None = None
_originals: dict[str, Method] = {}


def memcached_instrumented() -> bool:
    return _tracer is not None


def instrument_memcached(tracer: Tracer) -> None:
    """Traces every `AsyncMemcached` command of the process with `tracer` (a second
    call only changes the tracer)."""
    global _tracer
    _tracer = tracer
    for name in _COMMANDS:
        if name not in _originals:
            _originals[name] = AsyncMemcached.__dict__[name]
            setattr(AsyncMemcached, name, _traced(name, _originals[name]))


def uninstrument_memcached() -> None:
    """Stops tracing and puts the original methods back."""
    global _tracer
    _tracer = None
    for name, original in _originals.items():
        setattr(AsyncMemcached, name, original)
    _originals.clear()


def _attributes(client: AsyncMemcached, command: str, key: Any) -> dict[str, AttributeValue]:
    host, port = client.server
    return {
        "db.system": "memcached",
        "db.statement": f"{command} {key}",
        "net.peer.name": host,
        "net.peer.port": port,
        "net.transport": "ip_tcp",
    }


def _traced(command: str, original: Method) -> Method:
    @functools.wraps(original)
    async def call(self: AsyncMemcached, key: Any, *args: Any, **kwargs: Any) -> Any:
        tracer = _tracer
        if tracer is None or not is_instrumentation_enabled():
            return await original(self, key, *args, **kwargs)
        span = tracer.start_span(command, kind=SpanKind.CLIENT)
        if span.is_recording():  # a sampled-out command pays for no attribute
            span.set_attributes(_attributes(self, command, key))
        try:
            return await original(self, key, *args, **kwargs)
        except Exception as exc:
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            span.end()

    return call
