"""Prometheus metrics served on a separate HTTP port per service."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

_log = logging.getLogger(__name__)


@dataclass
class MetricsServer:
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_metrics_server(
    host: str, port: int, registry: CollectorRegistry = REGISTRY
) -> MetricsServer:
    """Serve /metrics on host:port (0 picks a free port) from a daemon thread."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound = int(server.server_address[1])
    _log.info("metrics on http://%s:%d/metrics", host, bound)
    return MetricsServer(bound, server, thread)
