"""The gateway over a vector service that requires tokens and mutual TLS: it reaches
the service with its certificate and its caller's token, and a request through it
gets the same answer as the same call made directly."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from lodestar.auth.tokens import TokenVerifier, mint_token
from lodestar.runtime.channels import open_channel
from lodestar.runtime.server import GrpcServer
from lodestar.runtime.tls import TlsSettings, watch_certificates
from lodestar.services.gateway.identity import GatewayIdentity
from lodestar.services.gateway.settings import GatewaySettings
from lodestar.services.vector.embedded import EmbeddedBackend
from lodestar.services.vector.server import create_server
from lodestar.services.vector.settings import VectorSettings
from lodestar.vector.v1 import analytics_service_pb2 as apb
from lodestar.vector.v1 import analytics_service_pb2_grpc as analytics_grpc
from lodestar.vector.v1 import vector_service_pb2 as pb
from lodestar.vector.v1 import vector_service_pb2_grpc as pb_grpc
from tests.gateway.harness import RunningGateway, gateway_settings, run_gateway
from tests.rpcauth.certs import Authority
from tests.rpcauth.conftest import Caller, rpc_error
from tests.vector.suite import ids_of, point


@dataclass
class Stack:
    gateway: RunningGateway
    channel: grpc.aio.Channel
    settings: VectorSettings
    client_tls: Path
    ca: Authority

    def token(self, *roles: str, **claims: object) -> str:
        return mint_token(self.settings, "alice", list(roles), 600, **claims)  # type: ignore[arg-type]

    def direct(self, token: str | None) -> Caller:
        return Caller(pb_grpc.VectorServiceStub(self.channel), token)

    def rest(self, token: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.gateway.client(headers=headers)


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    root: Path = tmp_path_factory.mktemp("parity")
    ca = Authority.create("platform CA")
    settings = VectorSettings(
        port=0,
        metrics_port=None,
        shutdown_grace_s=1,
        data_dir=root / "data",
        require_token=True,
        grpc_tls_dir=ca.write(root / "vector-tls", "vector", hosts=("localhost", "127.0.0.1")),
        grpc_tls_client_auth=True,
        indexing_threads=1,
    )
    server: GrpcServer = await create_server(settings, backend=EmbeddedBackend(settings))
    port = await server.start()
    address = f"localhost:{port}"
    client_dir = ca.write(root / "client-tls", "gateway")
    client_tls = TlsSettings(grpc_tls_dir=client_dir)
    channel = open_channel(address, client_tls)
    gateway = gateway_settings(address, address, address, grpc_tls_dir=client_tls.grpc_tls_dir)
    try:
        async with run_gateway(gateway) as running:
            yield Stack(running, channel, settings, client_dir, ca)
    finally:
        await channel.close()
        await server.stop(0)


async def test_requests_through_the_gateway_and_direct_calls_agree(stack: Stack) -> None:
    admin = stack.token("admin")
    for name in ("docs-a", "private-b"):
        await stack.direct(admin).CreateCollection(
            pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(dimension=4))
        )
    await stack.direct(stack.token("editor", tenant="globex")).UpsertPoints(
        pb.UpsertPointsRequest(collection="docs-a", points=[point(1, [1, 0, 0, 0])])
    )
    acme = stack.token("editor", tenant="acme", collections=["docs-*"])

    # A tenant's insert and search, through the gateway and directly.
    async with stack.rest(acme) as http:
        inserted = await http.post(
            "/api/v1/vectors/insert",
            json={"collection": "docs-a", "points": [{"id": 2, "vector": [0.9, 0.1, 0, 0]}]},
        )
        assert inserted.status_code == 200, inserted.text
        searched = await http.post(
            "/api/v1/vectors/search", json={"collection": "docs-a", "vector": [1, 0, 0, 0]}
        )
        assert searched.status_code == 200, searched.text
        listed = await http.get("/api/v1/collections")
    direct = await stack.direct(acme).SearchPoints(
        pb.SearchPointsRequest(collection="docs-a", vector=[1, 0, 0, 0])
    )
    assert [p["id"] for p in searched.json()["points"]] == ids_of(direct.points) == [2]
    direct_list = await stack.direct(acme).ListCollections(pb.ListCollectionsRequest())
    rest_names = [c["name"] for c in listed.json()["collections"]]
    assert rest_names == [c.name for c in direct_list.collections] == ["docs-a"]

    # A viewer's write: refused for the same missing permission.
    viewer = stack.token("viewer")
    async with stack.rest(viewer) as http:
        refused = await http.post(
            "/api/v1/vectors/insert",
            json={"collection": "docs-a", "points": [{"id": 3, "vector": [0, 1, 0, 0]}]},
        )
    assert refused.status_code == 403
    error = await rpc_error(
        stack.direct(viewer).UpsertPoints(
            pb.UpsertPointsRequest(collection="docs-a", points=[point(3, [0, 1, 0, 0])])
        )
    )
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert (
        refused.json()["error"]["details"]["metadata"]["permission"] == error.metadata["permission"]
    )

    # No token: 401 and UNAUTHENTICATED.
    async with stack.rest(None) as http:
        assert (await http.get("/api/v1/collections")).status_code == 401
    error = await rpc_error(stack.direct(None).ListCollections(pb.ListCollectionsRequest()))
    assert error.code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_downloaded_snapshot_is_the_file_that_restores_the_collection(
    stack: Stack,
) -> None:
    operator = stack.token("operator")
    async with stack.rest(operator) as http:
        created = await http.post("/api/v1/collections", json={"name": "kept", "dimension": 4})
        assert created.status_code == 201, created.text
        points = [{"id": i, "vector": [1, i, 0, 0], "payload": {"n": i}} for i in range(1, 6)]
        inserted = await http.post(
            "/api/v1/vectors/insert", json={"collection": "kept", "points": points}
        )
        assert inserted.status_code == 200, inserted.text
        snapshot = (await http.post("/api/v1/collections/kept/snapshot")).json()
        url = f"/api/v1/collections/kept/snapshots/{snapshot['name']}"
        downloaded = await http.get(url)
        assert downloaded.status_code == 200, downloaded.text
        body = downloaded.content
        assert len(body) == snapshot["size_bytes"]
        assert hashlib.sha256(body).hexdigest() == snapshot["checksum"]
        assert body == (stack.settings.snapshots_path / "kept" / snapshot["name"]).read_bytes()
        assert downloaded.headers["content-disposition"] == (
            f'attachment; filename="{snapshot["name"]}"'
        )
        # The bytes are a whole snapshot: with the collection gone, they bring it back.
        assert (await http.delete("/api/v1/collections/kept")).status_code == 204
        restored = await http.post(f"{url}/restore")
        assert restored.status_code == 200, restored.text
        assert restored.json()["points_count"] == 5
        missing = await http.get("/api/v1/collections/kept/snapshots/none.snapshot")
        assert missing.status_code == 404
        assert missing.json()["error"]["details"]["reason"] == "SNAPSHOT_NOT_FOUND"
    async with stack.rest(stack.token("editor")) as http:
        refused = await http.get(url)
    assert refused.status_code == 403
    assert refused.json()["error"]["details"]["metadata"]["permission"] == "CreateSnapshots"


async def test_the_gateways_own_token_carries_only_what_it_needs(tmp_path: Path) -> None:
    settings = GatewaySettings()
    metadata = dict(GatewayIdentity(settings).metadata())
    principal = await TokenVerifier(settings).verify(metadata["authorization"].split()[1])
    assert principal.subject == "lodestar-gateway"
    assert {p.value for p in principal.permissions} == {
        "AdministerSystem",
        "ManageCollections",
        "SearchVectors",
        "InsertVectors",
        "UpdateVectors",
        "DeleteVectors",
    }

    token_file = tmp_path / "token"
    token_file.write_text("issued-by-the-idp\n")
    from_file = GatewayIdentity(GatewaySettings(service_token_file=token_file))
    assert dict(from_file.metadata())["authorization"] == "Bearer issued-by-the-idp"
    token_file.write_text("rotated-token-value\n")
    assert dict(from_file.metadata())["authorization"] == "Bearer rotated-token-value"
    # With a JWKS URL the gateway cannot sign one, and sends none of its own.
    jwks = GatewayIdentity(GatewaySettings(jwt_jwks_url="http://idp.invalid/jwks"))
    assert jwks.metadata() == ()


async def test_the_gateway_presents_renewed_client_certificates(stack: Stack) -> None:
    backends = stack.gateway.app.state.gateway.backends
    admin = stack.token("admin")

    async def listed() -> int:
        async with stack.rest(admin) as http:
            return (await http.get("/api/v1/collections")).status_code

    assert await listed() == 200
    # A certificate the services do not trust: once the gateway opens new channels
    # with it, its calls are refused...
    rogue = Authority.create("rogue CA").write(stack.client_tls.parent / "rogue", "gateway")
    saved = {n: (stack.client_tls / n).read_bytes() for n in ("tls.crt", "tls.key")}
    for name in ("tls.crt", "tls.key"):
        (stack.client_tls / name).write_bytes((rogue / name).read_bytes())
    backends.reopen()
    assert await listed() == 503
    # ...and a renewed one from the platform's CA is used as soon as it is there.
    renewed = stack.ca.write(stack.client_tls.parent / "renewed", "gateway")
    for name in ("tls.crt", "tls.key"):
        (stack.client_tls / name).write_bytes((renewed / name).read_bytes())
    backends.reopen()
    assert await listed() == 200
    assert saved["tls.crt"] != (stack.client_tls / "tls.crt").read_bytes()


async def test_certificate_changes_are_watched(tmp_path: Path) -> None:
    directory = Authority.create("a").write(tmp_path / "tls", "gateway")
    changed = asyncio.Event()
    watch = asyncio.create_task(watch_certificates(directory, changed.set, interval_s=0.05))
    try:
        await asyncio.sleep(0.15)
        assert not changed.is_set()
        renewed = Authority.create("b").write(tmp_path / "renewed", "gateway")
        for name in ("tls.crt", "tls.key", "ca.crt"):
            os.replace(renewed / name, directory / name)
        await asyncio.wait_for(changed.wait(), 5)
    finally:
        watch.cancel()


async def test_analytics_through_the_gateway_count_only_the_allow_listed_collections(
    stack: Stack,
) -> None:
    admin = stack.token("admin")
    for name, text in (("stats-a", "allowed question"), ("hush-b", "hushed question")):
        await stack.direct(admin).CreateCollection(
            pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(dimension=4))
        )
        await stack.direct(admin).UpsertPoints(
            pb.UpsertPointsRequest(collection=name, points=[point(1, [1, 0, 0, 0])])
        )
        await stack.direct(admin).SearchPoints(
            pb.SearchPointsRequest(collection=name, vector=[1, 0, 0, 0], query_text=text)
        )
    scoped = stack.token("operator", collections=["stats-*"])
    request = apb.GetSearchAnalyticsRequest(top_queries=100, bucket_width_seconds=3600)

    direct = await Caller(
        analytics_grpc.AnalyticsServiceStub(stack.channel), scoped
    ).GetSearchAnalytics(request)
    async with stack.rest(scoped) as http:
        answered = await http.get(
            "/api/v1/analytics/search", params={"top_queries": 100, "interval": 3600}
        )
    assert answered.status_code == 200, answered.text
    body = answered.json()
    assert body["total"]["search_count"] == direct.total.search_count == 1
    assert [q["query_text"] for q in body["popular_queries"]] == ["allowed question"]
    assert [q.query_text for q in direct.popular_queries] == ["allowed question"]
    assert sum(b["search_count"] for b in body["timeline"]) == 1
    async with stack.rest(stack.token("operator")) as http:
        everything = (await http.get("/api/v1/analytics/search")).json()
    assert everything["total"]["search_count"] >= 2
    assert "hushed question" in {q["query_text"] for q in everything["popular_queries"]}
