"""Types shared by the REST models."""

from __future__ import annotations

import re
import typing
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from lodestar import limits

MAX_POINT_NUM = 2**64 - 1

# A REST field is bounded by what the proto field it is copied into can hold, so
# that a value out of range is refused naming the field, never failing the
# conversion. Upper bounds of integers are exclusive powers of two: exact as
# floats, which is how the OpenAPI document carries its bounds.
FLOAT32_MAX = 3.4028234663852886e38  # the largest finite 32-bit float
Float32 = Annotated[float, Field(ge=-FLOAT32_MAX, le=FLOAT32_MAX, allow_inf_nan=False)]
# The smallest positive 32-bit float. top_p travels as a 32-bit float and must be
# above 0: a positive value below this one would arrive as 0, so this is its lowest.
FLOAT32_SMALLEST = 2.0**-149
TopP = Annotated[float, Field(ge=FLOAT32_SMALLEST, le=limits.TOP_P[1])]
Int32 = Annotated[int, Field(ge=-(2**31), lt=2**31)]
UInt32 = Annotated[int, Field(ge=0, lt=2**32)]
Int64 = Annotated[int, Field(ge=-(2**63), lt=2**63)]
UInt64 = Annotated[int, Field(ge=0, lt=2**64)]


def _takes_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any or annotation is object:
        return True
    return any(_takes_bool(arg) for arg in typing.get_args(annotation))


def refuse_bool_numbers(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """JSON's true and false are not numbers (pydantic would read them as 1 and 0):
    a field, or a list field's item, that takes no booleans refuses them."""
    if isinstance(value, bool) or (
        isinstance(value, list) and any(isinstance(item, bool) for item in value)
    ):
        name = info.field_name
        if name is not None and not _takes_bool(cls.model_fields[name].annotation):
            raise ValueError("a boolean is not a valid value here")
    return value


class RequestModel(BaseModel):
    """A request body: unknown fields are refused (422 naming them)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    _no_bool_numbers = field_validator("*", mode="before")(classmethod(refuse_bool_numbers))


class ResponseModel(BaseModel):
    """A response body."""

    model_config = ConfigDict(extra="ignore")


def given(*names: str, **schemas: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema: each of ``names`` is present and not null (and matches its
    schema in ``schemas``, if any)."""
    not_null = {"not": {"type": "null"}}
    properties: dict[str, Any] = {n: not_null for n in names}
    for name, schema in schemas.items():
        properties[name] = {"allOf": [not_null, schema]}
    return {"required": sorted({*names, *schemas}), "properties": properties}


def none_of(*names: str) -> dict[str, Any]:
    """JSON Schema: none of ``names`` is given (each absent or null)."""
    return {"not": {"anyOf": [given(n) for n in names]}}


def exactly_one_of(*names: str) -> dict[str, Any]:
    """JSON Schema of a model validator that wants exactly one of ``names``, so
    that the OpenAPI document states the rule the model enforces."""
    return {"oneOf": [given(n) for n in names]}


def at_least_one_of(*names: str) -> dict[str, Any]:
    return {"anyOf": [given(n) for n in names]}


# A point id is an unsigned 64-bit integer or a UUID.
PointIdIn = UInt64 | UUID
PointIdOut = int | str
Payload = dict[str, Any]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
VectorIn = Annotated[list[Float32], Field(min_length=1, max_length=limits.MAX_DIMENSION)]
CollectionName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=limits.MAX_COLLECTION_NAME_CHARS,
        pattern=limits.COLLECTION_NAME_PATTERN,
    ),
]
NonEmptyText = Annotated[str, Field(min_length=1)]
PayloadKey = Annotated[
    str, Field(min_length=1, max_length=limits.MAX_KEY_CHARS, pattern=limits.PAYLOAD_KEY_PATTERN)
]
# A collection name, or empty for every collection (analytics filters).
OptionalCollectionName = Annotated[
    str,
    Field(
        max_length=limits.MAX_COLLECTION_NAME_CHARS,
        pattern=f"^(?:{limits.COLLECTION_NAME_PATTERN[1:-1]})?$",
    ),
]

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)


def _rfc3339_text(value: object) -> object:
    # pydantic would also take a date, a naive time or a number of seconds: the
    # document says date-time (RFC 3339), so that is all it may be.
    if isinstance(value, datetime) or (isinstance(value, str) and _RFC3339.fullmatch(value)):
        return value
    raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2025-01-01T00:00:00Z")


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must lie between years 1 and 9999 in UTC") from None


# A moment as the protos' Timestamp can hold it: RFC 3339 with an offset, in years 1-9999 UTC.
Moment = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text), AfterValidator(_in_utc)]


def _at_most(largest: int) -> str:
    """A regular expression of the decimal numbers from 0 to ``largest`` (leading
    zeros allowed): shorter numbers, or as long and below it digit by digit."""
    digits = str(largest)
    shorter = f"[0-9]{{1,{len(digits) - 1}}}"
    below = [
        f"{digits[:i]}[0-{int(d) - 1}][0-9]{{{len(digits) - i - 1}}}"
        for i, d in enumerate(digits)
        if d != "0"
    ]
    return "|".join([shorter, *below, digits])


_HEX = "[0-9A-Fa-f]"
# A point id in a URL path: an unsigned 64-bit integer, or a UUID (hyphenated or not).
POINT_ID_PATTERN = (
    f"^(?:{_at_most(MAX_POINT_NUM)}"
    f"|{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}|{_HEX}{{32}})$"
)


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
