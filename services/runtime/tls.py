"""TLS on the gRPC edge: the gateway's server credentials and its clients' channels.

Both sides read PEM files named by settings (`tls_*`) and check them when the process
starts, so a missing file, a lone certificate or a key that belongs to another
certificate stops the service at once with the setting and the file named, instead of
every client's handshake failing later with an opaque SSL error.

The server side lives here, not in the gateway, so that any gRPC server of the mesh can
use it; only the gateway does today: the indexer's port is internal and stays plaintext
on loopback. The client side (`gateway_channel`) is the one way the CLI's commands open
a channel to the gateway: TLS when `tls_ca_file` is set, plaintext otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from services.runtime.config import Settings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificatePublicKeyTypes,
        PrivateKeyTypes,
        PublicKeyTypes,
    )
    from cryptography.x509 import Certificate

# `cryptography` is imported where files are checked, so a plaintext client (every CLI
# command's import of this module) does not pay for loading it.

__all__ = ["ServerTLS", "TLSSettingsError", "add_port", "gateway_channel", "server_tls"]


class TLSSettingsError(ValueError):
    """TLS settings that cannot work; the message names the setting and the file."""


def _name(setting: str) -> str:
    return f"{setting} (AGENTFLUX_{setting.upper()})"


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSSettingsError(f"{_name(setting)}: cannot read {path}: {exc.strerror}") from None


def _certificates(setting: str, path: Path) -> tuple[bytes, list[Certificate]]:
    from cryptography import x509

    data = _read(setting, path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TLSSettingsError(f"{_name(setting)}: {path} holds no PEM certificate")
    return data, certs


def _private_key(setting: str, path: Path) -> tuple[bytes, PrivateKeyTypes]:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = _read(setting, path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted: gRPC takes no passphrase
        raise TLSSettingsError(
            f"{_name(setting)}: {path} is encrypted; give an unencrypted PEM key"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TLSSettingsError(f"{_name(setting)}: {path} is not a PEM private key") from exc
    return data, key


def _spki(public_key: PublicKeyTypes | CertificatePublicKeyTypes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_pair(
    cert_setting: str, cert_path: Path | None, key_setting: str, key_path: Path | None
) -> tuple[bytes, bytes] | None:
    """(chain PEM, key PEM) once both are set, readable and belong together; None if
    neither is set."""
    if cert_path is None and key_path is None:
        return None
    if cert_path is None or key_path is None:
        given, missing = (
            (cert_setting, key_setting) if cert_path is not None else (key_setting, cert_setting)
        )
        path = cert_path or key_path
        raise TLSSettingsError(
            f"{_name(given)} is set ({path}) but {_name(missing)} is not: set both, or neither"
        )
    chain, certs = _certificates(cert_setting, cert_path)
    key_pem, key = _private_key(key_setting, key_path)
    if _spki(key.public_key()) != _spki(certs[0].public_key()):
        raise TLSSettingsError(
            f"{_name(key_setting)}: the key in {key_path} does not match the certificate "
            f"in {cert_path} ({_name(cert_setting)})"
        )
    return chain, key_pem


@dataclass(frozen=True)
class ServerTLS:
    """A server's TLS credentials, checked; `mutual` when clients must present a
    certificate that chains to `tls_client_ca_file`."""

    credentials: grpc.ServerCredentials
    mutual: bool

    @property
    def mode(self) -> str:
        return "mTLS" if self.mutual else "TLS"


def server_tls(settings: Settings) -> ServerTLS | None:
    """The gateway's credentials from `tls_cert_file`, `tls_key_file` and
    `tls_client_ca_file`; None (plaintext) when none is set."""
    pair = _key_pair("tls_cert_file", settings.tls_cert_file, "tls_key_file", settings.tls_key_file)
    client_ca = settings.tls_client_ca_file
    if pair is None:
        if client_ca is not None:
            raise TLSSettingsError(
                f"{_name('tls_client_ca_file')} is set ({client_ca}) but the gateway has no "
                f"certificate: set {_name('tls_cert_file')} and {_name('tls_key_file')} too"
            )
        return None
    chain, key = pair
    roots = _certificates("tls_client_ca_file", client_ca)[0] if client_ca is not None else None
    credentials = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=roots, require_client_auth=roots is not None
    )
    return ServerTLS(credentials, mutual=roots is not None)


def add_port(server: grpc.aio.Server, address: str, tls: ServerTLS | None) -> int:
    """Binds `address` with TLS only when `tls` is given (a plaintext client is then
    refused), else plaintext; returns the port."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, tls.credentials)


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """A client's credentials for the gateway: None (plaintext) unless `tls_ca_file` is
    set; the client certificate and key (mutual TLS) when those are set too."""
    pair = _key_pair(
        "tls_client_cert_file",
        settings.tls_client_cert_file,
        "tls_client_key_file",
        settings.tls_client_key_file,
    )
    if settings.tls_ca_file is None:
        if pair is not None:
            raise TLSSettingsError(
                f"{_name('tls_client_cert_file')} is set but {_name('tls_ca_file')} is not: "
                "a client certificate is only sent over TLS; set the CA that signed the gateway's"
            )
        return None
    roots = _certificates("tls_ca_file", settings.tls_ca_file)[0]
    chain, key = pair if pair is not None else (None, None)
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key, certificate_chain=chain
    )


def gateway_channel(
    settings: Settings, *, interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None
) -> grpc.aio.Channel:
    """A channel to `settings.gateway_target`, with TLS when `tls_ca_file` is set.
    Raises `TLSSettingsError` before any connection when the files do not work."""
    credentials = channel_credentials(settings)
    target = settings.gateway_target
    if credentials is None:
        return grpc.aio.insecure_channel(target, interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, interceptors=interceptors)
