"""The process bootstrap every service runs: ``run_service``.

In order: the CPU scheduling policy (before any thread starts, so that every thread
inherits it), logging, a check that the ports it will listen on are free (one line
naming the setting that moves a taken one, and exit status 1), the event loop,
tracing; then the service is built and started, the heap settles (``runtime.heap``),
and the process waits for SIGTERM or SIGINT. On the signal the service stops
gracefully (a gRPC server turns health NOT_SERVING and drains its calls, the gateway
finishes its requests), pending spans are flushed, and the process exits with status 0.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from lodestar.runtime import eventloop, scheduling
from lodestar.runtime.heap import settle_heap
from lodestar.runtime.logging import configure_logging
from lodestar.runtime.settings import ServiceSettings
from lodestar.runtime.telemetry import configure_tracing, shutdown_tracing

_log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Service(Protocol):
    """What the bootstrap runs: ``start`` returns once it serves, ``stop`` drains."""

    async def start(self) -> object: ...

    async def stop(self) -> None: ...


def run_service(
    settings: ServiceSettings,
    name: str,
    build: Callable[[], Awaitable[Service]],
    *,
    cpu_scheduling: scheduling.CpuScheduling | None = None,
) -> None:
    """Run the service ``build`` makes until SIGTERM/SIGINT, then stop it gracefully.

    ``name`` is the service's name in logs and traces; ``cpu_scheduling``, where given,
    is the policy of every thread of the process (None leaves the policy alone)."""
    if cpu_scheduling is not None:
        scheduling.apply(cpu_scheduling)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    taken = ports_in_use(settings)
    for port in taken:
        _log.error("%s: %s", name, port)
    if taken:
        raise SystemExit(1)
    eventloop.run(serve(settings, name, build), settings.event_loop)


@dataclass(frozen=True)
class PortInUse:
    """A port the service would listen on that another socket holds, and the setting
    that moves it: what an operator needs, in one line, instead of a bind's traceback."""

    host: str
    port: int
    variable: str

    def __str__(self) -> str:
        return f"port {self.port} on {self.host} is in use; set {self.variable} to another port"


def ports_in_use(settings: ServiceSettings) -> list[PortInUse]:
    """The ports of ``settings.listen_ports()`` that are taken on ``settings.host``.

    Checked before the service is built, so that a taken port fails at once, before a
    model loads, and by name. Each probe binds as the servers do (``SO_REUSEADDR``:
    connections of a previous process in TIME_WAIT do not count) and closes at once.
    A host that does not resolve is left to the server's own error."""
    host = settings.host.strip("[]")
    taken = []
    for field, port in settings.listen_ports().items():
        try:
            addresses = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except socket.gaierror:
            continue
        for family, kind, proto, _, address in addresses:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(address)
                except OSError as error:
                    if error.errno != errno.EADDRINUSE:
                        continue
                    taken.append(PortInUse(settings.host, port, settings.variable(field)))
                    break
    return taken


async def serve(
    settings: ServiceSettings, name: str, build: Callable[[], Awaitable[Service]]
) -> None:
    """The part of ``run_service`` that runs on the event loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before the build: a stop asked for while a model loads waits for it,
    # then stops what was built.
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    configure_tracing(name)
    try:
        service = await build()
        try:
            await service.start()
            settle_heap(settings.gc_threshold)
            await stop.wait()
            _log.info("shutdown requested")
        finally:
            await service.stop()
            _log.info("%s stopped", name)
    finally:
        shutdown_tracing()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
