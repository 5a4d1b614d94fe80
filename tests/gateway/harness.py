"""Running gateway apps for tests: real uvicorn servers on port 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from lodestar.auth.tokens import mint_token
from lodestar.services.gateway.app import create_app
from lodestar.services.gateway.server import bound_port, create_server
from lodestar.services.gateway.settings import GatewaySettings

ROLES = ("viewer", "user", "editor", "operator", "admin")


@dataclass
class RunningGateway:
    app: FastAPI
    settings: GatewaySettings
    url: str

    def token(self, *roles: str, sub: str = "alice", ttl_s: float = 600, **claims: Any) -> str:
        return mint_token(self.settings, sub, list(roles), ttl_s, **claims)

    def auth(self, *roles: str, sub: str = "alice", **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(*roles, sub=sub, **claims)}"}

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", 30)
        return httpx.AsyncClient(base_url=self.url, **kwargs)


@contextlib.asynccontextmanager
async def run_gateway(
    settings: GatewaySettings, app: FastAPI | None = None
) -> AsyncIterator[RunningGateway]:
    """Serve ``app`` (by default the core gateway app of ``settings``)."""
    app = app or create_app(settings)
    server = create_server(settings, app)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("gateway server exited during startup")
        await asyncio.sleep(0.005)
    try:
        yield RunningGateway(app, settings, f"http://127.0.0.1:{bound_port(server)}")
    finally:
        server.should_exit = True
        await task


def gateway_settings(
    embedding: str, vector: str | Sequence[str], inference: str, **overrides: Any
) -> GatewaySettings:
    values: dict[str, Any] = {
        "port": 0,
        "embedding_addresses": embedding,
        "vector_addresses": vector if isinstance(vector, str) else ",".join(vector),
        "inference_addresses": inference,
        "access_log": False,
        "shutdown_grace_s": 1,
    }
    values.update(overrides)
    return GatewaySettings(**values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (make system-deps)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=os.environ.get("TMPDIR", "/tmp"),
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def sse_events(body: str) -> list[tuple[str, str]]:
    """(event, data) pairs of a Server-Sent Events body."""
    events = []
    for block in body.strip().split("\n\n"):
        if all(line.startswith(":") for line in block.splitlines()):
            continue  # a comment (keep-alive), which SSE clients ignore
        name, data = "message", ""
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        events.append((name, data))
    return events
