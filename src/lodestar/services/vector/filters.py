"""Filter translation: the service's filter model to each engine's filter types.

``to_edge_filter`` targets the in-process engine (qdrant-edge), ``to_qdrant_filter``
a Qdrant server through qdrant-client. Both express the same semantics: all of
``must``, at least one of ``should`` (when any), none of ``must_not``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import qdrant_edge as qe

from lodestar.services.vector.models import (
    Condition,
    DatetimeRange,
    FieldCondition,
    Filter,
    HasId,
    IsEmpty,
    MatchAny,
    MatchExcept,
    MatchText,
    MatchValue,
    NumberRange,
)

if TYPE_CHECKING:
    # Imported where used: qdrant-client takes a second to import and the embedded
    # backend (and its optimizer process) never needs it.
    from qdrant_client import models as qm


def rfc3339(value: datetime) -> str:
    """UTC RFC 3339 text with microseconds, as both engines parse it."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- qdrant-edge ---------------------------------------------------------------------


def to_edge_filter(value: Filter) -> qe.Filter:
    return qe.Filter(
        must=[_edge_condition(c) for c in value.must] or None,
        should=[_edge_condition(c) for c in value.should] or None,
        must_not=[_edge_condition(c) for c in value.must_not] or None,
    )


def _edge_condition(condition: Condition) -> qe.ConditionType:
    if isinstance(condition, FieldCondition):
        return _edge_field(condition)
    if isinstance(condition, IsEmpty):
        return qe.IsEmptyCondition(condition.key)
    if isinstance(condition, HasId):
        return qe.HasIdCondition(set(condition.ids))
    return to_edge_filter(condition)


def _edge_field(condition: FieldCondition) -> qe.FieldCondition:
    match = condition.match
    if match is not None:
        edge_match: qe.MatchType
        if isinstance(match, MatchValue):
            value = match.value
            # qdrant-edge-py 0.9 reads a Python bool as the integer 0/1 (bool is an int
            # subclass), so boolean payloads never match; numpy's bool reaches its bool variant.
            edge_value: Any = np.bool_(value) if isinstance(value, bool) else value
            edge_match = qe.MatchValue(edge_value)
        elif isinstance(match, MatchText):
            edge_match = qe.MatchText(match.text)
        elif isinstance(match, MatchAny):
            edge_match = qe.MatchAny(_values(match))
        else:
            edge_match = qe.MatchExcept(_values(match))
        return qe.FieldCondition(condition.key, match=edge_match)
    bounds = condition.range
    if isinstance(bounds, NumberRange):
        return qe.FieldCondition(
            condition.key,
            range=qe.RangeFloat(gte=bounds.gte, gt=bounds.gt, lte=bounds.lte, lt=bounds.lt),
        )
    if isinstance(bounds, DatetimeRange):
        return qe.FieldCondition(
            condition.key,
            range=qe.RangeDateTime(
                gte=_optional_rfc3339(bounds.gte),
                gt=_optional_rfc3339(bounds.gt),
                lte=_optional_rfc3339(bounds.lte),
                lt=_optional_rfc3339(bounds.lt),
            ),
        )
    raise ValueError(f"field condition on {condition.key!r} has no test")


def _values(match: MatchAny | MatchExcept) -> list[str] | list[int]:
    return cast("list[str] | list[int]", list(match.values))


def _optional_rfc3339(value: datetime | None) -> str | None:
    return None if value is None else rfc3339(value)


# --- qdrant-client ------------------------------------------------------------------


def to_qdrant_filter(value: Filter) -> qm.Filter:
    from qdrant_client import models as qm

    return qm.Filter(
        must=[_qdrant_condition(c) for c in value.must] or None,
        should=[_qdrant_condition(c) for c in value.should] or None,
        must_not=[_qdrant_condition(c) for c in value.must_not] or None,
    )


def _qdrant_condition(condition: Condition) -> qm.Condition:
    from qdrant_client import models as qm

    if isinstance(condition, FieldCondition):
        return _qdrant_field(condition)
    if isinstance(condition, IsEmpty):
        return qm.IsEmptyCondition(is_empty=qm.PayloadField(key=condition.key))
    if isinstance(condition, HasId):
        return qm.HasIdCondition(has_id=list(condition.ids))
    return to_qdrant_filter(condition)


def _qdrant_field(condition: FieldCondition) -> qm.FieldCondition:
    from qdrant_client import models as qm

    match = condition.match
    if match is not None:
        client_match: qm.Match
        if isinstance(match, MatchValue):
            client_match = qm.MatchValue(value=match.value)
        elif isinstance(match, MatchText):
            client_match = qm.MatchText(text=match.text)
        elif isinstance(match, MatchAny):
            client_match = qm.MatchAny(any=list(match.values))
        else:
            client_match = qm.MatchExcept(**{"except": list(match.values)})
        return qm.FieldCondition(key=condition.key, match=client_match)
    bounds = condition.range
    if isinstance(bounds, NumberRange):
        return qm.FieldCondition(
            key=condition.key,
            range=qm.Range(gt=bounds.gt, gte=bounds.gte, lt=bounds.lt, lte=bounds.lte),
        )
    if isinstance(bounds, DatetimeRange):
        return qm.FieldCondition(
            key=condition.key,
            range=qm.DatetimeRange(gt=bounds.gt, gte=bounds.gte, lt=bounds.lt, lte=bounds.lte),
        )
    raise ValueError(f"field condition on {condition.key!r} has no test")
