"""TLS and mutual TLS on every gRPC hop, from certificate files that may be replaced.

One directory in cert-manager's layout (a Kubernetes TLS Secret mounted as a volume):
``tls.crt`` (this process's certificate chain), ``tls.key`` (its private key) and
``ca.crt`` (the CA that signed its peers). A server presents ``tls.crt`` and, with
client authentication on, accepts only clients whose certificate ``ca.crt`` signed;
a client verifies servers against ``ca.crt`` and presents ``tls.crt``. Every process
reads the same two variables, as it reads the keepalive interval.

Servers take their certificates through gRPC's certificate-config fetcher
(``grpc.dynamic_ssl_server_credentials``), which gRPC calls at each new handshake:
files that changed (cert-manager renews into the same Secret, and the kubelet swaps
the volume's files at once) are read again, so renewals need no restart. A client
reads the files when it opens a channel; a long-lived one (the gateway's replica
pools) opens new channels when ``watch_certificates`` sees the files change.

Without a directory every hop is plaintext, the default of one machine (``make run``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_log = logging.getLogger(__name__)

CERTIFICATE_FILE = "tls.crt"
KEY_FILE = "tls.key"
CA_FILE = "ca.crt"


class TlsSettings(BaseSettings):
    """Where the gRPC certificates are, under one variable for every process."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    grpc_tls_dir: Path | None = Field(
        None,
        validation_alias=AliasChoices("LODESTAR_GRPC_TLS_DIR"),
        description="Directory with tls.crt, tls.key and ca.crt (a mounted cert-manager "
        "Secret): every gRPC server serves TLS with them and every client (the gateway's "
        "backend channels included) verifies servers against ca.crt. Unset: plaintext, "
        "for one machine; set it wherever the services are reachable from a network.",
    )
    grpc_tls_client_auth: bool = Field(
        False,
        validation_alias=AliasChoices("LODESTAR_GRPC_TLS_CLIENT_AUTH"),
        description="Mutual TLS: servers refuse any client without a certificate signed "
        "by ca.crt. Turn it on where only the platform's own workloads may call the "
        "services.",
    )


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """The three files of one directory, read together."""

    directory: Path

    @property
    def certificate(self) -> Path:
        return self.directory / CERTIFICATE_FILE

    @property
    def key(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def ca(self) -> Path:
        return self.directory / CA_FILE

    def signature(self) -> tuple[tuple[int, int, int], ...]:
        """What changes when any file is replaced (stat follows the Secret's symlinks)."""
        stats = []
        for path in (self.certificate, self.key, self.ca):
            try:
                st = path.stat()
            except FileNotFoundError:
                stats.append((0, 0, 0))
                continue
            stats.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stats)

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """Certificate chain, private key and CA bundle (None when there is no ca.crt)."""
        ca = self.ca.read_bytes() if self.ca.exists() else None
        return self.certificate.read_bytes(), self.key.read_bytes(), ca


class _ServerCertificates:
    """The fetcher gRPC calls at each handshake: a new config when the files changed,
    None (keep the current one) otherwise or while a replacement is half-written."""

    def __init__(self, files: CertificateFiles, client_auth: bool) -> None:
        self._files = files
        self._client_auth = client_auth
        self._lock = threading.Lock()
        self._signature = files.signature()
        self.initial = self._config()

    def _config(self) -> grpc.ServerCertificateConfiguration:
        certificate, key, ca = self._files.read()
        if self._client_auth and ca is None:
            raise FileNotFoundError(f"mutual TLS needs {self._files.ca}")
        return grpc.ssl_server_certificate_configuration([(key, certificate)], ca)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            signature = self._files.signature()
            if signature == self._signature:
                return None
            try:
                config = self._config()
            except (OSError, ValueError) as error:
                _log.warning(
                    "TLS files in %s unreadable, keeping the current ones: %s",
                    self._files.directory,
                    error,
                )
                return None
            self._signature = signature
            _log.info("TLS certificates reloaded from %s", self._files.directory)
            return config


def server_credentials(settings: TlsSettings) -> grpc.ServerCredentials | None:
    """Credentials for a server's port, reloaded as the files change; None: plaintext."""
    if settings.grpc_tls_dir is None:
        return None
    certificates = _ServerCertificates(
        CertificateFiles(settings.grpc_tls_dir), settings.grpc_tls_client_auth
    )
    # gRPC calls the fetcher at each handshake; None keeps the current certificates
    # (its documented contract, which the type stubs leave out).
    fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], certificates)
    return grpc.dynamic_ssl_server_credentials(
        certificates.initial,
        fetch,
        require_client_authentication=settings.grpc_tls_client_auth,
    )


def channel_credentials(settings: TlsSettings) -> grpc.ChannelCredentials | None:
    """Credentials for a channel to a service: servers verified against ca.crt (the
    system's roots without one), this process's certificate presented when it has one;
    None: plaintext."""
    if settings.grpc_tls_dir is None:
        return None
    files = CertificateFiles(settings.grpc_tls_dir)
    ca = files.ca.read_bytes() if files.ca.exists() else None
    if files.certificate.exists() and files.key.exists():
        return grpc.ssl_channel_credentials(
            ca, files.key.read_bytes(), files.certificate.read_bytes()
        )
    return grpc.ssl_channel_credentials(ca)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address) is reachable from this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, settings: TlsSettings, what: str) -> None:
    """Log a warning for a plaintext server bound beyond loopback: anyone on the
    network can read its calls (and, without tokens required, make them)."""
    if settings.grpc_tls_dir is None and not is_loopback(host):
        _log.warning(
            "%s listens on %s without TLS: calls travel in plaintext; set "
            "LODESTAR_GRPC_TLS_DIR to a directory with tls.crt, tls.key and ca.crt",
            what,
            host or "every address",
        )


# How often a client looks for renewed certificate files.
WATCH_INTERVAL_S = 30.0


async def watch_certificates(
    directory: Path, on_change: Callable[[], None], interval_s: float = WATCH_INTERVAL_S
) -> None:
    """Call ``on_change`` each time the files of ``directory`` change, until cancelled:
    a client's certificate is renewed well before it expires, and its channels must
    present the new one before then."""
    files = CertificateFiles(directory)
    seen = files.signature()
    while True:
        await asyncio.sleep(interval_s)
        current = files.signature()
        if current != seen:
            seen = current
            _log.info("TLS certificates in %s changed: opening new channels", directory)
            on_change()
