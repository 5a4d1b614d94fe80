"""Settings of the gateway's combined flows, from ``LODESTAR_GATEWAY_*`` variables.

They share the gateway's prefix (the flows run inside the gateway process), in
a class of their own so that the flows can be configured and tested apart.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class FlowsSettings(BaseSettings):
    """Retrieval, memory, feedback, usage recording and the OpenAI-compatible API."""

    model_config = SettingsConfigDict(env_prefix="LODESTAR_GATEWAY_", extra="ignore", frozen=True)

    conversations_collection: str = Field(
        "conversations",
        min_length=1,
        max_length=64,
        description="Collection where conversations, memory and store_embedding keep "
        "interactions (created on first use) and where use_feedback looks for scored ones, "
        "unless a request names another; it is reserved to those flows (raw routes on it need "
        "AdministerSystem), so change it if a collection of yours already has this name.",
    )
    source_excerpt_chars: int = Field(
        300,
        ge=0,
        description="Characters of each source's text returned with an answer; raise it "
        "for clients that show sources at length, 0 returns none.",
    )
    passage_max_chars: int = Field(
        4000,
        ge=64,
        description="Longest passage put into a prompt; longer ones are cut (the token "
        "budget may cut them further). Raise it for a model with a context large enough "
        "for longer passages, lower it so that more passages fit a small one.",
    )
    feedback_min_score: float = Field(
        4.0,
        ge=1,
        le=5,
        description="Feedback score (1-5) from which an interaction is used as an example; "
        "lower it while few interactions have been scored.",
    )
    feedback_examples: int = Field(
        2,
        ge=1,
        le=10,
        description="Most past interactions used as examples by use_feedback; more steer "
        "the answer more, at the cost of prompt tokens.",
    )
    feedback_min_similarity: float = Field(
        0.5,
        ge=-1,
        le=1,
        description="Least similarity between a question and a past interaction for it to "
        "serve as an example; the scale depends on the embedding model, so set it anew "
        "with another model, lower for more examples, higher for closer ones.",
    )
    example_max_chars: int = Field(
        1500,
        ge=64,
        description="Longest prompt or answer of a past interaction used as example; like "
        "passage_max_chars, raise it for a model with a larger context.",
    )
    memory_items: int = Field(
        3,
        ge=1,
        le=20,
        description="Most of a subject's own past interactions that memory: true recalls "
        "into a prompt; more recall more, at the cost of prompt tokens.",
    )
    memory_min_similarity: float = Field(
        0.35,
        ge=-1,
        le=1,
        description="Least similarity between a question and a subject's past interaction "
        "for memory: true to recall it; like feedback_min_similarity, its scale depends on "
        "the embedding model.",
    )
    personalize_weight: float = Field(
        0.3,
        ge=0,
        le=1,
        description="How much personalize: true on a search weighs a hit's similarity to the "
        "caller's profile against its similarity to the query (0: not at all, 1: only).",
    )
    semantic_cache: bool = Field(
        False,
        description="Answer /api/v1/generate and the OpenAI chat and completion routes from "
        "the semantic cache when a question meaning the same was answered before with the "
        "same model, options and experiment variant, in the same tenant; a request opts out "
        "with cache: false. Off by default, as a cached answer is not sampled anew.",
    )
    cache_min_similarity: float = Field(
        0.95,
        ge=-1,
        le=1,
        description="Least similarity between a question and a cached one for the cached "
        "answer to be served; lower serves more paraphrases (and more near misses). The "
        "scale depends on the embedding model.",
    )
    cache_ttl_s: float = Field(
        86400.0,
        gt=0,
        description="Seconds a cached answer is served; shorter when the knowledge base "
        "changes outside the gateway's routes (its own updates drop cited answers at once).",
    )
    cache_multi_turn: bool = Field(
        False,
        description="Also cache conversations of several turns (keyed by the earlier turns); "
        "off, only single questions (with an optional system message) are cached.",
    )
    cache_drop_score: float = Field(
        2.0,
        ge=1,
        le=5,
        description="Feedback score (1-5) at or below which a cached answer is dropped and "
        "never served again.",
    )
    cache_collection: str = Field(
        "semantic_cache",
        min_length=1,
        max_length=64,
        description="Collection holding the semantic cache (created on first use); change it "
        "if a collection of yours already has this name.",
    )
    experiments_collection: str = Field(
        "experiments",
        min_length=1,
        max_length=64,
        description="Collection holding experiments and their answers (created on first "
        "use); change it if a collection of yours already has this name.",
    )
    usage_excluded_routes: Annotated[tuple[str, ...], NoDecode] = Field(
        (
            "GET /api/v1/health",
            "GET /metrics",
            "GET /console",
            "GET /docs",
            "GET /redoc",
            "GET /openapi.json",
        ),
        description="Route templates not counted in usage analytics (probes, scrapes, the "
        "console's files and the API docs), "
        "comma-separated 'METHOD /path'; add the routes your own probes call.",
    )

    @field_validator("usage_excluded_routes", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value
