"""REST models of the points browser: a filtered page of points, and a count."""

from __future__ import annotations

from pydantic import Field, StrictBool

from lodestar import limits
from lodestar.services.gateway.schemas.common import Page, RequestModel, ResponseModel
from lodestar.services.gateway.schemas.vector import Filter, Point


class ScrollRequest(RequestModel):
    """One page of a collection's points, in id order, optionally filtered."""

    filter: Filter | None = None
    page_size: int = Field(100, ge=1, le=limits.MAX_PAGE_SIZE)
    page_token: str = Field("", max_length=4096, description="From the previous page.")
    with_payload: StrictBool = True
    with_vector: StrictBool = False


class ScrollResponse(Page):
    points: list[Point]


class CountRequest(RequestModel):
    filter: Filter | None = None


class CountResponse(ResponseModel):
    count: int
