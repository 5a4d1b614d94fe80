"""Gateways with the flows, served by uvicorn on free ports, and SSE parsing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from lodestar.auth.tokens import mint_token
from lodestar.services.gateway.app import create_app as create_flows_app
from lodestar.services.gateway.flows.settings import FlowsSettings
from lodestar.services.gateway.server import bound_port, create_server
from lodestar.services.gateway.settings import GatewaySettings

GENEROUS_LIMITS = {"generate": 100_000, "read": 100_000, "write": 100_000, "admin": 100_000}


@dataclass
class RunningGateway:
    app: FastAPI
    settings: GatewaySettings
    url: str

    def token(self, *roles: str, sub: str = "alice", ttl_s: float = 600, **claims: Any) -> str:
        return mint_token(self.settings, sub, list(roles), ttl_s, **claims)

    def auth(self, *roles: str, sub: str = "alice", **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(*roles, sub=sub, **claims)}"}

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=60)


def gateway_settings(
    embedding: str, vector: str, inference: str, **overrides: Any
) -> GatewaySettings:
    return GatewaySettings(
        port=0,
        embedding_addresses=embedding,  # type: ignore[arg-type]
        vector_addresses=vector,  # type: ignore[arg-type]
        inference_addresses=inference,  # type: ignore[arg-type]
        access_log=False,
        shutdown_grace_s=1,
        requests_per_minute=GENEROUS_LIMITS,  # type: ignore[arg-type]
        generated_tokens_per_minute=10_000_000,
        **overrides,
    )


@contextlib.asynccontextmanager
async def run_gateway(
    settings: GatewaySettings, flows: FlowsSettings
) -> AsyncIterator[RunningGateway]:
    app = create_flows_app(settings, flows)
    server = create_server(settings, app)
    handlers = _signal_handlers()
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the gateway exited during startup")
        await asyncio.sleep(0.005)
    try:
        taken = _signal_handlers()
        assert taken == handlers, f"the gateway took the test process's signals: {taken}"
        yield RunningGateway(app, settings, f"http://127.0.0.1:{bound_port(server)}")
    finally:
        server.should_exit = True
        await task


def _signal_handlers() -> dict[signal.Signals, object]:
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def sse_events(body: str) -> list[tuple[str, Any]]:
    """(event, decoded data) pairs of a Server-Sent Events body."""
    events: list[tuple[str, Any]] = []
    for block in body.strip().split("\n\n"):
        if all(line.startswith(":") for line in block.splitlines()):
            continue  # a comment (keep-alive), which SSE clients ignore
        name, data = "message", ""
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        events.append((name, json.loads(data) if data.startswith(("{", "[")) else data))
    return events
