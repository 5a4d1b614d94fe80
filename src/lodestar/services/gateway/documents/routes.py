"""``/api/v1/collections/{name}/documents`` and ``/api/v1/jobs/{id}``.

An upload is a multipart file (``file``, with optional ``id``, ``title``,
``source``, ``format`` and ``background`` fields) or a JSON text. It is read
and checked within the request, so bad input is a 4xx at once; a small one is
then written within the request (201 with the document), a large one (or one
sent with ``background``) by a job (202 with the job). Uploading to InsertVectors,
reading to SearchVectors, deleting to DeleteVectors; the token's tenant and
collection allow-list confine documents and jobs as they confine points.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Query
from pydantic import BaseModel, Field, StrictBool, ValidationError
from pydantic.config import JsonDict
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from lodestar import limits
from lodestar.auth.permissions import Permission
from lodestar.documents import model
from lodestar.documents.formats import (
    DocumentFormat,
    DocumentFormatError,
    ParsedDocument,
    detect_format,
    parse_document,
)
from lodestar.documents.pipeline import (
    DocumentInput,
    EmptyDocument,
    WriteOptions,
    put_document,
)
from lodestar.documents.store import DocumentStore
from lodestar.ingest.chunking import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    ChunkingOptions,
)
from lodestar.runtime.errors import InvalidArgument, NotFound
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.context import gateway_of
from lodestar.services.gateway.deps import require
from lodestar.services.gateway.documents.calls import BackendCalls
from lodestar.services.gateway.documents.jobs import (
    QUEUED,
    RUNNING,
    JobRecord,
    JobRunner,
    JobSpec,
    new_job_id,
)
from lodestar.services.gateway.documents.status import latest_jobs, processing, with_status
from lodestar.services.gateway.flows import semantic_cache
from lodestar.services.gateway.ratelimit import RouteClass
from lodestar.services.gateway.responses import respond_json
from lodestar.services.gateway.routes.base import api_router
from lodestar.vector.v1 import vector_service_pb2 as vpb

router = api_router("documents")

CollectionPath = Annotated[
    str,
    Path(
        alias="name",
        min_length=1,
        max_length=limits.MAX_COLLECTION_NAME_CHARS,
        pattern=limits.COLLECTION_NAME_PATTERN,
    ),
]
DocumentIdPath = Annotated[
    str,
    Path(
        alias="document_id",
        max_length=model.MAX_DOCUMENT_ID_CHARS,
        pattern=model.DOCUMENT_ID_PATTERN,
    ),
]


# What the schema states of the fields; the route's own checks word each refusal
# (BAD_DOCUMENT_ID, BAD_CHUNKING) and relate them (an overlap of at most half the size).
_ID_SCHEMA: JsonDict = {
    "pattern": model.DOCUMENT_ID_PATTERN,
    "maxLength": model.MAX_DOCUMENT_ID_CHARS,
}
_FORMATS: JsonDict = {"enum": [f.value for f in DocumentFormat]}
_CHUNK_SIZE: JsonDict = {"minimum": MIN_CHUNK_SIZE}
_CHUNK_OVERLAP: JsonDict = {"minimum": 0}


class TextUpload(BaseModel):
    """A document sent as text."""

    text: str = Field(description="The document's text.")
    id: str | None = Field(
        None,
        description="Document id (default: derived from source).",
        json_schema_extra=_ID_SCHEMA,
    )
    title: str | None = Field(None, max_length=500)
    source: str | None = Field(None, max_length=2000, description="Where it comes from.")
    format: str = Field("text", description="The text's format.", json_schema_extra=_FORMATS)
    background: StrictBool = Field(False, description="Write it in a job even if it is small.")
    chunk_size: int | None = Field(
        None, description="Most characters in a chunk.", json_schema_extra=_CHUNK_SIZE
    )
    chunk_overlap: int | None = Field(
        None,
        description="Characters shared by neighbours (at most half the chunk size).",
        json_schema_extra=_CHUNK_OVERLAP,
    )


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "id": {"type": "string", **_ID_SCHEMA},
                        "title": {"type": "string"},
                        "source": {"type": "string"},
                        "format": {"type": "string", **_FORMATS},
                        "background": {"type": "boolean"},
                        "chunk_size": {"type": "integer", **_CHUNK_SIZE},
                        "chunk_overlap": {"type": "integer", **_CHUNK_OVERLAP},
                    },
                }
            },
            "application/json": {"schema": TextUpload.model_json_schema()},
        },
    }
}


def _runner(request: Request) -> JobRunner:
    documents = gateway_of(request).documents
    if documents is None:
        raise RuntimeError("the documents routes are mounted on a gateway without documents")
    return documents.runner


def _store(call: Call, collection: str) -> DocumentStore:
    return DocumentStore(
        BackendCalls(call.backends, lambda: call.options),
        collection,
        tenant=call.tenant,
        text_key=call.settings.store_text_key,
    )


def _document_id(given: str | None) -> str:
    if given is not None and not model.valid_document_id(given):
        raise InvalidArgument(
            f"document id {given!r} must be 1 to {model.MAX_DOCUMENT_ID_CHARS} letters, digits "
            "and . _ : @ + - (starting with a letter or digit)",
            field="id",
            reason="BAD_DOCUMENT_ID",
        )
    return given or ""


def _bool(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


class _Upload:
    def __init__(
        self, data: bytes, name: str, media_type: str | None, fields: dict[str, Any]
    ) -> None:
        self.data = data
        self.name = name
        self.media_type = media_type
        self.fields = fields


async def _read_upload(request: Request, max_bytes: int) -> _Upload:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidArgument(
                "a multipart upload needs a 'file' part", field="file", reason="MISSING_FILE"
            )
        data = await upload.read(max_bytes + 1)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return _Upload(data, upload.filename or "", upload.content_type, fields)
    if content_type.startswith("application/json"):
        try:
            body = TextUpload.model_validate_json(await request.body())
        except ValidationError as error:
            first = error.errors()[0]
            raise InvalidArgument(
                f"bad document: {first['msg']}",
                field=".".join(str(p) for p in first["loc"]) or None,
                reason="BAD_DOCUMENT",
            ) from None
        fields = body.model_dump(exclude={"text"}, exclude_none=True)
        return _Upload(body.text.encode("utf-8"), "", None, fields)
    raise InvalidArgument(
        "send the document as multipart/form-data (a 'file' part) or as JSON with 'text'",
        reason="UNSUPPORTED_MEDIA_TYPE",
    )


def _chunking(fields: dict[str, Any]) -> ChunkingOptions:
    """The options sent (an empty form field is one left out): 0 is a value, not the
    default, so an overlap of 0 is none and a size of 0 is refused."""

    def given(name: str, default: int) -> int:
        value = fields.get(name)
        return default if value is None or value == "" else int(value)

    try:
        return ChunkingOptions(
            given("chunk_size", DEFAULT_CHUNK_SIZE), given("chunk_overlap", DEFAULT_CHUNK_OVERLAP)
        )
    except ValueError as error:
        raise InvalidArgument(str(error), field="chunk_size", reason="BAD_CHUNKING") from None


def _parse(upload: _Upload) -> ParsedDocument:
    declared = upload.fields.get("format")
    fmt = detect_format(
        upload.name, upload.media_type, upload.data, str(declared) if declared else None
    )
    return parse_document(upload.data, fmt)


@router.post(
    "/collections/{name}/documents",
    summary="Upload a document",
    status_code=201,
    openapi_extra=_UPLOAD_BODY,
    responses={202: {"description": "Accepted: written by a job"}},
)
async def upload_document(
    collection: CollectionPath,
    request: Request,
    call: Annotated[Call, Depends(require(Permission.INSERT_VECTORS, RouteClass.WRITE))],
) -> Response:
    """Store a document (txt, md, html, pdf) as chunks, replacing its earlier version."""
    call.collection(collection)
    settings = call.settings
    upload = await _read_upload(request, settings.document_max_bytes)
    if len(upload.data) > settings.document_max_bytes:
        raise HTTPException(413, f"the document is larger than {settings.document_max_bytes} bytes")
    if not upload.data:
        raise InvalidArgument("the document is empty", field="file", reason="EMPTY_DOCUMENT")
    document_id = _document_id(upload.fields.get("id"))
    chunking = _chunking(upload.fields)
    try:
        parsed = await asyncio.to_thread(_parse, upload)
    except DocumentFormatError as error:
        raise InvalidArgument(str(error), field="format", reason=error.reason) from None
    if not parsed.text.strip():
        raise InvalidArgument("the document has no text", field="file", reason="EMPTY_DOCUMENT")
    source = str(upload.fields.get("source") or upload.name or "")
    if not source:
        source = document_id or "text:" + hashlib.sha256(upload.data).hexdigest()[:16]
    document_id = document_id or model.document_id_for(source)
    title = str(upload.fields.get("title") or parsed.title or upload.name or source)[:500]
    await call.backends.vector.get_collection(
        vpb.GetCollectionRequest(name=collection), call.options
    )
    background = _bool(upload.fields.get("background", False))
    if background or len(upload.data) > settings.document_job_threshold_bytes:
        spec = JobSpec(
            job_id=new_job_id(),
            collection=collection,
            tenant=call.tenant,
            document_id=document_id,
            source=source,
            title=title,
            format=parsed.format.value,
            data=upload.data,
            chunk_size=chunking.size,
            chunk_overlap=chunking.overlap,
            text_key=settings.store_text_key,
        )
        runner = _runner(request)
        record = JobRecord(
            spec.job_id,
            collection,
            call.tenant,
            call.principal.subject,
            document_id,
            title=title,
            source=source,
        )
        await runner.store.create(record)
        await runner.submit(spec)
        # Answers that cited the version being replaced are stale from now on.
        await semantic_cache.invalidate_documents(call, collection, [document_id])
        response = respond_json({"job": record.public()}, status_code=202)
        response.headers["location"] = f"/api/v1/jobs/{spec.job_id}"
        return response
    document = DocumentInput(document_id, source, title, parsed, len(upload.data))
    try:
        result = await put_document(_store(call, collection), document, WriteOptions(chunking))
    except EmptyDocument as error:
        raise InvalidArgument(str(error), field="file", reason="EMPTY_DOCUMENT") from None
    if result.replaced:
        await semantic_cache.invalidate_documents(call, collection, [document_id])
    return respond_json(
        {"document": result.document.as_dict(), "replaced_chunks": result.replaced},
        status_code=201,
    )


@router.get("/collections/{name}/documents", summary="List documents")
async def list_documents(
    collection: CollectionPath,
    request: Request,
    call: Annotated[Call, Depends(require(Permission.SEARCH_VECTORS, RouteClass.READ))],
    page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
    page_token: Annotated[str, Query(max_length=1000)] = "",
) -> Response:
    """The collection's documents, a page at a time (``next_page_token`` empty on the last),
    each with its status (ready, processing, failed); the first page also lists the
    documents whose first version a job is still writing."""
    call.collection(collection)
    store = _store(call, collection)
    documents, token = await store.list(page_size, page_token)
    runner = _runner(request)
    jobs = await latest_jobs(runner, call.tenant, collection)
    rows = [await with_status(runner, d, jobs.get(d.id)) for d in documents]
    if not page_token:
        listed = {d.id for d in documents}
        for document_id, job in sorted(jobs.items()):
            if document_id in listed or job.status not in (QUEUED, RUNNING):
                continue
            if await store.current(document_id) is None:
                rows.append(processing(job))
    return respond_json({"documents": [d.as_dict() for d in rows], "next_page_token": token})


async def _current(
    request: Request, call: Call, collection: str, document_id: str
) -> model.DocumentInfo:
    """The current version with its status; a document whose first version a job
    is writing is processing (with no chunks)."""
    _document_id(document_id)
    info = await _store(call, collection).current(document_id)
    runner = _runner(request)
    job = (await latest_jobs(runner, call.tenant, collection, document_id)).get(document_id)
    if info is not None:
        return await with_status(runner, info, job)
    if job is not None and job.status in (QUEUED, RUNNING):
        return processing(job)
    raise NotFound(
        f"no document {document_id!r} in collection {collection!r}",
        reason="DOCUMENT_NOT_FOUND",
        metadata={"collection": collection, "document_id": document_id},
    )


@router.get("/collections/{name}/documents/{document_id}", summary="Get a document")
async def get_document(
    collection: CollectionPath,
    document_id: DocumentIdPath,
    request: Request,
    call: Annotated[Call, Depends(require(Permission.SEARCH_VECTORS, RouteClass.READ))],
    with_chunks: bool = True,
) -> Response:
    """A document's metadata and status, and (unless ``with_chunks=false``) its chunks in
    order: while a job rewrites it, those of the version it replaces."""
    call.collection(collection)
    info = await _current(request, call, collection, document_id)
    out: dict[str, Any] = {"document": info.as_dict()}
    if not info.version:
        out["chunks"] = []
    elif with_chunks:
        chunks = await _store(call, collection).chunks(document_id, info.version)
        out["chunks"] = [c.as_dict() for c in chunks]
    return respond_json(out)


@router.delete("/collections/{name}/documents/{document_id}", summary="Delete a document")
async def delete_document(
    collection: CollectionPath,
    document_id: DocumentIdPath,
    call: Annotated[Call, Depends(require(Permission.DELETE_VECTORS, RouteClass.WRITE))],
) -> Response:
    """Delete every chunk of the document (of every version)."""
    call.collection(collection)
    _document_id(document_id)
    deleted = await _store(call, collection).delete(document_id)
    await semantic_cache.invalidate_documents(call, collection, [document_id])
    if deleted == 0:
        raise NotFound(
            f"no document {document_id!r} in collection {collection!r}",
            reason="DOCUMENT_NOT_FOUND",
            metadata={"collection": collection, "document_id": document_id},
        )
    return respond_json({"id": document_id, "deleted": True, "chunks_deleted": deleted})


async def _job(request: Request, call: Call, job_id: str) -> JobRecord:
    record = await _runner(request).get(job_id)
    if record is None or record.tenant != call.tenant:
        raise NotFound(f"no job {job_id!r}", reason="JOB_NOT_FOUND", metadata={"id": job_id})
    call.collection(record.collection)
    return record


JobIdPath = Annotated[str, Path(alias="id", max_length=100)]


@router.get("/jobs/{id}", summary="A job's status")
async def get_job(
    job_id: JobIdPath,
    request: Request,
    call: Annotated[Call, Depends(require(Permission.SEARCH_VECTORS, RouteClass.READ))],
) -> Response:
    """Status (queued, running, succeeded, failed, cancelled) and progress in chunks."""
    record = await _job(request, call, job_id)
    return respond_json(record.public())


@router.delete("/jobs/{id}", summary="Cancel a job")
async def cancel_job(
    job_id: JobIdPath,
    request: Request,
    call: Annotated[Call, Depends(require(Permission.INSERT_VECTORS, RouteClass.WRITE))],
) -> Response:
    """Stop a job; what it wrote of the new version is removed, the previous one stays."""
    await _job(request, call, job_id)
    runner = _runner(request)
    await runner.cancel(job_id)
    record = await runner.get(job_id)
    assert record is not None
    return respond_json(record.public())
