"""``lodestar worker``: run document jobs off the Redis queue, apart from the gateways.

It reads the gateway's settings (the same ``LODESTAR_GATEWAY_*`` environment:
backend addresses, Redis URL and key prefix, job limits), so that a worker
Deployment shares the gateway's configuration. SIGTERM hands the jobs it is
running back to the queue (arq runs them again elsewhere) and exits.

While its arq worker runs, it touches a heartbeat file every few seconds;
``--check`` (the container's probes) exits 0 only while that file is fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from lodestar.runtime.logging import configure_logging
from lodestar.services.gateway.backends import Backends
from lodestar.services.gateway.documents.queue import WorkerTask
from lodestar.services.gateway.settings import GatewaySettings

HEARTBEAT_S = 5.0
# A heartbeat older than this fails the probe.
STALE_S = 60.0


def heartbeat_path() -> Path:
    return Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "lodestar-worker.alive"


async def _beat(worker: WorkerTask, path: Path) -> None:
    while worker.task is not None and not worker.task.done():
        await asyncio.to_thread(path.touch)
        await asyncio.sleep(HEARTBEAT_S)


def check(path: Path) -> int:
    """0 while the worker's heartbeat is fresh, else 1."""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        print(f"no heartbeat at {path}", file=sys.stderr)
        return 1
    if age > STALE_S:
        print(f"the last heartbeat is {age:.0f} s old", file=sys.stderr)
        return 1
    return 0


async def run_worker(settings: GatewaySettings, stop: asyncio.Event) -> None:
    backends = Backends(settings)
    worker = WorkerTask(settings, backends)
    worker.start()
    assert worker.task is not None
    beat = asyncio.create_task(_beat(worker, heartbeat_path()))
    try:
        await asyncio.wait(
            {worker.task, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        beat.cancel()
        await worker.stop()
        await backends.close()


def worker_main(argv: list[str]) -> int:
    """Run ``lodestar worker`` (it takes no arguments; settings come from the environment)."""
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv == ["--check"]:
        return check(heartbeat_path())
    if argv:
        print(f"lodestar worker: unexpected arguments {' '.join(argv)}", file=sys.stderr)
        return 2
    settings = GatewaySettings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    if not settings.redis_url:
        print(
            "lodestar worker: set LODESTAR_GATEWAY_REDIS_URL; without Redis, document jobs "
            "run inside the gateway",
            file=sys.stderr,
        )
        return 2
    if settings.document_jobs_per_process < 1:
        print("lodestar worker: LODESTAR_GATEWAY_DOCUMENT_JOBS_PER_PROCESS is 0", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        await run_worker(settings, stop)

    asyncio.run(main())
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
