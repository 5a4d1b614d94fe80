"""Services as their own processes, the way ``lodestar run`` starts them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in a Prometheus text exposition."""
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


async def _grpc_serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        with contextlib.suppress(grpc.RpcError):
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    return False


async def _http_serving(url: str) -> bool:
    async with httpx.AsyncClient(timeout=1) as client:
        with contextlib.suppress(httpx.HTTPError):
            return (await client.get(url + "/api/v1/health")).status_code == 200
    return False


@contextlib.asynccontextmanager
async def service_process(
    module: str,
    env: dict[str, str],
    *,
    args: Sequence[str] = (),
    grpc_address: str | None = None,
    http_url: str | None = None,
    timeout_s: float = 300,
) -> AsyncIterator[int]:
    """``python -m module *args`` with ``env`` added, once it answers its health
    check (gRPC health at ``grpc_address``, or the gateway's ``/api/v1/health``
    at ``http_url``); its pid. SIGTERM (then SIGKILL) when the block ends."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        env={**os.environ, "LODESTAR_LOG_LEVEL": "WARNING", **env},
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"{module} exited with {process.returncode}")
            if grpc_address is not None and await _grpc_serving(grpc_address):
                break
            if http_url is not None and await _http_serving(http_url):
                break
            if grpc_address is None and http_url is None:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{module} did not become healthy in {timeout_s:g} s")
            await asyncio.sleep(0.1)
        yield process.pid
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
