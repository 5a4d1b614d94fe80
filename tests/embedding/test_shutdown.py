"""SIGTERM on a real service process: the call in flight finishes, then the process exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lodestar.embedding.v1 import embedding_service_pb2 as pb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as pb_grpc
from lodestar.services.embedding.server import SERVICE_NAME


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _texts_embedded(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("lodestar_embedding_texts_total "):
                return float(line.split()[1])
    return 0.0


@pytest.fixture
def service() -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    port, metrics_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "LODESTAR_EMBEDDING_PORT": str(port),
        "LODESTAR_EMBEDDING_METRICS_PORT": str(metrics_port),
        # Small batches: one long request becomes many forward passes.
        "LODESTAR_EMBEDDING_MAX_BATCH_SIZE": "4",
        "LODESTAR_EMBEDDING_SHUTDOWN_GRACE_S": "60",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "lodestar.services.embedding"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    yield process, port, metrics_port
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)
    if process.stderr is not None:
        process.stderr.close()


async def _wait_serving(channel: grpc.aio.Channel, process: subprocess.Popen[bytes]) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "the service exited during start-up"
        try:
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=2
            )
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.2)
    pytest.fail("the service did not become healthy within 120 s")


async def test_sigterm_drains_the_call_in_flight_and_exits_zero(
    service: tuple[subprocess.Popen[bytes], int, int],
) -> None:
    process, port, metrics_port = service
    texts = [
        f"Paragraph {i}: " + "the tide came in over the old stone pier. " * 30 for i in range(32)
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await _wait_serving(channel, process)
        stub = pb_grpc.EmbeddingServiceStub(channel)
        call = asyncio.ensure_future(
            stub.EmbedTexts(pb.EmbedTextsRequest(texts=texts), timeout=120)
        )
        # In flight for sure: its first forward pass is done, seven more are to come.
        deadline = time.monotonic() + 60
        while await asyncio.to_thread(_texts_embedded, metrics_port) < 4:
            assert time.monotonic() < deadline, "the request never started"
            assert not call.done(), "the request ended before the service saw it"
            await asyncio.sleep(0.01)
        assert not call.done()
        process.send_signal(signal.SIGTERM)

        reply = await call
    assert len(reply.embeddings) == len(texts)
    assert all(e.truncated for e in reply.embeddings)
    code = await asyncio.to_thread(process.wait, 60)
    stderr = process.stderr.read().decode() if process.stderr else ""
    assert code == 0, stderr
    assert "draining in-flight calls" in stderr
