"""The gateway: REST and Server-Sent Events over the gRPC services, with JWT
permissions, rate limits, circuit breakers and failover."""

from __future__ import annotations

from lodestar.services.gateway.app import Extension, create_app
from lodestar.services.gateway.server import create_server
from lodestar.services.gateway.settings import GatewaySettings

__all__ = ["Extension", "GatewaySettings", "create_app", "create_server"]
