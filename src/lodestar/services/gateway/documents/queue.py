"""Document jobs through Redis with arq: the runner a gateway submits to, and
the worker that any gateway replica or ``lodestar worker`` process runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import asdict
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job
from arq.worker import Worker, func

from lodestar.services.gateway.backends import Backends
from lodestar.services.gateway.documents.calls import BackendCalls
from lodestar.services.gateway.documents.jobs import (
    CANCELLED,
    FAILED,
    FINISHED,
    JOB_FUNCTION,
    MAX_TRIES,
    QUEUED,
    RECORD_TTL_S,
    JobRecord,
    JobSpec,
    JobStore,
    RedisJobStore,
    run_job,
)
from lodestar.services.gateway.settings import GatewaySettings

_log = logging.getLogger(__name__)


def queue_name(settings: GatewaySettings) -> str:
    return f"{settings.redis_key_prefix}documents:queue"


def _records_prefix(settings: GatewaySettings) -> str:
    return f"{settings.redis_key_prefix}documents:job:"


class ArqJobRunner:
    def __init__(self, settings: GatewaySettings) -> None:
        self.store: JobStore = RedisJobStore(settings.redis_url, _records_prefix(settings))
        self._settings = settings
        self._queue = queue_name(settings)
        self._pool: ArqRedis | None = None

    async def _arq(self) -> ArqRedis:
        if self._pool is None:
            self._pool = await create_pool(
                RedisSettings.from_dsn(self._settings.redis_url), default_queue_name=self._queue
            )
        return self._pool

    async def submit(self, spec: JobSpec) -> None:
        pool = await self._arq()
        await pool.enqueue_job(
            JOB_FUNCTION, asdict(spec), _job_id=spec.job_id, _queue_name=self._queue
        )

    async def cancel(self, job_id: str) -> None:
        await self.store.update(job_id, cancel_requested=True)
        record = await self.store.get(job_id)
        if record is not None and record.status == QUEUED:
            await self.store.update(job_id, status=CANCELLED)

    async def get(self, job_id: str) -> JobRecord | None:
        """The record; a job arq gave up on (tries used up by dying workers) is
        marked failed with arq's reason."""
        record = await self.store.get(job_id)
        if record is None or record.status in FINISHED:
            return record
        pool = await self._arq()
        result = await Job(job_id, pool, _queue_name=self._queue).result_info()
        if result is not None and not result.success:
            reason = result.result
            error = f"the job did not finish: {type(reason).__name__} {reason}".rstrip()
            await self.store.update(job_id, status=FAILED, error=error)
            return await self.store.get(job_id)
        return record

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        await self.store.close()


async def _job(ctx: dict[str, Any], spec: dict[str, Any]) -> None:
    await run_job(JobSpec(**spec), ctx["jobs"], ctx["calls"], attempt=int(ctx["job_try"]))


def build_worker(settings: GatewaySettings, backends: Backends, jobs: RedisJobStore) -> Worker:
    """An arq worker taking document jobs off the deployment's queue."""
    return Worker(
        functions=[
            func(
                _job,
                name=JOB_FUNCTION,
                max_tries=MAX_TRIES,
                timeout=settings.document_job_timeout_s,
            )
        ],
        queue_name=queue_name(settings),
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        handle_signals=False,
        max_jobs=max(1, settings.document_jobs_per_process),
        job_timeout=settings.document_job_timeout_s,
        keep_result=RECORD_TTL_S,
        poll_delay=0.2,
        ctx={"jobs": jobs, "calls": BackendCalls.for_jobs(backends, settings)},
    )


class WorkerTask:
    """An arq worker running as a task of this process (a gateway's, or
    ``lodestar worker``'s main one); ``stop`` hands its running jobs back to
    the queue, for another worker to run again."""

    def __init__(self, settings: GatewaySettings, backends: Backends) -> None:
        self.jobs = RedisJobStore(settings.redis_url, _records_prefix(settings))
        self.worker = build_worker(settings, backends, self.jobs)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.worker.async_run())

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.worker.handle_sig(signal.SIGTERM)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        with contextlib.suppress(Exception):
            await self.worker.close()
        await self.jobs.close()
