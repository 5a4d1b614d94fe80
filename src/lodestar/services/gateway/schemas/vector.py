"""REST models of the vector routes: points, filters, search, recommend,
cluster, collections and snapshots.

Wherever a vector is expected a text may be given instead; the gateway embeds
it with the embedding service.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import ConfigDict, Field, Strict, StrictBool, StrictStr, model_validator

from lodestar import limits
from lodestar.services.gateway.schemas.common import (
    CollectionName,
    FiniteFloat,
    Float32,
    Moment,
    NonEmptyText,
    Page,
    Payload,
    PayloadKey,
    PointIdIn,
    PointIdOut,
    RequestModel,
    ResponseModel,
    UInt64,
    VectorIn,
    at_least_one_of,
    exactly_one_of,
    given,
    none_of,
)

# Payload integers are the protos' int64, and match only integers (not 1.0 or "1").
StrictInt64 = Annotated[int, Strict(), Field(ge=-(2**63), lt=2**63)]

_Some = Field(min_length=1, max_length=limits.MAX_MATCH_VALUES)
_MatchValues = Annotated[list[StrictStr], _Some] | Annotated[list[StrictInt64], _Some]

# --- filters -----------------------------------------------------------------------------


def _exactly_one(model: RequestModel, names: tuple[str, ...], what: str) -> None:
    given = [name for name in names if getattr(model, name) is not None]
    if len(given) != 1:
        shown = ", ".join(names)
        raise ValueError(f"{what} needs exactly one of {shown}; got {', '.join(given) or 'none'}")


class Match(RequestModel):
    """Equality, membership or full-text test of a payload value."""

    model_config = ConfigDict(
        json_schema_extra=exactly_one_of("keyword", "integer", "boolean", "text", "any", "except")
    )

    keyword: StrictStr | None = None
    integer: StrictInt64 | None = None
    boolean: StrictBool | None = None
    text: StrictStr | None = Field(None, description="Full-text match.", pattern=r"\S")
    any: _MatchValues | None = Field(None, description="Any of these keywords or integers.")
    except_: _MatchValues | None = Field(
        None, alias="except", description="None of these keywords or integers."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Match:
        _exactly_one(self, ("keyword", "integer", "boolean", "text", "any", "except_"), "match")
        return self


class Range(RequestModel):
    model_config = ConfigDict(json_schema_extra=at_least_one_of("gt", "gte", "lt", "lte"))
    gt: FiniteFloat | None = None
    gte: FiniteFloat | None = None
    lt: FiniteFloat | None = None
    lte: FiniteFloat | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Range:
        if self.gt is None and self.gte is None and self.lt is None and self.lte is None:
            raise ValueError("range needs at least one of gt, gte, lt, lte")
        return self


class DatetimeRange(RequestModel):
    model_config = ConfigDict(json_schema_extra=at_least_one_of("gt", "gte", "lt", "lte"))

    gt: Moment | None = None
    gte: Moment | None = None
    lt: Moment | None = None
    lte: Moment | None = None

    @model_validator(mode="after")
    def _bounded(self) -> DatetimeRange:
        if self.gt is None and self.gte is None and self.lt is None and self.lte is None:
            raise ValueError("datetime_range needs at least one of gt, gte, lt, lte")
        return self


class IsEmpty(RequestModel):
    key: PayloadKey


_KEY_TESTS = ("match", "range", "datetime_range")
_OTHER_TESTS = ("is_empty", "has_id", "filter")
# A key and one of its tests, or one test without a key: nothing else.
_CONDITION: dict[str, Any] = {
    "oneOf": [
        *({"allOf": [given("key", test), none_of(*_OTHER_TESTS)]} for test in _KEY_TESTS),
        *({"allOf": [given(test), none_of("key", *_KEY_TESTS)]} for test in _OTHER_TESTS),
    ]
}


class Condition(RequestModel):
    """One clause: a payload key test, ``is_empty``, ``has_id`` or a nested ``filter``.

    A key test is ``{"key": "color", "match": {"keyword": "red"}}``,
    ``{"key": "price", "range": {"lt": 10}}`` or
    ``{"key": "created", "datetime_range": {"gte": "2025-01-01T00:00:00Z"}}``.
    """

    model_config = ConfigDict(json_schema_extra=_CONDITION)

    key: PayloadKey | None = Field(None, description="Payload key (dotted paths nest).")
    match: Match | None = None
    range: Range | None = None
    datetime_range: DatetimeRange | None = None
    is_empty: IsEmpty | None = None
    has_id: Annotated[list[PointIdIn], Field(min_length=1, max_length=limits.MAX_IDS)] | None = None
    filter: Filter | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Condition:
        if self.key is not None:
            _exactly_one(self, ("match", "range", "datetime_range"), f"condition on {self.key!r}")
            if self.is_empty is not None or self.has_id is not None or self.filter is not None:
                raise ValueError("a key condition cannot also have is_empty, has_id or filter")
            return self
        if self.match is not None or self.range is not None or self.datetime_range is not None:
            raise ValueError("match, range and datetime_range need a key")
        _exactly_one(self, ("is_empty", "has_id", "filter"), "condition")
        return self


class Filter(RequestModel):
    """All of ``must``, at least one of ``should`` (when given), none of ``must_not``."""

    must: list[Condition] = Field(default_factory=list)
    should: list[Condition] = Field(default_factory=list)
    must_not: list[Condition] = Field(default_factory=list)

    @property
    def conditions(self) -> int:
        return len(self.must) + len(self.should) + len(self.must_not)


# A filter that selects something: at least one condition.
_SOME_CONDITION = {
    "anyOf": [given(**{part: {"minItems": 1}}) for part in ("must", "should", "must_not")]
}


Condition.model_rebuild()

# --- points ------------------------------------------------------------------------------


class PointIn(RequestModel):
    """A point to write: a vector, or a text to embed."""

    model_config = ConfigDict(json_schema_extra=exactly_one_of("vector", "text"))

    id: PointIdIn | None = Field(None, description="Generated (UUID) when absent.")
    vector: VectorIn | None = None
    text: NonEmptyText | None = Field(None, description="Embedded into the vector.")
    payload: Payload | None = None

    @model_validator(mode="after")
    def _vector_or_text(self) -> PointIn:
        _exactly_one(self, ("vector", "text"), "a point")
        return self


class InsertRequest(RequestModel):
    collection: CollectionName
    points: Annotated[list[PointIn], Field(min_length=1, max_length=limits.DEFAULT_BATCH_POINTS)]


class InsertResponse(ResponseModel):
    ids: list[PointIdOut]
    embedded: int = Field(0, description="Points whose vector was embedded from text.")


class Point(ResponseModel):
    id: PointIdOut
    vector: list[float] | None = None
    payload: Payload | None = None


class ScoredPoint(ResponseModel):
    id: PointIdOut
    score: float
    payload: Payload | None = None
    vector: list[float] | None = None


class UpdatePointRequest(RequestModel):
    """New vector (or text) and/or payload of an existing point."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                at_least_one_of("vector", "text", "payload"),
                {"not": given("vector", "text")},
            ]
        }
    )

    vector: VectorIn | None = None
    text: NonEmptyText | None = None
    payload: Payload | None = None
    replace_payload: StrictBool = Field(
        False, description="Replace the payload instead of merging."
    )

    @model_validator(mode="after")
    def _something(self) -> UpdatePointRequest:
        if self.vector is not None and self.text is not None:
            raise ValueError("give vector or text, not both")
        if self.vector is None and self.text is None and self.payload is None:
            raise ValueError("give a vector, a text or a payload to update")
        return self


class UpdatePointResponse(ResponseModel):
    id: PointIdOut
    updated: bool


class DeletePointResponse(ResponseModel):
    id: PointIdOut
    deleted: bool


class Selector(RequestModel):
    """Points by ids, by filter, or both (their intersection)."""

    model_config = ConfigDict(
        json_schema_extra={"anyOf": [given(ids={"minItems": 1}), given(filter=_SOME_CONDITION)]}
    )

    ids: list[PointIdIn] | None = None
    filter: Filter | None = None

    @model_validator(mode="after")
    def _something(self) -> Selector:
        if not self.ids and (self.filter is None or not self.filter.conditions):
            raise ValueError("select points with ids, a filter, or both")
        return self


class UpsertOp(RequestModel):
    points: Annotated[list[PointIn], Field(min_length=1, max_length=limits.DEFAULT_BATCH_POINTS)]


class SetPayloadOp(Selector):
    payload: Payload
    overwrite: StrictBool = False


class DeletePayloadKeysOp(Selector):
    keys: Annotated[list[PayloadKey], Field(min_length=1)]


class Operation(RequestModel):
    """One step of a batch: exactly one of upsert, delete, set_payload, delete_payload_keys."""

    model_config = ConfigDict(
        json_schema_extra=exactly_one_of("upsert", "delete", "set_payload", "delete_payload_keys")
    )

    upsert: UpsertOp | None = None
    delete: Selector | None = None
    set_payload: SetPayloadOp | None = None
    delete_payload_keys: DeletePayloadKeysOp | None = None

    @model_validator(mode="after")
    def _one(self) -> Operation:
        _exactly_one(
            self, ("upsert", "delete", "set_payload", "delete_payload_keys"), "an operation"
        )
        return self


class BatchRequest(RequestModel):
    collection: CollectionName
    operations: Annotated[list[Operation], Field(min_length=1, max_length=limits.MAX_OPERATIONS)]


class OperationResult(ResponseModel):
    affected_count: int
    ids: list[PointIdOut] = Field(default_factory=list)


class BatchResponse(ResponseModel):
    results: list[OperationResult]


# --- search ------------------------------------------------------------------------------


class SearchRequest(RequestModel):
    """Nearest neighbours of a vector, or of a text's embedding."""

    model_config = ConfigDict(json_schema_extra=exactly_one_of("vector", "text"))

    collection: CollectionName
    vector: VectorIn | None = None
    text: NonEmptyText | None = None
    filter: Filter | None = None
    limit: int = Field(limits.DEFAULT_LIMIT, ge=1, le=limits.MAX_LIMIT)
    offset: int = Field(0, ge=0, le=limits.MAX_OFFSET)
    score_threshold: Float32 | None = None
    with_payload: StrictBool = True
    with_vector: StrictBool = False
    hnsw_ef: int | None = Field(None, ge=1, le=limits.MAX_HNSW_EF)
    exact: StrictBool = False

    @model_validator(mode="after")
    def _query(self) -> SearchRequest:
        _exactly_one(self, ("vector", "text"), "a search")
        return self


class PersonalizedSearchRequest(SearchRequest):
    """``POST /vectors/search``: one search, which may be personalised."""

    personalize: StrictBool = Field(
        False,
        description="Re-rank the hits for the caller: each score is blended with the hit's "
        "similarity to the caller's profile (what they have talked about); needs the flows.",
    )


class SearchResponse(ResponseModel):
    points: list[ScoredPoint]
    time_ms: float
    personalized: bool | None = Field(
        None, description="With personalize: whether the caller had a profile to rank by."
    )


class BatchSearchRequest(RequestModel):
    searches: Annotated[
        list[SearchRequest], Field(min_length=1, max_length=limits.DEFAULT_BATCH_SEARCHES)
    ]


class BatchSearchResponse(ResponseModel):
    results: list[SearchResponse]


class RecommendStrategy(StrEnum):
    AVERAGE_VECTOR = "average_vector"
    BEST_SCORE = "best_score"


class Example(RequestModel):
    """A recommendation example: a stored point's id, a vector or a text."""

    model_config = ConfigDict(json_schema_extra=exactly_one_of("id", "vector", "text"))

    id: PointIdIn | None = None
    vector: VectorIn | None = None
    text: NonEmptyText | None = None

    @model_validator(mode="after")
    def _one(self) -> Example:
        _exactly_one(self, ("id", "vector", "text"), "an example")
        return self


ExampleIn = Example | PointIdIn


class RecommendRequest(RequestModel):
    collection: CollectionName
    positive: Annotated[list[ExampleIn], Field(min_length=1, max_length=limits.MAX_EXAMPLES)]
    negative: Annotated[list[ExampleIn], Field(max_length=limits.MAX_EXAMPLES)] = Field(
        default_factory=list
    )
    strategy: RecommendStrategy = RecommendStrategy.AVERAGE_VECTOR
    filter: Filter | None = None
    limit: int = Field(limits.DEFAULT_LIMIT, ge=1, le=limits.MAX_LIMIT)
    offset: int = Field(0, ge=0, le=limits.MAX_OFFSET)
    score_threshold: Float32 | None = None
    with_payload: StrictBool = True
    with_vector: StrictBool = False


class ClusterAlgorithm(StrEnum):
    KMEANS = "kmeans"
    DENSITY = "density"


class ClusterRequest(RequestModel):
    collection: CollectionName
    filter: Filter | None = None
    algorithm: ClusterAlgorithm = ClusterAlgorithm.KMEANS
    num_clusters: int = Field(
        limits.DEFAULT_CLUSTERS, ge=limits.MIN_CLUSTERS, le=limits.MAX_CLUSTERS
    )
    sample_size: int = Field(
        limits.DEFAULT_CLUSTER_SAMPLE, ge=1, le=limits.DEFAULT_MAX_CLUSTER_SAMPLE
    )
    representatives: int = Field(
        limits.DEFAULT_REPRESENTATIVES, ge=0, le=limits.MAX_REPRESENTATIVES
    )
    with_member_ids: StrictBool = False
    with_payload: StrictBool = True
    seed: UInt64 | None = None


class Cluster(ResponseModel):
    id: int
    centroid: list[float]
    size: int
    member_ids: list[PointIdOut] = Field(default_factory=list)
    representatives: list[ScoredPoint] = Field(default_factory=list)


class ClusterResponse(ResponseModel):
    clusters: list[Cluster]
    total_points: int
    sampled_points: int
    noise_points: int


# --- collections ---------------------------------------------------------------------------


class Distance(StrEnum):
    COSINE = "cosine"
    DOT = "dot"
    EUCLID = "euclid"
    MANHATTAN = "manhattan"


class PayloadFieldType(StrEnum):
    KEYWORD = "keyword"
    TEXT = "text"
    INTEGER = "integer"
    FLOAT = "float"
    DATETIME = "datetime"
    BOOL = "bool"


class CollectionStatus(StrEnum):
    READY = "ready"
    OPTIMIZING = "optimizing"
    ERROR = "error"
    UNKNOWN = "unknown"


class HnswConfig(RequestModel):
    m: int | None = Field(None, ge=limits.HNSW_M[0], le=limits.HNSW_M[1])
    ef_construct: int | None = Field(
        None, ge=limits.HNSW_EF_CONSTRUCT[0], le=limits.HNSW_EF_CONSTRUCT[1]
    )
    full_scan_threshold: int | None = Field(
        None, ge=limits.HNSW_FULL_SCAN_THRESHOLD[0], le=limits.HNSW_FULL_SCAN_THRESHOLD[1]
    )
    ef_search: int | None = Field(None, ge=1, le=limits.MAX_HNSW_EF)


class ScalarQuantization(RequestModel):
    quantile: float | None = Field(None, ge=0.5, le=1.0)
    always_ram: StrictBool = False


class BinaryQuantization(RequestModel):
    always_ram: StrictBool = False


class Quantization(RequestModel):
    model_config = ConfigDict(json_schema_extra=exactly_one_of("scalar", "binary"))
    scalar: ScalarQuantization | None = None
    binary: BinaryQuantization | None = None

    @model_validator(mode="after")
    def _one(self) -> Quantization:
        _exactly_one(self, ("scalar", "binary"), "quantization")
        return self


class CreateCollectionRequest(RequestModel):
    """A new collection. Without ``dimension`` it takes the embedding model's."""

    name: CollectionName
    dimension: int | None = Field(None, ge=1, le=limits.MAX_DIMENSION)
    embedding_model: str | None = Field(
        None, description="Model whose vectors the collection holds (must be the one served)."
    )
    distance: Distance = Distance.COSINE
    payload_schema: dict[PayloadKey, PayloadFieldType] = Field(
        default_factory=dict, json_schema_extra={"additionalProperties": False}
    )
    hnsw: HnswConfig | None = None
    quantization: Quantization | None = None


class UpdateCollectionRequest(RequestModel):
    hnsw: HnswConfig | None = None
    quantization: Quantization | None = None
    add_payload_fields: dict[PayloadKey, PayloadFieldType] = Field(
        default_factory=dict, json_schema_extra={"additionalProperties": False}
    )
    remove_payload_fields: list[PayloadKey] = Field(default_factory=list)


class CollectionConfig(ResponseModel):
    dimension: int
    distance: Distance
    payload_schema: dict[str, PayloadFieldType]
    hnsw: dict[str, int]
    quantization: dict[str, Any] | None = None
    embedding_model: str = ""


class Collection(ResponseModel):
    name: str
    config: CollectionConfig
    points_count: int
    indexed_vectors_count: int
    status: CollectionStatus
    disk_bytes: int
    create_time: datetime | None = None


class CollectionList(Page):
    collections: list[Collection]


class Snapshot(ResponseModel):
    name: str
    collection: str
    size_bytes: int
    create_time: datetime | None = None
    checksum: str = ""


class SnapshotList(Page):
    snapshots: list[Snapshot]


class RestoreSnapshotRequest(RequestModel):
    target_collection: CollectionName | None = Field(
        None, description="Restore into this collection; default: replace the snapshot's own."
    )
