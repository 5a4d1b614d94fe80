"""Settings of the gateway's combined flows, from ``LODESTAR_GATEWAY_*`` variables.

They share the gateway's prefix (the flows run inside the gateway process), in
a class of their own so that the flows can be configured and tested apart.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from lodestar import limits


class FlowsSettings(BaseSettings):
    """Retrieval, memory, feedback, usage recording and the OpenAI-compatible API."""

    model_config = SettingsConfigDict(env_prefix="LODESTAR_GATEWAY_", extra="ignore", frozen=True)

    conversations_collection: str = Field(
        "conversations",
        min_length=1,
        max_length=64,
        description="Collection where store_embedding keeps interactions (created on first "
        "use) and where use_feedback looks for scored ones, unless a request names another.",
    )
    question_max_chars: int = Field(
        2000, ge=16, description="Characters of a question embedded for retrieval."
    )
    source_excerpt_chars: int = Field(
        300, ge=0, description="Characters of each source's text returned with an answer."
    )
    passage_max_chars: int = Field(
        4000,
        ge=64,
        description="Longest passage put into a prompt; longer ones are cut (the token "
        "budget may cut them further).",
    )
    prompt_safety_tokens: int = Field(
        8,
        ge=0,
        description="Tokens kept free between the prompt plus max_tokens and the context size.",
    )
    feedback_min_score: float = Field(
        4.0,
        ge=1,
        le=5,
        description="Feedback score (1-5) from which an interaction is used as an example.",
    )
    feedback_examples: int = Field(
        2, ge=1, le=10, description="Most past interactions used as examples by use_feedback."
    )
    feedback_min_similarity: float = Field(
        0.5,
        ge=-1,
        le=1,
        description="Least similarity between a question and a past interaction for it to "
        "serve as an example.",
    )
    example_max_chars: int = Field(
        1500, ge=64, description="Longest prompt or answer of a past interaction used as example."
    )
    usage_flush_interval_s: float = Field(
        1.0,
        gt=0,
        le=300,
        description="How often recorded usage events are sent to the analytics service.",
    )
    usage_batch_size: int = Field(
        500, ge=1, le=limits.MAX_USAGE_EVENTS, description="Most usage events sent in one call."
    )
    usage_max_pending: int = Field(
        100_000,
        ge=1,
        description="Usage events kept while the analytics service is unreachable; the "
        "oldest are dropped beyond it.",
    )
    usage_excluded_routes: Annotated[tuple[str, ...], NoDecode] = Field(
        ("GET /api/v1/health", "GET /metrics"),
        description="Route templates not counted in usage analytics (probes, scrapes), "
        "comma-separated 'METHOD /path'.",
    )

    @field_validator("usage_excluded_routes", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value
