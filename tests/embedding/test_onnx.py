"""The ONNX Runtime backend: torch's vectors, from an export made once and cached."""

from __future__ import annotations

import inspect
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lodestar.services.embedding import onnx_backend
from lodestar.services.embedding.engine import EmbeddingEngine
from lodestar.services.embedding.settings import bundled_model_path

LONG_TEXT = "The lighthouse keeper wrote down the weather every hour. " * 40


def _sentences() -> list[str]:
    """A hundred-odd short sentences of varied length (the json and re modules' docs)."""
    text = " ".join(inspect.getdoc(module) or "" for module in (json, re, inspect, shutil))
    found = [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split()))]
    return [s for s in found if len(s) > 3][:120]


@pytest.fixture(scope="module")
def onnx_engine() -> EmbeddingEngine:
    """The bundled model on ONNX Runtime, from the export cached across test sessions."""
    return EmbeddingEngine.load(bundled_model_path(), backend="onnx")


@pytest.fixture(scope="module")
def torch_engine(onnx_engine: EmbeddingEngine) -> EmbeddingEngine:
    """The same loaded model, on torch's forward pass."""
    return EmbeddingEngine(onnx_engine.model, name=onnx_engine.info.name)


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).mean())


def test_onnx_runtime_gives_torchs_vectors(
    onnx_engine: EmbeddingEngine, torch_engine: EmbeddingEngine
) -> None:
    texts = _sentences()[:64]
    assert len(texts) == 64
    # A batch of short texts; a padded batch with a truncated text; texts alone.
    for batch in (texts, [LONG_TEXT, "x", *texts[:2]]):
        onnx = onnx_engine.embed(batch)
        reference = torch_engine.embed(batch)
        assert _mean_cosine(onnx.vectors, reference.vectors) >= 0.9999
        assert float((onnx.vectors * reference.vectors).sum(axis=1).min()) >= 0.999
        assert onnx.token_counts == reference.token_counts
        assert onnx.truncated == reference.truncated
    alone = np.vstack([onnx_engine.embed([text]).vectors for text in texts[:8]])
    assert _mean_cosine(alone, torch_engine.embed(texts[:8]).vectors) >= 0.9999
    # The raw library's own output.
    expected = onnx_engine.model.encode(texts[:8], normalize_embeddings=True)
    assert _mean_cosine(alone, expected) >= 0.9999


def test_a_second_start_reuses_the_cached_export(
    onnx_engine: EmbeddingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_export(*args: object) -> None:
        raise AssertionError("exported again although the export is cached")

    monkeypatch.setattr(onnx_backend, "_export", no_export)
    cache = onnx_backend.default_cache_dir()
    path = onnx_backend.exported_model(
        onnx_engine.model,
        name=onnx_engine.info.name,
        model_path=bundled_model_path(),
        cache_dir=cache,
    )
    assert path.is_file()
    assert path.parent.parent == cache / "onnx"
    assert path.parent.name.startswith("all-MiniLM-L6-v2-")


def test_the_cache_key_follows_the_model_files(tmp_path: Path) -> None:
    source = Path(bundled_model_path())
    copy = tmp_path / "model"
    shutil.copytree(source, copy, copy_function=lambda src, dst: Path(dst).symlink_to(src))
    same = onnx_backend.export_dir(str(copy), name="m", cache_dir=tmp_path)
    assert same == onnx_backend.export_dir(str(source), name="m", cache_dir=tmp_path)
    config = copy / "config.json"
    text = config.read_text()
    config.unlink()
    config.write_text(text + "\n")
    assert onnx_backend.export_dir(str(copy), name="m", cache_dir=tmp_path) != same


@pytest.mark.parametrize("modes", ["mean", "cls", "max", "mean_sqrt_len_tokens", ("cls", "mean")])
def test_pooling_matches_sentence_transformers(modes: str | tuple[str, ...]) -> None:
    from sentence_transformers.sentence_transformer.modules import Pooling

    generator = np.random.default_rng(7)
    hidden = generator.standard_normal((3, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=np.int64)
    module = Pooling(8, pooling_mode=modes)
    expected = module(
        {"token_embeddings": torch.from_numpy(hidden), "attention_mask": torch.from_numpy(mask)}
    )["sentence_embedding"].numpy()
    got = onnx_backend.pool(hidden, mask, (modes,) if isinstance(modes, str) else modes)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_a_model_with_other_modules_is_refused(engine: EmbeddingEngine) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling

    model = engine.model
    with_dense = SentenceTransformer(modules=[model[0], model[1], Dense(384, 16)], device="cpu")
    with pytest.raises(onnx_backend.UnsupportedModelError, match=r"Dense.*BACKEND=torch"):
        onnx_backend.pooling_modes(with_dense)
    weighted = SentenceTransformer(
        modules=[model[0], Pooling(384, pooling_mode="weightedmean")], device="cpu"
    )
    with pytest.raises(onnx_backend.UnsupportedModelError, match="weightedmean"):
        onnx_backend.pooling_modes(weighted)
    assert onnx_backend.pooling_modes(model) == ("mean",)


def test_the_onnx_backends_refuse_an_accelerator() -> None:
    with pytest.raises(ValueError, match="BACKEND=torch"):
        EmbeddingEngine.load(bundled_model_path(), device="cuda", backend="onnx")


def test_int8_is_close_to_torch_but_not_the_same(torch_engine: EmbeddingEngine) -> None:
    pytest.importorskip("onnx", reason="onnxruntime's quantizer needs the onnx package")
    int8 = EmbeddingEngine.load(bundled_model_path(), backend="onnx-int8")
    texts = _sentences()[:40]
    got, reference = int8.embed(texts).vectors, torch_engine.embed(texts).vectors
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = _mean_cosine(got, reference)
    assert 0.8 < cosine < 0.9999
