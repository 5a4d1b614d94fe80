"""Running the gateway app on uvicorn, with graceful shutdown.

The process bootstrap (``runtime.process``) takes SIGTERM/SIGINT and stops the
``GatewayService``: uvicorn stops accepting connections, lets in-flight requests
finish for up to ``shutdown_grace_s`` (streams included), then the app's lifespan
closes the backend channels and the rate-limit store.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator

import uvicorn
from fastapi import FastAPI

from lodestar.services.gateway.app import create_app
from lodestar.services.gateway.flows.settings import FlowsSettings
from lodestar.services.gateway.settings import GatewaySettings


def create_server(
    settings: GatewaySettings,
    app: FastAPI | None = None,
    *,
    on_started: Callable[[], None] | None = None,
) -> uvicorn.Server:
    """An uvicorn server for the gateway: ``await server.serve()`` runs it until
    ``should_exit`` is set (it takes no signals itself); ``on_started`` is called once
    it listens."""
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
    """uvicorn's server without signal handlers of its own (whoever runs it owns the
    process's signals and sets ``should_exit``), calling ``on_started`` once it listens."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bound_port(server: uvicorn.Server) -> int:
    """The port a started server listens on (useful with port 0)."""
    for listener in server.servers:
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("the gateway server is not listening")


class GatewayService:
    """A gateway server as ``runtime.process.run_service`` runs it: ``start`` returns
    once it listens, ``stop`` lets in-flight requests finish and closes the app."""

    def __init__(self, settings: GatewaySettings, app: FastAPI) -> None:
        self._listening = asyncio.Event()
        self.server = create_server(settings, app, on_started=self._listening.set)
        self._serving: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Serve; returns the port once it listens (raises if it stopped instead)."""
        self._serving = asyncio.create_task(self.server.serve(), name="gateway-server")
        listening = asyncio.create_task(self._listening.wait())
        await asyncio.wait((self._serving, listening), return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        if not self._listening.is_set():
            await self._serving  # its error, if it failed
            raise RuntimeError("the gateway stopped while starting (see the log)")
        return bound_port(self.server)

    async def stop(self) -> None:
        if self._serving is None:
            return
        self.server.should_exit = True
        await self._serving


async def create_service(settings: GatewaySettings) -> GatewayService:
    """The gateway with its flows, not started yet."""
    return GatewayService(settings, create_app(settings, FlowsSettings()))
