"""A development CA and the certificates `agentflux certs dev` writes.

For development only. The CA's private key is discarded once the two certificates are
signed, so the CA can sign nothing else: trusting `ca.pem` trusts exactly the gateway
and the client certificate written beside it. Keys are ECDSA P-256, written 0600.

    ca.pem                      the CA (10 years): basicConstraints CA, keyCertSign
    server.pem, server-key.pem  the gateway: localhost, 127.0.0.1, ::1 (+ --host), serverAuth
    client.pem, client-key.pem  a client of the gateway (mutual TLS), clientAuth
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertsExistError", "DevCerts", "make_dev_certs"]

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
# 825 days: the longest a TLS server certificate may live and still be accepted by the
# strictest common client (Apple's), so the files work beyond gRPC too.
LEAF_DAYS = 825
_DNS_NAME = re.compile(
    r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9][A-Za-z0-9-]{0,62})*$"
)


class CertsExistError(FileExistsError):
    """The folder already holds certificates; `force` replaces them."""


@dataclass(frozen=True)
class DevCerts:
    """Where `make_dev_certs` writes each file."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def server(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server-key.pem"

    @property
    def client(self) -> Path:
        return self.folder / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.folder / "client-key.pem"

    def files(self) -> tuple[Path, ...]:
        return (self.ca, self.server, self.server_key, self.client, self.client_key)

    def exports(self) -> list[str]:
        """Shell lines that point the gateway and `agentflux ask` at these files."""

        def line(setting: str, path: Path) -> str:
            return f"export AGENTFLUX_{setting}={shlex.quote(str(path))}"

        return [
            "# the gateway (`agentflux serve`); the CLIENT_CA line turns on mutual TLS",
            line("TLS_CERT_FILE", self.server),
            line("TLS_KEY_FILE", self.server_key),
            line("TLS_CLIENT_CA_FILE", self.ca),
            "# its clients (`agentflux ask`)",
            line("TLS_CA_FILE", self.ca),
            line("TLS_CLIENT_CERT_FILE", self.client),
            line("TLS_CLIENT_KEY_FILE", self.client_key),
        ]


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _DNS_NAME.match(host) or len(host) > 253:
        raise ValueError(f"{host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host.lower())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agentflux (development only)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _leaf_usage(digital_signature: bool = True) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not digital_signature,
        crl_sign=not digital_signature,
        encipher_only=False,
        decipher_only=False,
    )


def _build(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    signer: ec.EllipticCurvePrivateKey,
    days: int,
    now: dt.datetime,
) -> x509.CertificateBuilder:
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        # A few minutes back: a client whose clock is a little behind still accepts it.
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    authority = signer.public_key()
    return builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(authority), critical=False
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Writes beside `path`, then renames: a reader sees the old file or the new one,
    and a key is never readable by others, not even for a moment."""
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(partial, path)


def make_dev_certs(
    folder: Path, hosts: tuple[str, ...] | list[str] = (), *, force: bool = False
) -> DevCerts:
    """Writes a development CA, a server certificate for loopback (+ `hosts`) and a
    client certificate into `folder`. Raises `CertsExistError` when any file is there
    already (unless `force`), `ValueError` for a host that is no IP address or DNS name."""
    out = DevCerts(folder.resolve())
    names = list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))
    sans = [_san(h) for h in names]
    present = [p.name for p in out.files() if p.exists()]
    if present and not force:
        raise CertsExistError(
            f"{out.folder} already holds {', '.join(present)}; --force replaces them"
        )
    now = dt.datetime.now(dt.UTC)
    sign = hashes.SHA256()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        _build(_name("agentflux development CA"), ca_key, None, ca_key, CA_DAYS, now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_leaf_usage(digital_signature=False), critical=True)
        .sign(ca_key, sign)
    )

    def leaf(
        common_name: str, usage: x509.ObjectIdentifier
    ) -> tuple[x509.CertificateBuilder, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _build(_name(common_name), key, ca, ca_key, LEAF_DAYS, now)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_usage(), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        return builder, key

    server, server_key = leaf(names[0], ExtendedKeyUsageOID.SERVER_AUTH)
    server_cert = server.add_extension(x509.SubjectAlternativeName(sans), critical=False).sign(
        ca_key, sign
    )
    client, client_key = leaf("agentflux development client", ExtendedKeyUsageOID.CLIENT_AUTH)
    client_cert = client.sign(ca_key, sign)

    out.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(out.ca, _pem(ca), 0o644)
    _write(out.server_key, _key_pem(server_key), 0o600)
    _write(out.server, _pem(server_cert), 0o644)
    _write(out.client_key, _key_pem(client_key), 0o600)
    _write(out.client, _pem(client_cert), 0o644)
    return out
