"""The engine in a child process: its life tied to the service's, restarts, events.

The behavioural suite (``test_service_*.py``) runs over the engine process too; these
tests cover what only it has: a second process that can die on its own or be left
behind, calls that cross together and searches that reach the engine as one batch,
and the optimizer's metric counted across the process boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from lodestar.runtime.errors import NotFound
from lodestar.services.vector.embedded import EmbeddedBackend
from lodestar.services.vector.engine_process import EngineProcess, _Child
from lodestar.services.vector.models import ScoredHit, SearchQuery
from lodestar.services.vector.server import create_server
from lodestar.services.vector.wire import CoalescingWriter, FrameReader
from lodestar.vector.v1 import vector_service_pb2 as pb
from lodestar.vector.v1 import vector_service_pb2_grpc as pb_grpc
from tests.vector.conftest import vector_settings
from tests.vector.procfs import exited, maps_file, processes, resident_bytes
from tests.vector.test_durability import ServiceProcess

DIMENSION = 16


class Served:
    def __init__(self, backend: EngineProcess, stub: pb_grpc.VectorServiceStub) -> None:
        self.backend = backend
        self.stub = stub


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    settings = vector_settings(tmp_path, indexing_threshold_kb=16)
    backend = EngineProcess(settings)
    server = await create_server(settings, backend=backend)
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Served(backend, pb_grpc.VectorServiceStub(channel))
        await server.stop(5)


def _points(start: int, count: int) -> list[pb.Point]:
    rng = np.random.default_rng(start)
    vectors = rng.normal(size=(count, DIMENSION)).astype(np.float32)
    return [
        pb.Point(id=pb.PointId(num=i), vector=v.tolist())
        for i, v in zip(range(start, start + count), vectors, strict=True)
    ]


async def _create(stub: pb_grpc.VectorServiceStub, name: str, points: int) -> None:
    await stub.CreateCollection(
        pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(dimension=DIMENSION))
    )
    for start in range(0, points, 500):
        await stub.UpsertPoints(
            pb.UpsertPointsRequest(collection=name, points=_points(start, min(500, points - start)))
        )


async def test_a_child_that_dies_is_replaced_and_nothing_is_lost(served: Served) -> None:
    stub = served.stub
    await _create(stub, "kept", 1_200)
    restarts = REGISTRY.get_sample_value("lodestar_vector_engine_restarts_total") or 0.0
    first = served.backend.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)

    # Calls fail with UNAVAILABLE (retryable) until the service has noticed; then the
    # next call starts a new child, which opens the same data.
    deadline = time.monotonic() + 30
    while True:
        try:
            counted = await stub.CountPoints(pb.CountPointsRequest(collection="kept"))
            break
        except grpc.aio.AioRpcError as error:
            code = error.code()
        assert code == grpc.StatusCode.UNAVAILABLE, code
        assert time.monotonic() < deadline, "the engine process never came back"
        await asyncio.sleep(0.05)
    assert counted.count == 1_200
    assert served.backend.pid not in (None, first)
    assert REGISTRY.get_sample_value("lodestar_vector_engine_restarts_total") == restarts + 1
    hits = await stub.SearchPoints(
        pb.SearchPointsRequest(collection="kept", vector=_points(0, 500)[7].vector, limit=1)
    )
    assert hits.points[0].id.num == 7


async def test_calls_made_together_cross_to_the_child_and_back_in_one_write_each_way(
    served: Served,
) -> None:
    await _create(served.stub, "together", 300)
    backend = served.backend
    queries = [
        SearchQuery(vector=list(p.vector), limit=1 + i % 4, with_payload=i % 2 == 0)
        for i, p in enumerate(_points(0, 300)[:12])
    ]
    alone = [await backend.search("together", q) for q in queries]

    writer = backend._writer
    assert writer is not None
    transport = writer.transport
    writes: list[int] = []
    reads: list[int] = []

    class Recorded:  # the real transport, its writes counted
        def write(self, data: bytes) -> None:
            writes.append(len(data))
            transport.write(data)

        def is_closing(self) -> bool:
            return transport.is_closing()

    protocol = transport.get_protocol()
    received = protocol.data_received

    def data_received(data: bytes) -> None:
        reads.append(len(data))
        received(data)

    writer.transport = Recorded()  # type: ignore[assignment]
    protocol.data_received = data_received  # type: ignore[method-assign]
    try:
        together = await asyncio.gather(*(backend.search("together", q) for q in queries))
    finally:
        writer.transport = transport
        del protocol.data_received
    assert together == alone  # each caller got its own answer
    assert len(writes) == 1  # the twelve requests in one write
    assert len(reads) == 1  # and the twelve replies in one


class _Recorded:
    """A backend that records the engine calls it gets; a hit's id is its query's length."""

    def __init__(self, *, batches_fail: bool = False) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.batches_fail = batches_fail

    async def search(self, collection: str, query: SearchQuery) -> list[ScoredHit]:
        self.calls.append(("search", collection, 1))
        if not query.vector:
            raise NotFound("no such thing", reason="COLLECTION_NOT_FOUND")
        return [ScoredHit(id=len(query.vector), score=1.0, payload=None, vector=None)]

    async def search_batch(
        self, collection: str, queries: list[SearchQuery]
    ) -> list[list[ScoredHit]]:
        self.calls.append(("search_batch", collection, len(queries)))
        if self.batches_fail:
            raise NotFound("no such thing", reason="COLLECTION_NOT_FOUND")
        return [
            [ScoredHit(id=len(q.vector), score=1.0, payload=None, vector=None)] for q in queries
        ]

    async def count(self, collection: str, filter: object) -> int:
        self.calls.append(("count", collection, 0))
        return 42


class _Written:
    """A transport that keeps what is written, frame by frame."""

    def __init__(self, frames: int) -> None:
        self.writes: list[list[Any]] = []
        self.all_written = asyncio.Event()
        self._expected = frames

    def write(self, data: bytes) -> None:
        frames: list[Any] = []
        FrameReader(frames.extend, lambda exc: None).data_received(data)
        self.writes.append(frames)
        if sum(len(w) for w in self.writes) >= self._expected:
            self.all_written.set()

    def is_closing(self) -> bool:
        return False


def _search(key: int, collection: str, size: int) -> tuple[int, str, tuple[Any, ...], Any]:
    return (key, "search", (collection, SearchQuery(vector=[0.0] * size, limit=1)), {})


async def test_searches_that_arrive_together_go_to_the_engine_as_one_batch_in_order() -> None:
    child = _Child()
    backend = child.backend = _Recorded()
    transport = _Written(frames=8)
    child.writer = CoalescingWriter(transport)  # type: ignore[arg-type]
    child.received(
        [
            _search(1, "a", 1),
            _search(2, "a", 2),
            _search(3, "a", 3),
            _search(4, "b", 4),
            (5, "count", ("a", None), {}),
            _search(6, "a", 6),
            _search(7, "a", 7),
            (8, "no_such_call", (), {}),
        ]
    )
    await asyncio.wait_for(transport.all_written.wait(), 10)
    # Consecutive searches of one collection: one engine call; the rest in order.
    assert backend.calls == [
        ("search_batch", "a", 3),
        ("search", "b", 1),
        ("count", "a", 0),
        ("search_batch", "a", 2),
    ]
    # Every reply in one write, each caller's own answer.
    assert len(transport.writes) == 1
    replies = {key: (ok, value) for key, ok, value in transport.writes[0]}
    assert sorted(replies) == list(range(1, 9))
    for key in (1, 2, 3, 4, 6, 7):
        assert replies[key][0] is True
        assert [hit.id for hit in replies[key][1]] == [key]
    assert replies[5] == (True, 42)
    assert replies[8][0] is False
    assert isinstance(replies[8][1], ValueError)


async def test_a_batch_that_fails_answers_each_search_alone() -> None:
    child = _Child()
    backend = child.backend = _Recorded(batches_fail=True)
    transport = _Written(frames=3)
    child.writer = CoalescingWriter(transport)  # type: ignore[arg-type]
    child.received([_search(1, "a", 1), _search(2, "a", 0), _search(3, "a", 3)])
    await asyncio.wait_for(transport.all_written.wait(), 10)
    assert backend.calls == [("search_batch", "a", 3)] + [("search", "a", 1)] * 3
    replies = {key: (ok, value) for w in transport.writes for key, ok, value in w}
    assert [hit.id for hit in replies[1][1]] == [1]
    assert replies[2][0] is False
    assert isinstance(replies[2][1], NotFound)
    assert [hit.id for hit in replies[3][1]] == [3]


async def test_concurrent_searches_batched_together_get_their_own_answers(
    served: Served,
) -> None:
    stub = served.stub
    name = "batched"
    await stub.CreateCollection(
        pb.CreateCollectionRequest(
            name=name,
            config=pb.CollectionConfig(
                dimension=DIMENSION, payload_schema={"i": pb.PAYLOAD_FIELD_TYPE_INTEGER}
            ),
        )
    )
    points = _points(0, 400)
    for point in points:
        point.payload.update({"i": point.id.num})
    await stub.UpsertPoints(pb.UpsertPointsRequest(collection=name, points=points))
    rng = np.random.default_rng(5)
    requests = [
        pb.SearchPointsRequest(
            collection=name,
            vector=rng.normal(size=DIMENSION).astype(np.float32).tolist(),
            limit=1 + i % 7,
            offset=i % 3,
            with_payload=i % 2 == 0,
            filter=pb.Filter(
                must=[pb.Condition(field=pb.FieldCondition(key="i", range=pb.Range(lt=100 + i)))]
            ),
        )
        for i in range(64)
    ]
    alone = [await stub.SearchPoints(r) for r in requests]
    together = await asyncio.gather(*(stub.SearchPoints(r) for r in requests))
    for single, batched in zip(alone, together, strict=True):
        assert [p.id.num for p in batched.points] == [p.id.num for p in single.points]
        assert [p.payload for p in batched.points] == [p.payload for p in single.points]


async def test_index_builds_in_the_child_are_counted_by_the_service(served: Served) -> None:
    def runs() -> float:
        value = REGISTRY.get_sample_value(
            "lodestar_vector_optimizer_runs_total", {"collection": "counted"}
        )
        return value or 0.0

    before = runs()
    # 2,000 × 16 floats = 128 KB of vectors: above the 16 KB indexing threshold.
    await _create(served.stub, "counted", 2_000)
    deadline = time.monotonic() + 60
    while runs() == before:
        assert time.monotonic() < deadline, "no index build was counted"
        await asyncio.sleep(0.1)
    info = (await served.stub.GetCollection(pb.GetCollectionRequest(name="counted"))).collection
    assert info.indexed_vectors_count > 0


async def test_stopping_the_service_stops_the_child(tmp_path: Path) -> None:
    settings = vector_settings(tmp_path)
    backend = EngineProcess(settings)
    server = await create_server(settings, backend=backend)
    await server.start()
    pid = backend.pid
    assert pid is not None
    assert not exited(pid)
    await server.stop(5)
    assert backend.returncode == 0
    assert exited(pid)


async def test_the_child_dies_with_a_killed_service(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path)
    try:
        await service.wait_serving()
        children = processes("engine_process", parent=service.process.pid)
        assert len(children) == 1, children
        child = children[0]
        service.kill()
        deadline = time.monotonic() + 10
        while not exited(child):
            assert time.monotonic() < deadline, "the engine process outlived the service"
            await asyncio.sleep(0.05)
    finally:
        if service.process.poll() is None:
            service.kill()


@contextlib.asynccontextmanager
async def _service_and_engine(tmp_path: Path, **env: str) -> AsyncIterator[ServiceProcess]:
    """A serving service process, after one call (so that grpc's threads and the
    engine's worker threads exist), stopped afterwards."""
    service = ServiceProcess(tmp_path, **env)
    try:
        await service.wait_serving()
        async with grpc.aio.insecure_channel(service.address) as channel:
            await pb_grpc.VectorServiceStub(channel).ListCollections(pb.ListCollectionsRequest())
        yield service
    finally:
        service.stop()


def _service_and_child_pids(service: ServiceProcess) -> tuple[int, int]:
    (child,) = processes("engine_process", parent=service.process.pid)
    return service.process.pid, child


@pytest.mark.parametrize(("choice", "uvloop"), [("auto", True), ("asyncio", False)])
async def test_the_service_and_its_engine_process_run_the_chosen_event_loop(
    tmp_path: Path, choice: str, uvloop: bool
) -> None:
    async with _service_and_engine(tmp_path, LODESTAR_EVENT_LOOP=choice) as service:
        for pid in _service_and_child_pids(service):
            assert maps_file(pid, "/uvloop/loop.") is uvloop  # uvloop's extension is loaded


def _policies(pid: int) -> set[int]:
    """The scheduling policies of a process's threads."""
    policies = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that has exited since
            policies.add(os.sched_getscheduler(int(tid)))
    return policies


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
@pytest.mark.parametrize(
    ("choice", "policy"), [("batch", "SCHED_BATCH"), ("normal", "SCHED_OTHER")]
)
async def test_every_thread_of_the_service_and_its_engine_process_runs_the_chosen_scheduling(
    tmp_path: Path, choice: str, policy: str
) -> None:
    async with _service_and_engine(tmp_path, LODESTAR_VECTOR_CPU_SCHEDULING=choice) as service:
        for pid in _service_and_child_pids(service):
            assert len(os.listdir(f"/proc/{pid}/task")) > 1
            assert _policies(pid) == {getattr(os, policy)}, pid


async def test_one_process_per_data_directory(tmp_path: Path) -> None:
    settings = vector_settings(tmp_path, data_lock_wait_s=0.2)
    first = EmbeddedBackend(settings)
    await first.open()
    try:
        with pytest.raises(RuntimeError, match="in use by another vector service process"):
            await EmbeddedBackend(settings).open()
    finally:
        await first.close()
    # Released on close: the directory opens again.
    again = EmbeddedBackend(settings)
    await again.open()
    await again.close()


async def test_a_child_that_cannot_open_the_data_stops_and_the_error_says_why(
    tmp_path: Path,
) -> None:
    settings = vector_settings(tmp_path, data_lock_wait_s=0.5)
    holder = EmbeddedBackend(settings)  # holds the data directory's lock
    await holder.open()
    try:
        backend = EngineProcess(settings)
        with pytest.raises(RuntimeError, match="in use by another vector service process"):
            await backend.open()  # the child waits for the lock, then gives up
        assert backend.returncode is not None
    finally:
        await holder.close()


async def test_the_childs_cpu_and_memory_are_exported_by_the_service(served: Served) -> None:
    await _create(served.stub, "measured", 500)
    pid = served.backend.pid
    assert pid is not None
    exported = REGISTRY.get_sample_value("lodestar_vector_engine_process_resident_memory_bytes")
    resident = resident_bytes(pid)
    assert exported is not None
    assert abs(exported - resident) < 0.2 * resident, (exported, resident)
    cpu = REGISTRY.get_sample_value("lodestar_vector_engine_process_cpu_seconds_total")
    assert cpu is not None
    assert cpu > 0
