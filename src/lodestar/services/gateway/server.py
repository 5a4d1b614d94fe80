"""Running the gateway app on uvicorn, with graceful shutdown.

On SIGTERM/SIGINT uvicorn stops accepting connections, lets in-flight requests
finish for up to ``shutdown_grace_s`` (streams included), then the app's
lifespan closes the backend channels and the rate-limit store.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator

import uvicorn
from fastapi import FastAPI

from lodestar.runtime.heap import settle_heap
from lodestar.runtime.logging import configure_logging
from lodestar.runtime.telemetry import configure_tracing, shutdown_tracing
from lodestar.services.gateway.app import create_app
from lodestar.services.gateway.flows.settings import FlowsSettings
from lodestar.services.gateway.settings import GatewaySettings


def create_server(
    settings: GatewaySettings,
    app: FastAPI | None = None,
    *,
    on_started: Callable[[], None] | None = None,
) -> uvicorn.Server:
    """An uvicorn server for the gateway (``await server.serve()`` runs it);
    ``on_started`` is called once it listens."""
    config = uvicorn.Config(
        app or create_app(settings),
        host=settings.host,
        port=settings.port,
        # The platform's logging is configured once; the gateway writes its own access log.
        log_config=None,
        access_log=False,
        # httptools where installed, else uvicorn's pure-Python h11 protocol.
        http="auto",
        loop="asyncio",
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
        timeout_keep_alive=30,
    )
    return _Server(config, on_started)


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising the stop signal once it has shut down
    gracefully: SIGTERM/SIGINT then end the process normally (exit status 0)
    instead of by the signal or with a KeyboardInterrupt traceback."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def bound_port(server: uvicorn.Server) -> int:
    """The port a started server listens on (useful with port 0)."""
    for listener in server.servers:
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("the gateway server is not listening")


async def serve(settings: GatewaySettings) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    configure_logging(settings.log_level, json_lines=settings.log_json)
    configure_tracing("lodestar-gateway")
    try:
        app = create_app(settings, FlowsSettings())
        await create_server(
            settings, app, on_started=lambda: settle_heap(settings.gc_threshold)
        ).serve()
    finally:
        shutdown_tracing()
