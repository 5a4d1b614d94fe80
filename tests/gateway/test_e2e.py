"""End to end through the real services: the embedding model, the Qdrant
engine and the llama.cpp model behind the gateway, driven over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY

from lodestar.runtime.server import GrpcServer
from lodestar.vector.v1 import vector_service_pb2 as vpb
from lodestar.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from tests.gateway.harness import RunningGateway, gateway_settings, run_gateway, sse_events
from tests.gateway.test_resilience import breaker_state

pytestmark = pytest.mark.slow

DOCS = [
    "Mars is the red planet, fourth from the Sun.",
    "The Pacific is the largest and deepest ocean on Earth.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "Lodestar is a platform that gives language models a memory.",
]


@dataclass
class Stack:
    embedding: GrpcServer
    inference: GrpcServer
    vector: GrpcServer
    data_dir: Path

    def address(self, server: GrpcServer) -> str:
        return f"127.0.0.1:{server.port}"


async def _vector_server(data_dir: Path, port: int = 0) -> GrpcServer:
    from lodestar.services.vector.server import create_server
    from lodestar.services.vector.settings import VectorSettings

    settings = VectorSettings(
        port=port, metrics_port=None, data_dir=data_dir, shutdown_grace_s=0, optimize_delay_s=60
    )
    server = await create_server(settings)
    await server.start()
    return server


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    from lodestar.services.embedding import EmbeddingSettings
    from lodestar.services.embedding import create_server as create_embedding
    from lodestar.services.inference import InferenceSettings
    from lodestar.services.inference import create_server as create_inference

    embedding = create_embedding(EmbeddingSettings(port=0, metrics_port=None, shutdown_grace_s=0))
    inference = create_inference(
        InferenceSettings(port=0, metrics_port=None, context_size=512, shutdown_grace_s=0)
    )
    await embedding.start()
    await inference.start()
    data_dir = tmp_path_factory.mktemp("vector")
    vector = await _vector_server(data_dir)
    yield Stack(embedding, inference, vector, data_dir)
    for server in (embedding, inference, vector):
        await server.stop(0)


@pytest.fixture(scope="module")
async def gw(stack: Stack) -> AsyncIterator[RunningGateway]:
    settings = gateway_settings(
        stack.address(stack.embedding), stack.address(stack.vector), stack.address(stack.inference)
    )
    async with run_gateway(settings) as running:
        yield running


@pytest.fixture
async def http(gw: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gw.client(timeout=120) as client:
        yield client


async def test_create_insert_search_generate(gw: RunningGateway, http: httpx.AsyncClient) -> None:
    admin = gw.auth("admin")
    created = await http.post(
        "/api/v1/collections",
        json={"name": "facts", "payload_schema": {"topic": "keyword"}},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    assert created.json()["config"]["dimension"] == 384
    assert created.json()["config"]["embedding_model"]

    points = [{"text": doc, "payload": {"topic": f"t{i}"}} for i, doc in enumerate(DOCS)]
    inserted = await http.post(
        "/api/v1/vectors/insert", json={"collection": "facts", "points": points}, headers=admin
    )
    assert inserted.status_code == 200, inserted.text
    ids = inserted.json()["ids"]
    assert len(ids) == 4
    assert inserted.json()["embedded"] == 4

    found = await http.post(
        "/api/v1/vectors/search",
        json={"collection": "facts", "text": "Which planet looks red?", "limit": 2},
        headers=gw.auth("viewer"),
    )
    assert found.status_code == 200, found.text
    hits = found.json()["points"]
    assert hits[0]["id"] == ids[0]
    assert hits[0]["payload"]["text"] == DOCS[0]
    assert hits[0]["score"] > hits[1]["score"]

    filtered = await http.post(
        "/api/v1/vectors/search",
        json={
            "collection": "facts",
            "text": "Which planet looks red?",
            "filter": {"must": [{"key": "topic", "match": {"keyword": "t3"}}]},
        },
        headers=gw.auth("viewer"),
    )
    assert [h["id"] for h in filtered.json()["points"]] == [ids[3]]

    point = await http.get(
        f"/api/v1/vectors/{ids[1]}?collection=facts&with_vector=true", headers=admin
    )
    assert point.status_code == 200
    assert len(point.json()["vector"]) == 384

    details = await http.get("/api/v1/collections/facts", headers=admin)
    assert details.json()["points_count"] == 4

    answer = await http.post(
        "/api/v1/generate",
        json={
            "messages": [{"role": "user", "content": "Name a planet."}],
            "max_tokens": 12,
            "temperature": 0,
        },
        headers=gw.auth("user"),
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["text"].strip()
    assert 0 < body["usage"]["completion_tokens"] <= 12
    assert body["finish_reason"] in ("stop", "length")

    streamed = await http.post(
        "/api/v1/generate",
        json={"prompt": "The ocean is", "max_tokens": 8, "temperature": 0, "stream": True},
        headers=gw.auth("user"),
    )
    assert streamed.status_code == 200
    events = sse_events(streamed.text)
    tokens = [json.loads(d)["delta"] for name, d in events if name == "token"]
    assert tokens
    name, data = events[-1]
    assert name == "done"
    # A delta may carry several tokens (a multi-byte character), never less than one.
    assert 1 <= len(tokens) <= json.loads(data)["usage"]["completion_tokens"] <= 8

    batch = await http.post(
        "/api/v1/generate/batch",
        json={"requests": [{"prompt": "One", "max_tokens": 4}, {"prompt": "Two", "max_tokens": 4}]},
        headers=gw.auth("user"),
    )
    assert [("response" in r) for r in batch.json()["results"]] == [True, True]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _stream_endings() -> dict[str, float]:
    """StreamGenerateText calls the inference service (in this process) has ended, by
    finish reason."""
    return {
        reason: _sample(
            "lodestar_inference_requests_total",
            method="StreamGenerateText",
            finish_reason=reason,
        )
        for reason in ("stop", "length", "cancelled", "error")
    }


async def _until(condition: Callable[[], bool], what: str, limit_s: float = 120) -> None:
    """Wait for an event; the limit only bounds a hang, it is no claim about speed."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_streaming_disconnect_cancels_the_generation(
    gw: RunningGateway, http: httpx.AsyncClient
) -> None:
    """A client leaving a stream cancels its generation in the inference service: the
    stream ends there as cancelled, the engine stops short of max_tokens and frees the
    sequence slot. The grammar admits no end before 2,000 characters, so nothing but a
    cancel ends the generation before its 400 tokens."""
    headers = gw.auth("user")
    endings = _stream_endings()
    tokens = _sample("lodestar_inference_completion_tokens_total")
    active = _sample("lodestar_inference_active_sequences")
    async with http.stream(
        "POST",
        "/api/v1/generate",
        json={
            "prompt": "Count from one to a thousand:",
            "max_tokens": 400,
            "temperature": 0,
            "response_format": {"type": "grammar", "grammar": "root ::= [0-9 ]{2000}"},
            "stream": True,
        },
        headers=headers,
    ) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        assert (await anext(lines)).startswith("event: token")

    await _until(lambda: _stream_endings() != endings, "the stream never ended")
    ended = {r: n - endings[r] for r, n in _stream_endings().items() if n != endings[r]}
    assert ended == {"cancelled": 1}
    # The engine frees the slot when it drops the sequence, and counts its tokens then.
    await _until(
        lambda: (
            _sample("lodestar_inference_active_sequences") == active
            and _sample("lodestar_inference_completion_tokens_total") > tokens
        ),
        "the engine never let the sequence go",
    )
    assert 0 < _sample("lodestar_inference_completion_tokens_total") - tokens < 400
    answer = await http.post(
        "/api/v1/generate", json={"prompt": "Hi", "max_tokens": 4}, headers=headers
    )
    assert answer.status_code == 200


async def _ids(response: httpx.Response) -> set[Any]:
    assert response.status_code == 200, response.text
    return {p["id"] for p in response.json()["points"]}


async def test_tenant_isolation_across_vector_routes(
    gw: RunningGateway, http: httpx.AsyncClient
) -> None:
    admin = gw.auth("admin")
    alice = gw.auth("editor", sub="alice", tenant="alice-co")
    bob = gw.auth("editor", sub="bob", tenant="bob-co")
    created = await http.post("/api/v1/collections", json={"name": "shared"}, headers=admin)
    assert created.status_code == 201
    put = await http.post(
        "/api/v1/vectors/insert",
        json={
            "collection": "shared",
            "points": [
                {"id": 1, "text": "alice's secret plan", "payload": {"owner": "alice"}},
                {"id": 2, "text": "alice's shopping list", "payload": {"owner": "alice"}},
            ],
        },
        headers=alice,
    )
    assert put.status_code == 200, put.text
    put = await http.post(
        "/api/v1/vectors/insert",
        json={
            "collection": "shared",
            "points": [
                {"id": 3, "text": "bob's notes on plans"},
                {"id": 4, "text": "bob's garden"},
                {"id": 5, "text": "bob's secret recipe"},
            ],
        },
        headers=bob,
    )
    assert put.status_code == 200, put.text

    # Reads: bob sees only his own point.
    assert (await http.get("/api/v1/vectors/1?collection=shared", headers=bob)).status_code == 404
    search = {"collection": "shared", "text": "secret plan", "limit": 10}
    assert await _ids(await http.post("/api/v1/vectors/search", json=search, headers=bob)) == {
        3,
        4,
        5,
    }
    assert await _ids(await http.post("/api/v1/vectors/search", json=search, headers=alice)) == {
        1,
        2,
    }
    batch = await http.post(
        "/api/v1/vectors/search/batch",
        json={"searches": [search, {**search, "text": "shopping"}]},
        headers=bob,
    )
    assert all({p["id"] for p in r["points"]} == {3, 4, 5} for r in batch.json()["results"])
    recommended = await http.post(
        "/api/v1/vectors/recommend",
        json={"collection": "shared", "positive": [{"text": "plans"}], "limit": 10},
        headers=bob,
    )
    assert await _ids(recommended) == {3, 4, 5}
    by_foreign_id = await http.post(
        "/api/v1/vectors/recommend", json={"collection": "shared", "positive": [1]}, headers=bob
    )
    assert by_foreign_id.status_code in (400, 404)
    clusters = await http.post(
        "/api/v1/vectors/cluster",
        json={"collection": "shared", "num_clusters": 2, "with_member_ids": True},
        headers=bob,
    )
    assert clusters.status_code == 200, clusters.text
    members = {m for c in clusters.json()["clusters"] for m in c["member_ids"]}
    assert members == {3, 4, 5}
    assert clusters.json()["total_points"] == 3

    # Writes: bob can neither change, delete nor overwrite alice's points.
    update = await http.put(
        "/api/v1/vectors/1?collection=shared", json={"payload": {"owner": "bob"}}, headers=bob
    )
    assert update.status_code == 404
    assert (
        await http.delete("/api/v1/vectors/1?collection=shared", headers=bob)
    ).status_code == 404
    overwrite = await http.post(
        "/api/v1/vectors/insert",
        json={"collection": "shared", "points": [{"id": 2, "text": "bob was here"}]},
        headers=bob,
    )
    assert overwrite.status_code in (400, 403, 409)
    batch_ops = await http.post(
        "/api/v1/vectors/batch",
        json={
            "collection": "shared",
            "operations": [
                {"set_payload": {"ids": [1, 2], "payload": {"owner": "bob"}}},
                {"delete": {"filter": {"must": [{"key": "owner", "match": {"keyword": "alice"}}]}}},
            ],
        },
        headers=bob,
    )
    assert batch_ops.status_code == 200, batch_ops.text
    assert [r["affected_count"] for r in batch_ops.json()["results"]][1] == 0

    # Alice's points are untouched.
    for point_id, text in ((1, "alice's secret plan"), (2, "alice's shopping list")):
        point = await http.get(f"/api/v1/vectors/{point_id}?collection=shared", headers=alice)
        assert point.status_code == 200
        payload = point.json()["payload"]
        assert payload["owner"] == "alice"
        assert payload["text"] == text
        assert payload["tenant"] == "alice-co"
    # A tenant cannot drop the shared collection.
    assert (await http.delete("/api/v1/collections/shared", headers=bob)).status_code == 403


async def test_failover_between_real_vector_replicas(stack: Stack, tmp_path: Path) -> None:
    replicas = [await _vector_server(tmp_path / "a"), await _vector_server(tmp_path / "b")]
    addresses = [f"127.0.0.1:{r.port}" for r in replicas]
    # Replicas with their own storage: give both the same points directly.
    for address in addresses:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = vpb_grpc.VectorServiceStub(channel)
            await stub.CreateCollection(
                vpb.CreateCollectionRequest(name="ha", config=vpb.CollectionConfig(dimension=4))
            )
            await stub.UpsertPoints(
                vpb.UpsertPointsRequest(
                    collection="ha",
                    points=[
                        vpb.Point(id=vpb.PointId(num=i), vector=[float(i), 1, 0, 0])
                        for i in range(1, 6)
                    ],
                )
            )
    settings = gateway_settings(
        stack.address(stack.embedding),
        addresses,
        stack.address(stack.inference),
        breaker_failure_threshold=3,
        breaker_open_s=0.5,
    )
    failures: list[str] = []
    done = asyncio.Event()
    served = [0]
    async with run_gateway(settings) as gateway, gateway.client() as http:
        headers = gateway.auth("viewer")

        async def worker(n: int) -> None:
            while not done.is_set():
                if n % 2:
                    response = await http.get("/api/v1/vectors/3?collection=ha", headers=headers)
                else:
                    response = await http.post(
                        "/api/v1/vectors/search",
                        json={"collection": "ha", "vector": [1, 1, 0, 0], "limit": 3},
                        headers=headers,
                    )
                served[0] += 1
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text}")

        workers = [asyncio.create_task(worker(n)) for n in range(4)]
        try:
            await asyncio.sleep(0.3)
            port = replicas[0].port
            await replicas[0].stop(0)
            deadline = time.monotonic() + 5
            while breaker_state(addresses[0]) != 2:
                assert time.monotonic() < deadline, "breaker did not open"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            # The replica comes back on its port, with its data (durable writes).
            replicas[0] = await _vector_server(tmp_path / "a", port=port)
            deadline = time.monotonic() + 10
            while breaker_state(addresses[0]) != 0:
                assert time.monotonic() < deadline, "breaker did not close"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
        finally:
            done.set()
            await asyncio.gather(*workers)
            for replica in replicas:
                await replica.stop(0)
    assert served[0] > 50
    assert failures == []
