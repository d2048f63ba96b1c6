"""`agentflux demo`: the mesh up, a few real agent runs, and one run's trace.

What a new user would do by hand, in one command: start `agentflux serve` (all five
services, in a `demo.` namespace of the local stack and on free ports, so it never
collides with a mesh of yours), then `agentflux ask` questions that use every built-in
tool (calculator twice at once, two steps, memory, retrieve, clock, and http_get of a
page served on loopback), streaming each answer as it comes, and finally
`agentflux trace` of the two-step run: one trace across gRPC, Kafka, RabbitMQ, Redis
and Memcached. The mesh is stopped at the end (SIGTERM: it drains first)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import grpc
from agentflux.v1 import gateway_pb2, gateway_pb2_grpc
from redis.exceptions import RedisError

from services.runtime.adapters.redis import connect_redis
from services.runtime.apikeys import ApiKeyStore, IssuedKey, UnknownKeyIdError
from services.runtime.bearer import api_key_interceptors
from services.runtime.config import Settings

__all__ = ["run_demo"]

Say = Callable[[str], None]
AGENTFLUX = str(Path(sys.executable).with_name("agentflux"))
NAMESPACE = "demo."
DEMO_TENANT = "demo"
# The demo's key lasts KEY_TTL_S unless renewed, and is renewed every KEY_RENEW_S: a demo
# killed outright (its clean-up never runs) leaves a working key for at most KEY_TTL_S.
KEY_TTL_S = 120.0
KEY_RENEW_S = 30.0
log = logging.getLogger(__name__)
_CORRELATION = re.compile(r"^correlation\s+([0-9a-f]{32})", re.M)
_PAGE = b"agentflux demo page: the http_get tool read this from 127.0.0.1.\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def _page() -> Iterator[str]:
    """A page on loopback for the http_get tool (the only host the demo allows)."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(_PAGE)))
            self.end_headers()
            self.wfile.write(_PAGE)

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/about"
    finally:
        server.shutdown()
        server.server_close()


async def run_demo(settings: Settings, say: Say) -> str:
    """Runs the demo; returns the correlation id of the run whose trace it printed."""
    issued = await _demo_key(settings)
    keeper = asyncio.create_task(_keep_key(settings, issued.record.key_id))
    try:
        return await _run_mesh(settings, say, issued)
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await _forget_key(settings, issued.record.key_id)


async def _run_mesh(settings: Settings, say: Say, issued: IssuedKey) -> str:
    env = {
        **os.environ,
        "AGENTFLUX_API_KEY": issued.key,  # what `agentflux ask` presents
        "AGENTFLUX_NAMESPACE": NAMESPACE,
        "AGENTFLUX_GATEWAY_PORT": str(_free_port()),
        "AGENTFLUX_INDEXER_PORT": str(_free_port()),
        "AGENTFLUX_HTTP_GET_ALLOWED_HOSTS": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }
    with _page() as page:
        serve = subprocess.Popen(  # noqa: ASYNC220 - returns at once; read on a thread
            # --parent: a demo killed outright (SIGKILL, a CI timeout) takes its mesh
            # with it. Started here, on the loop's thread, which is the main thread.
            [AGENTFLUX, "serve", "--log-level", "WARNING", "--parent", str(os.getpid())],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            await _until_ready(serve, say)
            asks = [
                "what is 6*7 and 12/4",
                "what is 6*7 then add 8",
                "remember that the demo ran on the local stack",
                "what do you remember",
                "what time is it in Europe/Paris",
                f"fetch {page}",
            ]
            correlations = [await _ask(prompt, env, say) for prompt in asks]
            gateway = f"{settings.host}:{env['AGENTFLUX_GATEWAY_PORT']}"
            await _until_indexed(gateway, "demo", issued.key)
            correlations.append(await _ask("what did I say about the demo", env, say))
        finally:
            serve.send_signal(signal.SIGTERM)
            await asyncio.to_thread(serve.wait, 60)
    return correlations[1]


async def _until_ready(serve: subprocess.Popen[str], say: Say) -> None:
    say("$ agentflux serve   (gateway, planner, worker, composer, indexer)")
    began = time.monotonic()

    def wait() -> str:
        assert serve.stdout is not None
        for line in serve.stdout:
            if line.startswith("ready:"):
                return line.strip()
        raise RuntimeError("agentflux serve exited before it was ready")

    line = await asyncio.to_thread(wait)
    say(f"{line} in {time.monotonic() - began:.1f} s\n")
    # Keep reading its output, so a chatty service never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in serve.stdout or ()], daemon=True).start()


async def _ask(prompt: str, env: dict[str, str], say: Say) -> str:
    say(f'$ agentflux ask "{prompt}"')
    done = await asyncio.to_thread(
        subprocess.run,
        [AGENTFLUX, "ask", prompt],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    say(done.stdout.rstrip() + "\n")
    if done.returncode != 0:
        raise RuntimeError(f"agentflux ask failed ({done.returncode}): {done.stderr.strip()}")
    found = _CORRELATION.search(done.stdout)
    return found.group(1) if found else ""


async def _until_indexed(gateway: str, words: str, key: str, timeout: float = 30.0) -> None:
    """The indexer is a projection: wait until the earlier answers are searchable."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(
        gateway, interceptors=api_key_interceptors(key)
    ) as channel:
        stub = gateway_pb2_grpc.AgentGatewayStub(channel)
        while time.monotonic() < deadline:
            found = await stub.SearchResponses(gateway_pb2.SearchResponsesRequest(query=words))
            if found.results:
                return
            await asyncio.sleep(0.2)


@asynccontextmanager
async def _key_store(settings: Settings) -> AsyncIterator[ApiKeyStore]:
    client = connect_redis(settings)
    try:
        yield ApiKeyStore(client, namespace=NAMESPACE)
    finally:
        await client.aclose()


async def _demo_key(settings: Settings) -> IssuedKey:
    """A fresh API key of tenant `demo` in the demo's namespace, for this run's asks. It
    expires unless renewed (`_keep_key`): a demo killed outright leaves it for at most
    KEY_TTL_S."""
    async with _key_store(settings) as store:
        return await store.add(DEMO_TENANT, "agentflux demo", ttl_s=KEY_TTL_S)


async def _keep_key(settings: Settings, key_id: str) -> None:
    """Renews the demo's key every KEY_RENEW_S while the demo runs (cancelled at its end)."""
    async with _key_store(settings) as store:
        while True:
            await asyncio.sleep(KEY_RENEW_S)
            try:
                if not await store.renew(key_id, KEY_TTL_S):
                    log.warning("the demo's API key %s is gone: its next ask will fail", key_id)
                    return
            except (RedisError, OSError) as exc:  # Redis away for a moment: try again
                log.warning("could not renew the demo's API key: %s", exc)


async def _forget_key(settings: Settings, key_id: str) -> None:
    """Deletes the demo's key: the demo leaves no key behind."""
    async with _key_store(settings) as store:
        with contextlib.suppress(UnknownKeyIdError):  # expired already
            await store.delete(key_id)
