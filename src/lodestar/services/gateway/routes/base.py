"""What every route module shares."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from pydantic_core import from_json
from starlette.responses import Response

API_PREFIX = "/api/v1"


def parse_json_body(body: bytes) -> Any:
    """A JSON request body, parsed by pydantic-core's parser (about six times
    faster than the standard library's on the vectors requests carry). It reads
    what the standard library reads (``NaN``, big integers, the last of
    duplicate keys); ValueError for a body it refuses (invalid JSON, a lone
    surrogate escape), which is then left to FastAPI's own parsing, so that what
    is accepted and the errors given are unchanged."""
    return from_json(body)


class GatewayRoute(APIRoute):
    """A route whose JSON body is parsed by ``parse_json_body``, the result
    left where Starlette caches ``Request.json()``, which FastAPI then reads."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:  # FastAPI reads no body for this route
            return handler

        async def route(request: Request) -> Response:
            body = await request.body()
            if body:
                with contextlib.suppress(ValueError):
                    request._json = parse_json_body(body)
            return await handler(request)

        return route


def api_router(*tags: str) -> APIRouter:
    """A router whose paths carry the API prefix themselves, so that a route's
    template (metrics label, permission table) is its full path."""
    return APIRouter(prefix=API_PREFIX, tags=list(tags), route_class=GatewayRoute)
