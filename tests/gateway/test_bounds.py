"""Every number a REST model takes fits the proto field it is copied into.

The test walks every request model of the REST and OpenAI-compatible APIs and
every numeric field in them (lists and unions included), finds the proto field
it becomes (by name in the message of ``PROTO_OF``, or through ``RENAMED``), and
checks that the model's bounds lie within what that field's type can hold. A
numeric field with no proto field must be declared in ``NOT_SENT`` with the
reason. A value just outside a bound is refused by validation naming the field,
so that it can never reach the conversion (where it would be a 500).
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import types
import typing
from collections.abc import Iterator
from typing import Any

import annotated_types
import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

import lodestar.services.gateway as gateway_package
from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.services.gateway.flows.cluster import ClusterSubsetRequest
from lodestar.services.gateway.flows.experiment_models import Variant
from lodestar.services.gateway.openai import schemas as oai
from lodestar.services.gateway.schemas import inference as inf
from lodestar.services.gateway.schemas import vector as vec
from lodestar.services.gateway.schemas.common import RequestModel
from lodestar.services.gateway.schemas.points import ScrollRequest
from lodestar.vector.v1 import vector_service_pb2 as vpb

for _module in pkgutil.walk_packages(gateway_package.__path__, f"{gateway_package.__name__}."):
    importlib.import_module(_module.name)

F = FieldDescriptor
FLOAT32_MAX = 3.4028234663852886e38
RANGES: dict[int, tuple[float, float]] = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FLOAT: (-FLOAT32_MAX, FLOAT32_MAX),
    F.TYPE_DOUBLE: (-math.inf, math.inf),  # finite values: checked apart
}

# The proto message each request model's fields are copied into.
PROTO_OF: dict[type[BaseModel], Descriptor] = {
    vec.HnswConfig: vpb.HnswConfig.DESCRIPTOR,
    vec.ScalarQuantization: vpb.ScalarQuantization.DESCRIPTOR,
    vec.CreateCollectionRequest: vpb.CollectionConfig.DESCRIPTOR,
    vec.Match: vpb.Match.DESCRIPTOR,
    vec.Range: vpb.Range.DESCRIPTOR,
    vec.SearchRequest: vpb.SearchPointsRequest.DESCRIPTOR,
    vec.RecommendRequest: vpb.RecommendPointsRequest.DESCRIPTOR,
    vec.ClusterRequest: vpb.ClusterPointsRequest.DESCRIPTOR,
    ClusterSubsetRequest: vpb.ClusterPointsRequest.DESCRIPTOR,
    inf.GenerateItem: ipb.SamplingOptions.DESCRIPTOR,
    inf.ContextOptions: vpb.SearchPointsRequest.DESCRIPTOR,
    oai.SamplingIn: ipb.SamplingOptions.DESCRIPTOR,
    oai.ChatCompletionRequest: ipb.SamplingOptions.DESCRIPTOR,
    oai.CompletionRequest: ipb.SamplingOptions.DESCRIPTOR,
    ScrollRequest: vpb.ListPointsRequest.DESCRIPTOR,
    Variant: ipb.SamplingOptions.DESCRIPTOR,
}
_POINT_ID = vpb.PointId.DESCRIPTOR.fields_by_name["num"]
_VECTOR = vpb.Vector.DESCRIPTOR.fields_by_name["values"]
_SEARCH = vpb.SearchPointsRequest.DESCRIPTOR.fields_by_name
_GENERATE = ipb.GenerateTextRequest.DESCRIPTOR.fields_by_name
# Fields whose proto field has another name or lives in another message.
RENAMED: dict[str, FieldDescriptor] = {
    "SearchRequest.hnsw_ef": vpb.SearchParams.DESCRIPTOR.fields_by_name["hnsw_ef"],
    "SearchRequest.vector": _VECTOR,
    "PointIn.vector": _VECTOR,
    "PointIn.id": _POINT_ID,
    "UpdatePointRequest.vector": _VECTOR,
    "Example.id": _POINT_ID,
    "Example.vector": _VECTOR,
    "RecommendRequest.positive": _POINT_ID,
    "RecommendRequest.negative": _POINT_ID,
    "Selector.ids": _POINT_ID,
    "SetPayloadOp.ids": _POINT_ID,
    "DeletePayloadKeysOp.ids": _POINT_ID,
    "Condition.has_id": _POINT_ID,
    "Match.any": vpb.Integers.DESCRIPTOR.fields_by_name["values"],
    "Match.except_": vpb.Integers.DESCRIPTOR.fields_by_name["values"],
    "ClusterSubsetRequest.ids": _POINT_ID,
    "ClusterSubsetRequest.neighbours": _SEARCH["limit"],
    "ClusterSubsetRequest.score_threshold": _SEARCH["score_threshold"],
    "ChatCompletionRequest.max_completion_tokens": ipb.SamplingOptions.DESCRIPTOR.fields_by_name[
        "max_tokens"
    ],
    "FeedbackRequest.interaction_id": _POINT_ID,
    "ChatCompletionRequest.top_logprobs": _GENERATE["top_logprobs"],
    "CompletionRequest.logprobs": _GENERATE["top_logprobs"],
    "Variant.limit": _SEARCH["limit"],
    "Variant.score_threshold": _SEARCH["score_threshold"],
}
# Numbers that are not copied into any proto field, and why.
NOT_SENT: dict[str, str] = {
    "FeedbackRequest.score": "checked by the route against 1..5, stored as a payload value",
    "EmbeddingRequest.dimensions": "must equal the served model's dimension; refused otherwise",
    "SamplingIn.n": "the number of parallel requests made (at most MAX_CHOICES)",
    "SamplingIn.presence_penalty": "only 0 is accepted",
    "SamplingIn.frequency_penalty": "only 0 is accepted",
    "SamplingIn.logit_bias": "only empty is accepted",
    "CompletionRequest.best_of": "must equal n; refused otherwise",
    "Variant.weight": "the variant's share of traffic, kept by the gateway",
}


def _subclasses(base: type[BaseModel]) -> Iterator[type[BaseModel]]:
    for sub in base.__subclasses__():
        yield sub
        yield from _subclasses(sub)


REQUEST_MODELS = sorted(
    {*_subclasses(RequestModel), *_subclasses(oai.OpenAIModel)}, key=lambda m: m.__name__
)


def _numbers(annotation: Any, metadata: list[Any]) -> Iterator[tuple[type, list[Any]]]:
    """Each int or float inside ``annotation``, with the constraints on it."""
    origin = typing.get_origin(annotation)
    if annotation in (int, float):
        yield annotation, metadata
    elif origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        flat: list[Any] = []
        for item in extra:
            flat.extend(item.metadata if isinstance(item, FieldInfo) else [item])
        yield from _numbers(inner, [*metadata, *flat])
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _numbers(arg, metadata)
    elif origin in (list, dict):
        # A container's own constraints (lengths) are not its items'.
        for arg in typing.get_args(annotation)[-1:]:
            yield from _numbers(arg, [])


def _bounds(metadata: list[Any]) -> tuple[float, float, bool]:
    """Lowest, highest (exact: ints stay ints) and whether it must be finite."""
    low: float = -math.inf
    high: float = math.inf
    finite = False
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            low = max(low, item.ge)  # type: ignore[type-var]
        elif isinstance(item, annotated_types.Gt):
            low = max(low, item.gt)  # type: ignore[type-var]
        elif isinstance(item, annotated_types.Le):
            high = min(high, item.le)  # type: ignore[type-var]
        elif isinstance(item, annotated_types.Lt):
            # An exclusive integral bound n holds at most n - 1.
            high = min(high, item.lt - 1)  # type: ignore[operator]
        elif getattr(item, "allow_inf_nan", None) is False:
            finite = True
    return low, high, finite


def _proto_field(model: type[BaseModel], name: str) -> FieldDescriptor | None:
    for cls in model.__mro__:
        key = f"{cls.__name__}.{name}"
        if key in RENAMED:
            return RENAMED[key]
        if cls in PROTO_OF:
            found = PROTO_OF[cls].fields_by_name.get(name)
            if found is not None:
                return found
    return None


def _declared_not_sent(model: type[BaseModel], name: str) -> bool:
    return any(f"{cls.__name__}.{name}" in NOT_SENT for cls in model.__mro__)


CASES = [
    pytest.param(model, name, id=f"{model.__name__}.{name}")
    for model in REQUEST_MODELS
    for name, field in model.model_fields.items()
    if any(True for _ in _numbers(field.annotation, list(field.metadata)))
]


def test_the_walk_finds_the_numbers() -> None:
    names = {case.id for case in CASES}
    assert {"HnswConfig.full_scan_threshold", "SearchRequest.vector", "Match.integer"} <= names
    assert len(names) > 40


@pytest.mark.parametrize(("model", "name"), CASES)
def test_numeric_fields_fit_their_proto_field(model: type[BaseModel], name: str) -> None:
    field = model.model_fields[name]
    target = _proto_field(model, name)
    if target is None:
        assert _declared_not_sent(model, name), (
            f"{model.__name__}.{name} is a number with no proto field: map it "
            "(PROTO_OF / RENAMED) or say why in NOT_SENT"
        )
        return
    type_low, type_high = RANGES[target.type]
    allows_inf_nan = model.model_config.get("allow_inf_nan", True)
    for _kind, metadata in _numbers(field.annotation, list(field.metadata)):
        low, high, finite = _bounds(metadata)
        if target.type == F.TYPE_DOUBLE:
            assert finite or not allows_inf_nan, f"{model.__name__}.{name} must be finite"
            continue
        shown = f"{model.__name__}.{name}: [{low}, {high}] exceeds {target.full_name}"
        assert type_low <= low, shown
        assert high <= type_high, shown


def _is_float32(model: type[BaseModel], name: str) -> bool:
    target = _proto_field(model, name)
    return target is not None and target.type == F.TYPE_FLOAT


@pytest.mark.parametrize(
    ("model", "name"),
    [(m, n) for m, n in (case.values for case in CASES) if _is_float32(m, n)],  # type: ignore[arg-type]
)
def test_a_32_bit_float_field_has_bounds_a_32_bit_float_holds(
    model: type[BaseModel], name: str
) -> None:
    """A value crosses as its nearest 32-bit float: past an exclusive bound it may land
    on the bound (5e-324 > 0 arrives as 0), past an inexact one beyond it. So a 32-bit
    float field's bounds are inclusive and exact in 32 bits: every value they let
    through arrives within them."""
    field = model.model_fields[name]
    for _kind, metadata in _numbers(field.annotation, list(field.metadata)):
        for item in metadata:
            shown = f"{model.__name__}.{name}: {item!r}"
            assert not isinstance(item, annotated_types.Gt | annotated_types.Lt), shown
            if isinstance(item, annotated_types.Ge | annotated_types.Le):
                bound = item.ge if isinstance(item, annotated_types.Ge) else item.le
                assert float(np.float32(bound)) == bound, shown


@pytest.mark.parametrize(
    ("model", "name"),
    [
        (model, name)
        for model, name in (case.values for case in CASES)
        if _proto_field(model, name) is not None  # type: ignore[arg-type]
    ],
)
def test_a_number_beyond_the_proto_type_is_refused_naming_the_field(
    model: type[BaseModel], name: str
) -> None:
    target = _proto_field(model, name)
    assert target is not None
    too_big = {F.TYPE_FLOAT: 1e300, F.TYPE_DOUBLE: math.inf}.get(target.type, 2**64 + 1)
    field = model.model_fields[name]
    key = field.alias or name
    value: Any = too_big
    if typing.get_origin(field.annotation) is list or "list" in str(field.annotation):
        value = [too_big]
    with pytest.raises(ValidationError) as raised:
        model.model_validate({key: value})
    assert any(error["loc"] and error["loc"][0] == key for error in raised.value.errors()), (
        raised.value
    )
