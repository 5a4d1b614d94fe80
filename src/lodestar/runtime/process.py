"""The process bootstrap every service runs: ``run_service``.

In order: the CPU scheduling policy (before any thread starts, so that every thread
inherits it), logging, the event loop, tracing; then the service is built and
started, the heap settles (``runtime.heap``), and the process waits for SIGTERM or
SIGINT. On the signal the service stops gracefully (a gRPC server turns health
NOT_SERVING and drains its calls, the gateway finishes its requests), pending
spans are flushed, and the process exits with status 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
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
    eventloop.run(serve(settings, name, build), settings.event_loop)


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
