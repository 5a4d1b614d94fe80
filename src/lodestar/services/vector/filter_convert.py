"""Protobuf filters and point selectors → service models, checked against the
collection's payload schema.

Like ``convert``, every ``InvalidArgument`` names the offending field by its path
(``filter.must[0].field.key``); the functions are pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from google.protobuf import timestamp_pb2

from lodestar import limits
from lodestar.runtime import protojson
from lodestar.services.vector import models as m
from lodestar.services.vector.convert import invalid, payload_key, point_ids
from lodestar.vector.v1 import vector_service_pb2 as pb

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
            raise invalid(
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
            raise invalid(
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
        raise invalid(
            field, "a condition needs field, is_empty, has_id or filter", "EMPTY_CONDITION"
        )

    def _check_type(self, key: str, test: str, allowed: frozenset[m.FieldType], field: str) -> None:
        declared = self._schema.get(key)
        if declared is not None and declared not in allowed:
            kinds = " or ".join(sorted(t.value for t in allowed))
            raise invalid(
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
                raise invalid(path, "a match needs a value", "EMPTY_CONDITION")
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
                raise invalid(path, "a range needs at least one bound", "EMPTY_CONDITION")
            for name, number in numbers.items():
                if not math.isfinite(number):
                    raise invalid(f"{path}.{name}", "bounds must be finite", "NON_FINITE_BOUND")
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
                raise invalid(path, "a range needs at least one bound", "EMPTY_CONDITION")
            return m.FieldCondition(key=key, range=m.DatetimeRange(**moments))
        raise invalid(
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
            raise invalid(field, "the text to match is empty", "EMPTY_CONDITION")
        return m.MatchText(match.text)
    values: tuple[str, ...] | tuple[int, ...]
    if kind in ("any_keywords", "except_keywords"):
        values = tuple(getattr(match, kind).values)
    else:
        values = tuple(int(v) for v in getattr(match, kind).values)
    if not values:
        raise invalid(field, "needs at least one value", "EMPTY_CONDITION")
    if len(values) > limits.MAX_MATCH_VALUES:
        raise invalid(field, f"at most {limits.MAX_MATCH_VALUES} values", "TOO_MANY")
    if kind.startswith("any"):
        return m.MatchAny(values)
    return m.MatchExcept(values)


def _datetime(value: timestamp_pb2.Timestamp, field: str) -> datetime:
    try:
        return protojson.timestamp_to_datetime(value)
    except ValueError:
        raise invalid(field, "not a valid timestamp", "INVALID_TIMESTAMP") from None


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
        raise invalid(field, "select points by ids, by a filter, or both", "EMPTY_SELECTOR")
    return m.Selector(ids=tuple(ids), filter=chosen)
