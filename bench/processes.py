"""Services as their own processes, the way ``lodestar run`` starts them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

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


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux /proc); empty once it has exited."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as listing:
            found.extend(int(child) for child in listing.read().split())
    return found


async def _grpc_serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        with contextlib.suppress(grpc.RpcError):
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    return False


async def _http_ok(url: str) -> bool:
    async with httpx.AsyncClient(timeout=1) as client:
        with contextlib.suppress(httpx.HTTPError):
            return (await client.get(url)).status_code == 200
    return False


@contextlib.asynccontextmanager
async def command_process(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    ready: Callable[[], Awaitable[bool]] | None = None,
    quiet: bool = False,
    timeout_s: float = 300,
) -> AsyncIterator[int]:
    """``argv`` as a process (``env`` added to this one's; its output discarded, and
    its error output too when ``quiet``), once ``ready()`` is true; its pid. SIGTERM
    (then SIGKILL) when the block ends."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL if quiet else None,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while ready is not None and not await ready():
            if process.returncode is not None:
                raise RuntimeError(f"{argv[0]} exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} was not ready in {timeout_s:g} s")
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


def http_ready(url: str) -> Callable[[], Awaitable[bool]]:
    """A readiness probe: GET ``url`` answers 200."""
    return functools.partial(_http_ok, url)


def service_process(
    module: str,
    env: dict[str, str],
    *,
    args: Sequence[str] = (),
    grpc_address: str | None = None,
    http_url: str | None = None,
    timeout_s: float = 300,
) -> contextlib.AbstractAsyncContextManager[int]:
    """``python -m module *args`` with ``env`` added, once it answers its health
    check (gRPC health at ``grpc_address``, or the gateway's ``/api/v1/health``
    at ``http_url``); its pid. SIGTERM (then SIGKILL) when the block ends."""
    ready: Callable[[], Awaitable[bool]] | None = None
    if grpc_address is not None:
        ready = functools.partial(_grpc_serving, grpc_address)
    elif http_url is not None:
        ready = http_ready(http_url + "/api/v1/health")
    return command_process(
        [sys.executable, "-m", module, *args],
        env={"LODESTAR_LOG_LEVEL": "WARNING", **env},
        ready=ready,
        timeout_s=timeout_s,
    )


# Request budgets no benchmark reaches: the gateway's limits stay out of its figures.
UNLIMITED_REQUESTS = '{"read": 1000000000, "write": 1000000000, "generate": 1000000000}'


@contextlib.asynccontextmanager
async def stack_processes(
    prefix: str, gateway_env: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The four services as their own processes on free loopback ports (the vector
    service in a temporary data directory, the gateway without rate limits, access
    log or metrics ports, plus ``gateway_env``); yields the gateway's URL and each
    backend's gRPC address."""
    ports = {name: free_port() for name in ("embedding", "vector", "inference", "gateway")}
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    envs = {
        "embedding": {"LODESTAR_EMBEDDING_PORT": str(ports["embedding"])},
        "vector": {
            "LODESTAR_VECTOR_PORT": str(ports["vector"]),
            "LODESTAR_VECTOR_DATA_DIR": tempfile.mkdtemp(prefix=prefix),
        },
        "inference": {"LODESTAR_INFERENCE_PORT": str(ports["inference"])},
    }
    for name, env in envs.items():
        env[f"LODESTAR_{name.upper()}_METRICS_PORT"] = "0"
    gateway = {
        "LODESTAR_GATEWAY_PORT": str(ports["gateway"]),
        "LODESTAR_GATEWAY_EMBEDDING_ADDRESSES": addresses["embedding"],
        "LODESTAR_GATEWAY_VECTOR_ADDRESSES": addresses["vector"],
        "LODESTAR_GATEWAY_INFERENCE_ADDRESSES": addresses["inference"],
        "LODESTAR_GATEWAY_ACCESS_LOG": "false",
        "LODESTAR_GATEWAY_REQUESTS_PER_MINUTE": UNLIMITED_REQUESTS,
        "LODESTAR_GATEWAY_GENERATED_TOKENS_PER_MINUTE": "0",
        **(gateway_env or {}),
    }
    url = f"http://127.0.0.1:{ports['gateway']}"
    async with contextlib.AsyncExitStack() as stack:
        for name, env in envs.items():
            await stack.enter_async_context(
                service_process(f"lodestar.services.{name}", env, grpc_address=addresses[name])
            )
        await stack.enter_async_context(
            service_process("lodestar.services.gateway", gateway, http_url=url)
        )
        yield url, addresses
