"""Errors of the OpenAI-compatible routes, in OpenAI's shape:

    {"error": {"message": "...", "type": "invalid_request_error",
               "param": "messages[0].role", "code": "invalid_value"}}

The official client reads ``error`` from the body and takes ``message``,
``type``, ``param`` and ``code`` from it (``openai.APIStatusError``), and picks
the exception class by HTTP status. The status is the gateway's own (one table
for the whole platform) except for request validation, which OpenAI answers
with 400 rather than 422. ``type`` and ``code`` use OpenAI's vocabulary:
``invalid_request_error`` for the client's mistakes (401, 403 and 404
included, as OpenAI sends them), ``requests`` or ``tokens`` for the two rate
limits, ``server_error`` for the platform's failures; codes such as
``invalid_api_key``, ``model_not_found``, ``context_length_exceeded``,
``rate_limit_exceeded``, ``invalid_value`` and ``unsupported_value``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import Response

from lodestar.runtime.context import current_request_id
from lodestar.runtime.errors import LodestarError, http_status_for
from lodestar.services.gateway.errors import JSON, error_headers, field_path
from lodestar.services.gateway.openai.headers import rate_limit_headers
from lodestar.services.gateway.ratelimit import RateLimited

_log = logging.getLogger(__name__)

# Backend field names → the OpenAI parameter they came from.
_PARAM_ALIASES = {"texts": "input", "prompt": "prompt", "messages": "messages"}


def param_of(field: str | None) -> str | None:
    if not field:
        return None
    if field.startswith("sampling."):
        return field.removeprefix("sampling.")
    if field.startswith("constraint.tool_call"):
        return "tool_choice"
    if field.startswith("constraint"):
        return "response_format"
    if field.startswith("tools[") and "]." in field:
        # The service's tools[i].parameters is OpenAI's tools[i].function.parameters.
        head, _, rest = field.partition("].")
        return f"{head}].function.{rest}"
    head, sep, rest = field.partition("[")
    alias = _PARAM_ALIASES.get(head)
    return (alias + sep + rest) if alias else field


# Platform reasons that have an OpenAI code of their own.
_CODES = {
    "MODEL_NOT_FOUND": "model_not_found",
    "PROMPT_TOO_LONG": "context_length_exceeded",
    "RATE_LIMITED": "rate_limit_exceeded",
    "TOKEN_RATE_LIMITED": "rate_limit_exceeded",
    "UNSUPPORTED_VALUE": "unsupported_value",
    "INVALID_VALUE": "invalid_value",
}
# The code of any other error, by status.
_STATUS_CODES = {
    400: "invalid_value",
    401: "invalid_api_key",
    403: "insufficient_permissions",
    404: "not_found",
    409: "conflict",
    413: "request_too_large",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
    504: "timeout",
}


def _error_type(status: int, reason: str = "") -> str:
    if status == 429:
        return "tokens" if reason == "TOKEN_RATE_LIMITED" else "requests"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(
    message: str,
    *,
    status: int,
    param: str | None = None,
    code: str | None = None,
    reason: str = "",
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _error_type(status, reason),
            "param": param,
            "code": code,
        }
    }


def error_code(error: LodestarError) -> str:
    if error.code is grpc.StatusCode.UNAUTHENTICATED:
        return "invalid_api_key"
    code = _CODES.get(error.reason)
    if code is not None:
        return code
    status = http_status_for(error.code)
    return _STATUS_CODES.get(status, "server_error" if status >= 500 else "invalid_value")


def lodestar_error_body(error: LodestarError) -> dict[str, Any]:
    status = http_status_for(error.code)
    message = error.message
    request_id = current_request_id()
    if status >= 500 and request_id:
        message = f"{message} (request id {request_id})"
    return error_body(
        message,
        status=status,
        param=param_of(error.field),
        code=error_code(error),
        reason=error.reason,
    )


def _response(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def lodestar_error_response(error: LodestarError) -> Response:
    return _response(lodestar_error_body(error), http_status_for(error.code), error_headers(error))


def validation_error_response(error: RequestValidationError) -> Response:
    problems = list(error.errors())
    for problem in problems:
        if problem.get("type") == "json_invalid":
            return _response(
                error_body("the request body is not valid JSON", status=400, code="invalid_json"),
                400,
            )
    first = problems[0] if problems else {}
    param = field_path(first.get("loc", ()))
    kind = str(first.get("type", "invalid_value"))
    if kind == "unsupported_value":
        message = f"unsupported value for {param}: {first.get('msg', '')}"
        code = "unsupported_value"
    elif kind == "extra_forbidden":
        message = f"unrecognized request argument supplied: {param}"
        code = "unknown_parameter"
    elif kind == "missing":
        message = f"missing required parameter: {param}"
        code = "missing_required_parameter"
    else:
        description = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        message = f"invalid value for {param}: {description}"
        code = "invalid_value"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problems)"
    return _response(error_body(message, status=400, param=param, code=code), 400)


def http_error_response(error: HTTPException) -> Response:
    status = error.status_code
    code = _STATUS_CODES.get(status, "server_error" if status >= 500 else "invalid_value")
    return _response(
        error_body(str(error.detail), status=status, code=code),
        status,
        dict(error.headers or {}),
    )


class OpenAIRoute(APIRoute):
    """A route whose failures (authentication, permission, validation, backend
    errors) are answered in OpenAI's error shape, and whose every answer carries
    the ``x-ratelimit-*`` headers of the subject's budgets."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            refused: RateLimited | None = None
            try:
                response = await handler(request)
            except RateLimited as error:
                refused = error
                response = lodestar_error_response(error)
            except LodestarError as error:
                response = lodestar_error_response(error)
            except RequestValidationError as error:
                response = validation_error_response(error)
            except HTTPException as error:
                response = http_error_response(error)
            except Exception:
                _log.exception("unhandled error in %s %s", request.method, request.url.path)
                message = f"internal error (request id {current_request_id()}); it has been logged"
                response = _response(error_body(message, status=500, code="internal_error"), 500)
            response.headers.update(
                rate_limit_headers(
                    request.scope,
                    refused=refused.decision if refused else None,
                    refused_tokens=refused is not None and refused.reason == "TOKEN_RATE_LIMITED",
                )
            )
            return response

        return route
