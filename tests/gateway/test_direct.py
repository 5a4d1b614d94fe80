"""Direct dispatch answers exactly as FastAPI does, and skips FastAPI when it can.

Two gateways over the same fake backends, one with direct dispatch and one
without, get the same requests: valid ones, and ones FastAPI must refuse
(bad JSON, wrong types, unknown fields, bad query parameters, a foreign content
type, oversized bodies, missing or weak tokens, ambiguous paths). Status, body
(less the request id) and content type must be the same.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest

from lodestar.services.gateway.direct import DirectRoutes, plan_for
from tests.gateway.fakes import FakeBackends
from tests.gateway.harness import RunningGateway, run_gateway

SEARCH = {"collection": "docs", "vector": [0.1, 0.2, 0.3, 0.4], "limit": 3}
JSON = {"content-type": "application/json"}

# (method, path, body, extra headers, role or None for no token); bodies are bytes as sent.
CASES: list[tuple[str, str, bytes | None, dict[str, str], str | None]] = [
    ("POST", "/api/v1/vectors/search", json.dumps(SEARCH).encode(), JSON, "viewer"),
    ("POST", "/api/v1/vectors/search", json.dumps(SEARCH).encode(), {}, "viewer"),
    (
        "POST",
        "/api/v1/vectors/search",
        json.dumps(SEARCH).encode(),
        {"content-type": "application/vnd.api+json; charset=utf-8"},
        "viewer",
    ),
    ("POST", "/api/v1/vectors/search", json.dumps(SEARCH).encode(), JSON, None),
    ("POST", "/api/v1/vectors/search", json.dumps(SEARCH).encode(), JSON, "nobody"),
    ("POST", "/api/v1/vectors/search", b'{"collection": "docs", "vector": [1, ', JSON, "viewer"),
    ("POST", "/api/v1/vectors/search", b"", JSON, "viewer"),
    ("POST", "/api/v1/vectors/search", b"null", JSON, "viewer"),
    ("POST", "/api/v1/vectors/search", b'{"collection": "docs"}', JSON, "viewer"),
    (
        "POST",
        "/api/v1/vectors/search",
        json.dumps({**SEARCH, "limit": "many"}).encode(),
        JSON,
        "viewer",
    ),
    ("POST", "/api/v1/vectors/search", json.dumps({**SEARCH, "k": 3}).encode(), JSON, "viewer"),
    (
        "POST",
        "/api/v1/vectors/search",
        b'{"collection": "docs", "vector": [NaN, 1, 2, 3]}',
        JSON,
        "viewer",
    ),
    (
        "POST",
        "/api/v1/vectors/search",
        json.dumps(SEARCH).encode(),
        {"content-type": "text/plain"},
        "viewer",
    ),
    ("POST", "/api/v1/vectors/search", b'{"pad": "' + b"x" * 70_000 + b'"}', JSON, "viewer"),
    ("POST", "/api/v1/vectors/search", json.dumps(SEARCH).encode(), JSON, "collections:other"),
    ("GET", "/api/v1/vectors/search", None, {}, "viewer"),
    ("GET", "/api/v1/vectors/7?collection=docs", None, {}, "viewer"),
    (
        "GET",
        "/api/v1/vectors/7?collection=docs&with_vector=true&with_payload=0",
        None,
        {},
        "viewer",
    ),
    ("GET", "/api/v1/vectors/7?collection=docs&with_vector=maybe", None, {}, "viewer"),
    ("GET", "/api/v1/vectors/7?collection=", None, {}, "viewer"),
    ("GET", "/api/v1/vectors/7", None, {}, "viewer"),
    ("GET", "/api/v1/vectors/7?collection=a&collection=docs", None, {}, "viewer"),
    ("GET", "/api/v1/vectors/404?collection=docs", None, {}, "viewer"),
    ("GET", "/api/v1/vectors/not-an-id?collection=docs", None, {}, "viewer"),
    ("GET", "/api/v1/vectors/7/?collection=docs", None, {}, "viewer"),
    ("HEAD", "/api/v1/vectors/7?collection=docs", None, {}, "viewer"),
    ("PATCH", "/api/v1/vectors/7?collection=docs", None, {}, "viewer"),
    ("POST", "/api/v1/vectors/insert", json.dumps({"collection": "docs"}).encode(), JSON, "viewer"),
    ("DELETE", "/api/v1/vectors/7?collection=docs", None, {}, "user"),
    ("DELETE", "/api/v1/vectors/7?collection=docs", None, {}, "editor"),
    ("GET", "/api/v1/collections?limit=2", None, {}, "viewer"),
    ("GET", "/api/v1/collections?limit=-1", None, {}, "viewer"),
    ("GET", "/api/v1/collections/docs", None, {}, "viewer"),
    ("GET", "/api/v1/collections/bad..name", None, {}, "viewer"),
    ("GET", "/api/v1/nowhere", None, {}, "viewer"),
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


def _comparable(response: httpx.Response) -> tuple[int, str | None, Any]:
    body: Any = response.content
    if response.headers.get("content-type", "").startswith("application/json") and body:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            body["error"].pop("request_id", None)
    return response.status_code, response.headers.get("content-type"), body


@pytest.fixture(scope="module")
async def fastapi_only(
    fakes: FakeBackends, gateway: RunningGateway
) -> AsyncIterator[RunningGateway]:
    settings = gateway.settings.model_copy(update={"direct_routes": False, "port": 0})
    async with run_gateway(settings) as running:
        yield running


def _layer(gateway: RunningGateway) -> DirectRoutes:
    node: Any = gateway.app.middleware_stack
    while not isinstance(node, DirectRoutes):
        node = node.app
    return node


@pytest.mark.parametrize(("method", "path", "body", "extra", "role"), CASES)
async def test_direct_dispatch_answers_as_fastapi(
    gateway: RunningGateway,
    fastapi_only: RunningGateway,
    method: str,
    path: str,
    body: bytes | None,
    extra: dict[str, str],
    role: str | None,
) -> None:
    answers = []
    for running in (gateway, fastapi_only):
        async with running.client() as http:
            response = await http.request(
                method, path, content=body, headers=_headers(running, role, extra)
            )
        answers.append(_comparable(response))
    assert answers[0] == answers[1]
    assert answers[0][0] != 500


async def test_well_formed_requests_skip_fastapi_and_others_reach_it(
    gateway: RunningGateway,
) -> None:
    layer = _layer(gateway) if gateway.app.middleware_stack else None
    if layer is None:  # the stack is built on the first request
        async with gateway.client() as http:
            await http.get("/api/v1/health")
        layer = _layer(gateway)
    inner = layer.app
    reached: list[str] = []

    async def counting(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await inner(scope, receive, send)

    layer.app = counting
    headers = gateway.auth("viewer")
    try:
        async with gateway.client(headers=headers) as http:
            ok = await http.post("/api/v1/vectors/search", json=SEARCH)
            got = await http.get("/api/v1/vectors/7", params={"collection": "docs"})
            assert (ok.status_code, got.status_code) == (200, 200)
            assert reached == []
            # FastAPI answers what does not validate here, with the body as sent.
            bad = await http.post("/api/v1/vectors/search", json={**SEARCH, "limit": 0})
            assert bad.status_code == 422
            assert "limit" in bad.text
            assert reached == ["/api/v1/vectors/search"]
            # And routes with an optional body.
            restore = await http.post("/api/v1/collections/docs/snapshots/s1/restore")
            assert restore.status_code == 403
            assert reached == [
                "/api/v1/vectors/search",
                "/api/v1/collections/docs/snapshots/s1/restore",
            ]
    finally:
        layer.app = inner


def test_routes_with_their_own_handler_or_unusual_parameters_are_left_to_fastapi(
    gateway: RunningGateway,
) -> None:
    from fastapi.routing import APIRoute, iter_route_contexts

    plans = {}
    for context in iter_route_contexts(gateway.app.routes):
        route = context.original_route
        if isinstance(route, APIRoute):
            for method in route.methods:
                plans[(method, route.path)] = plan_for(route) is not None
    assert plans[("POST", "/api/v1/vectors/search")]
    assert plans[("GET", "/api/v1/vectors/{id}")]
    # An optional body is FastAPI's.
    assert not plans[("POST", "/api/v1/collections/{name}/snapshots/{snapshot}/restore")]
