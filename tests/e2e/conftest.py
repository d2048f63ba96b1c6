"""End-to-end fixtures: the mesh as a user runs it.

Each test gets its own namespace (topics, queues, groups and Redis keys of its own on
the shared local stack), its own gRPC ports and index folder, and starts its services
as `agentflux serve ...` processes; it talks to the gateway over gRPC and injures the
processes only with signals. Everything a test starts, it stops and deletes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from agentflux.v1 import gateway_pb2, gateway_pb2_grpc, types_pb2
from confluent_kafka.admin import AdminClient

from services.runtime.adapters.rabbitmq import RabbitConnection
from services.runtime.adapters.redis import connect_redis
from services.runtime.apikeys import ApiKeyStore
from services.runtime.bearer import api_key_interceptors
from services.runtime.config import Settings
from services.runtime.topology import kafka_topics, task_topologies

ROOT = Path(__file__).resolve().parents[2]
AGENTFLUX = str(Path(sys.executable).with_name("agentflux"))
ALL = ("gateway", "planner", "worker", "composer", "indexer")
TENANT = "acme"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float = 60.0, what: str = "condition"
) -> Any:
    """Polls `check` until it returns something truthy (tests wait on conditions)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)


@dataclass
class Proc:
    """One `agentflux serve` process, its output collected as it comes."""

    services: tuple[str, ...]
    popen: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    def pump(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if line.startswith("ready:"):
                self.ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def signal(self, sig: signal.Signals) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    async def exited(self, timeout: float = 60.0) -> int:
        async def gone() -> bool:
            return self.popen.poll() is not None

        await eventually(gone, timeout=timeout, what=f"{self.services} to exit")
        code = self.popen.returncode
        assert code is not None
        return code


@dataclass
class Mesh:
    """A test's mesh: its settings, processes and clients."""

    settings: Settings
    env: dict[str, str]
    redis: aioredis.Redis
    channel: grpc.aio.Channel
    tmp: Path
    key: str = ""
    procs: list[Proc] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def gateway(self) -> gateway_pb2_grpc.AgentGatewayStub:
        return gateway_pb2_grpc.AgentGatewayStub(self.channel)

    @property
    def ns(self) -> str:
        return self.settings.namespace

    async def new_key(self, tenant: str) -> str:
        """A fresh API key of `tenant`, made as `agentflux tenants add` makes one."""
        return (await ApiKeyStore(self.redis, namespace=self.ns).add(tenant, "e2e")).key

    def client(self, key: str) -> gateway_pb2_grpc.AgentGatewayStub:
        """A gateway client presenting `key` (closed with the mesh)."""
        channel = grpc.aio.insecure_channel(
            self.settings.gateway_target, interceptors=api_key_interceptors(key)
        )
        self.channels.append(channel)
        return gateway_pb2_grpc.AgentGatewayStub(channel)

    async def start(self, *services: str, wait: bool = True, **env: str) -> Proc:
        """Starts `agentflux serve SERVICES` (all five when none) and waits until ready."""
        names = services or ALL
        popen = subprocess.Popen(  # noqa: ASYNC220 - returns at once; output is pumped by a thread
            # --parent: a pytest killed outright (a CI timeout) takes its meshes with it.
            [AGENTFLUX, "serve", "--parent", str(os.getpid()), *names],
            cwd=ROOT,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        proc = Proc(tuple(names), popen)
        proc.reader = threading.Thread(target=proc.pump, daemon=True)
        proc.reader.start()
        self.procs.append(proc)
        if wait:
            await self.until_ready(proc)
        return proc

    async def until_ready(self, proc: Proc, timeout: float = 90.0) -> None:
        async def ready() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"serve {proc.services} exited early:\n{proc.output}")
            return proc.ready.is_set()

        await eventually(ready, timeout=timeout, what=f"serve {proc.services} to be ready")

    async def submit(self, prompt: str, **fields: Any) -> types_pb2.Run:
        response = await self.gateway.Submit(
            gateway_pb2.SubmitRequest(prompt=prompt, **fields), timeout=30
        )
        return response.run

    async def events(
        self, run_id: str, after: str = "", timeout: float = 120.0
    ) -> list[gateway_pb2.StreamRunResponse]:
        """Every event of the run's stream (after `after`) until `finished`."""
        out: list[gateway_pb2.StreamRunResponse] = []
        call = self.gateway.StreamRun(
            gateway_pb2.StreamRunRequest(run_id=run_id, after_event_id=after), timeout=timeout
        )
        async for event in call:
            out.append(event)
        return out

    async def events_of(
        self, stub: gateway_pb2_grpc.AgentGatewayStub, run_id: str, timeout: float = 120.0
    ) -> list[gateway_pb2.StreamRunResponse]:
        """Every event of a run, read with another client's stub, until `finished`."""
        call = stub.StreamRun(gateway_pb2.StreamRunRequest(run_id=run_id), timeout=timeout)
        return [event async for event in call]

    async def finished(self, run_id: str, timeout: float = 120.0) -> types_pb2.Run:
        """The run once it ended (GetRun after the stream's `finished`)."""
        events = await self.events(run_id, timeout=timeout)
        assert events[-1].WhichOneof("event") == "finished", events[-1]
        return (await self.gateway.GetRun(gateway_pb2.GetRunRequest(run_id=run_id))).run

    def output(self) -> str:
        return "\n\n".join(f"== serve {p.services}\n{p.output}" for p in self.procs)


@pytest.fixture
def settings() -> Settings:
    """The local stack's settings, after `agentflux stack up` (idempotent)."""
    done = subprocess.run(
        [AGENTFLUX, "stack", "up"], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"agentflux stack up failed:\n{done.stdout}\n{done.stderr}")
    return Settings()


@pytest.fixture
def mesh_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a test's mesh: its namespace, ports, folders and fast retries."""
    ns = f"e2e{uuid.uuid4().hex[:8]}."
    return {
        **os.environ,
        "AGENTFLUX_NAMESPACE": ns,
        "AGENTFLUX_GATEWAY_PORT": str(free_port()),
        "AGENTFLUX_INDEXER_PORT": str(free_port()),
        "AGENTFLUX_INDEX_DIR": str(tmp_path / "index"),
        "AGENTFLUX_TOOL_TASK_RETRY_DELAYS_MS": "300,600",
        "AGENTFLUX_LEASE_S": "2",
        "AGENTFLUX_GRACE_S": "5",
        "AGENTFLUX_HTTP_GET_ALLOWED_HOSTS": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
async def mesh(
    settings: Settings, mesh_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Mesh]:
    for key, value in mesh_env.items():
        if key.startswith("AGENTFLUX_"):
            monkeypatch.setenv(key, value)
    local = Settings()
    redis = connect_redis(local)
    # The mesh's own client is tenant TENANT's, with a key made the way operators make
    # one; `agentflux ask` in the tests presents the same key (AGENTFLUX_API_KEY).
    issued = await ApiKeyStore(redis, namespace=local.namespace).add(TENANT, "e2e")
    mesh_env["AGENTFLUX_API_KEY"] = issued.key
    channel = grpc.aio.insecure_channel(
        local.gateway_target, interceptors=api_key_interceptors(issued.key)
    )
    mesh = Mesh(local, mesh_env, redis, channel, tmp_path, key=issued.key)
    try:
        yield mesh
    finally:
        for proc in mesh.procs:
            proc.signal(signal.SIGTERM)
        for proc in mesh.procs:
            with contextlib.suppress(AssertionError):
                await proc.exited(timeout=30)
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(10)
            if proc.reader is not None:
                await asyncio.to_thread(proc.reader.join, 10)
            if proc.popen.stdout is not None:
                proc.popen.stdout.close()
        # pytest shows it only for a failed test: what the services said.
        print(mesh.output())
        await channel.close()
        for other in mesh.channels:
            await other.close()
        await _wipe(local, redis)
        await redis.aclose()


async def _wipe(settings: Settings, redis: aioredis.Redis) -> None:
    """Deletes the namespace's topics, groups, queues, exchanges and keys."""
    ns = settings.namespace
    keys = [k async for k in redis.scan_iter(f"{ns}*", count=1000)]
    if keys:
        await redis.delete(*keys)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    topics = [t.name for t in kafka_topics(settings, prefix=ns)]
    groups = [
        g.group_id for g in admin.list_consumer_groups().result().valid if g.group_id.startswith(ns)
    ]
    futures = list(admin.delete_topics(topics).values())
    if groups:
        futures += admin.delete_consumer_groups(groups).values()
    for fut in futures:
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(fut)
    async with await RabbitConnection.connect(settings) as rabbit:
        for topo in task_topologies(settings, prefix=ns):
            for queue in topo.all_queues:
                with contextlib.suppress(Exception):
                    await rabbit.channel.queue_delete(queue)
            for exchange in (topo.exchange, topo.retry_exchange, topo.dead_letter_exchange):
                with contextlib.suppress(Exception):
                    await rabbit.channel.exchange_delete(exchange)


@dataclass
class Done:
    """A program's end: its exit code and output."""

    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[dict[str, Any]]:
        """stdout as one JSON object per line."""
        try:
            return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise AssertionError(
                f"not one JSON object per line:\n{self.stdout}\n{self.stderr}"
            ) from exc


async def run_program(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 150.0
) -> Done:
    """Runs a program (an SDK's example, the CLI) to its end, killed after `timeout`."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"{' '.join(argv)} ran over {timeout:.0f} s:\n{out.decode()}\n{err.decode()}"
        ) from None
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


@contextlib.contextmanager
def http_server(handler: Callable[[str], tuple[int, bytes, float]]) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 for the http_get tool; `handler(path)` returns
    (status, body, seconds to wait before answering). Yields its base URL."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body, delay = handler(self.path)
            if delay:
                time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
