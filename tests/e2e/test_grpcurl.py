"""The gateway as any gRPC tool sees it: grpcurl lists and calls it through server
reflection, with no .proto file at hand (grpcurl comes from `make tools`)."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from tests.e2e.conftest import ROOT, Mesh

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

GRPCURL = ROOT / ".tools" / "bin" / "grpcurl"


async def grpcurl(*args: str, ok: bool = True) -> str:
    if not GRPCURL.is_file():
        pytest.fail(f"{GRPCURL} is missing: `make tools` installs it (make test does)")
    done = await asyncio.to_thread(
        subprocess.run,
        [str(GRPCURL), "-plaintext", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if ok:
        assert done.returncode == 0, done.stderr
        return done.stdout
    assert done.returncode != 0, done.stdout
    return done.stderr


async def test_grpcurl_lists_describes_and_calls_the_gateway(mesh: Mesh) -> None:
    await mesh.start()
    target = mesh.settings.gateway_target
    services = (await grpcurl(target, "list")).split()
    assert "agentflux.v1.AgentGateway" in services
    assert "grpc.health.v1.Health" in services
    described = await grpcurl(target, "describe", "agentflux.v1.AgentGateway")
    for rpc in ("Submit", "StreamRun", "GetRun", "ListRuns", "CancelRun", "SearchResponses"):
        assert f"rpc {rpc}" in described
    health = json.loads(await grpcurl(target, "grpc.health.v1.Health/Check"))
    assert health["status"] == "SERVING"
    submit = ("-d", '{"prompt": "what is 2+3"}', target, "agentflux.v1.AgentGateway/Submit")
    # Without a key the gateway refuses, and says how to get one.
    refused = await grpcurl(*submit, ok=False)
    assert "Unauthenticated" in refused
    assert "agentflux tenants add" in refused
    key = ("-H", f"authorization: Bearer {mesh.key}")
    submitted = json.loads(await grpcurl(*key, *submit))
    run_id = submitted["run"]["runId"]
    assert submitted["run"]["status"] == "RUN_STATUS_PENDING"
    done = await mesh.finished(run_id)
    assert "5" in done.answer.text
    fetched = json.loads(
        await grpcurl(
            "-H",
            f"x-api-key: {mesh.key}",
            "-d",
            json.dumps({"runId": run_id}),
            target,
            "agentflux.v1.AgentGateway/GetRun",
        )
    )
    assert fetched["run"]["status"] == "RUN_STATUS_COMPLETED"
    assert fetched["run"]["answer"]["text"] == done.answer.text
