"""The ONNX Runtime backend: the model's transformer exported once with ``torch.onnx``.

Only the transformer is exported; the pooling (and the normalisation, which the
engine applies per request) are reproduced here in NumPy from the modules the
``SentenceTransformer`` actually has. A model with any other module (Dense,
LayerNorm, ...) is refused with an error that names it, rather than served with
vectors that differ from torch's.

The export is cached under ``cache_dir`` in a folder named by the model's name, a
fingerprint of its files, the exporter's version and the export options, so that a
restart (or another process) loads it in a fraction of a second, and a changed
model or option never reuses a stale file. An export is checked against torch
before it is cached, and written atomically (to a temporary file, then renamed),
so that processes starting together at worst export twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

_log = logging.getLogger(__name__)

Precision = Literal["fp32", "int8"]

# Bump when what is exported changes (wrapper, inputs, outputs), so old files are not reused.
_EXPORT_FORMAT = 1
_OPSET = 17
_OUTPUT = "token_embeddings"
_SUPPORTED_POOLING = ("mean", "cls", "max", "mean_sqrt_len_tokens")
# An export whose vectors differ more from torch's is discarded, never cached.
_MIN_EXPORT_COSINE = 0.9999


class UnsupportedModelError(ValueError):
    """The model has a module the ONNX backend cannot reproduce."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lodestar/embedding``, else ``~/.cache/lodestar/embedding``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lodestar" / "embedding"


def pooling_modes(model: Any) -> tuple[str, ...]:
    """The pooling modes of a Transformer → Pooling [→ Normalize] model, in output order.

    Raises UnsupportedModelError for any other layout.
    """
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    modules = list(model.children())
    if modules and isinstance(modules[-1], Normalize):
        modules = modules[:-1]
    kinds = " → ".join(type(module).__name__ for module in modules)
    if (
        len(modules) != 2
        or not isinstance(modules[0], Transformer)
        or not isinstance(modules[1], Pooling)
    ):
        raise UnsupportedModelError(
            f"the onnx backend serves Transformer → Pooling [→ Normalize] models; this one is "
            f"{kinds}: set LODESTAR_EMBEDDING_BACKEND=torch"
        )
    transformer, pooling = modules
    text = transformer.modality_config.get("text", {})
    if (
        set(transformer.modality_config) != {"text"}
        or text.get("method") != "forward"
        or text.get("method_output_name") != "last_hidden_state"
    ):
        raise UnsupportedModelError(
            f"the onnx backend exports a text model's last hidden state; this transformer's "
            f"modalities are {transformer.modality_config}: set LODESTAR_EMBEDDING_BACKEND=torch"
        )
    mode = pooling.pooling_mode
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    unsupported = [m for m in modes if m not in _SUPPORTED_POOLING]
    if unsupported:
        raise UnsupportedModelError(
            f"the onnx backend pools with {', '.join(_SUPPORTED_POOLING)}; this model pools with "
            f"{', '.join(unsupported)}: set LODESTAR_EMBEDDING_BACKEND=torch"
        )
    return modes


def pool(
    hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64], modes: Sequence[str]
) -> npt.NDArray[np.float32]:
    """Sentence vectors from token vectors, as sentence-transformers' Pooling computes them."""
    weights = mask[..., None].astype(np.float32)
    parts: list[npt.NDArray[np.float32]] = []
    for mode in modes:
        if mode == "cls":
            first = mask.argmax(axis=1)
            parts.append(hidden[np.arange(hidden.shape[0]), first])
        elif mode == "max":
            parts.append(np.where(weights > 0, hidden, -np.inf).max(axis=1))
        else:  # mean, mean_sqrt_len_tokens
            total = (hidden * weights).sum(axis=1)
            count = np.maximum(weights.sum(axis=1), 1e-9)
            parts.append(total / (count if mode == "mean" else np.sqrt(count)))
    pooled = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    return pooled.astype(np.float32, copy=False)


class OnnxEncoder:
    """Unnormalised sentence vectors from tokenized features, by ONNX Runtime.

    Not thread-safe by contract (the engine calls it under its lock), although an
    ONNX Runtime session itself is.
    """

    def __init__(self, session: Any, modes: tuple[str, ...], path: Path) -> None:
        self._session = session
        self._inputs = [node.name for node in session.get_inputs()]
        self._modes = modes
        self.path = path

    def __call__(self, features: Mapping[str, Any]) -> npt.NDArray[np.float32]:
        feeds = {name: _int64(features[name]) for name in self._inputs}
        (hidden,) = self._session.run([_OUTPUT], feeds)
        return pool(hidden, feeds["attention_mask"], self._modes)


def load_encoder(
    model: Any,
    *,
    name: str,
    model_path: str,
    cache_dir: Path,
    precision: Precision = "fp32",
    threads: int | None = None,
) -> OnnxEncoder:
    """The ONNX encoder of ``model`` (a SentenceTransformer), exporting it on first use."""
    import onnxruntime as ort

    modes = pooling_modes(model)
    path = exported_model(model, name=name, model_path=model_path, cache_dir=cache_dir)
    if precision == "int8":
        path = _quantized(path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return OnnxEncoder(session, modes, path)


def export_dir(model_path: str, *, name: str, cache_dir: Path) -> Path:
    """Where the exports of this model, with this exporter and these options, are cached."""
    import torch
    import transformers

    digest = hashlib.sha256()
    key = {
        "format": _EXPORT_FORMAT,
        "opset": _OPSET,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    digest.update(json.dumps(key, sort_keys=True).encode())
    root = Path(model_path).resolve()
    # The model's version: every file's path, size and modification time.
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "model"
    return cache_dir / "onnx" / f"{safe}-{digest.hexdigest()[:16]}"


def exported_model(model: Any, *, name: str, model_path: str, cache_dir: Path) -> Path:
    """The fp32 ONNX file of ``model``'s transformer: the cached one, else a new export."""
    folder = export_dir(model_path, name=name, cache_dir=cache_dir)
    path = folder / "model.onnx"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    _log.info("exporting %s to ONNX in %s (once; later starts reuse it)", name, folder)
    with _temporary(folder) as scratch:
        _export(model, scratch)
        _check_export(model, scratch)
        os.replace(scratch, path)
    return path


def _quantized(source: Path) -> Path:
    """The dynamically quantized (int8 weights) copy of ``source``, made once."""
    path = source.with_name("model-int8.onnx")
    if path.is_file():
        return path
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as error:  # onnxruntime's quantizer needs the onnx package
        raise RuntimeError(
            "the onnx-int8 backend needs the onnx package (pip install onnx)"
        ) from error
    with _temporary(source.parent) as scratch:
        quantize_dynamic(source, scratch, weight_type=QuantType.QInt8)
        os.replace(scratch, path)
    return path


@contextlib.contextmanager
def _temporary(folder: Path) -> Iterator[Path]:
    """A fresh file name in ``folder``, removed on exit unless it was renamed away."""
    handle, name = tempfile.mkstemp(prefix=".export-", suffix=".onnx", dir=folder)
    os.close(handle)
    path = Path(name)
    path.chmod(0o644)  # readable like any other cached file, not mkstemp's owner-only
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _sample_features(model: Any) -> dict[str, Any]:
    # Two texts of different lengths, so that the traced graph sees padding.
    return dict(model.preprocess(["A short text.", "A somewhat longer text, with padding after."]))


def _export(model: Any, path: Path) -> None:
    import torch

    transformer = model[0]
    features = _sample_features(model)
    names = [key for key in model.tokenizer.model_input_names if key in features]
    if "attention_mask" not in names:
        raise UnsupportedModelError(
            "the onnx backend needs a tokenizer that returns an attention mask: set "
            "LODESTAR_EMBEDDING_BACKEND=torch"
        )

    class _LastHiddenState(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            output = self.inner(**dict(zip(names, inputs, strict=True)))
            hidden: torch.Tensor = output.last_hidden_state
            return hidden

    axes = {key: {0: "batch", 1: "sequence"} for key in [*names, _OUTPUT]}
    try:
        import onnx  # noqa: F401  (torch's exporter writes the file with it)
    except ImportError as error:
        raise RuntimeError(
            "exporting the model for the onnx backend needs the onnx package (pip install "
            "onnx), or set LODESTAR_EMBEDDING_BACKEND=torch"
        ) from error
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # The TorchScript exporter announces its own deprecation and warns about traced
        # branches; the export is compared with torch's output before it is kept.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LastHiddenState(transformer.auto_model).eval(),
            tuple(features[key] for key in names),
            str(path),
            input_names=names,
            output_names=[_OUTPUT],
            dynamic_axes=axes,
            opset_version=_OPSET,
            dynamo=False,
        )


def _check_export(model: Any, path: Path) -> None:
    """Refuse an export whose vectors are not torch's (a branch the tracer fixed wrongly)."""
    import onnxruntime as ort
    import torch

    modes = pooling_modes(model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    encoder = OnnxEncoder(session, modes, path)
    texts = ["One.", "A longer sentence than the first, and padded batches.", "Three words here"]
    for batch in (texts, texts[:1]):
        features = model.preprocess(batch)
        got = encoder(features)
        with torch.inference_mode():
            out = model[1](model[0](dict(features)))["sentence_embedding"].float().numpy()
        cosine = (got * out).sum(axis=1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(out, axis=1)
        )
        if float(cosine.min()) < _MIN_EXPORT_COSINE:
            raise RuntimeError(
                f"the ONNX export differs from torch (cosine {float(cosine.min()):.6f}); "
                "set LODESTAR_EMBEDDING_BACKEND=torch"
            )


def _int64(value: Any) -> npt.NDArray[np.int64]:
    array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    return np.ascontiguousarray(array, dtype=np.int64)
