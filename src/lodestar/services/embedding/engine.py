"""The embedding engine: a sentence-transformers model, loaded once, used from any thread.

The engine knows nothing of gRPC or batching; it turns a list of texts into
vectors, token counts and truncation flags in one forward pass. The forward pass
runs on torch or, from the same model exported once, on ONNX Runtime
(``onnx_backend``); tokenization and normalisation are the same for both.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lodestar.services.embedding.settings import Backend, bundled_model_path

_log = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "all-MiniLM-L6-v2"

# Unnormalised sentence vectors (float32, one row a text) from the tokenizer's features.
Forward = Callable[[dict[str, Any]], npt.NDArray[np.float32]]


@dataclass(frozen=True)
class ModelInfo:
    """What a client needs to know about the loaded model."""

    name: str
    dimension: int
    max_sequence_length: int
    similarity: str


@dataclass(frozen=True)
class Embeddings:
    """The result of one forward pass, row i belonging to text i."""

    vectors: npt.NDArray[np.float32]
    token_counts: list[int]
    truncated: list[bool]

    def __len__(self) -> int:
        return len(self.token_counts)


def _default_name(model_path: str) -> str:
    path = Path(model_path).resolve()
    if path == Path(bundled_model_path()).resolve():
        return BUNDLED_MODEL_NAME
    return path.name


class EmbeddingEngine:
    """A sentence-transformers model with token accounting.

    ``embed`` is thread-safe (one call at a time: the model and its Rust
    tokenizer are not meant to be shared between threads). The service calls it
    from a single worker thread; tests may call it directly.
    """

    def __init__(self, model: Any, *, name: str, forward: Forward | None = None) -> None:
        """Serve ``model``; its forward pass is torch's unless ``forward`` replaces it."""
        import torch
        from sentence_transformers.sentence_transformer.modules import Normalize

        self._torch = torch
        self._model = model
        self._lock = threading.Lock()
        self._tokenizer = model.tokenizer
        modules = list(model.children())
        # A trailing Normalize layer is skipped so that normalisation is a
        # per-request choice; it is applied below when asked for.
        if modules and isinstance(modules[-1], Normalize):
            modules = modules[:-1]
        self._modules = modules
        self._forward = forward or self._torch_forward
        max_seq = model.max_seq_length
        dimension = model.get_embedding_dimension()
        if max_seq is None or dimension is None:
            raise ValueError("the model does not report its max sequence length or dimension")
        self.info = ModelInfo(
            name=name,
            dimension=int(dimension),
            max_sequence_length=int(max_seq),
            similarity=str(model.similarity_fn_name or "cosine"),
        )

    @property
    def model(self) -> Any:
        """The underlying ``SentenceTransformer`` (for comparisons with the raw library)."""
        return self._model

    @classmethod
    def load(
        cls,
        model_path: str,
        *,
        device: str = "cpu",
        threads: int | None = None,
        name: str | None = None,
        backend: Backend = "torch",
        cache_dir: Path | None = None,
    ) -> EmbeddingEngine:
        """Load a sentence-transformers model from a local directory (never the hub).

        The onnx backends run on the CPU only, from an export cached in ``cache_dir``
        (``onnx_backend.default_cache_dir()`` when unset).
        """
        if backend != "torch" and device != "cpu":
            raise ValueError(
                f"the {backend} backend runs on the CPU; set LODESTAR_EMBEDDING_BACKEND=torch "
                f"to run on {device}"
            )
        # Read by huggingface_hub at import time: no network lookups, ever.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        if threads is not None:
            torch.set_num_threads(threads)
        transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        model = SentenceTransformer(str(model_path), device=device, local_files_only=True)
        model.eval()
        name = name or _default_name(model_path)
        forward: Forward | None = None
        if backend != "torch":
            from lodestar.services.embedding import onnx_backend

            forward = onnx_backend.load_encoder(
                model,
                name=name,
                model_path=str(model_path),
                cache_dir=cache_dir or onnx_backend.default_cache_dir(),
                precision="int8" if backend == "onnx-int8" else "fp32",
                threads=threads,
            )
        engine = cls(model, name=name, forward=forward)
        # The first forward pass allocates and warms up kernels; pay for it now.
        engine.embed(["warm up"])
        _log.info(
            "loaded %s (dimension %d, max %d tokens) on %s, %s backend, %s threads",
            engine.info.name,
            engine.info.dimension,
            engine.info.max_sequence_length,
            device,
            backend,
            threads or "default",
        )
        return engine

    def embed(self, texts: Sequence[str], *, normalize: bool = True) -> Embeddings:
        """Embed ``texts`` in one forward pass, in order."""
        if not texts:
            empty = np.zeros((0, self.info.dimension), dtype=np.float32)
            return Embeddings(empty, [], [])
        batch = list(texts)
        with self._lock:
            features = self._model.preprocess(batch)
            mask = features.get("attention_mask")
            lengths: list[int] = (
                mask.sum(dim=1).tolist() if mask is not None else self._count_tokens(batch)
            )
            vectors = self._forward(features)
            counts = self._full_counts(batch, lengths)
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            # As torch's normalize: a zero vector stays zero.
            vectors = vectors / np.maximum(norms, 1e-12)
        limit = self.info.max_sequence_length
        return Embeddings(vectors, counts, [count > limit for count in counts])

    def _torch_forward(self, features: dict[str, Any]) -> npt.NDArray[np.float32]:
        torch = self._torch
        with torch.inference_mode():
            for module in self._modules:
                features = module(features)
            array: npt.NDArray[np.float32] = (
                features["sentence_embedding"].to(torch.float32).cpu().numpy()
            )
        return array

    def _full_counts(self, texts: list[str], lengths: list[int]) -> list[int]:
        """Token counts before truncation.

        The padded batch already gives the count of every text that fits; only
        texts that reached the limit are tokenized again, untruncated.
        """
        limit = self.info.max_sequence_length
        long_rows = [i for i, length in enumerate(lengths) if length >= limit]
        if not long_rows:
            return lengths
        full = self._count_tokens([texts[i] for i in long_rows])
        counts = list(lengths)
        for row, count in zip(long_rows, full, strict=True):
            counts[row] = count
        return counts

    def _count_tokens(self, texts: list[str]) -> list[int]:
        encoded = self._tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]
