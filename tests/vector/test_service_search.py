"""The behavioural suite over real gRPC, against every backend: search, filters,
batch search and recommendations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
import numpy as np
import pytest

from lodestar.vector.v1 import vector_service_pb2 as pb
from tests.vector.conftest import CreateCollection, expect_invalid, rpc_error
from tests.vector.suite import Stub, books, field, ids_of, num, number_range, point, stamp


async def test_search_matches_exact_nearest_neighbours(
    stub: Stub, collection: CreateCollection
) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    for distance, measure in (
        (pb.DISTANCE_COSINE, "cosine"),
        (pb.DISTANCE_EUCLID, "euclid"),
        (pb.DISTANCE_DOT, "dot"),
        (pb.DISTANCE_MANHATTAN, "manhattan"),
    ):
        name = await collection(dimension=16, distance=distance)
        await stub.UpsertPoints(
            pb.UpsertPointsRequest(
                collection=name, points=[point(i, v.tolist()) for i, v in enumerate(vectors)]
            )
        )
        query = rng.normal(size=16).astype(np.float32)
        response = await stub.SearchPoints(
            pb.SearchPointsRequest(collection=name, vector=query.tolist(), limit=10)
        )
        if measure == "cosine":
            normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            order = np.argsort(-(normed @ (query / np.linalg.norm(query))))
        elif measure == "dot":
            order = np.argsort(-(vectors @ query))
        elif measure == "euclid":
            order = np.argsort(np.linalg.norm(vectors - query, axis=1))
        else:
            order = np.argsort(np.abs(vectors - query).sum(axis=1))
        assert ids_of(response.points) == order[:10].tolist(), measure
        scores = [p.score for p in response.points]
        assert scores == sorted(scores, reverse=measure in ("cosine", "dot")), measure
        # Offsets page through the same ranking.
        second = await stub.SearchPoints(
            pb.SearchPointsRequest(collection=name, vector=query.tolist(), limit=5, offset=5)
        )
        assert ids_of(second.points) == order[5:10].tolist(), measure
        assert response.time_ms > 0


async def test_search_options(stub: Stub, collection: CreateCollection) -> None:
    name = await books(stub, collection)
    response = await stub.SearchPoints(
        pb.SearchPointsRequest(
            collection=name,
            vector=[1, 0, 0, 0],
            limit=3,
            score_threshold=0.5,
            with_payload=True,
            with_vector=True,
        )
    )
    assert ids_of(response.points) == [1, 2]
    assert response.points[0].payload["genre"] == "sf"
    assert list(response.points[0].vector) == pytest.approx([1, 0, 0, 0])
    exact = await stub.SearchPoints(
        pb.SearchPointsRequest(
            collection=name,
            vector=[1, 0, 0, 0],
            limit=2,
            params=pb.SearchParams(exact=True, hnsw_ef=64),
        )
    )
    assert ids_of(exact.points) == [1, 2]
    assert not exact.points[0].payload.fields
    assert not exact.points[0].vector


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ({"must": [field("genre", keyword="sf")]}, [1, 2]),
        ({"must": [field("year", integer=1954)]}, [3]),
        ({"must": [field("read", boolean=True)]}, [1, 3]),
        ({"must": [field("read", boolean=False)]}, [2, 4]),
        ({"must": [field("title", text="lord rings")]}, [3]),
        ({"must": [field("genre", any_keywords=pb.Keywords(values=["crime", "poetry"]))]}, [5, 6]),
        (
            {
                "must": [
                    field("genre", except_keywords=pb.Keywords(values=["sf", "fantasy", "crime"]))
                ]
            },
            [6],
        ),
        ({"must": [field("year", any_integers=pb.Integers(values=[1939, 1855]))]}, [5, 6]),
        ({"must": [field("tags", keyword="classic")]}, [1, 3]),
        ({"must": [number_range("year", gte=1950, lt=1990)]}, [1, 2, 3]),
        ({"must": [number_range("rating", gt=4.4)]}, [1, 3]),
        ({"must": [pb.Condition(is_empty=pb.IsEmptyCondition(key="tags"))]}, [4, 5, 6]),
        ({"must": [pb.Condition(has_id=pb.HasIdCondition(ids=[num(2), num(5), num(99)]))]}, [2, 5]),
        ({"must_not": [field("genre", keyword="sf")]}, [3, 4, 5, 6]),
        ({"should": [field("genre", keyword="crime"), field("year", integer=1855)]}, [5, 6]),
        (
            {
                "must": [
                    pb.Condition(
                        filter=pb.Filter(
                            should=[field("genre", keyword="sf"), field("genre", keyword="fantasy")]
                        )
                    ),
                    number_range("rating", gte=4.0),
                ],
                "must_not": [pb.Condition(has_id=pb.HasIdCondition(ids=[num(3)]))],
            },
            [1, 2],
        ),
    ],
)
async def test_filters(
    stub: Stub, collection: CreateCollection, conditions: dict[str, Any], expected: list[int]
) -> None:
    name = await books(stub, collection)
    query_filter = pb.Filter(**conditions)
    listed = await stub.ListPoints(pb.ListPointsRequest(collection=name, filter=query_filter))
    assert sorted(ids_of(listed.points)) == expected
    counted = await stub.CountPoints(pb.CountPointsRequest(collection=name, filter=query_filter))
    assert counted.count == len(expected)
    searched = await stub.SearchPoints(
        pb.SearchPointsRequest(collection=name, vector=[1, 1, 1, 1], limit=10, filter=query_filter)
    )
    assert sorted(ids_of(searched.points)) == expected


async def test_datetime_range_filter(stub: Stub, collection: CreateCollection) -> None:
    name = await books(stub, collection)
    window = pb.DatetimeRange(
        gte=stamp(datetime(1950, 1, 1, tzinfo=UTC)), lt=stamp(datetime(1985, 1, 1, tzinfo=UTC))
    )
    query_filter = pb.Filter(
        must=[pb.Condition(field=pb.FieldCondition(key="published", datetime_range=window))]
    )
    listed = await stub.ListPoints(pb.ListPointsRequest(collection=name, filter=query_filter))
    assert sorted(ids_of(listed.points)) == [1, 2, 3]


@pytest.mark.parametrize(
    ("query_filter", "field_path", "reason"),
    [
        (
            pb.Filter(must=[field("bad key", keyword="x")]),
            "filter.must[0].field.key",
            "INVALID_KEY",
        ),
        (pb.Filter(must=[field("", keyword="x")]), "filter.must[0].field.key", "INVALID_KEY"),
        (
            pb.Filter(must=[field("year", keyword="1954")]),
            "filter.must[0].field.match.keyword",
            "FILTER_TYPE_MISMATCH",
        ),
        (
            pb.Filter(must=[field("genre", integer=3)]),
            "filter.must[0].field.match.integer",
            "FILTER_TYPE_MISMATCH",
        ),
        (
            pb.Filter(should=[number_range("genre", gte=1)]),
            "filter.should[0].field.range",
            "FILTER_TYPE_MISMATCH",
        ),
        (
            pb.Filter(
                must=[
                    pb.Condition(
                        field=pb.FieldCondition(
                            key="year",
                            datetime_range=pb.DatetimeRange(gte=stamp(datetime(2000, 1, 1))),
                        )
                    )
                ]
            ),
            "filter.must[0].field.datetime_range",
            "FILTER_TYPE_MISMATCH",
        ),
        (pb.Filter(must=[pb.Condition()]), "filter.must[0]", "EMPTY_CONDITION"),
        (
            pb.Filter(must=[pb.Condition(field=pb.FieldCondition(key="year"))]),
            "filter.must[0].field",
            "EMPTY_CONDITION",
        ),
        (pb.Filter(must=[number_range("year")]), "filter.must[0].field.range", "EMPTY_CONDITION"),
        (
            pb.Filter(must=[number_range("year", gte=float("nan"))]),
            "filter.must[0].field.range.gte",
            "NON_FINITE_BOUND",
        ),
        (
            pb.Filter(must=[field("genre", any_keywords=pb.Keywords())]),
            "filter.must[0].field.match.any_keywords",
            "EMPTY_CONDITION",
        ),
        (
            pb.Filter(
                must_not=[pb.Condition(has_id=pb.HasIdCondition(ids=[pb.PointId(uuid="nope")]))]
            ),
            "filter.must_not[0].has_id.ids[0].uuid",
            "INVALID_ID",
        ),
        (
            pb.Filter(must=[pb.Condition(is_empty=pb.IsEmptyCondition(key="a..b"))]),
            "filter.must[0].is_empty.key",
            "INVALID_KEY",
        ),
    ],
)
async def test_bad_filters_are_rejected(
    stub: Stub, collection: CreateCollection, query_filter: pb.Filter, field_path: str, reason: str
) -> None:
    name = await books(stub, collection)
    await expect_invalid(
        stub.CountPoints(pb.CountPointsRequest(collection=name, filter=query_filter)),
        field_path,
        reason,
    )
    await expect_invalid(
        stub.SearchPoints(
            pb.SearchPointsRequest(collection=name, vector=[1, 0, 0, 0], filter=query_filter)
        ),
        field_path,
        reason,
    )


async def test_search_arguments_are_validated(stub: Stub, collection: CreateCollection) -> None:
    name = await collection()

    def search(**fields: Any) -> Any:
        return stub.SearchPoints(pb.SearchPointsRequest(collection=name, **fields))

    await expect_invalid(search(), "vector", "MISSING_VECTOR")
    await expect_invalid(search(vector=[1, 0, 0]), "vector", "DIMENSION_MISMATCH")
    await expect_invalid(search(vector=[1, 0, 0, float("nan")]), "vector", "NON_FINITE_VECTOR")
    await expect_invalid(search(vector=[1, 0, 0, 0], limit=1001), "limit", "OUT_OF_RANGE")
    await expect_invalid(search(vector=[1, 0, 0, 0], offset=10_001), "offset", "OUT_OF_RANGE")
    await expect_invalid(
        search(vector=[1, 0, 0, 0], score_threshold=float("inf")), "score_threshold"
    )
    await expect_invalid(
        search(vector=[1, 0, 0, 0], params=pb.SearchParams(hnsw_ef=0)), "params.hnsw_ef"
    )
    empty = await search(vector=[1, 0, 0, 0])
    assert list(empty.points) == []


async def test_batch_search_keeps_order_across_collections(
    stub: Stub, collection: CreateCollection
) -> None:
    first = await books(stub, collection)
    second = await collection(dimension=2)
    await stub.UpsertPoints(
        pb.UpsertPointsRequest(collection=second, points=[point(10, [1, 0]), point(11, [0, 1])])
    )
    response = await stub.BatchSearchPoints(
        pb.BatchSearchPointsRequest(
            searches=[
                pb.SearchPointsRequest(collection=first, vector=[0, 1, 0, 0], limit=1),
                pb.SearchPointsRequest(collection=second, vector=[0, 1], limit=1),
                pb.SearchPointsRequest(collection=first, vector=[0, 0, 1, 0], limit=1),
            ]
        )
    )
    assert [ids_of(r.points) for r in response.results] == [[3], [11], [5]]
    await expect_invalid(
        stub.BatchSearchPoints(
            pb.BatchSearchPointsRequest(
                searches=[
                    pb.SearchPointsRequest(collection=first, vector=[0, 1, 0, 0]),
                    pb.SearchPointsRequest(collection=second, vector=[1, 0, 0]),
                ]
            )
        ),
        "searches[1].vector",
    )
    await expect_invalid(stub.BatchSearchPoints(pb.BatchSearchPointsRequest()), "searches")
    too_many = [pb.SearchPointsRequest(collection=first, vector=[1, 0, 0, 0])] * 21
    await expect_invalid(
        stub.BatchSearchPoints(pb.BatchSearchPointsRequest(searches=too_many)),
        "searches",
        "BATCH_TOO_LARGE",
    )


async def test_recommend(stub: Stub, collection: CreateCollection) -> None:
    name = await books(stub, collection)
    by_id = await stub.RecommendPoints(
        pb.RecommendPointsRequest(
            collection=name, positive=[pb.RecommendExample(id=num(1))], limit=3
        )
    )
    assert ids_of(by_id.points)[0] == 2
    assert 1 not in ids_of(by_id.points)  # examples are never recommended

    best = await stub.RecommendPoints(
        pb.RecommendPointsRequest(
            collection=name,
            positive=[
                pb.RecommendExample(id=num(1)),
                pb.RecommendExample(vector=pb.Vector(values=[0, 1, 0, 0])),
            ],
            negative=[pb.RecommendExample(id=num(4))],
            strategy=pb.RECOMMEND_STRATEGY_BEST_SCORE,
            limit=2,
            with_payload=True,
        )
    )
    assert set(ids_of(best.points)) == {2, 3}
    assert best.points[0].payload.fields

    filtered = await stub.RecommendPoints(
        pb.RecommendPointsRequest(
            collection=name,
            positive=[pb.RecommendExample(id=num(1))],
            filter=pb.Filter(must=[field("genre", keyword="fantasy")]),
            limit=5,
        )
    )
    assert sorted(ids_of(filtered.points)) == [3, 4]

    code, details = await rpc_error(
        stub.RecommendPoints(
            pb.RecommendPointsRequest(collection=name, positive=[pb.RecommendExample(id=num(404))])
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert details.field_violations[0][0] == "positive[0].id"
    await expect_invalid(
        stub.RecommendPoints(pb.RecommendPointsRequest(collection=name)), "positive"
    )
    await expect_invalid(
        stub.RecommendPoints(
            pb.RecommendPointsRequest(
                collection=name, positive=[pb.RecommendExample(vector=pb.Vector(values=[1, 2]))]
            )
        ),
        "positive[0].vector",
    )
    await expect_invalid(
        stub.RecommendPoints(
            pb.RecommendPointsRequest(collection=name, positive=[pb.RecommendExample()])
        ),
        "positive[0]",
    )
