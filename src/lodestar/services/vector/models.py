"""The vector service's own model of collections, points, filters and queries.

Backends speak these types, never protobuf: the servicer converts (and
validates) at the edge, each backend translates them to its engine's types.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

# An unsigned integer or a canonical (lower-case, hyphenated) UUID string.
PointId: TypeAlias = int | str
Payload: TypeAlias = dict[str, Any]
# A dense vector: a list, or an ``array.array("f")`` (from requests, and from the embedded
# engine): float32 values in one buffer are cheaper to make, to hand to the engine and to
# carry to another process than a list of Python floats.
Vector: TypeAlias = Sequence[float]

TENANT_KEY = "tenant"


class Distance(enum.Enum):
    COSINE = "cosine"
    DOT = "dot"
    EUCLID = "euclid"
    MANHATTAN = "manhattan"

    @property
    def higher_is_closer(self) -> bool:
        return self in (Distance.COSINE, Distance.DOT)


class FieldType(enum.Enum):
    KEYWORD = "keyword"
    TEXT = "text"
    INTEGER = "integer"
    FLOAT = "float"
    DATETIME = "datetime"
    BOOL = "bool"


class CollectionStatus(enum.Enum):
    READY = "ready"
    OPTIMIZING = "optimizing"
    ERROR = "error"


class RecommendStrategy(enum.Enum):
    AVERAGE_VECTOR = "average_vector"
    BEST_SCORE = "best_score"


@dataclass(frozen=True, slots=True)
class HnswOptions:
    m: int | None = None
    ef_construct: int | None = None
    full_scan_threshold: int | None = None
    ef_search: int | None = None

    def merged(self, update: HnswOptions) -> HnswOptions:
        """These options with every field ``update`` sets replaced."""
        return HnswOptions(
            m=update.m if update.m is not None else self.m,
            ef_construct=update.ef_construct
            if update.ef_construct is not None
            else self.ef_construct,
            full_scan_threshold=update.full_scan_threshold
            if update.full_scan_threshold is not None
            else self.full_scan_threshold,
            ef_search=update.ef_search if update.ef_search is not None else self.ef_search,
        )


@dataclass(frozen=True, slots=True)
class ScalarQuantization:
    quantile: float | None = None
    always_ram: bool = False


@dataclass(frozen=True, slots=True)
class BinaryQuantization:
    always_ram: bool = False


Quantization: TypeAlias = ScalarQuantization | BinaryQuantization


@dataclass(frozen=True, slots=True)
class CollectionConfig:
    dimension: int
    distance: Distance = Distance.COSINE
    payload_schema: dict[str, FieldType] = field(default_factory=dict)
    hnsw: HnswOptions = HnswOptions()
    quantization: Quantization | None = None
    embedding_model: str = ""


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    name: str
    config: CollectionConfig
    points_count: int
    indexed_vectors_count: int
    status: CollectionStatus
    disk_bytes: int
    create_time: datetime | None


@dataclass(frozen=True, slots=True)
class CollectionUpdate:
    """Changes to a collection; None (or empty) leaves a part unchanged."""

    hnsw: HnswOptions | None = None
    quantization: Quantization | None = None
    add_payload_fields: dict[str, FieldType] = field(default_factory=dict)
    remove_payload_fields: tuple[str, ...] = ()


@dataclass(slots=True)
class PointRecord:
    id: PointId
    vector: Vector | None
    payload: Payload | None


@dataclass(slots=True)
class ScoredHit:
    id: PointId
    score: float
    payload: Payload | None
    vector: Vector | None


# --- filters -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MatchValue:
    """Equality with a keyword, an integer or a boolean."""

    value: str | int | bool


@dataclass(frozen=True, slots=True)
class MatchText:
    """Full-text match: every token of ``text`` appears in the value."""

    text: str


@dataclass(frozen=True, slots=True)
class MatchAny:
    values: tuple[str, ...] | tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MatchExcept:
    values: tuple[str, ...] | tuple[int, ...]


Match: TypeAlias = MatchValue | MatchText | MatchAny | MatchExcept


@dataclass(frozen=True, slots=True)
class NumberRange:
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True, slots=True)
class DatetimeRange:
    """Bounds as timezone-aware datetimes."""

    gt: datetime | None = None
    gte: datetime | None = None
    lt: datetime | None = None
    lte: datetime | None = None


@dataclass(frozen=True, slots=True)
class FieldCondition:
    key: str
    match: Match | None = None
    range: NumberRange | DatetimeRange | None = None


@dataclass(frozen=True, slots=True)
class IsEmpty:
    key: str


@dataclass(frozen=True, slots=True)
class HasId:
    ids: tuple[PointId, ...]


@dataclass(frozen=True, slots=True)
class Filter:
    must: tuple[Condition, ...] = ()
    should: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()

    def is_empty(self) -> bool:
        return not (self.must or self.should or self.must_not)


Condition: TypeAlias = FieldCondition | IsEmpty | HasId | Filter


def with_must(base: Filter | None, *conditions: Condition) -> Filter | None:
    """``base`` with extra conditions that must all hold (None stays None when none)."""
    if not conditions:
        return base
    if base is None:
        return Filter(must=tuple(conditions))
    return Filter(must=(*base.must, *conditions), should=base.should, must_not=base.must_not)


def tenant_condition(tenant: str) -> FieldCondition:
    return FieldCondition(key=TENANT_KEY, match=MatchValue(tenant))


# --- queries and writes -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchQuery:
    vector: Vector
    filter: Filter | None = None
    limit: int = 10
    offset: int = 0
    score_threshold: float | None = None
    with_payload: bool = False
    with_vector: bool = False
    hnsw_ef: int | None = None
    exact: bool = False


@dataclass(frozen=True, slots=True)
class RecommendQuery:
    """Examples are vectors: ids are resolved to vectors before a backend sees them."""

    positives: Sequence[Vector]
    negatives: Sequence[Vector] = ()
    strategy: RecommendStrategy = RecommendStrategy.AVERAGE_VECTOR
    filter: Filter | None = None
    limit: int = 10
    offset: int = 0
    score_threshold: float | None = None
    with_payload: bool = False
    with_vector: bool = False


@dataclass(frozen=True, slots=True)
class Selector:
    """Points by ids, by filter, or both (the intersection)."""

    ids: tuple[PointId, ...] = ()
    filter: Filter | None = None

    def as_filter(self) -> Filter:
        conditions: list[Condition] = []
        if self.ids:
            conditions.append(HasId(self.ids))
        base = self.filter or Filter()
        return Filter(must=(*base.must, *conditions), should=base.should, must_not=base.must_not)


@dataclass(frozen=True, slots=True)
class UpsertOp:
    points: Sequence[PointRecord]


@dataclass(frozen=True, slots=True)
class DeleteOp:
    selector: Selector


@dataclass(frozen=True, slots=True)
class SetPayloadOp:
    selector: Selector
    payload: Payload
    overwrite: bool = False


@dataclass(frozen=True, slots=True)
class DeletePayloadKeysOp:
    selector: Selector
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UpdateVectorsOp:
    points: Sequence[tuple[PointId, Vector]]


Operation: TypeAlias = UpsertOp | DeleteOp | SetPayloadOp | DeletePayloadKeysOp | UpdateVectorsOp


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    name: str
    collection: str
    size_bytes: int
    create_time: datetime | None
    checksum: str = ""


# --- persistence of configurations (collection metadata, snapshot headers) ----------------


def config_to_dict(config: CollectionConfig) -> dict[str, Any]:
    quantization: dict[str, Any] | None = None
    if isinstance(config.quantization, ScalarQuantization):
        quantization = {
            "kind": "scalar",
            "quantile": config.quantization.quantile,
            "always_ram": config.quantization.always_ram,
        }
    elif isinstance(config.quantization, BinaryQuantization):
        quantization = {"kind": "binary", "always_ram": config.quantization.always_ram}
    return {
        "dimension": config.dimension,
        "distance": config.distance.value,
        "payload_schema": {k: t.value for k, t in sorted(config.payload_schema.items())},
        "hnsw": {
            "m": config.hnsw.m,
            "ef_construct": config.hnsw.ef_construct,
            "full_scan_threshold": config.hnsw.full_scan_threshold,
            "ef_search": config.hnsw.ef_search,
        },
        "quantization": quantization,
        "embedding_model": config.embedding_model,
    }


def config_from_dict(data: dict[str, Any]) -> CollectionConfig:
    quantization: Quantization | None = None
    raw = data.get("quantization")
    if isinstance(raw, dict) and raw.get("kind") == "scalar":
        quantization = ScalarQuantization(raw.get("quantile"), bool(raw.get("always_ram")))
    elif isinstance(raw, dict) and raw.get("kind") == "binary":
        quantization = BinaryQuantization(bool(raw.get("always_ram")))
    hnsw = data.get("hnsw") or {}
    return CollectionConfig(
        dimension=int(data["dimension"]),
        distance=Distance(data.get("distance", Distance.COSINE.value)),
        payload_schema={k: FieldType(v) for k, v in (data.get("payload_schema") or {}).items()},
        hnsw=HnswOptions(
            m=hnsw.get("m"),
            ef_construct=hnsw.get("ef_construct"),
            full_scan_threshold=hnsw.get("full_scan_threshold"),
            ef_search=hnsw.get("ef_search"),
        ),
        quantization=quantization,
        embedding_model=str(data.get("embedding_model", "")),
    )
