"""The error bodies as models, and the error statuses every route documents.

The REST API answers every failure with ``ErrorBody``; the OpenAI-compatible
routes with OpenAI's shape, ``OpenAIErrorBody``. ``error_responses`` is the
``responses=`` of a router: ``create_app`` passes it when it includes each
router, so every route of every router, present or added later, documents
each status the gateway can answer with the body it answers it with.
"""

from __future__ import annotations

from typing import Any

import grpc
from pydantic import BaseModel, Field

from lodestar.services.gateway.schemas.common import ResponseModel


class FieldViolation(ResponseModel):
    field: str = Field(description="The offending field's path, e.g. `points[0].vector`.")
    description: str = Field(description="What is wrong with it.")


class ErrorDetails(ResponseModel):
    """An object (never a list): the reason, and what else applies."""

    reason: str = Field(description="UPPER_SNAKE reason, e.g. `COLLECTION_NOT_FOUND`.")
    field_violations: list[FieldViolation] | None = Field(
        None, description="Each offending field, for bad input."
    )
    metadata: dict[str, str] | None = Field(None, description="Limits and names involved.")
    retry_after_s: float | None = Field(
        None, description="Seconds to wait before a retry (also sent as `Retry-After`)."
    )


class Error(ResponseModel):
    code: str = Field(
        description="The canonical gRPC status name.",
        json_schema_extra={"enum": [c.name for c in grpc.StatusCode if c.name != "OK"]},
    )
    message: str
    details: ErrorDetails
    request_id: str = Field(description="Also sent as `X-Request-ID`; quote it in bug reports.")


class ErrorBody(ResponseModel):
    """Every REST failure's body."""

    error: Error


class OpenAIError(ResponseModel):
    message: str
    type: str = Field(description="e.g. `invalid_request_error`, `rate_limit_error`.")
    param: str | None = Field(description="The offending parameter, where one is to blame.")
    code: str | None


class OpenAIErrorBody(ResponseModel):
    """Every failure's body on the OpenAI-compatible routes (OpenAI's shape)."""

    error: OpenAIError


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before sending the request again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {"description": "The bearer challenge.", "schema": {"type": "string"}}
}

# Every status the gateway answers a failure with (its status table, routing,
# validation and body limits), and when. 422 is the REST API's answer to a
# request its schema refuses; the OpenAI routes answer that with 400.
_STATUSES: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("Bad input: malformed JSON, or a value the service refuses.", {}),
    401: ("Missing, expired or invalid bearer token.", _WWW_AUTHENTICATE),
    403: ("The token lacks the permission, the collection or the tenant.", {}),
    404: ("No such collection, point, snapshot or other resource.", {}),
    409: ("It already exists, or a concurrent change conflicts.", {}),
    413: ("The request body is larger than the limit.", {}),
    422: ("The request does not fit the schema: a type, a range, a missing or unknown field.", {}),
    429: ("A rate limit or a full queue; retry after Retry-After.", _RETRY_AFTER),
    500: ("An internal error; it has been logged under the request id.", {}),
    501: ("The backend does not implement this.", {}),
    503: ("A backend has no available replica; retry after Retry-After.", _RETRY_AFTER),
    504: ("The request's deadline passed.", {}),
}


def error_responses(body: type[BaseModel] = ErrorBody) -> dict[int | str, dict[str, Any]]:
    """A router's ``responses=``: each error status, its meaning and body."""
    out: dict[int | str, dict[str, Any]] = {}
    for status, (description, headers) in _STATUSES.items():
        if status == 422 and body is OpenAIErrorBody:
            continue
        entry: dict[str, Any] = {"description": description, "model": body}
        if headers:
            entry["headers"] = headers
        out[status] = entry
    return out


# A route that answers ``stream: true`` with Server-Sent Events says so.
EVENT_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or with `stream: true` Server-Sent Events.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}
