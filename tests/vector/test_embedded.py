"""The embedded backend's own behaviour: background index builds, restarts, leftovers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from lodestar.services.vector.embedded import EmbeddedBackend
from lodestar.services.vector.server import create_server
from lodestar.vector.v1 import vector_service_pb2 as pb
from lodestar.vector.v1 import vector_service_pb2_grpc as pb_grpc
from tests.vector.conftest import vector_settings

DIMENSION = 64


class Server:
    def __init__(self, data_dir: Path, **overrides: object) -> None:
        self.settings = vector_settings(data_dir, **overrides)
        self.backend = EmbeddedBackend(self.settings)

    async def __aenter__(self) -> Server:
        self.server = await create_server(self.settings, backend=self.backend)
        port = await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.VectorServiceStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.server.stop(5)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with Server(tmp_path) as running:
        yield running


def _points(start: int, count: int, rng: np.random.Generator) -> list[pb.Point]:
    vectors = rng.normal(size=(count, DIMENSION)).astype(np.float32)
    points = []
    for i, vector in zip(range(start, start + count), vectors, strict=True):
        message = pb.Point(id=pb.PointId(num=i), vector=vector.tolist())
        message.payload.update({"i": i})
        points.append(message)
    return points


async def _wait_ready(
    stub: pb_grpc.VectorServiceStub, name: str, limit_s: float = 120
) -> pb.Collection:
    deadline = time.monotonic() + limit_s
    while True:
        info = (await stub.GetCollection(pb.GetCollectionRequest(name=name))).collection
        if info.status == pb.COLLECTION_STATUS_READY:
            return info
        assert time.monotonic() < deadline, f"collection never became ready: {info}"
        await asyncio.sleep(0.1)


def _runs(name: str) -> float:
    return (
        REGISTRY.get_sample_value("lodestar_vector_optimizer_runs_total", {"collection": name})
        or 0.0
    )


async def test_indexes_build_in_the_background_without_losing_writes(server: Server) -> None:
    stub = server.stub
    name = "indexed"
    await stub.CreateCollection(
        pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(dimension=DIMENSION))
    )
    rng = np.random.default_rng(11)
    # 8,000 × 64 floats = 2 MB of vectors: far above the 64 KB indexing threshold.
    for start in range(0, 8_000, 500):
        await stub.UpsertPoints(
            pb.UpsertPointsRequest(collection=name, points=_points(start, 500, rng))
        )
    collection = server.backend._collections[name]
    deadline = time.monotonic() + 30
    while not collection.optimizing:
        assert time.monotonic() < deadline, "the optimizer never started"
        await asyncio.sleep(0.02)
    first_shard = collection.shard

    # While the index builds in the child process: concurrent writers and readers.
    # Whether each search was answered during that build (a build inside the process
    # would hold the GIL, and every search, for its whole duration).
    during_build: list[bool] = []

    async def writer(worker: int) -> None:
        for batch in range(5):
            start = 10_000 + worker * 1_000 + batch * 100
            await stub.UpsertPoints(
                pb.UpsertPointsRequest(collection=name, points=_points(start, 100, rng))
            )

    async def reader() -> None:
        query = rng.normal(size=DIMENSION).astype(np.float32).tolist()
        for _ in range(20):
            hits = await stub.SearchPoints(
                pb.SearchPointsRequest(collection=name, vector=query, limit=5)
            )
            during_build.append(collection.optimizing)
            assert len(hits.points) == 5

    await asyncio.gather(*(writer(w) for w in range(4)), reader())
    assert collection.optimizing, (
        "the writes must overlap the index build for this test to mean anything"
    )
    deleted = await stub.DeletePoints(
        pb.DeletePointsRequest(collection=name, selector=pb.PointsSelector(ids=[pb.PointId(num=3)]))
    )
    assert deleted.deleted_count == 1

    info = await _wait_ready(stub, name)
    expected = set(range(8_000)) - {3} | {
        10_000 + w * 1_000 + b for w in range(4) for b in range(500)
    }
    assert info.points_count == len(expected)
    assert info.indexed_vectors_count >= 8_000 - 1
    assert collection.shard is not first_shard  # the optimized copy took over
    assert _runs(name) >= 1
    # The event loop kept serving while the index was built.
    assert during_build == [True] * 20

    seen: list[int] = []
    token = ""
    while True:
        page = await stub.ListPoints(
            pb.ListPointsRequest(
                collection=name, page_size=1000, page_token=token, with_payload=True
            )
        )
        for p in page.points:
            assert p.payload["i"] == p.id.num
            seen.append(p.id.num)
        token = page.next_page_token
        if not token:
            break
    assert set(seen) == expected
    assert len(seen) == len(expected)
    # Retired generations are removed once their last reader is done.
    directory = server.settings.data_dir / "collections" / name
    deadline = time.monotonic() + 10
    while len(generations := sorted(p.name for p in directory.glob("gen-*"))) > 1:
        assert time.monotonic() < deadline, generations
        await asyncio.sleep(0.05)
    assert generations != ["gen-000001"]


async def test_hnsw_changes_rebuild_the_index(server: Server) -> None:
    stub = server.stub
    name = "retuned"
    await stub.CreateCollection(
        pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(dimension=DIMENSION))
    )
    await stub.UpsertPoints(
        pb.UpsertPointsRequest(collection=name, points=_points(0, 500, np.random.default_rng(1)))
    )
    info = await _wait_ready(stub, name)
    assert info.indexed_vectors_count == 500
    runs = _runs(name)
    updated = await stub.UpdateCollection(
        pb.UpdateCollectionRequest(name=name, hnsw=pb.HnswConfig(m=8, ef_construct=32))
    )
    assert updated.collection.status == pb.COLLECTION_STATUS_OPTIMIZING
    info = await _wait_ready(stub, name)
    assert _runs(name) == runs + 1
    assert info.config.hnsw.m == 8
    assert info.indexed_vectors_count == 500


async def test_restart_keeps_everything(tmp_path: Path) -> None:
    async with Server(tmp_path, fsync_writes=True) as first:
        await first.stub.CreateCollection(
            pb.CreateCollectionRequest(
                name="kept",
                config=pb.CollectionConfig(
                    dimension=DIMENSION, payload_schema={"i": pb.PAYLOAD_FIELD_TYPE_INTEGER}
                ),
            )
        )
        await first.stub.UpsertPoints(
            pb.UpsertPointsRequest(
                collection="kept", points=_points(0, 300, np.random.default_rng(2))
            )
        )
        await first.stub.UpdateCollection(
            pb.UpdateCollectionRequest(
                name="kept", add_payload_fields={"tag": pb.PAYLOAD_FIELD_TYPE_KEYWORD}
            )
        )
        before = (await first.stub.GetCollection(pb.GetCollectionRequest(name="kept"))).collection
    async with Server(tmp_path) as second:
        after = (await second.stub.GetCollection(pb.GetCollectionRequest(name="kept"))).collection
        assert after.config == before.config
        assert after.create_time == before.create_time
        assert after.points_count == 300
        hits = await second.stub.SearchPoints(
            pb.SearchPointsRequest(
                collection="kept",
                vector=[1.0] * DIMENSION,
                limit=3,
                filter=pb.Filter(
                    must=[pb.Condition(field=pb.FieldCondition(key="i", range=pb.Range(lt=10)))]
                ),
            )
        )
        assert len(hits.points) == 3
        assert all(p.id.num < 10 for p in hits.points)


async def test_unfinished_work_is_cleaned_up_on_start(tmp_path: Path) -> None:
    async with Server(tmp_path) as first:
        await first.stub.CreateCollection(
            pb.CreateCollectionRequest(name="real", config=pb.CollectionConfig(dimension=4))
        )
    root = tmp_path / "collections"
    (root / "half-made" / "gen-000001").mkdir(parents=True)  # no collection.json
    (root / "real" / "gen-000009").mkdir()  # an optimizer copy that never swapped in
    (root / ".deleted-old-1234").mkdir()
    async with Server(tmp_path) as second:
        listed = await second.stub.ListCollections(pb.ListCollectionsRequest())
        assert [c.name for c in listed.collections] == ["real"]
    assert sorted(p.name for p in root.iterdir()) == ["real"]
    assert sorted(p.name for p in (root / "real").iterdir()) == ["collection.json", "gen-000001"]
