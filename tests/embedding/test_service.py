"""The embedding service over real gRPC, with the real model, on an in-process server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from lodestar.embedding.v1 import embedding_service_pb2 as pb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as pb_grpc
from lodestar.runtime.errors import ErrorDetails
from lodestar.services.embedding.engine import EmbeddingEngine
from lodestar.services.embedding.server import SERVICE_NAME

from .conftest import MAX_CHARS, MAX_TEXTS


def _vectors(reply: pb.EmbedTextsResponse) -> np.ndarray:
    return np.array([list(e.values) for e in reply.embeddings], dtype=np.float32)


async def _embed(stub: pb_grpc.EmbeddingServiceAsyncStub, texts: list[str]) -> np.ndarray:
    return _vectors(await stub.EmbedTexts(pb.EmbedTextsRequest(texts=texts), timeout=30))


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_paraphrases_score_higher_than_unrelated_texts(
    stub: pb_grpc.EmbeddingServiceAsyncStub,
) -> None:
    vectors = await _embed(
        stub,
        [
            "How do I reset my password?",
            "What are the steps to change my login password?",
            "The recipe needs two cups of flour and an egg.",
        ],
    )
    paraphrase = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[0] @ vectors[2])
    assert paraphrase > 0.6
    assert paraphrase > unrelated + 0.4


async def test_reply_carries_model_tokens_and_unit_vectors(
    stub: pb_grpc.EmbeddingServiceAsyncStub,
) -> None:
    reply = await stub.EmbedTexts(
        pb.EmbedTextsRequest(texts=["hello world", "word " * 400]), timeout=30
    )
    assert (reply.model, reply.dimension) == ("all-MiniLM-L6-v2", 384)
    assert [len(e.values) for e in reply.embeddings] == [384, 384]
    assert reply.embeddings[0].token_count == 4
    assert reply.embeddings[0].truncated is False
    assert reply.embeddings[1].token_count == 402
    assert reply.embeddings[1].truncated is True
    assert reply.total_tokens == 406
    np.testing.assert_allclose(np.linalg.norm(_vectors(reply), axis=1), 1.0, atol=1e-5)


async def test_normalize_false_returns_the_raw_pooled_vector(
    stub: pb_grpc.EmbeddingServiceAsyncStub, engine: EmbeddingEngine
) -> None:
    text = "Raw vectors keep their length."
    reply = await stub.EmbedTexts(pb.EmbedTextsRequest(texts=[text], normalize=False), timeout=30)
    raw = _vectors(reply)[0]
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 0.1
    np.testing.assert_allclose(raw, engine.embed([text], normalize=False).vectors[0], atol=1e-5)


async def test_a_batch_equals_the_same_texts_one_by_one(
    stub: pb_grpc.EmbeddingServiceAsyncStub,
) -> None:
    texts = [
        "Rivers carry sediment to the sea.",
        "A short one.",
        "The committee postponed its decision until the next quarterly meeting.",
        "Rust and Python can share memory through buffers.",
    ]
    batch = await _embed(stub, texts)
    for index, text in enumerate(texts):
        alone = await _embed(stub, [text])
        np.testing.assert_allclose(alone[0], batch[index], atol=1e-5)


async def test_concurrent_callers_each_get_their_own_vectors_from_shared_batches(
    stub: pb_grpc.EmbeddingServiceAsyncStub, engine: EmbeddingEngine
) -> None:
    texts = [f"Caller number {i} asks about topic {chr(65 + i)}." for i in range(24)]
    expected = engine.embed(texts).vectors
    batches_before = _metric("lodestar_embedding_batch_size_count")
    texts_before = _metric("lodestar_embedding_texts_total")

    replies = await asyncio.gather(*(_embed(stub, [text]) for text in texts))

    for index, vectors in enumerate(replies):
        np.testing.assert_allclose(vectors[0], expected[index], atol=1e-5)
    batches = _metric("lodestar_embedding_batch_size_count") - batches_before
    assert _metric("lodestar_embedding_texts_total") - texts_before == len(texts)
    # Merged: far fewer forward passes than calls.
    assert 1 <= batches < len(texts) / 2


@pytest.mark.parametrize(
    ("texts", "field", "reason", "says"),
    [
        ([], "texts", "EMPTY_TEXTS", "at least one text"),
        (["fine", ""], "texts[1]", "EMPTY_TEXT", "texts[1] is empty"),
        (["fine", "ok", " \n\t "], "texts[2]", "EMPTY_TEXT", "only whitespace"),
        (["x"] * (MAX_TEXTS + 1), "texts", "TOO_MANY_TEXTS", f"at most {MAX_TEXTS}"),
        (["fine", "y" * (MAX_CHARS + 1)], "texts[1]", "TEXT_TOO_LONG", f"limit is {MAX_CHARS}"),
    ],
    ids=["no-texts", "empty-text", "whitespace-text", "too-many-texts", "too-many-chars"],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    stub: pb_grpc.EmbeddingServiceAsyncStub, texts: list[str], field: str, reason: str, says: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.EmbedTexts(pb.EmbedTextsRequest(texts=texts), timeout=30)
    details = ErrorDetails.from_rpc_error(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == reason
    assert says in details.message
    assert [f for f, _ in details.field_violations] == [field]
    assert "Traceback" not in details.message


async def test_model_info_reports_model_and_limits(stub: pb_grpc.EmbeddingServiceAsyncStub) -> None:
    reply = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    assert reply.model == pb.ModelInfo(
        name="all-MiniLM-L6-v2",
        dimension=384,
        max_sequence_length=256,
        max_texts_per_request=MAX_TEXTS,
        max_text_chars=MAX_CHARS,
        similarity="cosine",
    )


async def test_health_reports_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE_NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        yield reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)

    replies = [reply async for reply in stub.ServerReflectionInfo(ask(), timeout=10)]
    names = [s.name for s in replies[0].list_services_response.service]
    assert SERVICE_NAME in names
    assert replies[1].file_descriptor_response.file_descriptor_proto
