"""TLS and mutual TLS on a real gRPC server, with certificates made here."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lodestar.runtime.channels import open_channel
from lodestar.runtime.server import GrpcServer
from lodestar.runtime.settings import ServerSettings
from lodestar.runtime.tls import TlsSettings, is_loopback
from tests.rpcauth.certs import Authority

HOSTS = ("localhost", "127.0.0.1")
# How a client sees a handshake that failed.
_REFUSED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority.create("lodestar test CA")


@pytest.fixture(scope="module")
def other_ca() -> Authority:
    return Authority.create("someone else's CA")


async def _serve(
    tls_dir: Path, *, client_auth: bool = False, host: str = "127.0.0.1"
) -> GrpcServer:
    settings = ServerSettings(
        host=host, port=0, grpc_tls_dir=tls_dir, grpc_tls_client_auth=client_auth
    )
    server = GrpcServer(settings, [])
    await server.start()
    return server


@pytest.fixture
async def tls_server(tmp_path: Path, ca: Authority) -> AsyncIterator[GrpcServer]:
    server = await _serve(ca.write(tmp_path / "server", "vector", hosts=HOSTS))
    yield server
    await server.stop(0)


@pytest.fixture
async def mtls_server(tmp_path: Path, ca: Authority) -> AsyncIterator[GrpcServer]:
    server = await _serve(ca.write(tmp_path / "server", "vector", hosts=HOSTS), client_auth=True)
    yield server
    await server.stop(0)


async def _check(port: int, credentials: grpc.ChannelCredentials | TlsSettings | None) -> bool:
    """Whether a health check over a channel with ``credentials`` is answered."""
    address = f"localhost:{port}"
    if isinstance(credentials, TlsSettings):
        channel = open_channel(address, tls=credentials)
    elif credentials is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = grpc.aio.secure_channel(address, credentials)
    async with channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            if error.code() not in _REFUSED:
                raise
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def test_tls_serves_clients_that_trust_its_ca(
    tls_server: GrpcServer, tmp_path: Path, ca: Authority
) -> None:
    # A client with only the CA (no certificate of its own) is enough without mTLS.
    only_ca = tmp_path / "client"
    only_ca.mkdir()
    (only_ca / "ca.crt").write_bytes(ca.pem)
    assert await _check(tls_server.port, TlsSettings(grpc_tls_dir=only_ca))
    # Plaintext and a client trusting another CA are refused.
    assert not await _check(tls_server.port, None)
    assert not await _check(
        tls_server.port, grpc.ssl_channel_credentials(Authority.create("x").pem)
    )


async def test_mutual_tls_refuses_clients_without_a_certificate_of_its_ca(
    mtls_server: GrpcServer, tmp_path: Path, ca: Authority, other_ca: Authority
) -> None:
    port = mtls_server.port
    good = ca.write(tmp_path / "gateway", "gateway")
    assert await _check(port, TlsSettings(grpc_tls_dir=good))
    # No client certificate.
    assert not await _check(port, grpc.ssl_channel_credentials(ca.pem))
    # A certificate from another CA (trusting the right server CA).
    foreign_cert, foreign_key = other_ca.issue("intruder")
    assert not await _check(port, grpc.ssl_channel_credentials(ca.pem, foreign_key, foreign_cert))
    # Plaintext.
    assert not await _check(port, None)


def _replace(directory: Path, source: Path) -> None:
    """Swap every file at once, as the kubelet updates a mounted Secret."""
    for name in ("tls.crt", "tls.key", "ca.crt"):
        staged = directory / f".{name}.new"
        staged.write_bytes((source / name).read_bytes())
        os.replace(staged, directory / name)


async def test_certificates_are_reloaded_when_the_files_change(
    tmp_path: Path, ca: Authority
) -> None:
    renewed_ca = Authority.create("renewed CA")
    server_dir = ca.write(tmp_path / "server", "vector", hosts=HOSTS)
    server = await _serve(server_dir, client_auth=True)
    try:
        old_client = ca.write(tmp_path / "old-client", "gateway")
        new_client = renewed_ca.write(tmp_path / "new-client", "gateway")
        assert await _check(server.port, TlsSettings(grpc_tls_dir=old_client))
        assert not await _check(server.port, TlsSettings(grpc_tls_dir=new_client))

        _replace(server_dir, renewed_ca.write(tmp_path / "renewed", "vector", hosts=HOSTS))

        assert await _check(server.port, TlsSettings(grpc_tls_dir=new_client))
        assert not await _check(server.port, TlsSettings(grpc_tls_dir=old_client))
    finally:
        await server.stop(0)


async def test_a_half_written_renewal_keeps_the_current_certificates(
    tmp_path: Path, ca: Authority
) -> None:
    server_dir = ca.write(tmp_path / "server", "vector", hosts=HOSTS)
    server = await _serve(server_dir)
    try:
        (server_dir / "tls.key").write_bytes(b"not a key")
        client = tmp_path / "client"
        client.mkdir()
        (client / "ca.crt").write_bytes(ca.pem)
        assert await _check(server.port, TlsSettings(grpc_tls_dir=client))
    finally:
        await server.stop(0)


async def test_plaintext_beyond_loopback_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="lodestar.runtime.tls")
    server = GrpcServer(ServerSettings(host="0.0.0.0", port=0), [])
    await server.start()
    await server.stop(0)
    assert any("without TLS" in r.getMessage() for r in caplog.records)
    caplog.clear()
    server = GrpcServer(ServerSettings(host="127.0.0.1", port=0), [])
    await server.start()
    await server.stop(0)
    assert not any("without TLS" in r.getMessage() for r in caplog.records)


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "localhost", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "", "10.1.2.3", "vector"):
        assert not is_loopback(host), host


async def test_a_health_port_answers_plaintext_probes_beside_tls(
    tmp_path: Path, ca: Authority
) -> None:
    settings = ServerSettings(
        host="127.0.0.1",
        port=0,
        health_port=0,
        grpc_tls_dir=ca.write(tmp_path / "server", "vector", hosts=HOSTS),
    )
    server = GrpcServer(settings, [])
    await server.start()
    try:
        assert server.health_port
        assert await _check(server.health_port, None)
        assert not await _check(server.port, None)
    finally:
        await server.stop(0)
    assert not await _check(server.health_port, None)
