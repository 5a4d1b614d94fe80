"""Vector and collection routes against fake backends: what reaches the
services (conversion, embedding of texts, tenant stamping) and what comes back."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from lodestar import limits
from lodestar.vector.v1 import vector_service_pb2 as vpb
from tests.gateway.fakes import DIMENSION, SNAPSHOT_FILE, FakeBackends, fake_vector
from tests.gateway.harness import RunningGateway


async def test_insert_by_text_and_vector(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    body = {
        "collection": "alpha",
        "points": [
            {"text": "first text", "payload": {"lang": "en"}},
            {"id": 42, "vector": [0.5, 0.5, 0, 0], "payload": {"n": 1}},
            {"id": str(uuid.UUID(int=7)), "text": "second", "payload": {"text": "kept"}},
        ],
    }
    response = await client.post("/api/v1/vectors/insert", json=body, headers=gateway.auth("user"))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["embedded"] == 2
    assert result["ids"][1] == 42
    assert result["ids"][2] == str(uuid.UUID(int=7))
    uuid.UUID(result["ids"][0])  # the gateway gave the first point a UUID
    assert fakes.embedding.recorder.last("EmbedTexts").texts == ["first text", "second"]
    upsert = fakes.vector.recorder.last("UpsertPoints")
    assert upsert.tenant == ""
    first, second, third = upsert.points
    assert list(first.vector) == pytest.approx(fake_vector("first text"))
    assert dict(first.payload) == {"lang": "en", "text": "first text"}
    assert list(second.vector) == [0.5, 0.5, 0, 0]
    assert third.payload["text"] == "kept"


async def test_dimension_error_from_the_service_names_the_point(
    gateway: RunningGateway, client: httpx.AsyncClient
) -> None:
    body = {"collection": "alpha", "points": [{"vector": [1.0, 2.0]}]}
    response = await client.post("/api/v1/vectors/insert", json=body, headers=gateway.auth("user"))
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field_violations"][0]["field"] == "points[0].vector"


async def test_non_finite_numbers_are_refused(
    gateway: RunningGateway, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        "/api/v1/vectors/search",
        content=b'{"collection": "alpha", "vector": [1, NaN, 0, 0]}',
        headers={**gateway.auth("viewer"), "content-type": "application/json"},
    )
    assert response.status_code in (400, 422)


async def test_a_key_with_an_array_index_beyond_64_bits_is_refused_naming_it(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    def body(key: str) -> dict[str, Any]:
        return {
            "collection": "alpha",
            "vector": [0, 1, 0, 0],
            "filter": {"must": [{"key": key, "match": {"keyword": "x"}}]},
        }

    longest = f"a[{'9' * limits.MAX_INDEX_DIGITS}]"
    found = await client.post(
        "/api/v1/vectors/search", json=body(longest), headers=gateway.auth("viewer")
    )
    assert found.status_code == 200, found.text
    assert fakes.vector.recorder.last("SearchPoints").filter.must[0].field.key == longest
    refused = await client.post(
        "/api/v1/vectors/search",
        json=body("a[18446744073709551616]"),
        headers=gateway.auth("viewer"),
    )
    assert refused.status_code == 422, refused.text
    violations = refused.json()["error"]["details"]["field_violations"]
    assert [v["field"] for v in violations] == ["filter.must[0].key"], violations


async def test_search_by_text_with_filter(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    body = {
        "collection": "alpha",
        "text": "what is lodestar",
        "limit": 3,
        "offset": 1,
        "score_threshold": 0.2,
        "with_vector": True,
        "hnsw_ef": 64,
        "filter": {
            "must": [
                {"key": "lang", "match": {"keyword": "en"}},
                {"key": "year", "range": {"gte": 2020, "lt": 2030}},
                {"key": "created", "datetime_range": {"gte": "2025-01-01T00:00:00Z"}},
                {"key": "tags", "match": {"any": ["a", "b"]}},
            ],
            "should": [{"has_id": [1, str(uuid.UUID(int=3))]}, {"is_empty": {"key": "x"}}],
            "must_not": [
                {"filter": {"must": [{"key": "n", "match": {"except": [1, 2]}}]}},
                {"key": "flag", "match": {"boolean": True}},
            ],
        },
    }
    response = await client.post(
        "/api/v1/vectors/search", json=body, headers=gateway.auth("viewer")
    )
    assert response.status_code == 200, response.text
    hit = response.json()["points"][0]
    assert hit["vector"] == pytest.approx([0.1] * 4)
    assert {k: v for k, v in hit.items() if k != "vector"} == {
        "id": 1,
        "score": 0.5,
        "payload": {"text": "hello", "n": 3},
    }
    request = fakes.vector.recorder.last("SearchPoints")
    assert request.query_text == "what is lodestar"
    assert list(request.vector) == pytest.approx(fake_vector("what is lodestar"))
    assert (request.limit, request.offset, request.with_vector) == (3, 1, True)
    assert request.score_threshold == pytest.approx(0.2)
    assert request.params.hnsw_ef == 64
    must = request.filter.must
    assert must[0].field.key == "lang"
    assert must[0].field.match.keyword == "en"
    assert must[1].field.range.gte == 2020
    assert must[1].field.range.lt == 2030
    assert not must[1].field.range.HasField("gt")
    assert must[2].field.datetime_range.gte.seconds == 1735689600
    assert list(must[3].field.match.any_keywords.values) == ["a", "b"]
    assert request.filter.should[0].has_id.ids[0].num == 1
    assert request.filter.should[0].has_id.ids[1].uuid == str(uuid.UUID(int=3))
    assert request.filter.should[1].is_empty.key == "x"
    nested = request.filter.must_not[0].filter.must[0]
    assert list(nested.field.match.except_integers.values) == [1, 2]
    assert request.filter.must_not[1].field.match.boolean is True


async def test_batch_search_embeds_texts_once(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    body = {
        "searches": [
            {"collection": "alpha", "text": "one"},
            {"collection": "alpha", "vector": [0, 1, 0, 0], "with_payload": False},
            {"collection": "docs-1", "text": "two"},
        ]
    }
    response = await client.post(
        "/api/v1/vectors/search/batch", json=body, headers=gateway.auth("viewer", tenant="t1")
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3
    assert "payload" not in results[1]["points"][0]
    assert fakes.embedding.recorder.methods().count("EmbedTexts") == 1
    searches = fakes.vector.recorder.last("BatchSearchPoints").searches
    assert [s.tenant for s in searches] == ["t1"] * 3
    assert list(searches[2].vector) == pytest.approx(fake_vector("two"))


async def test_recommend_by_ids_vectors_and_texts(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    body = {
        "collection": "alpha",
        "positive": [5, {"text": "liked"}, {"vector": [1, 0, 0, 0]}],
        "negative": [{"id": str(uuid.UUID(int=9))}, {"text": "disliked"}],
        "strategy": "best_score",
        "limit": 2,
    }
    response = await client.post(
        "/api/v1/vectors/recommend", json=body, headers=gateway.auth("viewer")
    )
    assert response.status_code == 200, response.text
    request = fakes.vector.recorder.last("RecommendPoints")
    assert request.strategy == vpb.RECOMMEND_STRATEGY_BEST_SCORE
    assert request.positive[0].id.num == 5
    assert list(request.positive[1].vector.values) == pytest.approx(fake_vector("liked"))
    assert list(request.positive[2].vector.values) == [1, 0, 0, 0]
    assert request.negative[0].id.uuid == str(uuid.UUID(int=9))
    assert list(request.negative[1].vector.values) == pytest.approx(fake_vector("disliked"))


async def test_cluster(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    body = {"collection": "alpha", "algorithm": "density", "with_member_ids": True, "seed": 3}
    response = await client.post(
        "/api/v1/vectors/cluster", json=body, headers=gateway.auth("viewer")
    )
    assert response.status_code == 200, response.text
    cluster = response.json()["clusters"][0]
    assert cluster["member_ids"] == [1]
    assert cluster["representatives"][0]["payload"] == {"text": "hello", "n": 3}
    request = fakes.vector.recorder.last("ClusterPoints")
    assert request.algorithm == vpb.CLUSTER_ALGORITHM_DENSITY
    assert request.seed == 3
    assert request.with_member_ids


async def test_get_update_delete_point(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    headers = gateway.auth("editor")
    got = await client.get("/api/v1/vectors/9?collection=alpha&with_vector=true", headers=headers)
    assert got.json() == {"id": 9, "vector": [0.25] * DIMENSION, "payload": {"tenant": "", "n": 1}}
    missing = await client.get("/api/v1/vectors/404?collection=alpha", headers=headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["details"]["reason"] == "POINT_NOT_FOUND"
    updated = await client.put(
        "/api/v1/vectors/9?collection=alpha",
        json={"text": "new words", "payload": {"k": 1}, "replace_payload": True},
        headers=headers,
    )
    assert updated.json() == {"id": 9, "updated": True}
    update = fakes.vector.recorder.last("UpdatePoints").updates[0]
    assert list(update.vector) == pytest.approx(fake_vector("new words"))
    assert update.replace_payload
    assert update.payload["k"] == 1
    not_there = await client.put(
        "/api/v1/vectors/404?collection=alpha", json={"payload": {}}, headers=headers
    )
    assert not_there.status_code == 404
    deleted = await client.delete("/api/v1/vectors/9?collection=alpha", headers=headers)
    assert deleted.json() == {"id": 9, "deleted": True}
    gone = await client.delete("/api/v1/vectors/404?collection=alpha", headers=headers)
    assert gone.status_code == 404


async def test_batch_operations_in_order(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    body = {
        "collection": "alpha",
        "operations": [
            {"upsert": {"points": [{"text": "a"}, {"vector": [0, 0, 1, 0]}]}},
            {"set_payload": {"ids": [1], "payload": {"x": 1}, "overwrite": True}},
            {
                "delete_payload_keys": {
                    "filter": {"must": [{"key": "x", "match": {"integer": 1}}]},
                    "keys": ["x"],
                }
            },
            {"delete": {"ids": [2, 3]}},
            {"upsert": {"points": [{"text": "b"}]}},
        ],
    }
    response = await client.post(
        "/api/v1/vectors/batch", json=body, headers=gateway.auth("editor", tenant="t9")
    )
    assert response.status_code == 200, response.text
    assert [r["affected_count"] for r in response.json()["results"]] == [2, 1, 1, 1, 1]
    request = fakes.vector.recorder.last("BatchUpdatePoints")
    assert request.tenant == "t9"
    kinds = [op.WhichOneof("kind") for op in request.operations]
    assert kinds == ["upsert", "set_payload", "delete_payload_keys", "delete", "upsert"]
    assert list(request.operations[4].upsert.points[0].vector) == pytest.approx(fake_vector("b"))
    assert request.operations[1].set_payload.overwrite
    assert [i.num for i in request.operations[3].delete.selector.ids] == [2, 3]
    assert fakes.embedding.recorder.last("EmbedTexts").texts == ["a", "b"]


ROUTES: list[tuple[str, str, dict[str, Any] | None, str]] = [
    (
        "POST",
        "/api/v1/vectors/insert",
        {"collection": "alpha", "points": [{"text": "t"}]},
        "UpsertPoints",
    ),
    ("POST", "/api/v1/vectors/search", {"collection": "alpha", "text": "t"}, "SearchPoints"),
    (
        "POST",
        "/api/v1/vectors/recommend",
        {"collection": "alpha", "positive": [1]},
        "RecommendPoints",
    ),
    ("POST", "/api/v1/vectors/cluster", {"collection": "alpha"}, "ClusterPoints"),
    ("GET", "/api/v1/vectors/1?collection=alpha", None, "GetPoints"),
    ("PUT", "/api/v1/vectors/1?collection=alpha", {"payload": {"a": 1}}, "UpdatePoints"),
    ("DELETE", "/api/v1/vectors/1?collection=alpha", None, "DeletePoints"),
    (
        "POST",
        "/api/v1/vectors/batch",
        {"collection": "alpha", "operations": [{"delete": {"ids": [1]}}]},
        "BatchUpdatePoints",
    ),
]


@pytest.mark.parametrize(("method", "url", "body", "rpc"), ROUTES)
async def test_every_point_route_carries_the_tenant(
    gateway: RunningGateway,
    client: httpx.AsyncClient,
    fakes: FakeBackends,
    method: str,
    url: str,
    body: dict[str, Any] | None,
    rpc: str,
) -> None:
    response = await client.request(
        method, url, json=body, headers=gateway.auth("admin", tenant="acme")
    )
    assert response.status_code == 200, response.text
    assert fakes.vector.recorder.last(rpc).tenant == "acme"
    response = await client.request(method, url, json=body, headers=gateway.auth("admin"))
    assert fakes.vector.recorder.last(rpc).tenant == ""


async def test_create_collection_takes_the_embedding_dimension(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    headers = gateway.auth("operator")
    body = {
        "name": "notes",
        "payload_schema": {"lang": "keyword", "year": "integer"},
        "hnsw": {"m": 32},
        "quantization": {"scalar": {"quantile": 0.95}},
        "distance": "dot",
    }
    response = await client.post("/api/v1/collections", json=body, headers=headers)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["config"]["dimension"] == DIMENSION
    assert created["config"]["embedding_model"] == "fake-embed"
    assert created["config"]["distance"] == "dot"
    assert created["config"]["payload_schema"] == {"lang": "keyword", "year": "integer"}
    assert created["config"]["hnsw"] == {"m": 32}
    assert created["config"]["quantization"]["scalar"]["quantile"] == pytest.approx(0.95)
    assert created["status"] == "ready"
    wrong = await client.post(
        "/api/v1/collections", json={"name": "x", "embedding_model": "other"}, headers=headers
    )
    # No such model here, as OpenAI answers an unknown model: 404 naming the field.
    assert wrong.status_code == 404
    assert wrong.json()["error"]["details"]["field_violations"][0]["field"] == "embedding_model"
    explicit = await client.post(
        "/api/v1/collections", json={"name": "raw", "dimension": 3}, headers=headers
    )
    assert explicit.status_code == 201
    assert fakes.vector.recorder.last("CreateCollection").config.dimension == 3


async def test_collection_not_found_and_snapshots(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    headers = gateway.auth("admin")
    missing = await client.get("/api/v1/collections/missing", headers=headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["details"]["reason"] == "COLLECTION_NOT_FOUND"
    snap = await client.post("/api/v1/collections/alpha/snapshot", headers=headers)
    assert snap.status_code == 201
    assert snap.json()["name"] == "snap-1"
    listed = await client.get("/api/v1/collections/alpha/snapshots", headers=headers)
    assert listed.json()["snapshots"][0]["collection"] == "alpha"
    restored = await client.post(
        "/api/v1/collections/alpha/snapshots/snap-1/restore", headers=headers
    )
    assert restored.status_code == 200
    assert restored.json()["name"] == "alpha"
    assert fakes.vector.recorder.last("RestoreSnapshot").target_collection == ""
    deleted = await client.delete("/api/v1/collections/alpha", headers=headers)
    assert deleted.status_code == 204
    assert deleted.content == b""


async def test_a_snapshot_downloads_as_an_attachment(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    headers = gateway.auth("operator")
    response = await client.get("/api/v1/collections/alpha/snapshots/snap-1", headers=headers)
    assert response.status_code == 200, response.text
    assert response.content == SNAPSHOT_FILE
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == 'attachment; filename="snap-1"'
    assert response.headers["content-length"] == str(len(SNAPSHOT_FILE))
    request = fakes.vector.recorder.last("DownloadSnapshot")
    assert (request.collection, request.snapshot) == ("alpha", "snap-1")

    missing = await client.get("/api/v1/collections/alpha/snapshots/snap-2", headers=headers)
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/json")
    assert missing.json()["error"]["details"]["reason"] == "SNAPSHOT_NOT_FOUND"
    bad = await client.get("/api/v1/collections/alpha/snapshots/.hidden", headers=headers)
    assert bad.status_code == 422

    operation = (await client.get("/openapi.json")).json()["paths"][
        "/api/v1/collections/{name}/snapshots/{snapshot}"
    ]["get"]
    assert set(operation["responses"]["200"]["content"]) == {"application/octet-stream"}
    assert operation["x-required-permissions"] == ["CreateSnapshots"]
    for status in ("401", "403", "404", "503"):
        assert "ErrorBody" in str(operation["responses"][status]["content"])


async def test_analytics_passthrough(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    headers = gateway.auth("operator")
    search = await client.get(
        "/api/v1/analytics/search?collection=alpha&since=2025-01-01T00:00:00Z", headers=headers
    )
    assert search.json()["popular_queries"] == [{"query_text": "hello", "count": 2}]
    assert search.json()["timeline"] == []
    request = fakes.vector.recorder.last("GetSearchAnalytics")
    assert request.collection == "alpha"
    assert request.start_time.seconds == 1735689600
    assert request.bucket_width_seconds == 0
    timeline = await client.get("/api/v1/analytics/search?interval=300", headers=headers)
    assert fakes.vector.recorder.last("GetSearchAnalytics").bucket_width_seconds == 300
    assert timeline.json()["timeline"] == [
        {
            "start_time": "2025-01-01T00:00:00+00:00",
            "search_count": 1,
            "latency_p50_ms": 1.5,
            "latency_p95_ms": 0.0,
            "latency_p99_ms": 2.0,
            "zero_result_rate": 0.0,
        },
        {
            "start_time": "2025-01-01T00:05:00+00:00",
            "search_count": 2,
            "latency_p50_ms": 1.5,
            "latency_p95_ms": 0.0,
            "latency_p99_ms": 4.0,
            "zero_result_rate": 0.0,
        },
    ]
    for bad in ("0", "-5", str(366 * 86_400 + 1), "soon"):
        refused = await client.get(f"/api/v1/analytics/search?interval={bad}", headers=headers)
        assert refused.status_code == 422, bad
        assert refused.json()["error"]["details"]["field_violations"][0]["field"] == "interval"
    vectors = await client.get("/api/v1/analytics/vectors", headers=headers)
    assert vectors.json()["total_points"] == 3
    usage = await client.get("/api/v1/analytics/usage?subject=alice", headers=headers)
    assert usage.json()["usage"][0]["route"] == "POST /api/v1/generate"


async def test_personalized_search_needs_the_flows(
    gateway: RunningGateway, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        "/api/v1/vectors/search",
        json={"collection": "docs", "vector": [1.0, 0.0], "personalize": True},
        headers=gateway.auth("admin"),
    )
    assert response.status_code == 501, response.text
    assert response.json()["error"]["details"]["field_violations"][0]["field"] == "personalize"
