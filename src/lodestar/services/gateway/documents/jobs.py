"""Document jobs: their records, and running them in process or through arq.

A job's record (status, progress, error, the stored document) lives in a
``JobStore``: in memory on a gateway without Redis, else in a Redis hash that
every gateway replica and ``lodestar worker`` reads and writes, one field at a
time so that a cancel request and the worker's progress never overwrite each
other. Without Redis a job is an asyncio task of the gateway that received it.
With Redis it is an arq job (arq: asyncio-native like the gateway, and its
jobs survive a dead worker: the job's in-progress key expires one job timeout
later and another worker runs it again, up to ``MAX_TRIES``; past that arq
records the failure, which ``get`` reports). Cancelling sets a flag that the
job reads after every batch of chunks; an in-process job's task is also
cancelled at once. A try that starts over writes a new version: the document
pipeline removes whatever an earlier, unfinished try left.

The store also indexes the jobs of each (tenant, collection) from their
creation until they succeed or are cancelled, so that the document list can
say which documents a job is writing (or last failed to write) without
reading every job record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import orjson

from lodestar.documents.formats import DocumentFormat, DocumentFormatError, parse_document
from lodestar.documents.pipeline import DocumentInput, EmptyDocument, WriteOptions, put_document
from lodestar.documents.store import DocumentStore, VectorCalls
from lodestar.ingest.chunking import ChunkingOptions
from lodestar.runtime.errors import LodestarError

_log = logging.getLogger(__name__)

MAX_TRIES = 3
JOB_FUNCTION = "lodestar_document_job"
# Finished jobs are kept this long for their callers to read.
RECORD_TTL_S = 24 * 3600

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})


@dataclass
class JobRecord:
    id: str
    collection: str
    tenant: str
    subject: str
    document_id: str
    title: str = ""
    source: str = ""
    status: str = QUEUED
    chunks_done: int = 0
    chunks_total: int = 0
    attempt: int = 0
    # host:pid of the process running (or that last ran) it.
    worker: str = ""
    error: str = ""
    cancel_requested: bool = False
    document: dict[str, Any] | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "collection": self.collection,
            "document_id": self.document_id,
            "status": self.status,
            "progress": {"chunks_done": self.chunks_done, "chunks_total": self.chunks_total},
            "attempt": self.attempt,
            "worker": self.worker,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }
        if self.error:
            out["error"] = self.error
        if self.document is not None:
            out["document"] = self.document
        return out


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex


class JobCancelled(Exception):
    """The job's cancel flag was seen between two batches."""


class JobStore(Protocol):
    async def create(self, record: JobRecord) -> None:
        """Store a new record, and index it under its tenant and collection."""

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def update(self, job_id: str, **fields: Any) -> None: ...

    async def indexed(self, tenant: str, collection: str) -> dict[str, str]:
        """The collection's jobs not yet unindexed: job id -> document id."""

    async def unindex(self, tenant: str, collection: str, job_id: str) -> None: ...

    async def close(self) -> None: ...


class MemoryJobStore:
    def __init__(self) -> None:
        self._records: dict[str, JobRecord] = {}
        self._index: dict[tuple[str, str], dict[str, str]] = {}

    async def create(self, record: JobRecord) -> None:
        self._records[record.id] = record
        index = self._index.setdefault((record.tenant, record.collection), {})
        index[record.id] = record.document_id

    async def indexed(self, tenant: str, collection: str) -> dict[str, str]:
        return dict(self._index.get((tenant, collection), {}))

    async def unindex(self, tenant: str, collection: str, job_id: str) -> None:
        self._index.get((tenant, collection), {}).pop(job_id, None)

    async def get(self, job_id: str) -> JobRecord | None:
        return self._records.get(job_id)

    async def update(self, job_id: str, **fields: Any) -> None:
        record = self._records.get(job_id)
        if record is not None:
            for key, value in fields.items():
                setattr(record, key, value)
            record.updated_at = time.time()

    async def close(self) -> None:
        return None


class RedisJobStore:
    """Job records as Redis hashes (one JSON value per field)."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio as redis_asyncio

        self.redis = redis_asyncio.Redis.from_url(url)
        self._prefix = prefix

    def _key(self, job_id: str) -> str:
        return f"{self._prefix}{job_id}"

    def _index_key(self, tenant: str, collection: str) -> str:
        # A hash of job id -> document id; job ids start "job-", so no record
        # key is an index key.
        return f"{self._prefix}index:{len(tenant)}:{tenant}:{collection}"

    async def create(self, record: JobRecord) -> None:
        key = self._key(record.id)
        index = self._index_key(record.tenant, record.collection)
        values = {k: orjson.dumps(v) for k, v in asdict(record).items()}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=values)  # type: ignore[arg-type]
            pipe.expire(key, RECORD_TTL_S)
            pipe.hset(index, record.id, record.document_id)
            pipe.expire(index, RECORD_TTL_S)
            await pipe.execute()

    async def indexed(self, tenant: str, collection: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self._index_key(tenant, collection))  # type: ignore[misc]
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def unindex(self, tenant: str, collection: str, job_id: str) -> None:
        await self.redis.hdel(self._index_key(tenant, collection), job_id)  # type: ignore[misc]

    async def get(self, job_id: str) -> JobRecord | None:
        raw = await self.redis.hgetall(self._key(job_id))  # type: ignore[misc]
        if not raw:
            return None
        values = {k.decode(): orjson.loads(v) for k, v in raw.items()}
        return JobRecord(**values)

    async def update(self, job_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        values = {k: orjson.dumps(v) for k, v in fields.items()}
        await self.redis.hset(self._key(job_id), mapping=values)  # type: ignore[arg-type,misc]

    async def close(self) -> None:
        await self.redis.aclose()


@dataclass(frozen=True)
class JobSpec:
    """What a job needs to write its document (its upload's bytes included)."""

    job_id: str
    collection: str
    tenant: str
    document_id: str
    source: str
    title: str
    format: str
    data: bytes
    chunk_size: int
    chunk_overlap: int
    text_key: str

    def parse(self) -> DocumentInput:
        parsed = parse_document(self.data, DocumentFormat(self.format))
        return DocumentInput(
            self.document_id,
            self.source,
            self.title or parsed.title or self.source,
            parsed,
            len(self.data),
        )


async def run_job(
    spec: JobSpec,
    jobs: JobStore,
    calls: VectorCalls,
    attempt: int = 1,
    on_progress: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Write a job's document, keeping its record up to date; never raises for
    a failure of the job itself (that is recorded), only for a cancelled task
    that was not asked to stop (e.g. a worker shutting down)."""
    record = await jobs.get(spec.job_id)
    if record is None or record.status in FINISHED:
        return
    if record.cancel_requested:
        await jobs.update(spec.job_id, status=CANCELLED)
        return
    await jobs.update(
        spec.job_id,
        status=RUNNING,
        attempt=attempt,
        chunks_done=0,
        error="",
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )

    async def progress(done: int, total: int) -> None:
        current = await jobs.get(spec.job_id)
        if current is not None and current.cancel_requested:
            raise JobCancelled
        await jobs.update(spec.job_id, chunks_done=done, chunks_total=total)
        if on_progress is not None:
            await on_progress()

    store = DocumentStore(calls, spec.collection, tenant=spec.tenant, text_key=spec.text_key)
    try:
        document = await asyncio.to_thread(spec.parse)
        options = WriteOptions(ChunkingOptions(spec.chunk_size, spec.chunk_overlap))
        info = (await put_document(store, document, options, progress)).document
    except JobCancelled:
        await jobs.update(spec.job_id, status=CANCELLED)
        await jobs.unindex(spec.tenant, spec.collection, spec.job_id)
    except asyncio.CancelledError:
        current = await jobs.get(spec.job_id)
        if current is not None and current.cancel_requested:
            await jobs.update(spec.job_id, status=CANCELLED)
            await jobs.unindex(spec.tenant, spec.collection, spec.job_id)
            return
        raise
    except (DocumentFormatError, EmptyDocument, LodestarError) as error:
        await jobs.update(spec.job_id, status=FAILED, error=str(error))
    except Exception as error:
        _log.exception("document job %s failed", spec.job_id)
        await jobs.update(spec.job_id, status=FAILED, error=f"{type(error).__name__}: {error}")
    else:
        await jobs.update(
            spec.job_id, status=SUCCEEDED, chunks_done=info.chunks, document=info.as_dict()
        )
        await jobs.unindex(spec.tenant, spec.collection, spec.job_id)


class JobRunner(Protocol):
    """Starts and stops jobs; ``get`` may correct a record from the queue's view."""

    store: JobStore

    async def submit(self, spec: JobSpec) -> None: ...

    async def cancel(self, job_id: str) -> None: ...

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def close(self) -> None: ...


class LocalJobRunner:
    """Jobs as tasks of this process."""

    def __init__(self, calls: VectorCalls) -> None:
        self.store: JobStore = MemoryJobStore()
        self._calls = calls
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def submit(self, spec: JobSpec) -> None:
        task = asyncio.create_task(run_job(spec, self.store, self._calls))
        self._tasks[spec.job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(spec.job_id, None))

    async def cancel(self, job_id: str) -> None:
        await self.store.update(job_id, cancel_requested=True)
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task})
        else:
            record = await self.store.get(job_id)
            if record is not None and record.status == QUEUED:
                await self.store.update(job_id, status=CANCELLED)

    async def get(self, job_id: str) -> JobRecord | None:
        return await self.store.get(job_id)

    async def close(self) -> None:
        tasks = dict(self._tasks)
        for task in tasks.values():
            task.cancel()
        if tasks:
            await asyncio.wait(set(tasks.values()))
        for job_id in tasks:
            record = await self.store.get(job_id)
            if record is not None and record.status not in FINISHED:
                await self.store.update(
                    job_id, status=FAILED, error="the gateway stopped before the job finished"
                )
