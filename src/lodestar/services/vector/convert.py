"""Protobuf ⇄ service models, with the validation of everything a client sends.

Every ``InvalidArgument`` names the offending field by its path in the request
(``points[3].vector``, ``filter.must[0].field.key``) so that a client can point at
it. Functions here are pure: no I/O, no engine.
"""

from __future__ import annotations

import array
import base64
import binascii
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import numpy as np
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from lodestar import limits
from lodestar.runtime import protojson
from lodestar.runtime.errors import InvalidArgument
from lodestar.services.vector import models as m
from lodestar.vector.v1 import vector_service_pb2 as pb

_COLLECTION_NAME = re.compile(
    rf"[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{limits.MAX_COLLECTION_NAME_CHARS - 1}}}"
)
_SNAPSHOT_NAME = re.compile(
    rf"[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{limits.MAX_SNAPSHOT_NAME_CHARS - 1}}}"
)
# Dotted JSON paths: "a", "a.b", "a[].b", "a[0]".
_PAYLOAD_KEY = re.compile(r"[A-Za-z0-9_\-]+(\[\d*\])?(\.[A-Za-z0-9_\-]+(\[\d*\])?)*")

_DISTANCE_FROM_PB: Final = {
    pb.DISTANCE_UNSPECIFIED: m.Distance.COSINE,
    pb.DISTANCE_COSINE: m.Distance.COSINE,
    pb.DISTANCE_DOT: m.Distance.DOT,
    pb.DISTANCE_EUCLID: m.Distance.EUCLID,
    pb.DISTANCE_MANHATTAN: m.Distance.MANHATTAN,
}
_DISTANCE_TO_PB: Final = {
    m.Distance.COSINE: pb.DISTANCE_COSINE,
    m.Distance.DOT: pb.DISTANCE_DOT,
    m.Distance.EUCLID: pb.DISTANCE_EUCLID,
    m.Distance.MANHATTAN: pb.DISTANCE_MANHATTAN,
}
_FIELD_TYPE_FROM_PB: Final = {
    pb.PAYLOAD_FIELD_TYPE_KEYWORD: m.FieldType.KEYWORD,
    pb.PAYLOAD_FIELD_TYPE_TEXT: m.FieldType.TEXT,
    pb.PAYLOAD_FIELD_TYPE_INTEGER: m.FieldType.INTEGER,
    pb.PAYLOAD_FIELD_TYPE_FLOAT: m.FieldType.FLOAT,
    pb.PAYLOAD_FIELD_TYPE_DATETIME: m.FieldType.DATETIME,
    pb.PAYLOAD_FIELD_TYPE_BOOL: m.FieldType.BOOL,
}
_FIELD_TYPE_TO_PB: Final = {v: k for k, v in _FIELD_TYPE_FROM_PB.items()}
_STATUS_TO_PB: Final = {
    m.CollectionStatus.READY: pb.COLLECTION_STATUS_READY,
    m.CollectionStatus.OPTIMIZING: pb.COLLECTION_STATUS_OPTIMIZING,
    m.CollectionStatus.ERROR: pb.COLLECTION_STATUS_ERROR,
}


def _invalid(field: str, message: str, reason: str = "INVALID_ARGUMENT") -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", field=field, reason=reason)


def _shown(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


# --- names, keys, tenants ----------------------------------------------------------------


def collection_name(value: str, field: str = "collection") -> str:
    if not value:
        raise _invalid(field, "a collection name is required", "MISSING_NAME")
    if not _COLLECTION_NAME.fullmatch(value):
        raise _invalid(
            field,
            f"{_shown(value)} is not a valid collection name: use 1 to "
            f"{limits.MAX_COLLECTION_NAME_CHARS} letters, digits, "
            "'_', '-' or '.', starting with a letter or digit",
            "INVALID_NAME",
        )
    return value


def snapshot_name(value: str, field: str = "snapshot") -> str:
    if not value:
        raise _invalid(field, "a snapshot name is required", "MISSING_NAME")
    if not _SNAPSHOT_NAME.fullmatch(value):
        raise _invalid(
            field,
            f"{_shown(value)} is not a valid snapshot name: use 1 to "
            f"{limits.MAX_SNAPSHOT_NAME_CHARS} letters, digits, "
            "'_', '-' or '.', starting with a letter or digit",
            "INVALID_NAME",
        )
    return value


def payload_key(value: str, field: str) -> str:
    if not value:
        raise _invalid(field, "a payload key is required", "INVALID_KEY")
    if len(value) > limits.MAX_KEY_CHARS or not _PAYLOAD_KEY.fullmatch(value):
        raise _invalid(
            field,
            f"{_shown(value)} is not a valid payload key: use letters, digits, '_' and '-', "
            "with '.' between nested keys and '[]' after arrays",
            "INVALID_KEY",
        )
    return value


def tenant(value: str, field: str = "tenant") -> str | None:
    """The tenant a request is confined to, or None for none."""
    if not value:
        return None
    if len(value) > limits.MAX_TENANT_CHARS or not value.isprintable() or value.strip() != value:
        raise _invalid(
            field,
            f"must be at most {limits.MAX_TENANT_CHARS} printable characters "
            "without surrounding spaces",
            "INVALID_TENANT",
        )
    return value


# --- ids, vectors, payloads -----------------------------------------------------------------


def point_id(value: pb.PointId, field: str) -> m.PointId:
    kind = value.WhichOneof("kind")
    if kind == "num":
        return value.num
    if kind == "uuid":
        return uuid_text(value.uuid, f"{field}.uuid")
    raise _invalid(field, "a point id needs num or uuid", "MISSING_ID")


def uuid_text(value: str, field: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise _invalid(field, f"{_shown(value)} is not a UUID", "INVALID_ID") from None


def point_ids(
    values: Sequence[pb.PointId], field: str, *, required: bool = True
) -> list[m.PointId]:
    if required and not values:
        raise _invalid(field, "at least one id is required", "MISSING_ID")
    if len(values) > limits.MAX_IDS:
        raise _invalid(
            field, f"at most {limits.MAX_IDS} ids per request; got {len(values)}", "TOO_MANY"
        )
    return [point_id(v, f"{field}[{i}]") for i, v in enumerate(values)]


def set_point_id(target: pb.PointId, value: m.PointId) -> None:
    """Write ``value`` into a message's ``PointId`` field, in place."""
    if isinstance(value, int):
        target.num = value
    else:
        target.uuid = value


def point_id_to_pb(value: m.PointId) -> pb.PointId:
    out = pb.PointId()
    set_point_id(out, value)
    return out


def vector(values: Sequence[float], dimension: int, field: str) -> array.array[float]:
    """A finite vector of the collection's dimension, as an ``array.array("f")``: made
    from one float32 buffer, it crosses to the engine process as that buffer, where a
    list would pickle and unpickle 384 Python floats one by one (``vectors``)."""
    if len(values) != dimension:
        raise _invalid(
            field,
            f"has {len(values)} values; the collection's vectors have {dimension}",
            "DIMENSION_MISMATCH",
        )
    values32 = np.array(values, dtype=np.float32)
    if not np.isfinite(values32).all():
        raise _invalid(field, "contains NaN or infinite values", "NON_FINITE_VECTOR")
    return array.array("f", values32.tobytes())


def vectors(
    rows: Sequence[Sequence[float]], dimension: int, field: str
) -> list[array.array[float]]:
    """Many vectors at once (one numpy conversion for the batch); ``field`` has a ``{}``.

    Each comes out as an ``array.array("f")``: a list of 384 Python floats per
    point costs several times more to build (and burdens the garbage collector),
    and the engine takes either."""
    for i, row in enumerate(rows):
        if len(row) != dimension:
            raise _invalid(
                field.format(i),
                f"has {len(row)} values; the collection's vectors have {dimension}",
                "DIMENSION_MISMATCH",
            )
    if not rows:
        return []
    matrix = np.array(rows, dtype=np.float32).reshape(len(rows), dimension)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise _invalid(field.format(bad), "contains NaN or infinite values", "NON_FINITE_VECTOR")
    return [array.array("f", row.tobytes()) for row in matrix]


def payload(value: struct_pb2.Struct, field: str) -> m.Payload:
    """A Struct as plain JSON values; integral numbers become ints (Struct has only doubles)."""
    try:
        return protojson.struct_to_dict(value)
    except protojson.NonFiniteNumber as error:
        raise _invalid(
            f"{field}.{error.path}", "payload numbers must be finite", "NON_FINITE_PAYLOAD"
        ) from None


def payload_to_pb(value: Mapping[str, Any] | None, target: struct_pb2.Struct) -> None:
    protojson.dict_to_struct(value, target)


# --- collections --------------------------------------------------------------------------


def distance_to_pb(value: m.Distance) -> pb.Distance.ValueType:
    return _DISTANCE_TO_PB[value]


def field_type_to_pb(value: m.FieldType) -> pb.PayloadFieldType.ValueType:
    return _FIELD_TYPE_TO_PB[value]


def payload_schema(
    values: Mapping[str, pb.PayloadFieldType.ValueType], field: str
) -> dict[str, m.FieldType]:
    schema: dict[str, m.FieldType] = {}
    for key in sorted(values):
        path = f"{field}[{key!r}]"
        payload_key(key, path)
        kind = _FIELD_TYPE_FROM_PB.get(values[key])
        if kind is None:
            raise _invalid(path, "a payload field needs a type", "MISSING_FIELD_TYPE")
        if key == m.TENANT_KEY and kind is not m.FieldType.KEYWORD:
            raise _invalid(
                path, f"{m.TENANT_KEY!r} holds tenant names: it can only be a keyword field"
            )
        schema[key] = kind
    return schema


def hnsw(value: pb.HnswConfig, field: str) -> m.HnswOptions:
    def bounded(name: str, low: int, high: int) -> int | None:
        if not value.HasField(name):  # type: ignore[arg-type]
            return None
        number = int(getattr(value, name))
        if not low <= number <= high:
            raise _invalid(
                f"{field}.{name}", f"must be between {low} and {high}; got {number}", "OUT_OF_RANGE"
            )
        return number

    return m.HnswOptions(
        m=bounded("m", *limits.HNSW_M),
        ef_construct=bounded("ef_construct", *limits.HNSW_EF_CONSTRUCT),
        full_scan_threshold=bounded("full_scan_threshold", *limits.HNSW_FULL_SCAN_THRESHOLD),
        ef_search=bounded("ef_search", 1, limits.MAX_HNSW_EF),
    )


def quantization(value: pb.QuantizationConfig, field: str) -> m.Quantization | None:
    kind = value.WhichOneof("kind")
    if kind == "scalar":
        scalar = value.scalar
        quantile: float | None = None
        if scalar.HasField("quantile"):
            quantile = scalar.quantile
            if not 0.5 <= quantile <= 1.0:
                raise _invalid(
                    f"{field}.scalar.quantile",
                    f"must be between 0.5 and 1; got {quantile}",
                    "OUT_OF_RANGE",
                )
        return m.ScalarQuantization(quantile=quantile, always_ram=scalar.always_ram)
    if kind == "binary":
        return m.BinaryQuantization(always_ram=value.binary.always_ram)
    return None


def collection_config(value: pb.CollectionConfig, field: str = "config") -> m.CollectionConfig:
    if not 1 <= value.dimension <= limits.MAX_DIMENSION:
        raise _invalid(
            f"{field}.dimension",
            f"must be between 1 and {limits.MAX_DIMENSION}; got {value.dimension}",
            "OUT_OF_RANGE",
        )
    distance = _DISTANCE_FROM_PB.get(value.distance)
    if distance is None:
        raise _invalid(f"{field}.distance", f"unknown distance {value.distance}")
    if len(value.embedding_model) > limits.MAX_KEY_CHARS:
        raise _invalid(f"{field}.embedding_model", f"at most {limits.MAX_KEY_CHARS} characters")
    return m.CollectionConfig(
        dimension=value.dimension,
        distance=distance,
        payload_schema=payload_schema(value.payload_schema, f"{field}.payload_schema"),
        hnsw=hnsw(value.hnsw, f"{field}.hnsw"),
        quantization=quantization(value.quantization, f"{field}.quantization"),
        embedding_model=value.embedding_model,
    )


def collection_update(request: pb.UpdateCollectionRequest) -> m.CollectionUpdate:
    removed = tuple(
        payload_key(k, f"remove_payload_fields[{i}]")
        for i, k in enumerate(request.remove_payload_fields)
    )
    added = payload_schema(request.add_payload_fields, "add_payload_fields")
    both = set(removed) & set(added)
    if both:
        raise _invalid(
            "remove_payload_fields",
            f"{sorted(both)} cannot be both added and removed in one update",
        )
    if m.TENANT_KEY in removed:
        raise _invalid(
            "remove_payload_fields",
            f"the {m.TENANT_KEY!r} index confines tenants and cannot be removed",
        )
    return m.CollectionUpdate(
        hnsw=hnsw(request.hnsw, "hnsw") if request.HasField("hnsw") else None,
        quantization=quantization(request.quantization, "quantization")
        if request.HasField("quantization")
        else None,
        add_payload_fields=added,
        remove_payload_fields=removed,
    )


def collection_config_to_pb(value: m.CollectionConfig) -> pb.CollectionConfig:
    config = pb.CollectionConfig(
        dimension=value.dimension,
        distance=_DISTANCE_TO_PB[value.distance],
        payload_schema={k: _FIELD_TYPE_TO_PB[t] for k, t in value.payload_schema.items()},
        embedding_model=value.embedding_model,
    )
    options = value.hnsw
    for name in ("m", "ef_construct", "full_scan_threshold", "ef_search"):
        number = getattr(options, name)
        if number is not None:
            setattr(config.hnsw, name, number)
    quant = value.quantization
    if isinstance(quant, m.ScalarQuantization):
        config.quantization.scalar.always_ram = quant.always_ram
        if quant.quantile is not None:
            config.quantization.scalar.quantile = quant.quantile
    elif isinstance(quant, m.BinaryQuantization):
        config.quantization.binary.always_ram = quant.always_ram
    return config


def timestamp(value: datetime | None, target: timestamp_pb2.Timestamp) -> None:
    if value is not None:
        protojson.datetime_to_timestamp(value, target)


def collection_to_pb(value: m.CollectionInfo) -> pb.Collection:
    collection = pb.Collection(
        name=value.name,
        config=collection_config_to_pb(value.config),
        points_count=value.points_count,
        indexed_vectors_count=value.indexed_vectors_count,
        status=_STATUS_TO_PB[value.status],
        disk_bytes=value.disk_bytes,
    )
    timestamp(value.create_time, collection.create_time)
    return collection


def snapshot_to_pb(value: m.SnapshotInfo) -> pb.Snapshot:
    snapshot = pb.Snapshot(
        name=value.name,
        collection=value.collection,
        size_bytes=value.size_bytes,
        checksum=value.checksum,
    )
    timestamp(value.create_time, snapshot.create_time)
    return snapshot


# --- filters ------------------------------------------------------------------------------


# What each kind of test can be applied to, for keys declared in the payload schema.
_MATCH_FIELD_TYPES: Final[dict[str, frozenset[m.FieldType]]] = {
    "keyword": frozenset({m.FieldType.KEYWORD}),
    "integer": frozenset({m.FieldType.INTEGER}),
    "boolean": frozenset({m.FieldType.BOOL}),
    "text": frozenset({m.FieldType.TEXT, m.FieldType.KEYWORD}),
    "any_keywords": frozenset({m.FieldType.KEYWORD}),
    "any_integers": frozenset({m.FieldType.INTEGER}),
    "except_keywords": frozenset({m.FieldType.KEYWORD}),
    "except_integers": frozenset({m.FieldType.INTEGER}),
}
_RANGE_FIELD_TYPES: Final = frozenset({m.FieldType.INTEGER, m.FieldType.FLOAT})
_DATETIME_FIELD_TYPES: Final = frozenset({m.FieldType.DATETIME})


class _FilterReader:
    """Reads one proto filter, checking keys and value types against the schema."""

    def __init__(self, schema: Mapping[str, m.FieldType]) -> None:
        self._schema = {**schema, m.TENANT_KEY: m.FieldType.KEYWORD}
        self._conditions = 0

    def filter(self, value: pb.Filter, field: str, depth: int = 0) -> m.Filter:
        if depth > limits.MAX_FILTER_DEPTH:
            raise _invalid(
                field, f"filters nest at most {limits.MAX_FILTER_DEPTH} deep", "FILTER_TOO_DEEP"
            )
        return m.Filter(
            must=tuple(
                self._condition(c, f"{field}.must[{i}]", depth) for i, c in enumerate(value.must)
            ),
            should=tuple(
                self._condition(c, f"{field}.should[{i}]", depth)
                for i, c in enumerate(value.should)
            ),
            must_not=tuple(
                self._condition(c, f"{field}.must_not[{i}]", depth)
                for i, c in enumerate(value.must_not)
            ),
        )

    def _condition(self, value: pb.Condition, field: str, depth: int) -> m.Condition:
        self._conditions += 1
        if self._conditions > limits.MAX_FILTER_CONDITIONS:
            raise _invalid(
                field,
                f"a filter has at most {limits.MAX_FILTER_CONDITIONS} conditions",
                "FILTER_TOO_LARGE",
            )
        kind = value.WhichOneof("kind")
        if kind == "field":
            return self._field(value.field, f"{field}.field")
        if kind == "is_empty":
            return m.IsEmpty(payload_key(value.is_empty.key, f"{field}.is_empty.key"))
        if kind == "has_id":
            return m.HasId(tuple(point_ids(value.has_id.ids, f"{field}.has_id.ids")))
        if kind == "filter":
            return self.filter(value.filter, f"{field}.filter", depth + 1)
        raise _invalid(
            field, "a condition needs field, is_empty, has_id or filter", "EMPTY_CONDITION"
        )

    def _check_type(self, key: str, test: str, allowed: frozenset[m.FieldType], field: str) -> None:
        declared = self._schema.get(key)
        if declared is not None and declared not in allowed:
            kinds = " or ".join(sorted(t.value for t in allowed))
            raise _invalid(
                field,
                f"{key!r} is a {declared.value} field; a {test} test needs a {kinds} field",
                "FILTER_TYPE_MISMATCH",
            )

    def _field(self, value: pb.FieldCondition, field: str) -> m.FieldCondition:
        key = payload_key(value.key, f"{field}.key")
        test = value.WhichOneof("test")
        if test == "match":
            match = value.match
            kind = match.WhichOneof("kind")
            path = f"{field}.match"
            if kind is None:
                raise _invalid(path, "a match needs a value", "EMPTY_CONDITION")
            self._check_type(key, f"{kind} match", _MATCH_FIELD_TYPES[kind], f"{path}.{kind}")
            return m.FieldCondition(key=key, match=_match(match, kind, f"{path}.{kind}"))
        if test == "range":
            bounds = value.range
            path = f"{field}.range"
            self._check_type(key, "range", _RANGE_FIELD_TYPES, path)
            numbers = {
                n: getattr(bounds, n) for n in ("gt", "gte", "lt", "lte") if bounds.HasField(n)
            }  # type: ignore[arg-type]
            if not numbers:
                raise _invalid(path, "a range needs at least one bound", "EMPTY_CONDITION")
            for name, number in numbers.items():
                if not math.isfinite(number):
                    raise _invalid(f"{path}.{name}", "bounds must be finite", "NON_FINITE_BOUND")
            return m.FieldCondition(key=key, range=m.NumberRange(**numbers))
        if test == "datetime_range":
            bounds_dt = value.datetime_range
            path = f"{field}.datetime_range"
            self._check_type(key, "datetime range", _DATETIME_FIELD_TYPES, path)
            moments = {
                n: _datetime(getattr(bounds_dt, n), f"{path}.{n}")
                for n in ("gt", "gte", "lt", "lte")
                if bounds_dt.HasField(n)  # type: ignore[arg-type]
            }
            if not moments:
                raise _invalid(path, "a range needs at least one bound", "EMPTY_CONDITION")
            return m.FieldCondition(key=key, range=m.DatetimeRange(**moments))
        raise _invalid(
            field, "a field condition needs match, range or datetime_range", "EMPTY_CONDITION"
        )


def _match(match: pb.Match, kind: str, field: str) -> m.Match:
    if kind == "keyword":
        return m.MatchValue(match.keyword)
    if kind == "integer":
        return m.MatchValue(match.integer)
    if kind == "boolean":
        return m.MatchValue(match.boolean)
    if kind == "text":
        if not match.text.strip():
            raise _invalid(field, "the text to match is empty", "EMPTY_CONDITION")
        return m.MatchText(match.text)
    values: tuple[str, ...] | tuple[int, ...]
    if kind in ("any_keywords", "except_keywords"):
        values = tuple(getattr(match, kind).values)
    else:
        values = tuple(int(v) for v in getattr(match, kind).values)
    if not values:
        raise _invalid(field, "needs at least one value", "EMPTY_CONDITION")
    if len(values) > limits.MAX_MATCH_VALUES:
        raise _invalid(field, f"at most {limits.MAX_MATCH_VALUES} values", "TOO_MANY")
    if kind.startswith("any"):
        return m.MatchAny(values)
    return m.MatchExcept(values)


def _datetime(value: timestamp_pb2.Timestamp, field: str) -> datetime:
    try:
        return protojson.timestamp_to_datetime(value)
    except ValueError:
        raise _invalid(field, "not a valid timestamp", "INVALID_TIMESTAMP") from None


def filter_(
    value: pb.Filter, schema: Mapping[str, m.FieldType], field: str = "filter"
) -> m.Filter | None:
    """A request's filter (None when it has no condition)."""
    result = _FilterReader(schema).filter(value, field)
    return None if result.is_empty() else result


def optional_filter(
    message: Any, schema: Mapping[str, m.FieldType], field: str = "filter"
) -> m.Filter | None:
    """The ``filter`` field of ``message`` when it is set."""
    if not message.HasField("filter"):
        return None
    return filter_(message.filter, schema, field)


def selector(value: pb.PointsSelector, schema: Mapping[str, m.FieldType], field: str) -> m.Selector:
    ids = point_ids(value.ids, f"{field}.ids", required=False)
    chosen = filter_(value.filter, schema, f"{field}.filter") if value.HasField("filter") else None
    if not ids and chosen is None:
        raise _invalid(field, "select points by ids, by a filter, or both", "EMPTY_SELECTOR")
    return m.Selector(ids=tuple(ids), filter=chosen)


# --- paging, limits -----------------------------------------------------------------------


def limit(value: int, field: str = "limit") -> int:
    if value == 0:
        return limits.DEFAULT_LIMIT
    if value > limits.MAX_LIMIT:
        raise _invalid(
            field, f"must be between 1 and {limits.MAX_LIMIT}; got {value}", "OUT_OF_RANGE"
        )
    return value


def offset(value: int, field: str = "offset") -> int:
    if value > limits.MAX_OFFSET:
        raise _invalid(
            field, f"must be between 0 and {limits.MAX_OFFSET}; got {value}", "OUT_OF_RANGE"
        )
    return value


def page_size(value: int, field: str = "page_size") -> int:
    if value == 0:
        return limits.DEFAULT_PAGE_SIZE
    if not 1 <= value <= limits.MAX_PAGE_SIZE:
        raise _invalid(
            field, f"must be between 1 and {limits.MAX_PAGE_SIZE}; got {value}", "OUT_OF_RANGE"
        )
    return value


def encode_page_token(state: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode()


def decode_page_token(value: str, kind: str, field: str = "page_token") -> dict[str, Any]:
    """The state inside a token this service issued for ``kind`` ({} for no token)."""
    if not value:
        return {}
    try:
        state = json.loads(base64.b64decode(value.encode("ascii"), altchars=b"-_", validate=True))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        state = None
    if not isinstance(state, dict) or state.get("k") != kind:
        raise _invalid(field, "not a page token from a previous response", "INVALID_PAGE_TOKEN")
    return state


def point_id_state(value: m.PointId) -> dict[str, Any]:
    return {"n": value} if isinstance(value, int) else {"u": value}


def point_id_from_state(state: Mapping[str, Any], field: str = "page_token") -> m.PointId:
    if isinstance(state.get("n"), int) and state["n"] >= 0:
        return int(state["n"])
    if isinstance(state.get("u"), str):
        return uuid_text(state["u"], field)
    raise _invalid(field, "not a page token from a previous response", "INVALID_PAGE_TOKEN")


def score_threshold(message: Any, field: str = "score_threshold") -> float | None:
    if not message.HasField("score_threshold"):
        return None
    value = float(message.score_threshold)
    if not math.isfinite(value):
        raise _invalid(field, "must be finite", "NON_FINITE_BOUND")
    return value


def search_params(value: pb.SearchParams, field: str = "params") -> tuple[int | None, bool]:
    ef: int | None = None
    if value.HasField("hnsw_ef"):
        ef = value.hnsw_ef
        if not 1 <= ef <= limits.MAX_HNSW_EF:
            raise _invalid(
                f"{field}.hnsw_ef",
                f"must be between 1 and {limits.MAX_HNSW_EF}; got {ef}",
                "OUT_OF_RANGE",
            )
    return ef, value.exact


# --- points and hits out ----------------------------------------------------------------


def record_to_pb(value: m.PointRecord) -> pb.Point:
    point = pb.Point(id=point_id_to_pb(value.id))
    if value.vector is not None:
        point.vector.extend(value.vector)
    protojson.dict_to_struct(value.payload, point.payload)
    return point


def add_hits(
    values: Iterable[m.ScoredHit], target: RepeatedCompositeFieldContainer[pb.ScoredPoint]
) -> None:
    """Append hits to a response's repeated ``ScoredPoint`` field, in place (cheaper than
    building each message and copying it in)."""
    for value in values:
        hit = target.add()
        hit.score = value.score
        set_point_id(hit.id, value.id)
        if value.vector is not None:
            hit.vector.extend(value.vector)
        protojson.dict_to_struct(value.payload, hit.payload)
