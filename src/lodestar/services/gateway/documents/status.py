"""A document's status in the documents API, from the jobs that write it.

``ready``: the listed version is whole and nothing is rewriting it.
``processing``: a job (queued or running) is writing a new version; reads still
serve the previous one, if any. ``failed``: the document's last job failed and
no version was committed since it was submitted; reads serve the previous one.
A document whose first upload is still being written is listed as processing
with no chunks; one whose first upload failed is not a document (its job says
why). Jobs are found through the job store's per-collection index, which drops
a job once it succeeded, was cancelled, or was outdated by a later version.
"""

from __future__ import annotations

import asyncio
import dataclasses

from lodestar.documents.model import DocumentInfo, version_time
from lodestar.services.gateway.documents.jobs import (
    FAILED,
    QUEUED,
    RUNNING,
    JobRecord,
    JobRunner,
)

PROCESSING, READY = "processing", "ready"
# Job records read at once for one listing.
READ_CONCURRENCY = 16


async def latest_jobs(
    runner: JobRunner, tenant: str, collection: str, document_id: str | None = None
) -> dict[str, JobRecord]:
    """Per document (or for one), its newest job that is queued, running or failed."""
    store = runner.store
    indexed = await store.indexed(tenant, collection)
    limit = asyncio.Semaphore(READ_CONCURRENCY)

    async def read(job_id: str) -> JobRecord | None:
        async with limit:
            # The runner's view: a job its queue gave up on reads as failed.
            record = await runner.get(job_id)
            if record is None or record.status not in (QUEUED, RUNNING, FAILED):
                await store.unindex(tenant, collection, job_id)
                return None
            return record

    wanted = [j for j, d in sorted(indexed.items()) if document_id in (None, d)]
    out: dict[str, JobRecord] = {}
    for record in await asyncio.gather(*(read(job_id) for job_id in wanted)):
        if record is None:
            continue
        seen = out.get(record.document_id)
        if seen is None or seen.created_at < record.created_at:
            out[record.document_id] = record
    return out


async def with_status(runner: JobRunner, info: DocumentInfo, job: JobRecord | None) -> DocumentInfo:
    """``info`` (a committed version) with what its newest job says of it."""
    if job is None:
        return info
    if job.status in (QUEUED, RUNNING):
        return dataclasses.replace(info, status=PROCESSING, job=job.id)
    if job.created_at > version_time(info.version):
        return dataclasses.replace(info, status=FAILED, job=job.id, error=job.error)
    # A version committed after the failed job was submitted outdates it.
    await runner.store.unindex(job.tenant, job.collection, job.id)
    return info


def processing(job: JobRecord) -> DocumentInfo:
    """A document whose first version a job is writing."""
    created = job.public()["created_at"]
    return DocumentInfo(
        id=job.document_id,
        version="",
        title=job.title,
        source=job.source,
        format="",
        chunks=0,
        bytes=0,
        created_at=created,
        updated_at=created,
        status=PROCESSING,
        job=job.id,
    )
