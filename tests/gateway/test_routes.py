"""Requests through the app's FastAPI routes, valid ones and ones it must refuse
(bad JSON, wrong types, unknown fields, bad query parameters, a foreign content
type, oversized bodies, missing or weak tokens, unknown paths and methods): each
gets its status and the reason and fields of the one error body shape."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.gateway.fakes import FakeBackends
from tests.gateway.harness import RunningGateway

SEARCH = {"collection": "docs", "vector": [0.1, 0.2, 0.3, 0.4], "limit": 3}
JSON = {"content-type": "application/json"}
OK = None  # a 2xx or 3xx: no error body

# (method, path, body as sent, extra headers, role or None for no token)
#   → (status, error reason or OK, the fields named by the error's violations)
CASES: list[
    tuple[
        tuple[str, str, bytes | None, dict[str, str], str | None],
        tuple[int, str | None, list[str]],
    ]
] = [
    (
        ("POST", "/api/v1/vectors/search", json.dumps(SEARCH).encode(), JSON, "viewer"),
        (200, OK, []),
    ),
    (
        ("POST", "/api/v1/vectors/search", json.dumps(SEARCH).encode(), {}, "viewer"),
        (422, "INVALID_REQUEST", ["body"]),
    ),
    (
        (
            "POST",
            "/api/v1/vectors/search",
            json.dumps(SEARCH).encode(),
            {"content-type": "application/vnd.api+json; charset=utf-8"},
            "viewer",
        ),
        (200, OK, []),
    ),
    (
        ("POST", "/api/v1/vectors/search", json.dumps(SEARCH).encode(), JSON, None),
        (401, "MISSING_TOKEN", []),
    ),
    (
        ("POST", "/api/v1/vectors/search", json.dumps(SEARCH).encode(), JSON, "nobody"),
        (401, "INVALID_TOKEN", []),
    ),
    (
        (
            "POST",
            "/api/v1/vectors/search",
            b'{"collection": "docs", "vector": [1, ',
            JSON,
            "viewer",
        ),
        (400, "MALFORMED_JSON", ["body"]),
    ),
    (("POST", "/api/v1/vectors/search", b"", JSON, "viewer"), (422, "INVALID_REQUEST", ["body"])),
    (
        ("POST", "/api/v1/vectors/search", b"null", JSON, "viewer"),
        (422, "INVALID_REQUEST", ["body"]),
    ),
    (
        ("POST", "/api/v1/vectors/search", b'{"collection": "docs"}', JSON, "viewer"),
        (422, "INVALID_REQUEST", ["body"]),
    ),
    (
        (
            "POST",
            "/api/v1/vectors/search",
            json.dumps({**SEARCH, "limit": "many"}).encode(),
            JSON,
            "viewer",
        ),
        (422, "INVALID_REQUEST", ["limit"]),
    ),
    (
        ("POST", "/api/v1/vectors/search", json.dumps({**SEARCH, "k": 3}).encode(), JSON, "viewer"),
        (422, "INVALID_REQUEST", ["k"]),
    ),
    (
        (
            "POST",
            "/api/v1/vectors/search",
            b'{"collection": "docs", "vector": [NaN, 1, 2, 3]}',
            JSON,
            "viewer",
        ),
        (422, "INVALID_REQUEST", ["vector[0]"]),
    ),
    (
        (
            "POST",
            "/api/v1/vectors/search",
            json.dumps(SEARCH).encode(),
            {"content-type": "text/plain"},
            "viewer",
        ),
        (422, "INVALID_REQUEST", ["body"]),
    ),
    (
        ("POST", "/api/v1/vectors/search", b'{"pad": "' + b"x" * 70_000 + b'"}', JSON, "viewer"),
        (413, "BODY_TOO_LARGE", []),
    ),
    (
        ("POST", "/api/v1/vectors/search", json.dumps(SEARCH).encode(), JSON, "collections:other"),
        (403, "COLLECTION_NOT_ALLOWED", []),
    ),
    # search is no point id: GET there is a method the path does not serve.
    (
        ("GET", "/api/v1/vectors/search", None, {}, "viewer"),
        (405, "METHOD_NOT_ALLOWED", []),
    ),
    (("GET", "/api/v1/vectors/7?collection=docs", None, {}, "viewer"), (200, OK, [])),
    (
        (
            "GET",
            "/api/v1/vectors/7?collection=docs&with_vector=true&with_payload=0",
            None,
            {},
            "viewer",
        ),
        (200, OK, []),
    ),
    (
        ("GET", "/api/v1/vectors/7?collection=docs&with_vector=maybe", None, {}, "viewer"),
        (422, "INVALID_REQUEST", ["with_vector"]),
    ),
    (
        ("GET", "/api/v1/vectors/7?collection=", None, {}, "viewer"),
        (422, "INVALID_REQUEST", ["collection"]),
    ),
    (("GET", "/api/v1/vectors/7", None, {}, "viewer"), (422, "INVALID_REQUEST", ["collection"])),
    (("GET", "/api/v1/vectors/7?collection=a&collection=docs", None, {}, "viewer"), (200, OK, [])),
    (
        ("GET", "/api/v1/vectors/404?collection=docs", None, {}, "viewer"),
        (404, "POINT_NOT_FOUND", []),
    ),
    # A path segment that is no point id (the document states the pattern) names no point.
    (
        ("GET", "/api/v1/vectors/not-an-id?collection=docs", None, {}, "viewer"),
        (404, "ROUTE_NOT_FOUND", []),
    ),
    # An unsupported method on a fixed path is not taken for a point id.
    (
        ("PUT", "/api/v1/vectors/batch", b"{}", JSON, "viewer"),
        (405, "METHOD_NOT_ALLOWED", []),
    ),
    # A number beyond what its proto field holds is refused naming the field.
    (
        (
            "PUT",
            "/api/v1/collections/docs",
            json.dumps({"hnsw": {"full_scan_threshold": 155465012825384}}).encode(),
            JSON,
            "admin",
        ),
        (422, "INVALID_REQUEST", ["hnsw.full_scan_threshold"]),
    ),
    (
        (
            "POST",
            "/api/v1/vectors/search",
            json.dumps({**SEARCH, "vector": [1e300, 0, 0, 0]}).encode(),
            JSON,
            "viewer",
        ),
        (422, "INVALID_REQUEST", ["vector[0]"]),
    ),
    (("GET", "/api/v1/vectors/7/?collection=docs", None, {}, "viewer"), (307, OK, [])),
    (("HEAD", "/api/v1/vectors/7?collection=docs", None, {}, "viewer"), (405, OK, [])),
    (
        ("PATCH", "/api/v1/vectors/7?collection=docs", None, {}, "viewer"),
        (405, "METHOD_NOT_ALLOWED", []),
    ),
    (
        (
            "POST",
            "/api/v1/vectors/insert",
            json.dumps({"collection": "docs"}).encode(),
            JSON,
            "viewer",
        ),
        (403, "MISSING_PERMISSION", []),
    ),
    (
        ("DELETE", "/api/v1/vectors/7?collection=docs", None, {}, "user"),
        (403, "MISSING_PERMISSION", []),
    ),
    (("DELETE", "/api/v1/vectors/7?collection=docs", None, {}, "editor"), (200, OK, [])),
    (("GET", "/api/v1/collections?limit=2", None, {}, "viewer"), (200, OK, [])),
    (("GET", "/api/v1/collections?limit=-1", None, {}, "viewer"), (200, OK, [])),
    (("GET", "/api/v1/collections/docs", None, {}, "viewer"), (200, OK, [])),
    (("GET", "/api/v1/collections/bad..name", None, {}, "viewer"), (200, OK, [])),
    (("GET", "/api/v1/nowhere", None, {}, "viewer"), (404, "ROUTE_NOT_FOUND", [])),
]


def _headers(gateway: RunningGateway, role: str | None, extra: dict[str, str]) -> dict[str, str]:
    headers = dict(extra)
    if role == "collections:other":
        headers.update(gateway.auth("viewer", collections=["other"]))
    elif role == "nobody":
        headers["Authorization"] = "Bearer not-a-token"
    elif role is not None:
        headers.update(gateway.auth(role))
    return headers


@pytest.mark.parametrize(("request_", "expected"), CASES)
async def test_route_answers(
    gateway: RunningGateway,
    client: httpx.AsyncClient,
    request_: tuple[str, str, bytes | None, dict[str, str], str | None],
    expected: tuple[int, str | None, list[str]],
) -> None:
    method, path, body, extra, role = request_
    response = await client.request(
        method, path, content=body, headers=_headers(gateway, role, extra)
    )
    status, reason, fields = expected
    assert response.status_code == status, response.text
    if status == 307:
        return
    assert response.headers["content-type"] == "application/json"
    if reason is None:
        return
    error: dict[str, Any] = response.json()["error"]
    assert error["details"]["reason"] == reason
    violations = error["details"].get("field_violations", [])
    assert [v["field"] for v in violations] == fields


async def test_answers_carry_what_was_asked(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    headers = gateway.auth("viewer")
    found = await client.post("/api/v1/vectors/search", json=SEARCH, headers=headers)
    assert found.json() == {
        "points": [{"id": 1, "score": 0.5, "payload": {"text": "hello", "n": 3}}],
        "time_ms": 0.25,
    }
    point = await client.get(
        "/api/v1/vectors/7",
        params={"collection": "docs", "with_vector": "true", "with_payload": "0"},
        headers=headers,
    )
    assert point.json() == {"id": 7, "vector": [0.25, 0.25, 0.25, 0.25]}
    # The last of a repeated query parameter counts.
    repeated = await client.get("/api/v1/vectors/7?collection=a&collection=docs", headers=headers)
    assert repeated.json() == {"id": 7, "payload": {"n": 1, "tenant": ""}}
    assert fakes.vector.recorder.last("GetPoints").collection == "docs"
