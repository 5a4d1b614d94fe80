"""Route modules by area, each with a ``router`` (made by ``base.api_router``,
so its paths start with /api/v1). The flows' routers (``flows.assembly``) and
the OpenAI-compatible API's (``openai.routes``) join them on apps with flows."""

from __future__ import annotations

from fastapi import APIRouter

from lodestar.services.gateway.documents import routes as documents
from lodestar.services.gateway.routes import (
    analytics,
    collections,
    generate,
    me,
    points,
    system,
    vectors,
)
from lodestar.services.gateway.routes.base import API_PREFIX

__all__ = ["API_PREFIX", "API_ROUTERS", "ROOT_ROUTERS"]

# Routes are matched in order: the busiest areas first.
API_ROUTERS: list[APIRouter] = [
    vectors.router,
    generate.router,
    collections.router,
    system.router,
    analytics.router,
    points.router,
    me.router,
    documents.router,
]
# Mounted at the root: the conventional scrape path.
ROOT_ROUTERS: list[APIRouter] = [system.scrape_router]
