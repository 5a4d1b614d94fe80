"""Routes parse JSON bodies with pydantic-core and answer exactly as FastAPI's own parsing."""

from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import pytest
import starlette.requests
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from lodestar.services.gateway.routes.base import GatewayRoute


class Body(BaseModel):
    vector: list[float]
    count: int = 0


def app_with(route_class: type[APIRoute]) -> FastAPI:
    router = APIRouter(route_class=route_class)

    @router.post("/echo")
    async def echo(body: Body) -> dict[str, object]:
        return {"vector": body.vector, "count": body.count}

    @router.get("/plain")
    async def plain() -> dict[str, str]:
        return {"ok": "yes"}

    app = FastAPI()
    app.include_router(router)
    return app


async def call(app: FastAPI, content: bytes) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        return await client.post(
            "/echo", content=content, headers={"content-type": "application/json"}
        )


BODIES = [
    b'{"vector": [0.5, 1, -2e-3], "count": 3}',
    b'{"vector": [1, NaN, 0]}',  # the standard library accepts NaN, and validation refuses it
    b'{"vector": [1, 2], "count": 123456789012345678901234567890}',  # beyond 64 bits
    b'{"vector": [1, 2',  # truncated
    b'{"vector": "not a list"}',
    b"[]",
    b'{"vector": [1], "count": 1, "count": 2}',  # the last of duplicate keys
    b'{"vector": [1], "note": "\\ud800"}',  # a lone surrogate escape
]


@pytest.mark.parametrize("content", BODIES)
async def test_answers_match_fastapis_own_parsing(content: bytes) -> None:
    ours = await call(app_with(GatewayRoute), content)
    theirs = await call(app_with(APIRoute), content)
    assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json())


async def test_valid_bodies_do_not_go_through_the_standard_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError("json.loads called")

    monkeypatch.setattr(starlette.requests, "json", SimpleNamespace(loads=refuse))
    response = await call(app_with(GatewayRoute), BODIES[0])
    assert response.status_code == 200
    assert response.json() == {"vector": [0.5, 1.0, -0.002], "count": 3}
    # The same body through FastAPI's own parsing does use it (and fails).
    assert (await call(app_with(APIRoute), BODIES[0])).status_code == 400


async def test_routes_without_a_body_are_fastapis_own() -> None:
    app = app_with(GatewayRoute)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.get("/plain")
    assert response.json() == {"ok": "yes"}
    assert json.loads(response.content) == {"ok": "yes"}
