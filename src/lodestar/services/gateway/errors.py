"""One error body for every failure the gateway answers:

    {"error": {"code": "INVALID_ARGUMENT", "message": "...",
               "details": {"reason": "...", "field_violations": [...], ...},
               "request_id": "..."}}

``code`` is the canonical gRPC status name; the HTTP status comes from the one
table in ``lodestar.runtime.errors`` (google/rpc/code.proto's HTTP mapping).
Routing errors (404, 405), validation errors (400 for malformed JSON, 422 for
wrong types, missing or unknown fields), oversized bodies (413) and unexpected
exceptions (500) use the same shape. Stack traces are logged, never sent.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import grpc
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from lodestar.runtime.context import current_request_id
from lodestar.runtime.errors import LodestarError, http_status_for

_log = logging.getLogger(__name__)

JSON = "application/json"

_CODE_BY_HTTP_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def error_payload(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str | None = None,
    field_violations: Sequence[tuple[str, str]] = (),
    metadata: dict[str, str] | None = None,
    retry_after_s: float | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    details: dict[str, Any] = {"reason": reason or code.name}
    if field_violations:
        details["field_violations"] = [
            {"field": field, "description": description} for field, description in field_violations
        ]
    if metadata:
        details["metadata"] = metadata
    if retry_after_s is not None:
        details["retry_after_s"] = retry_after_s
    return {
        "error": {
            "code": code.name,
            "message": message,
            "details": details,
            "request_id": current_request_id() if request_id is None else request_id,
        }
    }


def error_response(
    status: int,
    code: grpc.StatusCode,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    **details: Any,
) -> Response:
    body = orjson.dumps(error_payload(code, message, **details))
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def _violations(error: LodestarError) -> list[tuple[str, str]]:
    explicit: list[tuple[str, str]] | None = getattr(error, "field_violations", None)
    if explicit:
        return explicit
    return [(error.field, error.message)] if error.field else []


def error_headers(error: LodestarError) -> dict[str, str]:
    """The HTTP headers an error's answer carries, whichever API's body it has:
    Retry-After, WWW-Authenticate, and a rate-limit decision's headers."""
    headers: dict[str, str] = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    if error.code is grpc.StatusCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    decision = getattr(error, "decision", None)
    if decision is not None:
        headers.update({k.decode(): v.decode() for k, v in decision.headers()})
    return headers


def response_for(error: LodestarError) -> Response:
    status = http_status_for(error.code)
    headers = error_headers(error)
    return error_response(
        status,
        error.code,
        error.message,
        headers=headers,
        reason=error.reason,
        field_violations=_violations(error),
        metadata=error.metadata or None,
        retry_after_s=error.retry_after_s,
    )


def field_path(loc: Sequence[int | str]) -> str:
    """('body', 'points', 0, 'vector') → 'points[0].vector'."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


_NOT_AN_OBJECT = frozenset({"missing", "model_attributes_type", "model_type", "dict_type"})


def _validation_response(error: RequestValidationError, content_type: str) -> Response:
    problems = list(error.errors())
    if any(
        tuple(p.get("loc", ())) == ("body",) and p.get("type") in _NOT_AN_OBJECT for p in problems
    ):
        # The body as a whole is missing or not an object: say what is expected.
        hint = "" if "json" in content_type else " with Content-Type: application/json"
        return error_response(
            422,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request body must be a JSON object{hint}",
            reason="INVALID_REQUEST",
            field_violations=[("body", "must be a JSON object")],
        )
    if any(p.get("type") == "json_invalid" for p in problems):
        first = next(p for p in problems if p.get("type") == "json_invalid")
        position = first.get("ctx", {}).get("error", "")
        return error_response(
            400,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request body is not valid JSON{': ' + str(position) if position else ''}",
            reason="MALFORMED_JSON",
            field_violations=[("body", "not valid JSON")],
        )
    violations: list[tuple[str, str]] = []
    for problem in problems:
        path = field_path(problem.get("loc", ()))
        kind = problem.get("type", "")
        if kind == "extra_forbidden":
            description = "unknown field"
        elif kind == "missing":
            description = "field required"
        else:
            description = str(problem.get("msg", "invalid value"))
        violations.append((path, description))
    summary = "; ".join(f"{field}: {description}" for field, description in violations[:5])
    if len(violations) > 5:
        summary += f"; and {len(violations) - 5} more"
    return error_response(
        422,
        grpc.StatusCode.INVALID_ARGUMENT,
        f"invalid request: {summary}",
        reason="INVALID_REQUEST",
        field_violations=violations,
    )


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path: Starlette's own 405 names
    only the first route whose path matched."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    async def on_lodestar_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, LodestarError)
        return response_for(error)

    async def on_validation_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        return _validation_response(error, request.headers.get("content-type", ""))

    async def on_http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        status = error.status_code
        code = _CODE_BY_HTTP_STATUS.get(status, grpc.StatusCode.UNKNOWN)
        headers = dict(error.headers or {})
        if status == 404:
            message = f"no route {request.url.path}"
            reason = "ROUTE_NOT_FOUND"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
            reason = "METHOD_NOT_ALLOWED"
            headers["Allow"] = ", ".join(_allowed_methods(request))
        elif status == 413:
            message = str(error.detail)
            reason = "BODY_TOO_LARGE"
        else:
            message = str(error.detail)
            reason = code.name
        return error_response(status, code, message, headers=headers, reason=reason)

    app.add_exception_handler(LodestarError, on_lodestar_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


def internal_error_body(request_id: str) -> bytes:
    return orjson.dumps(
        error_payload(
            grpc.StatusCode.INTERNAL,
            f"internal error (request id {request_id}); it has been logged",
            reason="INTERNAL",
            request_id=request_id,
        )
    )
