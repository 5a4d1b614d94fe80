"""Route modules by area. Each module has a ``router``; ``API_ROUTERS`` are
mounted under /api/v1. An extension adds its own router module to the app
(``create_app(settings, extensions=...)``)."""

from __future__ import annotations

from fastapi import APIRouter

from lodestar.services.gateway.routes import analytics, collections, generate, system, vectors

API_PREFIX = "/api/v1"

API_ROUTERS: list[APIRouter] = [
    system.router,
    generate.router,
    vectors.router,
    collections.router,
    analytics.router,
]
# Mounted at the root: the conventional scrape path.
ROOT_ROUTERS: list[APIRouter] = [system.scrape_router]
