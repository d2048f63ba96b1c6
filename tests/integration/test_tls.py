"""TLS and mutual TLS on the gateway's port, as clients observe them.

Certificates come from the code of `agentflux certs dev` (two independent CAs: the
gateway's and a stranger's). The gateway runs in-process on the real stack with API keys
off (these tests are about the transport), and each client is a real grpc.aio channel or
the `agentflux ask` command."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from agentflux.v1 import gateway_pb2, gateway_pb2_grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.cli._devca import DevCerts, make_dev_certs
from services.gateway import GatewayService
from services.runtime.config import Settings
from services.runtime.mesh import Mesh
from services.runtime.tls import TLSSettingsError, gateway_channel
from tests.integration.test_ask import answer, requested, unique
from tests.integration.test_gateway import Rig, free_port, running_gateway

pytestmark = pytest.mark.integration

AGENTFLUX = str(Path(sys.executable).with_name("agentflux"))
ROOT = Path(__file__).resolve().parents[2]
TENANT = (("x-tenant-id", "acme"),)


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("certs") / "ours")


@pytest.fixture(scope="module")
def theirs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    """Another development CA, with its own server and client certificates."""
    return make_dev_certs(tmp_path_factory.mktemp("certs") / "theirs")


def gateway_settings(stack_dir: Path, **tls: Any) -> Settings:
    return Settings(
        namespace=f"t{uuid.uuid4().hex[:10]}.",
        gateway_port=free_port(),
        indexer_port=free_port(),  # nothing listens there
        stack_dir=stack_dir,
        grace_s=1.0,
        auth="off",
        **tls,
    )


def client(rig: Rig, **tls: Any) -> grpc.aio.Channel:
    """A channel to the rig's gateway as `agentflux ask` opens it, with these settings."""
    return gateway_channel(Settings(gateway_port=rig.settings.gateway_port, **tls))


def tls_gateway(stack_dir: Path, **tls: Any) -> contextlib.AbstractAsyncContextManager[Rig]:
    """A started gateway with these TLS settings on a fresh namespace and port, API keys
    off; the rig's channel is a client with the settings in `tls["client"]`."""
    client_tls = tls.pop("client")
    return running_gateway(
        stack_dir,
        channel_to=lambda port: gateway_channel(Settings(gateway_port=port, **client_tls)),
        **tls,
    )


def right_client(certs: DevCerts) -> dict[str, Path]:
    return {
        "tls_ca_file": certs.ca,
        "tls_client_cert_file": certs.client,
        "tls_client_key_file": certs.client_key,
    }


@pytest_asyncio.fixture(scope="module")
async def tls(
    settings: Settings, ours: DevCerts, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    """TLS, no client certificates asked for."""
    files = {"tls_cert_file": ours.server, "tls_key_file": ours.server_key}
    async with tls_gateway(
        tmp_path_factory.mktemp("stack"), **files, client={"tls_ca_file": ours.ca}
    ) as got:
        yield got


@pytest_asyncio.fixture(scope="module")
async def mtls(
    settings: Settings, ours: DevCerts, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    """Mutual TLS: client certificates must chain to our CA."""
    files = {
        "tls_cert_file": ours.server,
        "tls_key_file": ours.server_key,
        "tls_client_ca_file": ours.ca,
    }
    async with tls_gateway(
        tmp_path_factory.mktemp("stack"), **files, client=right_client(ours)
    ) as got:
        yield got


async def submit_and_read(channel: grpc.aio.Channel) -> gateway_pb2.GetRunResponse:
    """Submit a run and read it back: the gateway served the caller."""
    stub = gateway_pb2_grpc.AgentGatewayStub(channel)
    submitted = await stub.Submit(
        gateway_pb2.SubmitRequest(prompt="what is 6*7?", request_id=uuid.uuid4().hex),
        metadata=TENANT,
        timeout=30,
    )
    got = await stub.GetRun(
        gateway_pb2.GetRunRequest(run_id=submitted.run.run_id), metadata=TENANT, timeout=30
    )
    assert got.run.run_id == submitted.run.run_id
    assert got.run.prompt == "what is 6*7?"
    return got


async def refused(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    async with channel:
        stub = gateway_pb2_grpc.AgentGatewayStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetRun(
                gateway_pb2.GetRunRequest(run_id="x" * 32), metadata=TENANT, timeout=10
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    return caught.value


# --- TLS --------------------------------------------------------------------------------


async def test_a_client_that_trusts_the_ca_is_served(tls: Rig) -> None:
    await submit_and_read(tls.channel)


async def test_a_plaintext_client_is_refused(tls: Rig) -> None:
    await refused(grpc.aio.insecure_channel(tls.settings.gateway_target))


async def test_a_client_that_trusts_another_ca_is_refused(tls: Rig, theirs: DevCerts) -> None:
    error = await refused(client(tls, tls_ca_file=theirs.ca))
    assert "CERTIFICATE_VERIFY_FAILED" in (error.details() or "")


# --- mutual TLS -------------------------------------------------------------------------


async def test_mtls_serves_a_client_with_a_certificate_from_the_ca(mtls: Rig) -> None:
    await submit_and_read(mtls.channel)


async def test_mtls_refuses_a_client_without_a_certificate(mtls: Rig, ours: DevCerts) -> None:
    await refused(client(mtls, tls_ca_file=ours.ca))


async def test_mtls_refuses_a_certificate_from_another_ca(
    mtls: Rig, ours: DevCerts, theirs: DevCerts
) -> None:
    await refused(
        client(
            mtls,
            tls_ca_file=ours.ca,
            tls_client_cert_file=theirs.client,
            tls_client_key_file=theirs.client_key,
        )
    )


async def test_mtls_refuses_a_plaintext_client(mtls: Rig) -> None:
    await refused(grpc.aio.insecure_channel(mtls.settings.gateway_target))


# --- misconfiguration stops the start -----------------------------------------------------


@pytest.mark.parametrize(
    ("files", "named"),
    [
        ({"tls_cert_file": "server"}, ["tls_cert_file", "tls_key_file", "server.pem"]),
        ({"tls_key_file": "server_key"}, ["tls_key_file", "tls_cert_file", "server-key.pem"]),
        (
            {"tls_cert_file": "server", "tls_key_file": "their_key"},
            ["tls_key_file", "does not match", "server.pem", "theirs/server-key.pem"],
        ),
        (
            {"tls_cert_file": "missing", "tls_key_file": "server_key"},
            ["tls_cert_file", "AGENTFLUX_TLS_CERT_FILE", "nothing-here.pem", "No such file"],
        ),
        (
            {"tls_cert_file": "server", "tls_key_file": "server_key", "tls_client_ca_file": "key"},
            ["tls_client_ca_file", "server-key.pem", "no PEM certificate"],
        ),
        ({"tls_client_ca_file": "ca"}, ["tls_client_ca_file", "tls_cert_file"]),
    ],
    ids=[
        "cert-without-key",
        "key-without-cert",
        "key-of-another-cert",
        "missing-file",
        "ca-not-a-cert",
        "client-ca-without-cert",
    ],
)
async def test_a_misconfigured_gateway_does_not_start(
    settings: Settings,
    ours: DevCerts,
    theirs: DevCerts,
    tmp_path: Path,
    files: dict[str, str],
    named: list[str],
) -> None:
    paths = {
        "server": ours.server,
        "server_key": ours.server_key,
        "their_key": theirs.server_key,
        "missing": tmp_path / "nothing-here.pem",
        "key": ours.server_key,
        "ca": ours.ca,
    }
    bad = gateway_settings(tmp_path, **{k: paths[v] for k, v in files.items()})
    mesh = Mesh.connect(bad)
    gateway = GatewayService(mesh)
    try:
        with pytest.raises(TLSSettingsError) as caught:
            await gateway.start()
    finally:
        await gateway.close()
        await mesh.close()
    for part in named:
        assert part in str(caught.value)
    # Refused at start: the port never opened.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((bad.host, bad.gateway_port), 2).close()


# --- agentflux certs dev ----------------------------------------------------------------


def certs_dev(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENTFLUX, "certs", "dev", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_certs_dev_writes_a_ca_and_certificates_and_keeps_them(tmp_path: Path) -> None:
    done = certs_dev(
        "--host",
        "gw.example.test",
        "--host",
        "10.1.2.3",
        env={"AGENTFLUX_STACK_DIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    made = DevCerts(tmp_path / "certs")
    assert "development only" in done.stderr
    for path in made.files():
        assert path.is_file(), path
    for key in (made.server_key, made.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # The printed lines are the settings that point at the files.
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in done.stdout.splitlines()
        if line.startswith("export ")
    )
    assert exports == {
        "AGENTFLUX_TLS_CERT_FILE": str(made.server),
        "AGENTFLUX_TLS_KEY_FILE": str(made.server_key),
        "AGENTFLUX_TLS_CLIENT_CA_FILE": str(made.ca),
        "AGENTFLUX_TLS_CA_FILE": str(made.ca),
        "AGENTFLUX_TLS_CLIENT_CERT_FILE": str(made.client),
        "AGENTFLUX_TLS_CLIENT_KEY_FILE": str(made.client_key),
    }

    ca = x509.load_pem_x509_certificate(made.ca.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3650
    server = x509.load_pem_x509_certificate(made.server.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "gw.example.test"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.1.2.3")
    }
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    client_cert = x509.load_pem_x509_certificate(made.client.read_bytes())
    usage = client_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for leaf in (server, client_cert):
        leaf.verify_directly_issued_by(ca)

    before = {p: p.read_bytes() for p in made.files()}
    again = certs_dev("--dir", str(made.folder))
    assert again.returncode == 1
    assert "--force" in again.stderr
    assert {p: p.read_bytes() for p in made.files()} == before

    forced = certs_dev("--dir", str(made.folder), "--force")
    assert forced.returncode == 0, forced.stderr
    assert made.ca.read_bytes() != before[made.ca]
    assert stat.S_IMODE(made.server_key.stat().st_mode) == 0o600


def test_certs_dev_refuses_a_host_that_is_no_name(tmp_path: Path) -> None:
    done = certs_dev("--dir", str(tmp_path), "--host", "not a host")
    assert done.returncode == 1
    assert "'not a host'" in done.stderr
    assert not list(tmp_path.iterdir())


# --- agentflux ask over TLS -------------------------------------------------------------


async def ask(
    rig: Rig, prompt: str, env: dict[str, str], *, served: bool = True
) -> tuple[int, str, str]:
    """`agentflux ask PROMPT` with these settings; when it is to be `served`, the test
    plays the mesh for its run."""

    async def play() -> None:
        if served:
            await answer(rig, await requested(rig, prompt))

    playing = asyncio.create_task(play())
    proc = await asyncio.create_subprocess_exec(
        AGENTFLUX,
        "ask",
        prompt,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        cwd=ROOT,
        env={
            **os.environ,
            "AGENTFLUX_GATEWAY_PORT": str(rig.settings.gateway_port),
            "AGENTFLUX_INDEXER_PORT": str(rig.settings.indexer_port),
            "AGENTFLUX_STACK_DIR": str(rig.settings.stack_dir),
            **env,
        },
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if not playing.done():
            playing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await playing
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def env_of(**files: Path) -> dict[str, str]:
    return {f"AGENTFLUX_{name.upper()}": str(path) for name, path in files.items()}


async def test_ask_over_mutual_tls(mtls: Rig, ours: DevCerts) -> None:
    code, out, err = await ask(mtls, unique("what is 6*7?"), env_of(**right_client(ours)))
    assert code == 0, err
    assert "The answer is 42." in out


async def test_ask_without_a_client_certificate_is_refused_with_a_hint(
    mtls: Rig, ours: DevCerts
) -> None:
    code, _, err = await ask(
        mtls, unique("what is 6*7?"), env_of(tls_ca_file=ours.ca), served=False
    )
    assert code == 1
    assert "cannot reach the gateway" in err
    assert "AGENTFLUX_TLS_CLIENT_CERT_FILE" in err


async def test_ask_names_a_tls_file_it_cannot_read(tls: Rig, tmp_path: Path) -> None:
    missing = tmp_path / "no-ca.pem"
    code, _, err = await ask(tls, unique("what is 6*7?"), env_of(tls_ca_file=missing), served=False)
    assert code == 1
    assert "tls_ca_file" in err
    assert str(missing) in err
