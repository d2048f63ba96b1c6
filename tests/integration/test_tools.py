"""Tools against real services: `memory` on the local Redis (keys under the test's
prefix, deleted afterwards) and `http_get` against an HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from services.runtime.adapters.redis import connect_redis
from services.runtime.config import Settings
from services.runtime.keys import Keys
from services.tools import ToolContext, ToolError, ToolRegistry
from services.tools._http_get import MAX_BYTES, HttpGet
from services.tools._memory import MAX_ITEMS, Memory

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis_client(settings: Settings, prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = connect_redis(settings)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def memory_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"memory_ttl_s": 120})


def ctx_for(
    settings: Settings,
    redis: aioredis.Redis,
    prefix: str,
    *,
    tenant: str = "acme",
    conversation: str = "conv-1",
    idempotency_key: str = "",
) -> ToolContext:
    return ToolContext(
        tenant_id=tenant,
        run_id="run-1",
        conversation_id=conversation,
        tool_call_id="call-1",
        idempotency_key=idempotency_key or uuid.uuid4().hex,
        attempt=1,
        settings=settings,
        redis=redis,
        namespace=prefix,
    )


# -- memory ----------------------------------------------------------------------------


async def test_memory_remembers_recalls_and_forgets(
    memory_settings: Settings, redis_client: aioredis.Redis, prefix: str
) -> None:
    registry = ToolRegistry.load(memory_settings, entry_points=False)
    memory = registry.get("memory")

    async def call(**args: Any) -> Any:
        checked = registry.validate("memory", args)
        return await memory(checked, ctx_for(memory_settings, redis_client, prefix))

    assert await call(action="recall") == {"items": [], "count": 0, "total": 0}
    assert await call(action="remember", text="The user's favourite colour is blue") == {
        "remembered": "The user's favourite colour is blue",
        "repeated": False,
        "count": 1,
    }
    await call(action="remember", text="The user lives in Lyon")
    await call(action="remember", text="Favourite food: ratatouille")

    everything = await call(action="recall")
    assert everything["items"] == [
        "Favourite food: ratatouille",
        "The user lives in Lyon",
        "The user's favourite colour is blue",
    ]
    # Filtered by every word of `text`, whatever the case.
    found = await call(action="recall", text="FAVOURITE colour")
    assert found == {"items": ["The user's favourite colour is blue"], "count": 1, "total": 3}

    # The planner reads the same list: plain UTF-8 notes, newest first.
    key = Keys(prefix).memory("acme", "conv-1")
    assert await redis_client.lindex(key, 0) == b"Favourite food: ratatouille"

    assert await call(action="forget", text="lyon") == {"forgotten": 1, "repeated": False}
    assert (await call(action="recall"))["items"] == [
        "Favourite food: ratatouille",
        "The user's favourite colour is blue",
    ]
    assert await call(action="forget") == {"forgotten": 2, "repeated": False}
    assert (await call(action="recall"))["items"] == []


async def test_memory_is_kept_per_tenant_and_conversation(
    memory_settings: Settings, redis_client: aioredis.Redis, prefix: str
) -> None:
    memory = Memory(memory_settings)
    places = [("acme", "conv-1"), ("acme", "conv-2"), ("globex", "conv-1")]
    for tenant, conversation in places:
        ctx = ctx_for(
            memory_settings, redis_client, prefix, tenant=tenant, conversation=conversation
        )
        await memory({"action": "remember", "text": f"note of {tenant}/{conversation}"}, ctx)

    for tenant, conversation in places:
        ctx = ctx_for(
            memory_settings, redis_client, prefix, tenant=tenant, conversation=conversation
        )
        recalled = await memory({"action": "recall"}, ctx)
        assert recalled["items"] == [f"note of {tenant}/{conversation}"]

    # Forgetting everything in one conversation leaves the others alone.
    ctx = ctx_for(memory_settings, redis_client, prefix, tenant="acme", conversation="conv-1")
    await memory({"action": "forget"}, ctx)
    other = ctx_for(memory_settings, redis_client, prefix, tenant="globex", conversation="conv-1")
    assert (await memory({"action": "recall"}, other))["count"] == 1


async def test_a_retried_remember_stores_the_note_once(
    memory_settings: Settings, redis_client: aioredis.Redis, prefix: str
) -> None:
    memory = Memory(memory_settings)
    ctx = ctx_for(memory_settings, redis_client, prefix, idempotency_key="run-1/call-7")
    args = {"action": "remember", "text": "meeting moved to Friday"}

    first = await memory(args, ctx)
    again = await memory(args, ctx)  # the worker crashed after the effect, then retried
    racing = await asyncio.gather(*(memory(args, ctx) for _ in range(5)))
    assert first == {"remembered": args["text"], "repeated": False, "count": 1}
    assert again == {"remembered": args["text"], "repeated": True, "count": 1}
    assert all(r["repeated"] for r in racing)

    recalled = await memory({"action": "recall"}, ctx)
    assert recalled["items"] == ["meeting moved to Friday"]

    # Another call (another idempotency key) saying the same thing is another note.
    other = ctx_for(memory_settings, redis_client, prefix, idempotency_key="run-1/call-8")
    assert (await memory(args, other))["count"] == 2

    # A retried forget removes nothing the second time, even what was remembered since.
    forget = ctx_for(memory_settings, redis_client, prefix, idempotency_key="run-1/call-9")
    assert await memory({"action": "forget"}, forget) == {"forgotten": 2, "repeated": False}
    await memory(args, ctx_for(memory_settings, redis_client, prefix))
    assert await memory({"action": "forget"}, forget) == {"forgotten": 0, "repeated": True}
    assert (await memory({"action": "recall"}, ctx))["count"] == 1


async def test_memory_expires_and_is_capped(
    memory_settings: Settings, redis_client: aioredis.Redis, prefix: str
) -> None:
    memory = Memory(memory_settings)
    key = Keys(prefix).memory("acme", "conv-1")
    await memory(
        {"action": "remember", "text": "note 0"}, ctx_for(memory_settings, redis_client, prefix)
    )
    assert 110 < await redis_client.ttl(key) <= 120

    # Each write gives the conversation its full lifetime again.
    await redis_client.expire(key, 5)
    for n in range(1, MAX_ITEMS + 5):
        ctx = ctx_for(memory_settings, redis_client, prefix)
        await memory({"action": "remember", "text": f"note {n}"}, ctx)
    assert 110 < await redis_client.ttl(key) <= 120

    recalled = await memory({"action": "recall"}, ctx_for(memory_settings, redis_client, prefix))
    assert recalled["count"] == MAX_ITEMS
    assert recalled["items"][0] == f"note {MAX_ITEMS + 4}"
    assert recalled["items"][-1] == "note 5"

    # No key the tool wrote lives forever (the idempotency markers expire too).
    keys = [k async for k in redis_client.scan_iter(match=f"{prefix}*")]
    assert len(keys) == 1 + MAX_ITEMS + 5  # the list and one marker per remember
    ttls = await asyncio.gather(*(redis_client.ttl(k) for k in keys))
    assert all(0 < t <= 120 for t in ttls)


async def test_memory_needs_a_conversation(
    memory_settings: Settings, redis_client: aioredis.Redis, prefix: str
) -> None:
    ctx = ctx_for(memory_settings, redis_client, prefix, conversation="")
    with pytest.raises(ToolError, match="has none") as caught:
        await Memory(memory_settings)({"action": "recall"}, ctx)
    assert caught.value.retryable is False


# -- http_get against a real server ----------------------------------------------------

BIG = "€" * 40_000  # 120,000 bytes of UTF-8, three bytes a character


class _Handler(BaseHTTPRequestHandler):
    stop: threading.Event  # set by the fixture: slow answers give up when the test ends

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean

    def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        port = self.headers.get("host", "").rpartition(":")[2]
        if self.path == "/ok":
            self._send(200, "héllo".encode(), Content_Type="text/plain; charset=utf-8")
        elif self.path == "/latin1":
            self._send(200, "héllo".encode("latin-1"), Content_Type="text/html; charset=latin-1")
        elif self.path == "/unavailable":
            self._send(503, b"try later")
        elif self.path == "/missing":
            self._send(404, b"no such page")
        elif self.path == "/same-host":
            self._send(302, Location="/ok")
        elif self.path == "/other-host":
            # The same server under another name: a different host all the same.
            self._send(302, Location=f"http://localhost:{port}/ok")
        elif self.path == "/loop":
            self._send(302, Location="/loop")
        elif self.path == "/big":
            self._send(200, BIG.encode(), Content_Type="text/plain; charset=utf-8")
        elif self.path == "/slow":
            self.stop.wait(10)
            self._send(200, b"late")
        else:
            self._send(400)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stops reading a big body resets the connection: expected


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Base URL of an HTTP server on 127.0.0.1, in a thread."""
    stop = threading.Event()
    handler = type("Handler", (_Handler,), {"stop": stop})
    httpd = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    stop.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def http_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"http_get_allowed_hosts": ["127.0.0.1"]})


async def fetch(settings: Settings, url: str) -> Any:
    tool = ToolRegistry.load(settings, entry_points=False).get("http_get")
    ctx = ToolContext(
        tenant_id="acme",
        run_id="run-1",
        conversation_id="conv-1",
        tool_call_id="call-1",
        idempotency_key="key-1",
        attempt=1,
        settings=settings,
        redis=cast(Any, None),  # http_get never uses Redis
    )
    return await tool({"url": url}, ctx)


async def test_http_get_fetches_an_allowed_host(http_settings: Settings, server: str) -> None:
    assert await fetch(http_settings, f"{server}/ok") == {
        "url": f"{server}/ok",
        "status": 200,
        "content_type": "text/plain; charset=utf-8",
        "text": "héllo",
        "truncated": False,
    }
    latin = await fetch(http_settings, f"{server}/latin1")
    assert latin["text"] == "héllo"  # decoded with the charset the server named


async def test_http_get_follows_a_redirect_on_the_same_host(
    http_settings: Settings, server: str
) -> None:
    result = await fetch(http_settings, f"{server}/same-host")
    assert result["url"] == f"{server}/ok"
    assert result["text"] == "héllo"


async def test_http_get_refuses_a_redirect_to_another_host(
    http_settings: Settings, server: str
) -> None:
    with pytest.raises(ToolError, match="another host") as caught:
        await fetch(http_settings, f"{server}/other-host")
    assert caught.value.retryable is False
    with pytest.raises(ToolError, match="redirected more than 5 times"):
        await fetch(http_settings, f"{server}/loop")


async def test_http_get_server_errors_are_retryable_client_errors_not(
    http_settings: Settings, server: str
) -> None:
    with pytest.raises(ToolError, match="answered 503 Service Unavailable") as unavailable:
        await fetch(http_settings, f"{server}/unavailable")
    assert unavailable.value.retryable is True
    with pytest.raises(ToolError, match="answered 404 Not Found") as missing:
        await fetch(http_settings, f"{server}/missing")
    assert missing.value.retryable is False


async def test_http_get_a_refused_connection_is_retryable(http_settings: Settings) -> None:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ToolError, match="could not fetch") as caught:
        await fetch(http_settings, f"http://127.0.0.1:{port}/")
    assert caught.value.retryable is True


async def test_http_get_truncates_a_big_body(http_settings: Settings, server: str) -> None:
    result = await fetch(http_settings, f"{server}/big")
    assert result["truncated"] is True
    # 65,536 bytes cut a three-byte character: the piece is dropped, never garbled.
    assert result["text"] == "€" * (MAX_BYTES // 3)
    assert "\ufffd" not in result["text"]


async def test_http_get_refuses_a_host_not_allowed_without_connecting(
    settings: Settings, server: str
) -> None:
    only_other = settings.model_copy(update={"http_get_allowed_hosts": ["example.com"]})
    with pytest.raises(ToolError, match=r"host '127\.0\.0\.1' is not allowed") as caught:
        await fetch(only_other, f"{server}/ok")
    assert caught.value.retryable is False


async def test_http_get_a_slow_server_is_cut_off(settings: Settings, server: str) -> None:
    allowed = settings.model_copy(update={"http_get_allowed_hosts": ["127.0.0.1"]})
    # The worker enforces the spec's timeout around the call.
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(fetch(allowed, f"{server}/slow"), timeout=0.5)
    assert time.monotonic() - started < 2
    # And the client gives up on its own after the spec's timeout, as a retryable error.
    short = allowed.model_copy(update={"tool_timeout_s": 0.3})
    tool = HttpGet(short)
    assert tool.spec.timeout_s == 0.3
    with pytest.raises(ToolError, match=r"did not answer within 0\.3 s") as caught:
        await fetch(short, f"{server}/slow")
    assert caught.value.retryable is True
