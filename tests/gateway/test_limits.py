"""The gateway's REST schemas declare the very limits the services enforce.

Both sides read them from ``lodestar.limits``; these tests read the bounds the
gateway publishes (its JSON Schema, hence its OpenAPI document) and the bounds the
services check at the boundary, so that neither can drift from the other.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from lodestar import limits
from lodestar.runtime.errors import InvalidArgument
from lodestar.services.embedding.settings import EmbeddingSettings
from lodestar.services.gateway.flows import usage
from lodestar.services.gateway.schemas import inference as rest_inference
from lodestar.services.gateway.schemas import vector as rest
from lodestar.services.gateway.schemas.common import FLOAT32_SMALLEST
from lodestar.services.gateway.settings import GatewaySettings
from lodestar.services.inference.settings import InferenceSettings
from lodestar.services.vector import convert
from lodestar.services.vector.settings import VectorSettings
from lodestar.vector.v1 import vector_service_pb2 as pb


def _bounds(model: type[BaseModel], field: str) -> dict[str, Any]:
    """The JSON Schema keywords that bound ``field`` (through ``anyOf`` for optionals)."""
    schema = model.model_json_schema()["properties"][field]
    found: dict[str, Any] = {}
    for part in [schema, *schema.get("anyOf", [])]:
        for key in (
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "minItems",
            "maxItems",
            "minLength",
            "maxLength",
            "default",
        ):
            if key in part:
                found[key] = part[key]
    return found


@pytest.mark.parametrize(
    ("model", "field", "expected"),
    [
        (rest.SearchRequest, "collection", {"maxLength": limits.MAX_COLLECTION_NAME_CHARS}),
        (rest.SearchRequest, "vector", {"maxItems": limits.MAX_DIMENSION}),
        (
            rest.SearchRequest,
            "limit",
            {"minimum": 1, "maximum": limits.MAX_LIMIT, "default": limits.DEFAULT_LIMIT},
        ),
        (rest.SearchRequest, "offset", {"maximum": limits.MAX_OFFSET}),
        (rest.SearchRequest, "hnsw_ef", {"maximum": limits.MAX_HNSW_EF}),
        (rest.RecommendRequest, "limit", {"maximum": limits.MAX_LIMIT}),
        (rest.RecommendRequest, "offset", {"maximum": limits.MAX_OFFSET}),
        (rest.RecommendRequest, "positive", {"maxItems": limits.MAX_EXAMPLES}),
        (rest.RecommendRequest, "negative", {"maxItems": limits.MAX_EXAMPLES}),
        (rest.InsertRequest, "points", {"maxItems": limits.DEFAULT_BATCH_POINTS}),
        (rest.UpsertOp, "points", {"maxItems": limits.DEFAULT_BATCH_POINTS}),
        (rest.BatchRequest, "operations", {"maxItems": limits.MAX_OPERATIONS}),
        (rest.BatchSearchRequest, "searches", {"maxItems": limits.DEFAULT_BATCH_SEARCHES}),
        (
            rest.ClusterRequest,
            "num_clusters",
            {
                "minimum": limits.MIN_CLUSTERS,
                "maximum": limits.MAX_CLUSTERS,
                "default": limits.DEFAULT_CLUSTERS,
            },
        ),
        (rest.ClusterRequest, "sample_size", {"default": limits.DEFAULT_CLUSTER_SAMPLE}),
        (
            rest.ClusterRequest,
            "representatives",
            {"maximum": limits.MAX_REPRESENTATIVES, "default": limits.DEFAULT_REPRESENTATIVES},
        ),
        (rest.CreateCollectionRequest, "dimension", {"maximum": limits.MAX_DIMENSION}),
        (
            rest.HnswConfig,
            "m",
            {"minimum": limits.HNSW_M[0], "maximum": limits.HNSW_M[1]},
        ),
        (
            rest.HnswConfig,
            "ef_construct",
            {"minimum": limits.HNSW_EF_CONSTRUCT[0], "maximum": limits.HNSW_EF_CONSTRUCT[1]},
        ),
        (
            rest.HnswConfig,
            "full_scan_threshold",
            {
                "minimum": limits.HNSW_FULL_SCAN_THRESHOLD[0],
                "maximum": limits.HNSW_FULL_SCAN_THRESHOLD[1],
            },
        ),
        (rest.HnswConfig, "ef_search", {"maximum": limits.MAX_HNSW_EF}),
        (
            rest_inference.GenerateItem,
            "max_tokens",
            {"maximum": limits.MAX_CONTEXT_TOKENS},
        ),
        (
            rest_inference.GenerateItem,
            "temperature",
            {"minimum": limits.TEMPERATURE[0], "maximum": limits.TEMPERATURE[1]},
        ),
        (
            rest_inference.GenerateItem,
            "top_p",
            # Above 0 (the open lowest), as a 32-bit float can carry it.
            {"minimum": FLOAT32_SMALLEST, "maximum": limits.TOP_P[1]},
        ),
        (rest_inference.GenerateItem, "top_k", {"maximum": limits.MAX_TOP_K}),
        (
            rest_inference.GenerateItem,
            "repeat_penalty",
            {"minimum": limits.REPEAT_PENALTY[0], "maximum": limits.REPEAT_PENALTY[1]},
        ),
        (rest_inference.GenerateItem, "stop", {"maxItems": limits.MAX_STOP_SEQUENCES}),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_the_gateway_schema_declares_the_shared_limit(
    model: type[BaseModel], field: str, expected: dict[str, Any]
) -> None:
    declared = _bounds(model, field)
    assert {key: declared.get(key) for key in expected} == expected


def test_setting_defaults_are_the_limits_the_gateway_declares() -> None:
    vector = VectorSettings.model_fields
    assert vector["max_batch_points"].default == limits.DEFAULT_BATCH_POINTS
    assert vector["max_batch_searches"].default == limits.DEFAULT_BATCH_SEARCHES
    embedding = EmbeddingSettings.model_fields
    assert embedding["max_texts_per_request"].default == limits.DEFAULT_TEXTS_PER_EMBED_CALL
    assert embedding["max_text_chars"].default == limits.DEFAULT_TEXT_CHARS
    # The gateway sends the embedding service no more texts a call than it takes.
    gateway_batch = GatewaySettings.model_fields["embed_batch_size"].default
    assert gateway_batch == embedding["max_texts_per_request"].default
    # The context a model may run with bounds the max_tokens a request may ask for.
    context = InferenceSettings.model_json_schema()["properties"]["context_size"]
    assert context["maximum"] == limits.MAX_CONTEXT_TOKENS
    # The gateway sends the analytics service no more usage events a call than it takes.
    assert usage.BATCH_SIZE <= limits.MAX_USAGE_EVENTS


def _refused(call: Any, *args: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as error:
        call(*args)
    return error.value


def test_the_vector_service_enforces_the_same_limits() -> None:
    """At each bound the service accepts, and one past it refuses."""
    assert convert.limit(limits.MAX_LIMIT) == limits.MAX_LIMIT
    _refused(convert.limit, limits.MAX_LIMIT + 1)
    assert convert.offset(limits.MAX_OFFSET) == limits.MAX_OFFSET
    _refused(convert.offset, limits.MAX_OFFSET + 1)
    assert convert.page_size(limits.MAX_PAGE_SIZE) == limits.MAX_PAGE_SIZE
    _refused(convert.page_size, limits.MAX_PAGE_SIZE + 1)
    longest = "c" * limits.MAX_COLLECTION_NAME_CHARS
    assert convert.collection_name(longest) == longest
    _refused(convert.collection_name, longest + "c")
    snapshot = "s" * limits.MAX_SNAPSHOT_NAME_CHARS
    assert convert.snapshot_name(snapshot) == snapshot
    _refused(convert.snapshot_name, snapshot + "s")
    for name, (low, high) in (
        ("m", limits.HNSW_M),
        ("ef_construct", limits.HNSW_EF_CONSTRUCT),
        ("full_scan_threshold", limits.HNSW_FULL_SCAN_THRESHOLD),
    ):
        for good in (low, high):
            options = convert.hnsw(pb.HnswConfig(**{name: good}), "hnsw")
            assert getattr(options, name) == good
        for bad in (low - 1, high + 1):
            if bad >= 0:  # the proto fields are unsigned
                _refused(convert.hnsw, pb.HnswConfig(**{name: bad}), "hnsw")
    top = limits.MAX_HNSW_EF
    assert convert.search_params(pb.SearchParams(hnsw_ef=top)) == (top, False)
    _refused(convert.search_params, pb.SearchParams(hnsw_ef=top + 1))
    widest = pb.CollectionConfig(dimension=limits.MAX_DIMENSION)
    assert convert.collection_config(widest).dimension == limits.MAX_DIMENSION
    _refused(convert.collection_config, pb.CollectionConfig(dimension=limits.MAX_DIMENSION + 1))
