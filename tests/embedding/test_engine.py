"""The engine with the real bundled model, without gRPC."""

from __future__ import annotations

import numpy as np

from lodestar.services.embedding.engine import EmbeddingEngine

LONG_TEXT = "The lighthouse keeper wrote down the weather every hour. " * 40


def test_model_info_describes_the_bundled_model(engine: EmbeddingEngine) -> None:
    info = engine.info
    assert (info.name, info.dimension, info.max_sequence_length) == ("all-MiniLM-L6-v2", 384, 256)
    assert info.similarity == "cosine"


def test_vectors_are_unit_length_only_when_asked(engine: EmbeddingEngine) -> None:
    texts = ["A cat sleeps on the sofa.", "Interest rates rose again in March."]
    normalized = engine.embed(texts, normalize=True).vectors
    raw = engine.embed(texts, normalize=False).vectors
    assert normalized.shape == (2, 384)
    assert normalized.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-2)
    # Same direction either way.
    np.testing.assert_allclose(
        raw / np.linalg.norm(raw, axis=1, keepdims=True), normalized, atol=1e-5
    )


def test_token_counts_and_truncation(engine: EmbeddingEngine) -> None:
    result = engine.embed(["hello world", LONG_TEXT])
    # [CLS] hello world [SEP]
    assert result.token_counts[0] == 4
    assert result.truncated[0] is False
    assert result.token_counts[1] > engine.info.max_sequence_length
    assert result.truncated[1] is True


def test_a_batch_matches_the_same_texts_one_by_one(engine: EmbeddingEngine) -> None:
    texts = ["short", "a somewhat longer sentence about rivers and bridges", LONG_TEXT]
    batch = engine.embed(texts)
    for index, text in enumerate(texts):
        alone = engine.embed([text])
        np.testing.assert_allclose(alone.vectors[0], batch.vectors[index], atol=1e-5)
        assert alone.token_counts[0] == batch.token_counts[index]


def test_matches_sentence_transformers_encode(engine: EmbeddingEngine) -> None:
    texts = ["The quick brown fox.", "Une phrase en français."]
    expected = engine.model.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(engine.embed(texts).vectors, expected, atol=1e-5)


def test_no_texts_gives_an_empty_result(engine: EmbeddingEngine) -> None:
    result = engine.embed([])
    assert result.vectors.shape == (0, 384)
    assert len(result) == 0
