"""Protobuf ⇄ service models, with the validation of everything a client sends.

Every ``InvalidArgument`` names the offending field by its path in the request
(``points[3].vector``, ``filter.must[0].field.key``) so that a client can point at
it. Functions here are pure: no I/O, no engine. Filters are read in
``filter_convert``.
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
from typing import Any, Final, Protocol

import numpy as np
from google.protobuf import struct_pb2, timestamp_pb2

from lodestar import limits
from lodestar.runtime import protojson
from lodestar.runtime.errors import InvalidArgument
from lodestar.services.vector import models as m
from lodestar.vector.v1 import vector_service_pb2 as pb

_COLLECTION_NAME = re.compile(limits.COLLECTION_NAME_PATTERN)
_SNAPSHOT_NAME = re.compile(limits.SNAPSHOT_NAME_PATTERN)
_PAYLOAD_KEY = re.compile(limits.PAYLOAD_KEY_PATTERN)

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


def invalid(field: str, message: str, reason: str = "INVALID_ARGUMENT") -> InvalidArgument:
    """Bad input at ``field`` (its path in the request), with an UPPER_SNAKE reason."""
    return InvalidArgument(f"{field}: {message}", field=field, reason=reason)


def _shown(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


# --- names, keys, tenants ----------------------------------------------------------------


def collection_name(value: str, field: str = "collection") -> str:
    if not value:
        raise invalid(field, "a collection name is required", "MISSING_NAME")
    if not _COLLECTION_NAME.fullmatch(value):
        raise invalid(
            field,
            f"{_shown(value)} is not a valid collection name: use 1 to "
            f"{limits.MAX_COLLECTION_NAME_CHARS} letters, digits, "
            "'_', '-' or '.', starting with a letter or digit",
            "INVALID_NAME",
        )
    return value


def snapshot_name(value: str, field: str = "snapshot") -> str:
    if not value:
        raise invalid(field, "a snapshot name is required", "MISSING_NAME")
    if not _SNAPSHOT_NAME.fullmatch(value):
        raise invalid(
            field,
            f"{_shown(value)} is not a valid snapshot name: use 1 to "
            f"{limits.MAX_SNAPSHOT_NAME_CHARS} letters, digits, "
            "'_', '-' or '.', starting with a letter or digit",
            "INVALID_NAME",
        )
    return value


def payload_key(value: str, field: str) -> str:
    if not value:
        raise invalid(field, "a payload key is required", "INVALID_KEY")
    if len(value) > limits.MAX_KEY_CHARS or not _PAYLOAD_KEY.fullmatch(value):
        raise invalid(
            field,
            f"{_shown(value)} is not a valid payload key: use letters, digits, '_' and '-', "
            "with '.' between nested keys and '[]' after arrays (an index in it of at most "
            f"{limits.MAX_INDEX_DIGITS} digits)",
            "INVALID_KEY",
        )
    return value


def tenant(value: str, field: str = "tenant") -> str | None:
    """The tenant a request is confined to, or None for none."""
    if not value:
        return None
    if len(value) > limits.MAX_TENANT_CHARS or not value.isprintable() or value.strip() != value:
        raise invalid(
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
    raise invalid(field, "a point id needs num or uuid", "MISSING_ID")


def uuid_text(value: str, field: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise invalid(field, f"{_shown(value)} is not a UUID", "INVALID_ID") from None


def point_ids(
    values: Sequence[pb.PointId], field: str, *, required: bool = True
) -> list[m.PointId]:
    if required and not values:
        raise invalid(field, "at least one id is required", "MISSING_ID")
    if len(values) > limits.MAX_IDS:
        raise invalid(
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
        raise invalid(
            field,
            f"has {len(values)} values; the collection's vectors have {dimension}",
            "DIMENSION_MISMATCH",
        )
    values32 = np.array(values, dtype=np.float32)
    if not np.isfinite(values32).all():
        raise invalid(field, "contains NaN or infinite values", "NON_FINITE_VECTOR")
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
            raise invalid(
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
        raise invalid(field.format(bad), "contains NaN or infinite values", "NON_FINITE_VECTOR")
    return [array.array("f", row.tobytes()) for row in matrix]


def payload(value: struct_pb2.Struct, field: str) -> m.Payload:
    """A Struct as plain JSON values; integral numbers become ints (Struct has only doubles)."""
    try:
        return protojson.struct_to_dict(value)
    except protojson.NonFiniteNumber as error:
        raise invalid(
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
            raise invalid(path, "a payload field needs a type", "MISSING_FIELD_TYPE")
        if key == m.TENANT_KEY and kind is not m.FieldType.KEYWORD:
            raise invalid(
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
            raise invalid(
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
                raise invalid(
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
        raise invalid(
            f"{field}.dimension",
            f"must be between 1 and {limits.MAX_DIMENSION}; got {value.dimension}",
            "OUT_OF_RANGE",
        )
    distance = _DISTANCE_FROM_PB.get(value.distance)
    if distance is None:
        raise invalid(f"{field}.distance", f"unknown distance {value.distance}")
    if len(value.embedding_model) > limits.MAX_KEY_CHARS:
        raise invalid(f"{field}.embedding_model", f"at most {limits.MAX_KEY_CHARS} characters")
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
        raise invalid(
            "remove_payload_fields",
            f"{sorted(both)} cannot be both added and removed in one update",
        )
    if m.TENANT_KEY in removed:
        raise invalid(
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


# --- paging, limits -----------------------------------------------------------------------


def limit(value: int, field: str = "limit") -> int:
    if value == 0:
        return limits.DEFAULT_LIMIT
    if value > limits.MAX_LIMIT:
        raise invalid(
            field, f"must be between 1 and {limits.MAX_LIMIT}; got {value}", "OUT_OF_RANGE"
        )
    return value


def offset(value: int, field: str = "offset") -> int:
    if value > limits.MAX_OFFSET:
        raise invalid(
            field, f"must be between 0 and {limits.MAX_OFFSET}; got {value}", "OUT_OF_RANGE"
        )
    return value


def page_size(value: int, field: str = "page_size") -> int:
    if value == 0:
        return limits.DEFAULT_PAGE_SIZE
    if not 1 <= value <= limits.MAX_PAGE_SIZE:
        raise invalid(
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
        raise invalid(field, "not a page token from a previous response", "INVALID_PAGE_TOKEN")
    return state


def point_id_state(value: m.PointId) -> dict[str, Any]:
    return {"n": value} if isinstance(value, int) else {"u": value}


def point_id_from_state(state: Mapping[str, Any], field: str = "page_token") -> m.PointId:
    if isinstance(state.get("n"), int) and state["n"] >= 0:
        return int(state["n"])
    if isinstance(state.get("u"), str):
        return uuid_text(state["u"], field)
    raise invalid(field, "not a page token from a previous response", "INVALID_PAGE_TOKEN")


def score_threshold(message: Any, field: str = "score_threshold") -> float | None:
    if not message.HasField("score_threshold"):
        return None
    value = float(message.score_threshold)
    if not math.isfinite(value):
        raise invalid(field, "must be finite", "NON_FINITE_BOUND")
    return value


def search_params(value: pb.SearchParams, field: str = "params") -> tuple[int | None, bool]:
    ef: int | None = None
    if value.HasField("hnsw_ef"):
        ef = value.hnsw_ef
        if not 1 <= ef <= limits.MAX_HNSW_EF:
            raise invalid(
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


class ScoredPoints(Protocol):
    """A response's repeated ``ScoredPoint`` field (typed without protobuf's internals)."""

    def add(self) -> pb.ScoredPoint: ...


def add_hits(values: Iterable[m.ScoredHit], target: ScoredPoints) -> None:
    """Append hits to a response's repeated ``ScoredPoint`` field, in place (cheaper than
    building each message and copying it in)."""
    for value in values:
        hit = target.add()
        hit.score = value.score
        set_point_id(hit.id, value.id)
        if value.vector is not None:
            hit.vector.extend(value.vector)
        protojson.dict_to_struct(value.payload, hit.payload)
