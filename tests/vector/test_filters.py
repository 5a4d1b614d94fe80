"""Unit tests of filter translation: the same filter model to qdrant-edge and qdrant-client.

Each translated filter runs against the same few points in a real edge shard and
in qdrant-client's local mode; both must select exactly the expected points.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qdrant_edge as qe
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from lodestar.services.vector import models as m
from lodestar.services.vector.filters import rfc3339, to_edge_filter, to_qdrant_filter

U = str(uuid.UUID(int=7))
POINTS: list[tuple[int | str, dict[str, Any]]] = [
    (
        1,
        {
            "lang": "en",
            "year": 2001,
            "score": 0.5,
            "ok": True,
            "tags": ["a", "b"],
            "text": "the quick brown fox",
            "at": "2024-01-01T00:00:00Z",
            "nested": {"k": "v"},
        },
    ),
    (
        2,
        {
            "lang": "de",
            "year": 1999,
            "score": 1.5,
            "ok": False,
            "tags": ["b"],
            "text": "lazy dogs sleep",
            "at": "2023-06-01T00:00:00Z",
        },
    ),
    (3, {"lang": "en", "year": 2010, "tags": [], "at": "2025-03-01T12:00:00Z"}),
    (U, {"lang": "fr", "year": 2001, "score": 3.0, "ok": True, "nested": {"k": "w"}}),
    (5, {}),
]

CASES: list[tuple[str, m.Filter, set[int | str]]] = [
    ("keyword", m.Filter(must=(m.FieldCondition("lang", match=m.MatchValue("en")),)), {1, 3}),
    ("integer", m.Filter(must=(m.FieldCondition("year", match=m.MatchValue(2001)),)), {1, U}),
    ("bool true", m.Filter(must=(m.FieldCondition("ok", match=m.MatchValue(True)),)), {1, U}),
    ("bool false", m.Filter(must=(m.FieldCondition("ok", match=m.MatchValue(False)),)), {2}),
    ("text", m.Filter(must=(m.FieldCondition("text", match=m.MatchText("quick fox")),)), {1}),
    ("any", m.Filter(must=(m.FieldCondition("lang", match=m.MatchAny(("de", "fr"))),)), {2, U}),
    (
        "any ints",
        m.Filter(must=(m.FieldCondition("year", match=m.MatchAny((1999, 2010))),)),
        {2, 3},
    ),
    ("array member", m.Filter(must=(m.FieldCondition("tags", match=m.MatchValue("a")),)), {1}),
    ("except", m.Filter(must=(m.FieldCondition("lang", match=m.MatchExcept(("en",))),)), {2, U}),
    (
        "range",
        m.Filter(must=(m.FieldCondition("score", range=m.NumberRange(gt=0.5, lte=3.0)),)),
        {2, U},
    ),
    (
        "datetime",
        m.Filter(
            must=(
                m.FieldCondition(
                    "at",
                    range=m.DatetimeRange(
                        gte=datetime(2023, 12, 31, tzinfo=UTC),
                        lt=datetime(2025, 3, 1, 12, tzinfo=UTC),
                    ),
                ),
            )
        ),
        {1},
    ),
    ("is empty", m.Filter(must=(m.IsEmpty("tags"),)), {3, U, 5}),
    ("has id", m.Filter(must=(m.HasId((2, U, 99)),)), {2, U}),
    ("nested key", m.Filter(must=(m.FieldCondition("nested.k", match=m.MatchValue("w")),)), {U}),
    (
        "must not",
        m.Filter(must_not=(m.FieldCondition("lang", match=m.MatchValue("en")),)),
        {2, U, 5},
    ),
    (
        "should",
        m.Filter(should=(m.HasId((5,)), m.FieldCondition("year", range=m.NumberRange(gte=2010)))),
        {3, 5},
    ),
    (
        "nested filter",
        m.Filter(
            must=(
                m.Filter(
                    should=(
                        m.FieldCondition("lang", match=m.MatchValue("en")),
                        m.FieldCondition("lang", match=m.MatchValue("fr")),
                    )
                ),
            ),
            must_not=(m.HasId((3,)),),
        ),
        {1, U},
    ),
]


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[qe.EdgeShard]:
    path: Path = tmp_path_factory.mktemp("filters") / "shard"
    engine = qe.EdgeShard.create(
        str(path), qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=2, distance=qe.Distance.Dot))
    )
    engine.update(qe.UpdateOperation.upsert_points([qe.Point(i, [1.0, 0.0], p) for i, p in POINTS]))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def client() -> Iterator[QdrantClient]:
    local = QdrantClient(location=":memory:")
    local.create_collection("c", vectors_config=qm.VectorParams(size=2, distance=qm.Distance.DOT))
    local.upsert(
        "c", points=[qm.PointStruct(id=i, vector=[1.0, 0.0], payload=p) for i, p in POINTS]
    )
    yield local
    local.close()


def _ids(values: Any) -> set[int | str]:
    return {v if isinstance(v, int) else str(v) for v in values}


@pytest.mark.parametrize(("label", "value", "expected"), CASES, ids=[c[0] for c in CASES])
def test_both_engines_select_the_same_points(
    shard: qe.EdgeShard, client: QdrantClient, label: str, value: m.Filter, expected: set[int | str]
) -> None:
    edge_records, _ = shard.scroll(qe.ScrollRequest(limit=100, filter=to_edge_filter(value)))
    assert _ids(r.id for r in edge_records) == expected, label
    client_records, _ = client.scroll("c", scroll_filter=to_qdrant_filter(value), limit=100)
    assert _ids(r.id for r in client_records) == expected, label


def test_edge_translation_shape() -> None:
    translated = to_edge_filter(
        m.Filter(
            must=(m.FieldCondition("ok", match=m.MatchValue(True)),), must_not=(m.HasId((1,)),)
        )
    )
    assert translated.should is None
    (condition,) = translated.must or []
    assert isinstance(condition, qe.FieldCondition)
    assert condition.key == "ok"
    assert isinstance(condition.match, qe.MatchValue)
    # Booleans reach the engine as booleans, not as the integer 1.
    assert isinstance(condition.match.value, bool | np.bool_)
    (excluded,) = translated.must_not or []
    assert isinstance(excluded, qe.HasIdCondition)
    assert excluded.point_ids == {1}


def test_client_translation_shape() -> None:
    moment = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    translated = to_qdrant_filter(
        m.Filter(must=(m.FieldCondition("at", range=m.DatetimeRange(lt=moment)), m.IsEmpty("x")))
    )
    date_condition, empty = translated.must or []
    assert isinstance(date_condition, qm.FieldCondition)
    assert isinstance(date_condition.range, qm.DatetimeRange)
    assert date_condition.range.lt == moment
    assert isinstance(empty, qm.IsEmptyCondition)
    assert empty.is_empty.key == "x"
    assert rfc3339(moment) == "2024-01-02T03:04:05.000000Z"
