"""JSON responses built without a second validation pass (the models are
already typed), serialized by pydantic-core or orjson."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import Response

from lodestar.services.gateway.errors import JSON


def respond(model: BaseModel, status_code: int = 200) -> Response:
    body = model.__pydantic_serializer__.to_json(model, exclude_none=True)
    return Response(body, status_code=status_code, media_type=JSON)


def respond_json(data: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status_code, media_type=JSON)


def no_content() -> Response:
    return Response(status_code=204)
