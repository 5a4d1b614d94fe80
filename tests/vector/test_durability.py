"""Acknowledged writes survive ``kill -9``: a real service process, killed mid-write."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lodestar.vector.v1 import vector_service_pb2 as pb
from lodestar.vector.v1 import vector_service_pb2_grpc as pb_grpc
from tests.vector.procfs import processes

DIMENSION = 32
WRITERS = 8
BATCH = 50


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServiceProcess:
    """``python -m lodestar.services.vector`` on a data directory."""

    def __init__(self, data_dir: Path, **extra_env: str) -> None:
        self.port = _free_port()
        env = {
            **os.environ,
            "LODESTAR_VECTOR_HOST": "127.0.0.1",
            "LODESTAR_VECTOR_PORT": str(self.port),
            "LODESTAR_VECTOR_METRICS_PORT": "0",
            "LODESTAR_VECTOR_DATA_DIR": str(data_dir),
            # Index builds start quickly, so that the kill can land in the middle of one.
            "LODESTAR_VECTOR_OPTIMIZE_DELAY_S": "0.05",
            "LODESTAR_VECTOR_OPTIMIZE_MAX_WAIT_S": "0.3",
            "LODESTAR_VECTOR_INDEXING_THRESHOLD_KB": "32",
            "LODESTAR_LOG_LEVEL": "WARNING",
            **extra_env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lodestar.services.vector"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def wait_serving(self, limit_s: float = 60) -> None:
        deadline = time.monotonic() + limit_s
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process.poll() is not None:
                    stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                    raise AssertionError(f"the service exited: {stderr[-3000:]}")
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                assert time.monotonic() < deadline, "the service did not start"
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process.stderr:
            self.process.stderr.close()


@pytest.fixture
def service_processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for service in started:
        service.stop()


def _optimizer_processes(data_dir: Path) -> list[int]:
    return processes("lodestar.services.vector.optimizer", str(data_dir))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills a process tree on Linux")
async def test_acknowledged_writes_survive_kill_9(
    tmp_path: Path, service_processes: list[ServiceProcess]
) -> None:
    first = ServiceProcess(tmp_path)
    service_processes.append(first)
    await first.wait_serving()
    acknowledged: dict[int, int] = {}  # point id → writer
    deleted: set[int] = set()
    # Deletes sent but not acknowledged when the service died: either outcome is right.
    unsettled: set[int] = set()
    stop = asyncio.Event()

    async with grpc.aio.insecure_channel(first.address) as channel:
        stub = pb_grpc.VectorServiceStub(channel)
        await stub.CreateCollection(
            pb.CreateCollectionRequest(
                name="ledger", config=pb.CollectionConfig(dimension=DIMENSION)
            )
        )

        async def writer(worker: int) -> None:
            batch = 0
            while not stop.is_set():
                ids = [worker * 1_000_000 + batch * BATCH + i for i in range(BATCH)]
                points = []
                for point_id in ids:
                    message = pb.Point(
                        id=pb.PointId(num=point_id),
                        vector=[float((point_id * (k + 1)) % 97) for k in range(DIMENSION)],
                    )
                    message.payload.update({"writer": worker})
                    points.append(message)
                try:
                    await stub.UpsertPoints(
                        pb.UpsertPointsRequest(collection="ledger", points=points)
                    )
                except grpc.aio.AioRpcError:
                    return  # the service is gone: this batch was never acknowledged
                acknowledged.update(dict.fromkeys(ids, worker))
                if batch % 7 == 3:
                    victim = ids[0]
                    unsettled.add(victim)
                    try:
                        await stub.DeletePoints(
                            pb.DeletePointsRequest(
                                collection="ledger",
                                selector=pb.PointsSelector(ids=[pb.PointId(num=victim)]),
                            )
                        )
                    except grpc.aio.AioRpcError:
                        return
                    unsettled.discard(victim)
                    deleted.add(victim)
                batch += 1

        async def killer() -> None:
            # Kill while writes are in flight and, if it gets there, an index build runs.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(acknowledged) < 20_000:
                if _optimizer_processes(tmp_path) and len(acknowledged) > 3_000:
                    break
                await asyncio.sleep(0.01)
            first.kill()
            stop.set()

        await asyncio.gather(killer(), *(writer(w) for w in range(WRITERS)))

    assert len(acknowledged) > 1_000
    # The optimizer child dies with the service (the kernel kills it; one that had not
    # yet asked for that when the service died notices and exits by itself).
    deadline = time.monotonic() + 60
    while _optimizer_processes(tmp_path):
        assert time.monotonic() < deadline, "an optimizer process outlived the service"
        await asyncio.sleep(0.05)

    second = ServiceProcess(tmp_path)
    service_processes.append(second)
    await second.wait_serving()
    async with grpc.aio.insecure_channel(second.address) as channel:
        stub = pb_grpc.VectorServiceStub(channel)
        wanted = sorted(acknowledged)
        found: dict[int, int] = {}
        for start in range(0, len(wanted), 1_000):
            chunk = [pb.PointId(num=i) for i in wanted[start : start + 1_000]]
            reply = await stub.GetPoints(
                pb.GetPointsRequest(collection="ledger", ids=chunk, with_payload=True)
            )
            found.update({p.id.num: int(p.payload["writer"]) for p in reply.points})
        missing = set(acknowledged) - deleted - unsettled - set(found)
        assert not missing, f"{len(missing)} acknowledged points were lost"
        assert not deleted & set(found), "acknowledged deletes came back"
        assert all(found[i] == acknowledged[i] for i in found)
        count = (await stub.CountPoints(pb.CountPointsRequest(collection="ledger"))).count
        # At most the batches in flight at the kill landed without an acknowledgement.
        assert (
            len(acknowledged) - len(deleted) - len(unsettled)
            <= count
            <= len(acknowledged) - len(deleted) + WRITERS * BATCH
        )
