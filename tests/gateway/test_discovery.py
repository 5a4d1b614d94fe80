"""Backends named by DNS: calls spread over every address, following the records.

Three replicas of the embedding service listen on 127.0.0.2, .3 and .4 (one port),
behind one name that a DNS server run by the test answers for; the records change
while calls flow through the gateway's pool.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from dnslib import QTYPE, RR, A, DNSRecord
from dnslib.server import DNSLogger, DNSServer

from lodestar.embedding.v1 import embedding_service_pb2 as epb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as epb_grpc
from lodestar.runtime import keepalive
from lodestar.runtime.server import GrpcServer, ServiceRegistration
from lodestar.runtime.settings import ServerSettings
from lodestar.services.gateway.backends import EMBEDDING_SERVICE
from lodestar.services.gateway.deadline import CallOptions, Deadline
from lodestar.services.gateway.discovery import DnsTarget, parse_target
from lodestar.services.gateway.resilience import ReplicaPool, Rpc
from tests.gateway.fakes import FakeBackends, FakeEmbedding
from tests.gateway.harness import gateway_settings, run_gateway

NAME = "embedding.lodestar.test"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
RESOLVE_INTERVAL_S = 0.5
EMBED: Rpc[epb.EmbedTextsRequest, epb.EmbedTextsResponse] = Rpc(
    EMBEDDING_SERVICE.full_name, "EmbedTexts", idempotent=True
)


class Records:
    """A dnslib resolver answering A queries for ``NAME`` with ``hosts``."""

    def __init__(self) -> None:
        self.hosts: list[str] = []

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        question = request.q
        if str(question.qname).rstrip(".") == NAME and question.qtype == QTYPE.A:
            for host in list(self.hosts):
                reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(host), ttl=1))
        return reply


@pytest.fixture
def dns_server() -> Iterator[tuple[Records, int]]:
    records = Records()
    server = DNSServer(records, address="127.0.0.1", port=0, logger=DNSLogger(logf=lambda _: None))
    server.start_thread()
    try:
        yield records, server.server.server_address[1]
    finally:
        server.stop()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[int, dict[str, FakeEmbedding]]]:
    port = _free_port(HOSTS[0])
    fakes = {host: FakeEmbedding() for host in HOSTS}
    servers = []
    for host, fake in fakes.items():
        server = GrpcServer(
            ServerSettings(host=host, port=port, shutdown_grace_s=0),
            [
                ServiceRegistration(
                    EMBEDDING_SERVICE.full_name,
                    lambda s, fake=fake: epb_grpc.add_EmbeddingServiceServicer_to_server(fake, s),
                )
            ],
        )
        await server.start()
        servers.append(server)
    try:
        yield port, fakes
    finally:
        for server in servers:
            await server.stop(0)


def test_dns_targets_parse() -> None:
    assert parse_target("embedding:50051") is None
    assert parse_target("dns:///embedding-headless:50051") == DnsTarget("embedding-headless", 50051)
    assert parse_target("dns://10.0.0.10/embedding:50051") == DnsTarget(
        "embedding", 50051, ("10.0.0.10", 53)
    )
    assert parse_target("dns://127.0.0.1:5353/embedding:50051") == DnsTarget(
        "embedding", 50051, ("127.0.0.1", 5353)
    )
    for bad in ("dns:///embedding", "dns://kube-dns/embedding:50051", "dns://x"):
        with pytest.raises(ValueError, match=r"port|IP address"):
            parse_target(bad)


def test_settings_check_dns_addresses() -> None:
    settings = gateway_settings("dns:///embedding-headless:50051", "v:1", "i:1")
    assert settings.embedding_addresses == ("dns:///embedding-headless:50051",)
    with pytest.raises(ValueError, match="IP address"):
        gateway_settings("dns://kube-dns/embedding:50051", "v:1", "i:1")


def test_servers_bound_connection_age() -> None:
    """Servers send long-lived clients away now and then (so that they rebalance),
    giving calls in flight longer than any default deadline to finish."""
    options = dict(keepalive.server_options(30.0))
    assert 0 < options["grpc.max_connection_age_ms"] <= 600_000
    assert options["grpc.max_connection_age_grace_ms"] >= 300_000


def _counts(fakes: dict[str, FakeEmbedding]) -> dict[str, int]:
    return {host: len(fake.recorder.calls) for host, fake in fakes.items()}


async def _until(condition: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _pool(dns_port: int, port: int) -> ReplicaPool:
    return ReplicaPool(
        "embedding",
        EMBEDDING_SERVICE.full_name,
        [f"dns://127.0.0.1:{dns_port}/{NAME}:{port}"],
        {EMBEDDING_SERVICE.full_name: epb_grpc.EmbeddingServiceStub},
        resolve_interval_s=RESOLVE_INTERVAL_S,
    )


def _embed(pool: ReplicaPool) -> Any:
    request = epb.EmbedTextsRequest(texts=["hello"])
    return pool.unary(EMBED, request, CallOptions(Deadline.after(10.0)))


async def test_a_removed_replica_finishes_its_calls(
    dns_server: tuple[Records, int], replicas: tuple[int, dict[str, FakeEmbedding]]
) -> None:
    records, dns_port = dns_server
    port, fakes = replicas
    records.hosts = [HOSTS[0]]
    pool = _pool(dns_port, port)
    try:
        fakes[HOSTS[0]].recorder.delay_s = 1.5
        slow = asyncio.create_task(_embed(pool))
        await _until(lambda: _counts(fakes)[HOSTS[0]] == 1, 5)
        records.hosts = [HOSTS[1]]
        await _until(lambda: [r.address for r in pool.replicas] == [f"{HOSTS[1]}:{port}"], 5)
        await _embed(pool)
        assert _counts(fakes) == {HOSTS[0]: 1, HOSTS[1]: 1, HOSTS[2]: 0}
        assert len((await slow).embeddings) == 1
    finally:
        await pool.close()


async def test_calls_follow_the_records_under_load(
    dns_server: tuple[Records, int], replicas: tuple[int, dict[str, FakeEmbedding]]
) -> None:
    records, dns_port = dns_server
    port, fakes = replicas
    records.hosts = list(HOSTS[:2])
    pool = _pool(dns_port, port)
    failures: list[BaseException] = []
    done = 0
    stop = asyncio.Event()

    async def client() -> None:
        nonlocal done
        while not stop.is_set():
            options = CallOptions(Deadline.after(5.0))
            try:
                await pool.unary(EMBED, epb.EmbedTextsRequest(texts=["hello"]), options)
                done += 1
            except Exception as error:  # counted, then asserted to be none
                failures.append(error)
            await asyncio.sleep(0.005)

    clients = [asyncio.create_task(client()) for _ in range(8)]
    try:
        # Both listed replicas share the calls.
        await _until(lambda: min(_counts(fakes)[h] for h in HOSTS[:2]) >= 20, 10)
        assert _counts(fakes)[HOSTS[2]] == 0

        # A replica added to the records gets a fair share within 30 s.
        records.hosts = list(HOSTS)
        await _until(lambda: _counts(fakes)[HOSTS[2]] > 0, 30)
        before = _counts(fakes)
        await _until(lambda: sum(_counts(fakes).values()) - sum(before.values()) >= 300, 30)
        after = _counts(fakes)
        window = {h: after[h] - before[h] for h in HOSTS}
        total = sum(window.values())
        for host in HOSTS:
            assert window[host] >= total / 3 / 2, window

        # A replica removed from the records gets no new calls once the pool saw it go.
        records.hosts = list(HOSTS[1:])
        removed = f"{HOSTS[0]}:{port}"
        await _until(lambda: removed not in {r.address for r in pool.replicas}, 10)
        await asyncio.sleep(0.2)  # calls sent before the change finish
        before = _counts(fakes)
        await _until(lambda: sum(_counts(fakes).values()) - sum(before.values()) >= 200, 30)
        after = _counts(fakes)
        assert after[HOSTS[0]] == before[HOSTS[0]]
        assert min(after[h] - before[h] for h in HOSTS[1:]) >= 50
    finally:
        stop.set()
        await asyncio.gather(*clients)
        await pool.close()
    assert not failures, failures[:3]
    assert done > 500


async def test_the_gateway_follows_the_records(
    dns_server: tuple[Records, int],
    replicas: tuple[int, dict[str, FakeEmbedding]],
    fakes: FakeBackends,
) -> None:
    """The gateway's own settings name the backend by DNS; its health report lists
    every replica the records give, and follows them (the real resolve interval)."""
    records, dns_port = dns_server
    port, _ = replicas
    records.hosts = list(HOSTS)
    settings = gateway_settings(
        f"dns://127.0.0.1:{dns_port}/{NAME}:{port}",
        fakes.address("vector"),
        fakes.address("inference"),
    )

    async with run_gateway(settings) as gw, gw.client() as http:

        async def embedding_replicas() -> set[str]:
            response = await http.get("/api/v1/health", headers=gw.auth("admin"))
            assert response.status_code == 200, response.text
            embedding = response.json()["backends"]["embedding"]
            assert embedding["status"] == "ok"
            return {r["address"] for r in embedding["replicas"]}

        assert await embedding_replicas() == {f"{h}:{port}" for h in HOSTS}
        records.hosts = list(HOSTS[1:])
        deadline = time.monotonic() + 15
        while await embedding_replicas() != {f"{h}:{port}" for h in HOSTS[1:]}:
            assert time.monotonic() < deadline, "the gateway kept a removed replica"
            await asyncio.sleep(0.2)
