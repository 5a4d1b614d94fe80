"""What every route module shares."""

from __future__ import annotations

from fastapi import APIRouter

API_PREFIX = "/api/v1"


def api_router(*tags: str) -> APIRouter:
    """A router whose paths carry the API prefix themselves, so that a route's
    template (metrics label, permission table) is its full path."""
    return APIRouter(prefix=API_PREFIX, tags=list(tags))
