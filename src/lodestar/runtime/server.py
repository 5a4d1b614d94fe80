"""The gRPC aio server every gRPC service runs.

``GrpcServer`` owns the server, the standard health service, reflection, the
interceptor chain (with the tokens and permissions of ``auth.rpc``), TLS (``runtime.tls``)
and the metrics endpoint. ``stop`` shuts it down gracefully:
health turns NOT_SERVING first, in-flight calls are given ``shutdown_grace_s`` to
finish. ``runtime.process.run_service`` runs one until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from lodestar.auth.rpc import RpcAuthorizer
from lodestar.auth.tokens import TokenVerifier
from lodestar.runtime.interceptors import WrappingRegistrar, server_interceptors
from lodestar.runtime.keepalive import server_options
from lodestar.runtime.metrics import MetricsServer, start_metrics_server
from lodestar.runtime.settings import ServerSettings
from lodestar.runtime.tls import server_credentials, warn_if_exposed

_log = logging.getLogger(__name__)

# 64 MiB: batches of vectors are large messages.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServiceRegistration:
    """A servicer to add to the server, under its full proto service name."""

    name: str
    add_to_server: Callable[[grpc.aio.Server], None]


class GrpcServer:
    """A gRPC server with health, reflection, interceptors and metrics."""

    def __init__(
        self,
        settings: ServerSettings,
        services: Sequence[ServiceRegistration],
        *,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self._services = list(services)
        self._on_stop = on_stop
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._metrics: MetricsServer | None = None
        self.port = 0
        self.health_port: int | None = None
        self.metrics_port: int | None = None

    async def start(self) -> int:
        """Bind, start serving and mark every service SERVING; returns the port."""
        server = grpc.aio.server(
            interceptors=server_interceptors() or None,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                # Accepts the pings of the platform's channels (runtime.channels).
                *server_options(self.settings.grpc_keepalive_s),
            ],
        )
        # Handlers are wrapped in the per-call layers as they register (see interceptors).
        authorizer = RpcAuthorizer(
            TokenVerifier(self.settings), required=self.settings.require_token
        )
        registrar = cast(grpc.aio.Server, WrappingRegistrar(server, [authorizer.wrap]))
        for service in self._services:
            service.add_to_server(registrar)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        names = [s.name for s in self._services]
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(
                [
                    *names,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ]
            ),
            registrar,
        )
        credentials = server_credentials(self.settings)
        if credentials is None:
            warn_if_exposed(self.settings.host, self.settings, "the gRPC server")
            self.port = server.add_insecure_port(self.settings.address)
        else:
            self.port = server.add_secure_port(self.settings.address, credentials)
        if self.port == 0:
            raise RuntimeError(f"cannot bind gRPC server to {self.settings.address}")
        await server.start()
        self._server = server
        if self.settings.health_port is not None:
            await self._start_health_server(self.settings.health_port)
        if self.settings.metrics_port is not None:
            self._metrics = start_metrics_server(self.settings.host, self.settings.metrics_port)
            self.metrics_port = self._metrics.port
        for name in ("", *names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        _log.info(
            "serving %s on %s:%d (%s, tokens %s)",
            ", ".join(names),
            self.settings.host,
            self.port,
            "TLS" if credentials is not None else "plaintext",
            "required" if self.settings.require_token else "checked when sent",
        )
        return self.port

    async def _start_health_server(self, port: int) -> None:
        """Health alone, in plaintext, for probes that cannot speak TLS: it tells only
        whether the service serves, which every caller may ask anyway."""
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.health_port = server.add_insecure_port(f"{self.settings.host}:{port}")
        if self.health_port == 0:
            raise RuntimeError(f"cannot bind the health port {self.settings.host}:{port}")
        await server.start()
        self._health_server = server

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, wait shutdown_delay_s, drain in-flight calls, stop."""
        if self._server is None:
            return
        await self.health.enter_graceful_shutdown()
        if self.settings.shutdown_delay_s:
            await asyncio.sleep(self.settings.shutdown_delay_s)
        grace = self.settings.shutdown_grace_s if grace is None else grace
        _log.info("draining in-flight calls (grace %.1fs)", grace)
        await self._server.stop(grace)
        self._server = None
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
        if self._on_stop is not None:
            await self._on_stop()
        if self._metrics is not None:
            self._metrics.stop()
            self._metrics = None
