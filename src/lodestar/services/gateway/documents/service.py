"""``Documents``: a gateway's job runner, and its arq worker when it has Redis."""

from __future__ import annotations

from lodestar.services.gateway.backends import Backends
from lodestar.services.gateway.documents.calls import BackendCalls
from lodestar.services.gateway.documents.jobs import JobRunner, LocalJobRunner
from lodestar.services.gateway.documents.queue import ArqJobRunner, WorkerTask
from lodestar.services.gateway.settings import GatewaySettings


class Documents:
    def __init__(self, settings: GatewaySettings, backends: Backends) -> None:
        self.runner: JobRunner
        self.worker: WorkerTask | None = None
        if settings.redis_url:
            self.runner = ArqJobRunner(settings)
            if settings.document_jobs_per_process > 0:
                self.worker = WorkerTask(settings, backends)
        else:
            self.runner = LocalJobRunner(BackendCalls.for_jobs(backends, settings))

    def start(self) -> None:
        if self.worker is not None:
            self.worker.start()

    async def close(self) -> None:
        if self.worker is not None:
            await self.worker.stop()
        await self.runner.close()
