"""Where documents go: the embedding and vector services over gRPC, or the gateway.

Both sinks put each file through the one document pipeline
(``lodestar.documents.pipeline.put_document``): the gRPC sink runs it in this
process, calling the embedding service's EmbedTexts and the vector service's
UpsertPoints, ListPoints and DeletePoints; the gateway sink uploads the file
to ``POST /api/v1/collections/{name}/documents``, where the gateway runs it
(following the job a large upload becomes).

Calls that fail with a transient status (UNAVAILABLE, RESOURCE_EXHAUSTED; HTTP
429, 502, 503, 504, or a dropped connection) are retried with backoff, honouring
``Retry-After``; every other failure, a missed deadline included, is fatal and
stops the run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from lodestar.documents.model import PAYLOAD_SCHEMA as DOCUMENT_PAYLOAD_SCHEMA
from lodestar.documents.model import DocumentInfo
from lodestar.documents.pipeline import DocumentInput, PutResult, WriteOptions, put_document
from lodestar.documents.pipeline import Progress as DocumentProgress
from lodestar.documents.store import DocumentStore
from lodestar.embedding.v1 import embedding_service_pb2 as embedding_pb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as embedding_grpc
from lodestar.runtime.channels import open_channel
from lodestar.runtime.errors import ErrorDetails
from lodestar.vector.v1 import vector_service_pb2 as vector_pb
from lodestar.vector.v1 import vector_service_pb2_grpc as vector_grpc

T = TypeVar("T")

# Payload fields indexed when the collection is created by ``--create``.
PAYLOAD_SCHEMA: dict[str, str] = {
    **DOCUMENT_PAYLOAD_SCHEMA,
    "content_hash": "keyword",
    "ingested_at": "datetime",
}

_GRPC_FIELD_TYPES = {
    "keyword": vector_pb.PAYLOAD_FIELD_TYPE_KEYWORD,
    "integer": vector_pb.PAYLOAD_FIELD_TYPE_INTEGER,
    "datetime": vector_pb.PAYLOAD_FIELD_TYPE_DATETIME,
}
# DEADLINE_EXCEEDED is not among them: a call that took the whole --timeout
# points at a stuck service, and waiting that long again helps nobody.
_TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
_TRANSIENT_HTTP = frozenset({429, 502, 503, 504})


class IngestError(Exception):
    """A fatal error: the run stops and the command exits non-zero."""


class UsageError(IngestError):
    """Arguments the destination cannot work with (exit status 2)."""


class PruneNotPermitted(IngestError):
    """The credentials may write points but not delete them: stale chunks are kept."""


@dataclass(frozen=True)
class ModelSpec:
    """The embedding model behind the sink, as far as the sink can tell."""

    name: str
    dimension: int | None
    max_texts_per_request: int | None
    max_text_chars: int | None
    max_sequence_length: int | None


@dataclass(frozen=True)
class CollectionState:
    name: str
    dimension: int
    points_count: int
    # Changes when the collection is deleted and created again (its creation time).
    epoch: str
    created: bool


class Sink(Protocol):
    """What the ingest pipeline needs from a destination: documents go through
    the one document pipeline (``lodestar.documents``), in this process over
    gRPC or in the gateway behind its documents API."""

    destination: str

    async def model(self) -> ModelSpec: ...

    async def collection(self, name: str, *, create: bool, model: ModelSpec) -> CollectionState: ...

    async def put(
        self,
        collection: str,
        document: DocumentInput,
        options: WriteOptions,
        progress: DocumentProgress | None = None,
    ) -> PutResult: ...

    async def delete_document(self, collection: str, document_id: str) -> int: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    first_delay_s: float = 0.2
    max_delay_s: float = 5.0

    def delay(self, attempt: int, hint_s: float) -> float:
        if hint_s > 0:
            return min(hint_s, 60.0)
        base = min(self.max_delay_s, self.first_delay_s * 2.0**attempt)
        return base * (0.5 + random.random() / 2)  # jitter spreads retrying workers


async def _with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    retry_after: Callable[[BaseException], float | None],
) -> T:
    """Run ``call``, retrying while ``retry_after`` gives a delay hint for the error
    (0: the policy's backoff) rather than None (fatal)."""
    for attempt in range(policy.attempts):
        try:
            return await call()
        except Exception as error:
            hint = retry_after(error)
            if hint is None or attempt == policy.attempts - 1:
                raise
            await asyncio.sleep(policy.delay(attempt, hint))
    raise AssertionError("unreachable")


# --- gRPC ----------------------------------------------------------------------------------


def _grpc_retry_after(error: BaseException) -> float | None:
    if isinstance(error, grpc.aio.AioRpcError) and error.code() in _TRANSIENT_CODES:
        return ErrorDetails.from_rpc_error(error).retry_after_s or 0.0
    return None


def _describe(service: str, address: str, error: grpc.aio.AioRpcError) -> str:
    details = ErrorDetails.from_rpc_error(error)
    if details.code is grpc.StatusCode.UNAVAILABLE:
        return f"the {service} service at {address} is unreachable ({details.message})"
    if details.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the {service} service at {address} did not answer in time (see --timeout)"
    fields = "".join(f"; {field}: {text}" for field, text in details.field_violations)
    return (
        f"the {service} service at {address} refused: {details.code.name} {details.message}{fields}"
    )


def _point_id(text: str) -> vector_pb.PointId:
    return vector_pb.PointId(uuid=text)


class GrpcSink:
    """Embedding service + vector service, called directly over gRPC."""

    def __init__(
        self,
        embedding_address: str,
        vector_address: str,
        *,
        tenant: str = "",
        token: str | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.embedding_address = embedding_address
        # Services that check tokens take them from each call's metadata.
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.vector_address = vector_address
        self.destination = f"grpc://{vector_address}"
        self._tenant = tenant
        self._timeout = timeout_s
        self._connect_timeout = connect_timeout_s
        self._retry = retry or RetryPolicy()
        self._embedding_channel = open_channel(embedding_address)
        self._vector_channel = open_channel(vector_address)
        self._embedding = embedding_grpc.EmbeddingServiceStub(self._embedding_channel)
        # Texts the model had to cut, counted as they are embedded.
        self.truncated = 0
        self._vector = vector_grpc.VectorServiceStub(self._vector_channel)

    async def _call(self, service: str, call: Callable[[], Awaitable[T]]) -> T:
        address = self.embedding_address if service == "embedding" else self.vector_address
        try:
            return await _with_retries(call, self._retry, _grpc_retry_after)
        except grpc.aio.AioRpcError as error:
            raise IngestError(_describe(service, address, error)) from None

    def _startup_error(self, service: str, error: grpc.aio.AioRpcError) -> IngestError:
        address = self.embedding_address if service == "embedding" else self.vector_address
        if error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            return IngestError(
                f"the {service} service at {address} is unreachable (no answer within "
                f"{self._connect_timeout:g} s; is it running?)"
            )
        return IngestError(_describe(service, address, error))

    async def model(self) -> ModelSpec:
        # wait_for_ready lets a service that is still starting answer; a wrong
        # address fails after the connect timeout.
        try:
            reply = await self._embedding.GetModelInfo(
                embedding_pb.GetModelInfoRequest(),
                timeout=self._connect_timeout,
                wait_for_ready=True,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise self._startup_error("embedding", error) from None
        info = reply.model
        return ModelSpec(
            name=info.name,
            dimension=info.dimension or None,
            max_texts_per_request=info.max_texts_per_request or None,
            max_text_chars=info.max_text_chars or None,
            max_sequence_length=info.max_sequence_length or None,
        )

    async def collection(self, name: str, *, create: bool, model: ModelSpec) -> CollectionState:
        try:
            reply = await self._vector.GetCollection(
                vector_pb.GetCollectionRequest(name=name),
                timeout=self._connect_timeout,
                wait_for_ready=True,
                metadata=self._metadata,
            )
            collection, created = reply.collection, False
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.INVALID_ARGUMENT:
                raise UsageError(_describe("vector", self.vector_address, error)) from None
            if error.code() is not grpc.StatusCode.NOT_FOUND:
                raise self._startup_error("vector", error) from None
            if not create:
                raise UsageError(
                    f"collection {name!r} does not exist; pass --create to create it"
                ) from None
            collection, created = await self._create(name, model), True
        dimension = collection.config.dimension
        if model.dimension is not None and dimension != model.dimension:
            raise UsageError(
                f"collection {name!r} holds {dimension}-dimensional vectors but the embedding "
                f"model {model.name} makes {model.dimension}-dimensional ones"
            )
        stored_model = collection.config.embedding_model
        if stored_model and model.name and stored_model != model.name:
            raise UsageError(
                f"collection {name!r} holds vectors of {stored_model}, but the embedding "
                f"service serves {model.name}"
            )
        epoch = collection.create_time.ToJsonString() if collection.HasField("create_time") else ""
        return CollectionState(name, dimension, collection.points_count, epoch, created)

    async def _create(self, name: str, model: ModelSpec) -> vector_pb.Collection:
        if model.dimension is None:
            raise IngestError("the embedding service does not report its vector dimension")
        request = vector_pb.CreateCollectionRequest(
            name=name,
            config=vector_pb.CollectionConfig(
                dimension=model.dimension,
                distance=vector_pb.DISTANCE_COSINE,
                payload_schema={k: _GRPC_FIELD_TYPES[v] for k, v in PAYLOAD_SCHEMA.items()},
                embedding_model=model.name,
            ),
        )
        try:
            reply = await self._vector.CreateCollection(
                request, timeout=self._timeout, metadata=self._metadata
            )
            return reply.collection
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.ALREADY_EXISTS:
                # Another run created it meanwhile; use it.
                got = await self._call(
                    "vector",
                    lambda: self._vector.GetCollection(
                        vector_pb.GetCollectionRequest(name=name),
                        timeout=self._timeout,
                        metadata=self._metadata,
                    ),
                )
                return got.collection
            if error.code() is grpc.StatusCode.INVALID_ARGUMENT:
                raise UsageError(_describe("vector", self.vector_address, error)) from None
            raise IngestError(_describe("vector", self.vector_address, error)) from None

    # The document store's calls (``lodestar.documents.store.VectorCalls``), with retries.

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        request = embedding_pb.EmbedTextsRequest(texts=list(texts))
        embedded = await self._call(
            "embedding",
            lambda: self._embedding.EmbedTexts(
                request, timeout=self._timeout, metadata=self._metadata
            ),
        )
        if len(embedded.embeddings) != len(texts):
            raise IngestError(
                f"the embedding service returned {len(embedded.embeddings)} vectors "
                f"for {len(texts)} texts"
            )
        self.truncated += sum(1 for e in embedded.embeddings if e.truncated)
        return [list(e.values) for e in embedded.embeddings]

    async def upsert(self, request: vector_pb.UpsertPointsRequest) -> None:
        await self._call(
            "vector",
            lambda: self._vector.UpsertPoints(
                request, timeout=self._timeout, metadata=self._metadata
            ),
        )

    async def list(self, request: vector_pb.ListPointsRequest) -> vector_pb.ListPointsResponse:
        return await self._call(
            "vector",
            lambda: self._vector.ListPoints(
                request, timeout=self._timeout, metadata=self._metadata
            ),
        )

    async def delete(self, request: vector_pb.DeletePointsRequest) -> int:
        reply = await self._call(
            "vector",
            lambda: self._vector.DeletePoints(
                request, timeout=self._timeout, metadata=self._metadata
            ),
        )
        return int(reply.deleted_count)

    async def put(
        self,
        collection: str,
        document: DocumentInput,
        options: WriteOptions,
        progress: DocumentProgress | None = None,
    ) -> PutResult:
        store = DocumentStore(self, collection, tenant=self._tenant)
        return await put_document(store, document, options, progress)

    async def delete_document(self, collection: str, document_id: str) -> int:
        return await DocumentStore(self, collection, tenant=self._tenant).delete(document_id)

    async def close(self) -> None:
        await self._embedding_channel.close()
        await self._vector_channel.close()


# --- gateway -------------------------------------------------------------------------------


class GatewaySink:
    """The gateway's REST API: files go to the documents API and are stored there."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        transport: Any = None,
    ) -> None:
        import httpx

        self._httpx = httpx
        self.base_url = base_url.rstrip("/")
        # The gateway confines a token to its tenant: the checkpoint must too.
        self.destination = f"{self.base_url}#tenant={_token_tenant(token)}"
        self._retry = retry or RetryPolicy()
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            transport=transport,
        )

    def _retry_after(self, error: BaseException) -> float | None:
        if isinstance(error, self._httpx.TransportError):
            return 0.0
        if isinstance(error, _HttpError) and error.status in _TRANSIENT_HTTP:
            return error.retry_after_s or 0.0
        return None

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        accept: tuple[int, ...] = (),
        files: Any = None,
        data: Any = None,
    ) -> tuple[int, Any]:
        """(status, JSON body) of a call; statuses in ``accept`` are answers, not errors."""

        async def attempt() -> tuple[int, Any]:
            response = await self._client.request(
                method, f"/api/v1{path}", json=body, files=files, data=data
            )
            if response.status_code >= 400 and response.status_code not in accept:
                raise _HttpError.from_response(response)
            return response.status_code, (response.json() if response.content else None)

        try:
            return await _with_retries(attempt, self._retry, self._retry_after)
        except self._httpx.TransportError as error:
            raise IngestError(f"the gateway at {self.base_url} is unreachable ({error})") from None
        except _HttpError as error:
            if error.status in (400, 413, 422):
                raise UsageError(f"the gateway refused {method} {path}: {error}") from None
            raise IngestError(f"the gateway refused {method} {path}: {error}") from None

    async def model(self) -> ModelSpec:
        # The gateway embeds for us; the client needs nothing from the model.
        return ModelSpec("", None, None, None, None)

    async def collection(self, name: str, *, create: bool, model: ModelSpec) -> CollectionState:
        created = False
        status, body = await self._request("GET", f"/collections/{name}", accept=(404,))
        if status == 404:
            if not create:
                raise UsageError(f"collection {name!r} does not exist; pass --create to create it")
            # Without a dimension the gateway takes the embedding model's.
            spec = {"name": name, "distance": "cosine", "payload_schema": PAYLOAD_SCHEMA}
            status, body = await self._request("POST", "/collections", spec, accept=(409,))
            created = status != 409
            if not created:  # another run created it meanwhile
                _, body = await self._request("GET", f"/collections/{name}")
        config = body.get("config") or {}
        return CollectionState(
            name=name,
            dimension=int(config.get("dimension") or 0),
            points_count=int(body.get("points_count") or 0),
            epoch=str(body.get("create_time") or ""),
            created=created,
        )

    async def put(
        self,
        collection: str,
        document: DocumentInput,
        options: WriteOptions,
        progress: DocumentProgress | None = None,
    ) -> PutResult:
        """Upload the document to the documents API (the gateway runs the same
        pipeline); a large one becomes a job, followed until it ends."""
        fields = {
            "id": document.id,
            "source": document.source,
            "title": document.title,
            "format": document.parsed.format.value,
            "chunk_size": str(options.chunking.size),
            "chunk_overlap": str(options.chunking.overlap),
        }
        name = document.source.rsplit("/", 1)[-1] or "document"
        files = {"file": (name, document.parsed.text.encode("utf-8"))}
        path = f"/collections/{collection}/documents"
        status, reply = await self._request("POST", path, files=files, data=fields)
        if status == 202:
            reply = await self._follow(reply["job"]["id"], progress)
        info = DocumentInfo.from_api(reply["document"])
        if progress is not None and status != 202:
            await progress(info.chunks, info.chunks)
        return PutResult(info, int(reply.get("replaced_chunks") or 0))

    async def _follow(self, job_id: str, progress: DocumentProgress | None) -> dict[str, Any]:
        while True:
            _, job = await self._request("GET", f"/jobs/{job_id}")
            done, total = job["progress"]["chunks_done"], job["progress"]["chunks_total"]
            if progress is not None and total:
                await progress(done, total)
            if job["status"] == "succeeded":
                return {"document": job["document"]}
            if job["status"] in ("failed", "cancelled"):
                raise IngestError(f"job {job_id} {job['status']}: {job.get('error', '')}")
            await asyncio.sleep(0.2)

    async def delete_document(self, collection: str, document_id: str) -> int:
        status, reply = await self._request(
            "DELETE", f"/collections/{collection}/documents/{document_id}", accept=(403, 404)
        )
        if status == 403:
            raise PruneNotPermitted(
                "the token lacks DeleteVectors, so the chunks of files emptied since the last "
                "run are kept (use --no-prune to silence this)"
            )
        return int(reply.get("chunks_deleted", 0)) if status == 200 else 0

    async def close(self) -> None:
        await self._client.aclose()


def _token_tenant(token: str) -> str:
    """The ``tenant`` claim of a JWT (read, not verified: the gateway verifies it)."""
    try:
        segment = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        return str(claims.get("tenant") or "") if isinstance(claims, dict) else ""
    except (IndexError, ValueError):
        return ""


class _HttpError(Exception):
    def __init__(self, status: int, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s

    @classmethod
    def from_response(cls, response: Any) -> _HttpError:
        message = f"HTTP {response.status_code}"
        try:
            error = response.json().get("error") or {}
            code, text = error.get("code"), error.get("message")
            if code or text:
                message += f" {code or ''}: {text or ''}".rstrip(": ")
        except (ValueError, AttributeError):
            pass
        retry_after: float | None = None
        header = response.headers.get("retry-after")
        if header:
            try:
                retry_after = float(header)
            except ValueError:
                retry_after = None
        return cls(int(response.status_code), message, retry_after)
