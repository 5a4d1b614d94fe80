"""Service models ⇄ qdrant-client types, and qdrant-client's errors as the service's.

The service's own view of a collection (payload schema with types, the embedding
model, creation time, ``ef_search``) travels in Qdrant's collection metadata under
``METADATA_KEY``; a collection made without this service is read from Qdrant's own
configuration instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from lodestar.runtime.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    LodestarError,
    NotFound,
    Unavailable,
)
from lodestar.services.vector.edge import (
    average_vector,
    index_params,
)
from lodestar.services.vector.filters import to_qdrant_filter
from lodestar.services.vector.models import (
    TENANT_KEY,
    BinaryQuantization,
    CollectionConfig,
    CollectionStatus,
    Distance,
    FieldType,
    Filter,
    HnswOptions,
    PointId,
    PointRecord,
    Quantization,
    RecommendQuery,
    RecommendStrategy,
    ScalarQuantization,
    ScoredHit,
    SearchQuery,
    SnapshotInfo,
    config_from_dict,
    config_to_dict,
)

METADATA_KEY: Final = "lodestar"

_DISTANCES: Final = {
    Distance.COSINE: qm.Distance.COSINE,
    Distance.DOT: qm.Distance.DOT,
    Distance.EUCLID: qm.Distance.EUCLID,
    Distance.MANHATTAN: qm.Distance.MANHATTAN,
}
_DISTANCES_BACK: Final = {v: k for k, v in _DISTANCES.items()}
_SCHEMA_TYPES: Final = {
    FieldType.KEYWORD: qm.PayloadSchemaType.KEYWORD,
    FieldType.TEXT: qm.PayloadSchemaType.TEXT,
    FieldType.INTEGER: qm.PayloadSchemaType.INTEGER,
    FieldType.FLOAT: qm.PayloadSchemaType.FLOAT,
    FieldType.DATETIME: qm.PayloadSchemaType.DATETIME,
    FieldType.BOOL: qm.PayloadSchemaType.BOOL,
}
_SCHEMA_TYPES_BACK: Final = {v: k for k, v in _SCHEMA_TYPES.items()}
_STATUSES: Final = {
    qm.CollectionStatus.GREEN: CollectionStatus.READY,
    qm.CollectionStatus.RED: CollectionStatus.ERROR,
}

# --- errors ------------------------------------------------------------------------------


def collection_not_found(name: str) -> NotFound:
    return NotFound(
        f"collection {name!r} does not exist",
        reason="COLLECTION_NOT_FOUND",
        metadata={"collection": name},
    )


def collection_exists(name: str) -> AlreadyExists:
    return AlreadyExists(
        f"collection {name!r} already exists",
        reason="COLLECTION_EXISTS",
        metadata={"collection": name},
    )


@contextlib.asynccontextmanager
async def qdrant_errors(collection: str | None = None) -> AsyncIterator[None]:
    """Qdrant's and the transport's errors as the service's errors."""
    try:
        yield
    except LodestarError:
        raise
    except UnexpectedResponse as error:
        raise _from_status(error.status_code or 0, str(error), collection) from None
    except grpc.aio.AioRpcError as error:
        raise _from_grpc(error, collection) from None
    except ResponseHandlingException as error:
        raise Unavailable(f"Qdrant is unreachable: {error}", reason="BACKEND_UNAVAILABLE") from None
    except (KeyError, ValueError) as error:
        # Local mode reports missing collections and points with these.
        text = str(error)
        if collection is not None and "not found" in text.lower():
            raise collection_not_found(collection) from None
        raise InvalidArgument(f"rejected by the vector engine: {text}") from None


def _from_status(status: int, text: str, collection: str | None) -> Exception:
    if status == 404 and collection is not None:
        return collection_not_found(collection)
    if status == 404:
        return NotFound(text)
    if status == 409:
        return AlreadyExists(text)
    if status in (400, 422):
        return InvalidArgument(f"rejected by the vector engine: {text}")
    if status in (502, 503, 504):
        return Unavailable(f"Qdrant is unavailable: {text}", reason="BACKEND_UNAVAILABLE")
    return RuntimeError(f"Qdrant answered {status}: {text}")


def _from_grpc(error: grpc.aio.AioRpcError, collection: str | None) -> Exception:
    code = error.code()
    text = error.details() or code.name
    if code == grpc.StatusCode.NOT_FOUND:
        return collection_not_found(collection) if collection is not None else NotFound(text)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExists(text)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(f"rejected by the vector engine: {text}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"Qdrant did not answer in time: {text}")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return Unavailable(f"Qdrant is unavailable: {text}", reason="BACKEND_UNAVAILABLE")
    return RuntimeError(f"Qdrant failed with {code.name}: {text}")


# --- collections ---------------------------------------------------------------------------


def metadata(config: CollectionConfig, create_time: datetime) -> dict[str, Any]:
    return {
        METADATA_KEY: {"config": config_to_dict(config), "create_time": create_time.isoformat()}
    }


def vector_params(config: CollectionConfig) -> qm.VectorParams:
    return qm.VectorParams(size=config.dimension, distance=_DISTANCES[config.distance])


def field_index(key: str, kind: FieldType) -> Any:
    """The payload index of a field; the tenant key's tells Qdrant to group by tenant."""
    if key == TENANT_KEY:
        return qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True)
    return _SCHEMA_TYPES[kind]


def collection_status(info: qm.CollectionInfo) -> CollectionStatus:
    return _STATUSES.get(info.status, CollectionStatus.OPTIMIZING)


def config_of(info: qm.CollectionInfo) -> tuple[CollectionConfig, datetime | None]:
    """A collection's configuration and creation time, from the service's metadata when
    it made the collection, else from Qdrant's own configuration."""
    own = (info.config.metadata or {}).get(METADATA_KEY)
    if isinstance(own, dict) and "config" in own:
        created = own.get("create_time")
        return config_from_dict(own["config"]), (
            datetime.fromisoformat(created) if isinstance(created, str) else None
        )
    vectors = info.config.params.vectors
    if not isinstance(vectors, qm.VectorParams):
        raise FailedPrecondition(
            "the collection has named vectors, which this service does not serve",
            reason="UNSUPPORTED_COLLECTION",
        )
    hnsw = info.config.hnsw_config
    schema = {
        key: _SCHEMA_TYPES_BACK[entry.data_type]
        for key, entry in (info.payload_schema or {}).items()
        if entry.data_type in _SCHEMA_TYPES_BACK and key != TENANT_KEY
    }
    config = CollectionConfig(
        dimension=vectors.size,
        distance=_DISTANCES_BACK.get(vectors.distance, Distance.COSINE),
        payload_schema=schema,
        hnsw=HnswOptions(hnsw.m, hnsw.ef_construct, hnsw.full_scan_threshold, None),
    )
    return config, info.created_at if isinstance(info.created_at, datetime) else None


def hnsw_diff(options: HnswOptions) -> qm.HnswConfigDiff:
    m, ef_construct, full_scan_threshold = index_params(options)
    return qm.HnswConfigDiff(
        m=m, ef_construct=ef_construct, full_scan_threshold=full_scan_threshold
    )


def quantization_config(value: Quantization | None) -> Any:
    if isinstance(value, ScalarQuantization):
        return qm.ScalarQuantization(
            scalar=qm.ScalarQuantizationConfig(
                type=qm.ScalarType.INT8, quantile=value.quantile, always_ram=value.always_ram
            )
        )
    if isinstance(value, BinaryQuantization):
        return qm.BinaryQuantization(
            binary=qm.BinaryQuantizationConfig(always_ram=value.always_ram)
        )
    return None


# --- queries -------------------------------------------------------------------------------


def client_filter(value: Filter | None) -> qm.Filter | None:
    return None if value is None else to_qdrant_filter(value)


def search_params(ef: int | None, exact: bool, local: bool) -> qm.SearchParams | None:
    if local or (not ef and not exact):
        return None  # local mode always searches exactly (and warns about parameters)
    return qm.SearchParams(hnsw_ef=ef, exact=exact)


def query_request(query: SearchQuery, ef_search: int | None, local: bool) -> qm.QueryRequest:
    return qm.QueryRequest(
        query=list(query.vector),
        filter=client_filter(query.filter),
        params=search_params(query.hnsw_ef or ef_search, query.exact, local),
        limit=query.limit,
        offset=query.offset or None,
        score_threshold=query.score_threshold,
        with_payload=query.with_payload,
        with_vector=query.with_vector,
    )


def recommend_query(query: RecommendQuery) -> Any:
    """Qdrant's best-score recommendation, or a nearest query on the average vector."""
    if query.strategy is RecommendStrategy.BEST_SCORE:
        return qm.RecommendQuery(
            recommend=qm.RecommendInput(
                positive=[list(v) for v in query.positives],
                negative=[list(v) for v in query.negatives] or None,
                strategy=qm.RecommendStrategy.BEST_SCORE,
            )
        )
    return average_vector(query.positives, query.negatives)


# --- results -------------------------------------------------------------------------------


def point_id(value: Any) -> PointId:
    return value if isinstance(value, int) else str(value)


def plain_vector(value: Any) -> list[float] | None:
    if isinstance(value, dict):
        value = value.get("")
    return None if value is None else [float(x) for x in value]


def point_record(value: qm.Record, with_payload: bool, with_vector: bool) -> PointRecord:
    return PointRecord(
        point_id(value.id),
        plain_vector(value.vector) if with_vector else None,
        (value.payload or {}) if with_payload else None,
    )


def scored_hit(point: qm.ScoredPoint, with_payload: bool, with_vector: bool) -> ScoredHit:
    return ScoredHit(
        point_id(point.id),
        point.score,
        (point.payload or {}) if with_payload else None,
        plain_vector(point.vector) if with_vector else None,
    )


def snapshot_info(collection: str, description: qm.SnapshotDescription) -> SnapshotInfo:
    created: datetime | None = None
    if description.creation_time:
        created = datetime.fromisoformat(description.creation_time)
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
    return SnapshotInfo(
        name=description.name,
        collection=collection,
        size_bytes=description.size,
        create_time=created,
        checksum=description.checksum or "",
    )
