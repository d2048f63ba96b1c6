"""The Memcached clients against the real local memcached: the services' asyncio client
(`AsyncMemcached`, its spans included) and the pymemcache one of synchronous code. Keys
carry the test's prefix and are deleted."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from pymemcache.client.base import PooledClient

from services.runtime.adapters.memcached import (
    AsyncMemcached,
    MemcachedError,
    connect_memcached,
    connect_memcached_async,
)
from services.runtime.config import Settings
from tests.integration.cache_kit import Relay, Traced, traced_caches

pytestmark = pytest.mark.integration


@pytest.fixture
def client(settings: Settings) -> Iterator[PooledClient]:
    c = connect_memcached(settings)
    yield c
    c.close()


def test_set_get_delete_bytes(client: PooledClient, prefix: str) -> None:
    key = f"{prefix}prompt:planner:v1"
    value = b"You are a planner.\x00\xff binary-safe"
    assert client.get(key) is None
    assert client.set(key, value, noreply=False) is True
    assert client.get(key) == value
    assert client.delete(key, noreply=False) is True
    assert client.get(key) is None
    assert client.delete(key, noreply=False) is False


def test_value_expires(client: PooledClient, prefix: str) -> None:
    key = f"{prefix}flags:tenant-a"
    assert client.set(key, b"on", expire=1, noreply=False) is True
    assert client.get(key) == b"on"
    # memcached counts expiry in whole seconds: gone within about two.
    deadline = time.monotonic() + 3
    while client.get(key) is not None:
        assert time.monotonic() < deadline, "value did not expire"
        time.sleep(0.1)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_memcached_fails_fast() -> None:
    down = Settings(memcached_servers=f"127.0.0.1:{_closed_port()}")
    client = connect_memcached(down, timeout=0.25)
    try:
        began = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            client.get("anything")
        assert time.monotonic() - began < 2
    finally:
        client.close()


def test_unresponsive_memcached_times_out() -> None:
    # A server that accepts connections but never answers: the read timeout applies.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        client = connect_memcached(Settings(memcached_servers=f"127.0.0.1:{port}"), timeout=0.25)
        try:
            began = time.monotonic()
            with pytest.raises(TimeoutError):  # socket.timeout
                client.get("anything")
            assert time.monotonic() - began < 2
        finally:
            client.close()


# -- the services' asyncio client ------------------------------------------------------


@pytest.fixture
def amc(settings: Settings, client: PooledClient, prefix: str) -> Iterator[AsyncMemcached]:
    c = connect_memcached_async(settings)
    yield c
    c.close()
    for suffix in ("a", "b", "big"):
        client.delete(f"{prefix}{suffix}", noreply=False)


async def test_async_set_get_delete_bytes(
    amc: AsyncMemcached, client: PooledClient, prefix: str
) -> None:
    key = f"{prefix}a"
    # The reply's own markers inside a value must come back as bytes of the value.
    value = b"You are a planner.\x00\xff\r\nEND\r\nVALUE x 0 1\r\n"
    assert await amc.get(key) is None
    await amc.set(key, value, expire=60)
    assert await amc.get(key) == value
    assert client.get(key) == value  # one item, whichever client reads it
    assert await amc.delete(key) is True
    assert await amc.get(key) is None
    assert await amc.delete(key) is False
    await amc.set(key, b"")
    assert await amc.get(key) == b""


async def test_async_value_expires(amc: AsyncMemcached, prefix: str) -> None:
    key = f"{prefix}a"
    await amc.set(key, b"on", expire=1)
    assert await amc.get(key) == b"on"
    # memcached counts expiry in whole seconds: gone within about two.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while await amc.get(key) is not None:
        assert loop.time() < deadline, "value did not expire"
        await asyncio.sleep(0.1)


async def test_async_an_error_reply_raises_and_the_client_goes_on(
    amc: AsyncMemcached, prefix: str
) -> None:
    with pytest.raises(MemcachedError, match="SERVER_ERROR"):
        await amc.set(f"{prefix}big", b"x" * 3_000_000)  # over the 1 MiB item limit
    await amc.set(f"{prefix}a", b"small")
    assert await amc.get(f"{prefix}a") == b"small"


async def test_async_bad_keys_and_values_are_refused_before_sending(amc: AsyncMemcached) -> None:
    for bad in ("", "has space", "x" * 251, "tab\there", "line\r\nget other", "modèle"):
        with pytest.raises(ValueError, match="memcached key"):
            await amc.get(bad)
    with pytest.raises(TypeError, match="bytes"):
        await amc.set("k", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expire"):
        await amc.set("k", b"v", expire=-1)


async def test_async_unreachable_memcached_fails_fast() -> None:
    down = AsyncMemcached(("127.0.0.1", _closed_port()))
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(ConnectionRefusedError):
        await down.get("anything")
    assert loop.time() - began < 2
    down.close()


async def test_async_unresponsive_memcached_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mc = AsyncMemcached(silent.getsockname(), timeout=0.25)
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(TimeoutError):
            await mc.get("anything")
        assert 0.2 <= loop.time() - began < 2
        mc.close()
    with pytest.raises(RuntimeError, match="closed"):
        await mc.get("anything")


@pytest.fixture
async def relay(settings: Settings) -> AsyncIterator[Relay]:
    r = Relay(settings.memcached_address)
    yield r
    await r.stop()


async def test_async_concurrent_calls_share_at_most_max_connections(
    relay: Relay, client: PooledClient, prefix: str
) -> None:
    mc = AsyncMemcached(await relay.start(), max_connections=3)
    keys = [f"{prefix}many:{i}" for i in range(100)]
    try:
        await asyncio.gather(*(mc.set(k, k.encode(), expire=60) for k in keys))
        got = await asyncio.gather(*(mc.get(k) for k in keys))
        assert got == [k.encode() for k in keys]
        assert 1 <= relay.accepted <= 3
    finally:
        mc.close()
        client.delete_many(keys, noreply=False)


async def test_async_a_call_cancelled_mid_reply_leaves_nothing_for_the_next(
    relay: Relay, amc: AsyncMemcached, prefix: str
) -> None:
    await amc.set(f"{prefix}a", b"one")
    await amc.set(f"{prefix}b", b"two")
    mc = AsyncMemcached(await relay.start(), max_connections=1)
    try:
        relay.gate.clear()
        first = asyncio.create_task(mc.get(f"{prefix}a"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while relay.held == 0:  # memcached has answered; the relay holds the reply
            assert loop.time() < deadline, "no reply reached the relay"
            await asyncio.sleep(0.005)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        relay.gate.set()
        # The one connection allowed was closed, not handed on with "one" unread.
        assert await mc.get(f"{prefix}b") == b"two"
        assert relay.accepted == 2
    finally:
        mc.close()


COMMANDS = {name: AsyncMemcached.__dict__[name] for name in ("get", "set", "delete")}


@pytest.fixture
def traced() -> Iterator[Traced]:
    with traced_caches() as t:
        yield t
    for name, original in COMMANDS.items():
        assert AsyncMemcached.__dict__[name] is original, f"AsyncMemcached.{name} left patched"


async def test_async_commands_are_spans_shaped_as_the_contribs(
    traced: Traced, amc: AsyncMemcached, client: PooledClient, prefix: str
) -> None:
    key = f"{prefix}a"
    tracer = traced.telemetry.tracer
    with tracer.start_as_current_span("handling") as parent:
        client.get(key)  # pymemcache, traced by the contrib instrumentation
        await amc.get(key)
        await amc.set(key, b"v")
        with pytest.raises(MemcachedError):
            await amc.set(f"{prefix}big", b"x" * 3_000_000)
    spans = [s for s in traced.spans() if s.name != "handling"]

    def scope(span: ReadableSpan) -> str:
        return span.instrumentation_scope.name if span.instrumentation_scope else ""

    contrib = next(s for s in spans if "pymemcache" in scope(s))
    ours = [s for s in spans if scope(s) == "agentflux.memcached"]
    assert [s.name for s in ours] == ["get", "set", "set"]
    get = next(s for s in ours if s.name == "get")
    assert get.kind is contrib.kind is SpanKind.CLIENT
    assert dict(get.attributes or {}) == dict(contrib.attributes or {})
    assert (get.attributes or {})["db.statement"] == f"get {key}"
    for span in (contrib, *ours):
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id
    failed = next(s for s in ours if (s.attributes or {}).get("db.statement") == f"set {prefix}big")
    assert failed.status.status_code is StatusCode.ERROR
    assert "MemcachedError" in (failed.status.description or "")
