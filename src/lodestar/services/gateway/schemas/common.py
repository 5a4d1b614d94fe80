"""Types shared by the REST models."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from lodestar import limits

MAX_POINT_NUM = 2**64 - 1


class RequestModel(BaseModel):
    """A request body: unknown fields are refused (422 naming them)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ResponseModel(BaseModel):
    """A response body."""

    model_config = ConfigDict(extra="ignore")


# A point id is an unsigned 64-bit integer or a UUID.
PointIdIn = Annotated[int, Field(ge=0, le=MAX_POINT_NUM)] | UUID
PointIdOut = int | str
Payload = dict[str, Any]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
VectorIn = Annotated[list[FiniteFloat], Field(min_length=1, max_length=limits.MAX_DIMENSION)]
CollectionName = Annotated[str, Field(min_length=1, max_length=limits.MAX_COLLECTION_NAME_CHARS)]
NonEmptyText = Annotated[str, Field(min_length=1)]


def parse_point_id(text: str) -> int | UUID:
    """A point id from a URL path segment."""
    if text.isdigit():
        value = int(text)
        if value <= MAX_POINT_NUM:
            return value
        raise ValueError(f"{text} is larger than the largest point id (2^64-1)")
    return UUID(text)


class Page(ResponseModel):
    next_page_token: str = Field("", description="Empty on the last page.")
