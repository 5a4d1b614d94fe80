"""One error body everywhere; gRPC status → HTTP status; request ids."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter

from lodestar.runtime.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from lodestar.services.gateway.app import create_app
from lodestar.services.gateway.schemas.errors import ErrorBody
from tests.gateway.fakes import FakeBackends
from tests.gateway.harness import RunningGateway, gateway_settings, run_gateway

SEARCH = "/api/v1/vectors/search"


def _assert_error_shape(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details", "request_id"}
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    # The shape the OpenAPI document states: details is an object, never a list.
    assert isinstance(error["details"], dict)
    ErrorBody.model_validate(body)
    return dict(error)


async def test_unknown_route_and_method(gateway: RunningGateway, client: httpx.AsyncClient) -> None:
    _assert_error_shape(await client.get("/api/v1/nothing-here"), 404, "NOT_FOUND")
    error = _assert_error_shape(
        await client.patch("/api/v1/collections", headers=gateway.auth("admin")),
        405,
        "UNIMPLEMENTED",
    )
    assert error["details"]["reason"] == "METHOD_NOT_ALLOWED"


async def test_malformed_json_is_400(gateway: RunningGateway, client: httpx.AsyncClient) -> None:
    response = await client.post(
        SEARCH,
        content=b'{"collection": "alpha", "text": ',
        headers={**gateway.auth("viewer"), "content-type": "application/json"},
    )
    error = _assert_error_shape(response, 400, "INVALID_ARGUMENT")
    assert error["details"]["reason"] == "MALFORMED_JSON"


@pytest.mark.parametrize(
    ("body", "field", "description"),
    [
        ({"collection": "alpha", "text": "q", "colour": "red"}, "colour", "unknown field"),
        ({"collection": "alpha", "text": "q", "limit": "many"}, "limit", "integer"),
        ({"collection": "alpha", "text": "q", "limit": 0}, "limit", "greater than or equal"),
        ({"text": "q"}, "collection", "field required"),
        ({"collection": "alpha", "vector": [1, "x"]}, "vector[1]", "number"),
        ({"collection": "alpha"}, "body", "exactly one of vector, text"),
        (
            {"collection": "alpha", "text": "q", "filter": {"must": [{"key": "k"}]}},
            "filter.must[0]",
            "exactly one of match, range",
        ),
    ],
)
async def test_invalid_fields_are_422_naming_the_field(
    gateway: RunningGateway,
    client: httpx.AsyncClient,
    body: dict[str, Any],
    field: str,
    description: str,
) -> None:
    response = await client.post(SEARCH, json=body, headers=gateway.auth("viewer"))
    error = _assert_error_shape(response, 422, "INVALID_ARGUMENT")
    violations = error["details"]["field_violations"]
    assert any(v["field"] == field and description in v["description"] for v in violations), (
        violations
    )
    assert field in error["message"]


async def test_body_that_is_not_a_json_object(
    gateway: RunningGateway, client: httpx.AsyncClient
) -> None:
    for content, content_type, hint in (
        (b'{"collection": "alpha", "text": "q"}', "text/plain", True),
        (b"[1, 2]", "application/json", False),
        (b"", "application/json", False),
    ):
        response = await client.post(
            SEARCH,
            content=content,
            headers={**gateway.auth("viewer"), "content-type": content_type},
        )
        error = _assert_error_shape(response, 422, "INVALID_ARGUMENT")
        assert error["message"].startswith("the request body must be a JSON object")
        assert ("Content-Type" in error["message"]) is hint


async def test_bad_query_and_path_values(
    gateway: RunningGateway, client: httpx.AsyncClient
) -> None:
    headers = gateway.auth("viewer")
    missing = await client.get("/api/v1/vectors/1", headers=headers)
    error = _assert_error_shape(missing, 422, "INVALID_ARGUMENT")
    assert error["details"]["field_violations"][0]["field"] == "collection"
    bad_id = await client.get("/api/v1/vectors/not-an-id?collection=alpha", headers=headers)
    error = _assert_error_shape(bad_id, 404, "NOT_FOUND")
    assert error["details"]["reason"] == "ROUTE_NOT_FOUND"
    late = await client.get(
        "/api/v1/analytics/search?since=2025-01-01", headers=gateway.auth("operator")
    )
    error = _assert_error_shape(late, 422, "INVALID_ARGUMENT")
    assert error["details"]["field_violations"][0]["field"] == "since"


async def test_oversized_body_is_413(gateway: RunningGateway, client: httpx.AsyncClient) -> None:
    big = {"collection": "alpha", "text": "x" * (gateway.settings.max_body_bytes + 10)}
    response = await client.post(SEARCH, json=big, headers=gateway.auth("viewer"))
    error = _assert_error_shape(response, 413, "INVALID_ARGUMENT")
    assert error["details"]["reason"] == "BODY_TOO_LARGE"


async def test_oversized_chunked_body_is_413(
    gateway: RunningGateway, client: httpx.AsyncClient
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"collection": "alpha", "text": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    response = await client.post(
        SEARCH,
        content=chunks(),
        headers={**gateway.auth("viewer"), "content-type": "application/json"},
    )
    error = _assert_error_shape(response, 413, "INVALID_ARGUMENT")
    assert error["details"]["reason"] == "BODY_TOO_LARGE"


@pytest.mark.parametrize(
    ("raised", "status", "code"),
    [
        (
            InvalidArgument("vector has 3 dimensions", field="points[0].vector"),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            NotFound("collection 'zz' does not exist", reason="COLLECTION_NOT_FOUND"),
            404,
            "NOT_FOUND",
        ),
        (FailedPrecondition("collection is restoring"), 400, "FAILED_PRECONDITION"),
        (ResourceExhausted("queue full", retry_after_s=2.0), 429, "RESOURCE_EXHAUSTED"),
        (Internal("disk on fire at /var/lib/secret"), 500, "INTERNAL"),
    ],
)
async def test_backend_errors_map_by_the_status_table(
    gateway: RunningGateway,
    client: httpx.AsyncClient,
    fakes: FakeBackends,
    raised: Exception,
    status: int,
    code: str,
) -> None:
    fakes.vector.recorder.fail_next.append(raised)  # type: ignore[arg-type]
    response = await client.post(
        SEARCH, json={"collection": "alpha", "vector": [1, 0, 0, 0]}, headers=gateway.auth("viewer")
    )
    error = _assert_error_shape(response, status, code)
    if code == "INTERNAL":
        assert "secret" not in response.text
        assert "vector service failed" in error["message"]
    else:
        assert error["message"] == str(raised)
    if code == "INVALID_ARGUMENT":
        assert error["details"]["field_violations"][0]["field"] == "points[0].vector"
    if code == "RESOURCE_EXHAUSTED":
        assert response.headers["retry-after"] == "2"


async def test_unexpected_exception_is_a_json_500(fakes: FakeBackends) -> None:
    router = APIRouter()

    @router.get("/api/v1/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    settings = gateway_settings(
        fakes.address("embedding"), fakes.address("vector"), fakes.address("inference")
    )
    app = create_app(settings)
    app.include_router(router)
    async with (
        run_gateway(settings, app) as gw,
        gw.client() as http,
    ):
        response = await http.get("/api/v1/boom", headers={"X-Request-ID": "trace-me-42"})
    error = _assert_error_shape(response, 500, "INTERNAL")
    assert "secret" not in response.text
    assert error["request_id"] == "trace-me-42"
    assert "trace-me-42" in error["message"]


async def test_request_id_in_out_and_to_backends(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    response = await client.post(
        SEARCH,
        json={"collection": "alpha", "text": "q"},
        headers={**gateway.auth("viewer"), "X-Request-ID": "req-123"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-123"
    assert fakes.vector.recorder.last_metadata("SearchPoints")["x-request-id"] == "req-123"
    assert fakes.embedding.recorder.last_metadata("EmbedTexts")["x-request-id"] == "req-123"
    # An unusable id (too long, odd characters) is replaced, not echoed.
    response = await client.get("/api/v1/health", headers={"X-Request-ID": "a b\tc" * 50})
    assert response.headers["x-request-id"] != "a b\tc" * 50
    assert len(response.headers["x-request-id"]) == 32


async def test_client_timeout_header_shortens_the_deadline(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    body = {"collection": "alpha", "vector": [1, 0, 0, 0]}
    headers = {**gateway.auth("viewer"), "X-Request-Timeout": "1.5s"}
    assert (await client.post(SEARCH, json=body, headers=headers)).status_code == 200
    remaining = float(fakes.vector.recorder.last_metadata("SearchPoints")["time_remaining"])
    assert 0 < remaining <= 1.55  # grpc-timeout rounds up slightly
    headers = {**gateway.auth("viewer"), "grpc-timeout": "700m"}
    assert (await client.post(SEARCH, json=body, headers=headers)).status_code == 200
    remaining = float(fakes.vector.recorder.last_metadata("SearchPoints")["time_remaining"])
    assert 0 < remaining <= 0.75
    # Without a header the route class's default applies (read: 10 s).
    assert (await client.post(SEARCH, json=body, headers=gateway.auth("viewer"))).status_code == 200
    remaining = float(fakes.vector.recorder.last_metadata("SearchPoints")["time_remaining"])
    assert 5 < remaining <= 10.2
    fakes.vector.recorder.delay_s = 0.5
    headers = {**gateway.auth("viewer"), "X-Request-Timeout": "100ms"}
    response = await client.post(SEARCH, json=body, headers=headers)
    error = _assert_error_shape(response, 504, "DEADLINE_EXCEEDED")
    assert "vector" in error["message"]
    bad = await client.post(
        SEARCH, json=body, headers={**gateway.auth("viewer"), "X-Request-Timeout": "soon"}
    )
    error = _assert_error_shape(bad, 400, "INVALID_ARGUMENT")
    assert error["details"]["field_violations"][0]["field"] == "X-Request-Timeout"


async def test_backend_unavailable_is_503_without_internals(
    fakes: FakeBackends,
) -> None:
    settings = gateway_settings(
        fakes.address("embedding"), "127.0.0.1:1", fakes.address("inference")
    )
    async with run_gateway(settings) as gw, gw.client() as http:
        response = await http.post(
            SEARCH, json={"collection": "alpha", "vector": [1, 0, 0, 0]}, headers=gw.auth("viewer")
        )
    error = _assert_error_shape(response, 503, "UNAVAILABLE")
    assert "127.0.0.1" not in response.text
    assert error["details"]["metadata"]["backend"] == "vector"
    # A write may be sent again: the client is told when.
    assert response.headers["retry-after"] == "1"


async def test_domain_unavailable_passes_through(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    # Twice: the call is idempotent and retried once.
    fakes.inference.recorder.fail_next.extend(
        [Unavailable("model is loading", retry_after_s=3.0)] * 2
    )
    response = await client.post(
        "/api/v1/generate", json={"prompt": "hi"}, headers=gateway.auth("user")
    )
    error = _assert_error_shape(response, 503, "UNAVAILABLE")
    assert error["message"] == "model is loading"
    assert response.headers["retry-after"] == "3"
