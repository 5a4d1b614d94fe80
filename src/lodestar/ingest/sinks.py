"""Where chunks go: the embedding and vector services over gRPC, or the gateway.

A sink embeds texts and stores them as points with their payloads. The gRPC
sink calls the embedding service's EmbedTexts, then the vector service's
UpsertPoints, and can ask GetPoints which chunk ids are already stored. The
gateway sink sends texts to ``POST /api/v1/vectors/insert`` and lets the
gateway embed them; the gateway has no call that looks up many point ids at
once, so in that mode a resumed file's chunks are sent again (upserts by id
write them over themselves: no duplicates).

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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from lodestar.embedding.v1 import embedding_service_pb2 as embedding_pb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as embedding_grpc
from lodestar.runtime.channels import open_channel
from lodestar.runtime.errors import ErrorDetails
from lodestar.runtime.protojson import dict_to_struct
from lodestar.vector.v1 import vector_service_pb2 as vector_pb
from lodestar.vector.v1 import vector_service_pb2_grpc as vector_grpc

T = TypeVar("T")

# Payload fields indexed when the collection is created by ``--create``.
PAYLOAD_SCHEMA: dict[str, str] = {
    "source": "keyword",
    "content_hash": "keyword",
    "chunk_index": "integer",
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


@dataclass(frozen=True)
class PointToWrite:
    id: str
    text: str
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class WriteResult:
    written: int
    truncated: int | None  # texts the model had to cut, when the sink can tell


class Sink(Protocol):
    """What the ingest pipeline needs from a destination."""

    destination: str
    can_lookup: bool

    async def model(self) -> ModelSpec: ...

    async def collection(self, name: str, *, create: bool, model: ModelSpec) -> CollectionState: ...

    async def existing(self, collection: str, ids: Sequence[str]) -> set[str]: ...

    async def write(self, collection: str, points: Sequence[PointToWrite]) -> WriteResult: ...

    async def prune(self, collection: str, source: str, keep: Sequence[str]) -> int: ...

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

    can_lookup = True

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
                metadata=self._metadata,
                wait_for_ready=True,
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
                metadata=self._metadata,
                wait_for_ready=True,
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

    async def existing(self, collection: str, ids: Sequence[str]) -> set[str]:
        request = vector_pb.GetPointsRequest(
            collection=collection,
            ids=[_point_id(i) for i in ids],
            with_payload=False,
            with_vector=False,
            tenant=self._tenant,
        )
        reply = await self._call(
            "vector",
            lambda: self._vector.GetPoints(request, timeout=self._timeout, metadata=self._metadata),
        )
        return {point.id.uuid for point in reply.points}

    async def write(self, collection: str, points: Sequence[PointToWrite]) -> WriteResult:
        embed = embedding_pb.EmbedTextsRequest(texts=[p.text for p in points])
        embedded = await self._call(
            "embedding",
            lambda: self._embedding.EmbedTexts(
                embed, timeout=self._timeout, metadata=self._metadata
            ),
        )
        if len(embedded.embeddings) != len(points):
            raise IngestError(
                f"the embedding service returned {len(embedded.embeddings)} vectors "
                f"for {len(points)} texts"
            )
        upsert = vector_pb.UpsertPointsRequest(
            collection=collection,
            points=[
                vector_pb.Point(
                    id=_point_id(point.id),
                    vector=embedding.values,
                    payload=dict_to_struct(point.payload),
                )
                for point, embedding in zip(points, embedded.embeddings, strict=True)
            ],
            tenant=self._tenant,
        )
        await self._call(
            "vector",
            lambda: self._vector.UpsertPoints(
                upsert, timeout=self._timeout, metadata=self._metadata
            ),
        )
        truncated = sum(1 for e in embedded.embeddings if e.truncated)
        return WriteResult(len(points), truncated)

    async def prune(self, collection: str, source: str, keep: Sequence[str]) -> int:
        condition = vector_pb.Condition(
            field=vector_pb.FieldCondition(key="source", match=vector_pb.Match(keyword=source))
        )
        selector = vector_pb.PointsSelector(filter=vector_pb.Filter(must=[condition]))
        if keep:
            selector.filter.must_not.append(
                vector_pb.Condition(
                    has_id=vector_pb.HasIdCondition(ids=[_point_id(i) for i in keep])
                )
            )
        request = vector_pb.DeletePointsRequest(
            collection=collection, selector=selector, tenant=self._tenant
        )
        reply = await self._call(
            "vector",
            lambda: self._vector.DeletePoints(
                request, timeout=self._timeout, metadata=self._metadata
            ),
        )
        return int(reply.deleted_count)

    async def close(self) -> None:
        await self._embedding_channel.close()
        await self._vector_channel.close()


# --- gateway -------------------------------------------------------------------------------


class GatewaySink:
    """The gateway's REST API: texts go to ``/vectors/insert`` and are embedded there."""

    can_lookup = False

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
        self, method: str, path: str, body: Any = None, *, accept: tuple[int, ...] = ()
    ) -> tuple[int, Any]:
        """(status, JSON body) of a call; statuses in ``accept`` are answers, not errors."""

        async def attempt() -> tuple[int, Any]:
            response = await self._client.request(method, f"/api/v1{path}", json=body)
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

    async def existing(self, collection: str, ids: Sequence[str]) -> set[str]:
        return set()

    async def write(self, collection: str, points: Sequence[PointToWrite]) -> WriteResult:
        body = {
            "collection": collection,
            "points": [{"id": p.id, "text": p.text, "payload": dict(p.payload)} for p in points],
        }
        _, reply = await self._request("POST", "/vectors/insert", body)
        written = len(reply.get("ids") or []) if isinstance(reply, dict) else len(points)
        return WriteResult(written, None)

    async def prune(self, collection: str, source: str, keep: Sequence[str]) -> int:
        selector: dict[str, Any] = {
            "filter": {"must": [{"key": "source", "match": {"keyword": source}}]}
        }
        if keep:
            selector["filter"]["must_not"] = [{"has_id": list(keep)}]
        status, reply = await self._request(
            "POST",
            "/vectors/batch",
            {"collection": collection, "operations": [{"delete": selector}]},
            accept=(403,),
        )
        if status == 403:
            raise PruneNotPermitted(
                "the token lacks DeleteVectors, so chunks of earlier versions of changed "
                "files are kept (use --no-prune to silence this)"
            )
        results = reply.get("results") if isinstance(reply, dict) else None
        return int(results[0].get("affected_count", 0)) if results else 0

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
