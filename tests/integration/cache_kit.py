"""Shared pieces of the cache tests: a TCP relay to the real memcached (for outages,
connection counts and replies held back) and a telemetry whose spans stay in memory."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from interceptors import Telemetry, instrument_caches, uninstrument_caches


class Relay:
    """A TCP relay on loopback to `upstream` (a fixed `port`, or any free one): counts
    the connections it accepted, and holds the upstream's replies while `gate` is clear,
    counting the bytes it holds. While `intake` is clear it stops reading what clients
    send, so a large enough write fills the socket buffers and cannot drain. With a
    fixed port, the server "comes back" on a port where nothing listened before."""

    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self.upstream, self.port = upstream, port
        self.accepted = 0
        self.held = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.intake = asyncio.Event()
        self.intake.set()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        """Listens; returns the address to connect to."""
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return "127.0.0.1", self.port

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            try:
                while True:
                    if not replies:
                        await self.intake.wait()
                    if not (data := await src.read(65536)):
                        break
                    if replies and not self.gate.is_set():
                        self.held += len(data)
                        await self.gate.wait()
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        for task in (
            asyncio.create_task(pipe(reader, up_writer, False)),
            asyncio.create_task(pipe(up_reader, writer, True)),
        ):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        self.gate.set()
        self.intake.set()
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


class Traced:
    """A telemetry whose spans are kept in memory; `spans()` flushes and takes them."""

    def __init__(self, service: str = "cache-user", **kw: Any) -> None:
        self.memory = InMemorySpanExporter()
        self.telemetry = Telemetry.create(service, exporters=[self.memory], **kw)

    def spans(self) -> list[ReadableSpan]:
        # force_flush returns once every ended span is exported: nothing to wait for.
        assert self.telemetry.flush()
        spans = list(self.memory.get_finished_spans())
        self.memory.clear()
        return spans

    def redis_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if (s.attributes or {}).get("db.system") == "redis"]


@contextmanager
def traced_caches() -> Iterator[Traced]:
    """agentflux's cache instrumentation on, into a fresh telemetry; off afterwards."""
    uninstrument_caches()  # whatever another test left on
    t = Traced()
    instrument_caches(t.telemetry)
    try:
        yield t
    finally:
        uninstrument_caches()
        t.telemetry.shutdown()
