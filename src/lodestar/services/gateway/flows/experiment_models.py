"""REST models of experiments: named variants of how an answer is made, with
traffic weights, a status and the routes they apply to.

A leaf module (pydantic only), so that the flows' runtime can hold running
experiments without importing the flows that use them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, model_validator
from pydantic.config import JsonDict

from lodestar import limits
from lodestar.services.gateway.schemas.common import Float32, RequestModel, ResponseModel, TopP

ExperimentStatus = Literal["draft", "running", "stopped"]
# The generation routes an experiment can apply to: /api/v1/generate and the
# OpenAI-compatible chat and completion routes.
ExperimentRoute = Literal["generate", "chat", "completions"]
QUESTION_PLACEHOLDER = "{question}"

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]


class Variant(RequestModel):
    """One way of making an answer; options left out keep the request's own."""

    name: Name
    weight: float = Field(1.0, ge=0, le=1_000_000, description="Share of traffic, relative.")
    system_prompt: str | None = Field(
        None,
        max_length=8000,
        description="System message put before the conversation (replacing the caller's).",
    )
    prompt_template: str | None = Field(
        None,
        max_length=8000,
        description="Wraps the question: must contain {question}.",
        # The rule as the schema states it; the validator below words the refusal.
        json_schema_extra={"pattern": r"\{question\}"},
    )
    max_tokens: int | None = Field(None, ge=1, le=limits.MAX_CONTEXT_TOKENS)
    temperature: float | None = Field(None, ge=limits.TEMPERATURE[0], le=limits.TEMPERATURE[1])
    top_p: TopP | None = None
    top_k: int | None = Field(None, ge=0, le=limits.MAX_TOP_K)
    repeat_penalty: float | None = Field(
        None, ge=limits.REPEAT_PENALTY[0], le=limits.REPEAT_PENALTY[1]
    )
    seed: int | None = Field(None, ge=0, lt=2**63)
    limit: int | None = Field(
        None, ge=1, le=50, description="Passages retrieved, for requests with context."
    )
    score_threshold: Float32 | None = Field(
        None, description="Least passage score, for requests with context."
    )
    use_feedback: StrictBool | None = Field(
        None, description="Well-scored interactions as examples."
    )
    memory: StrictBool | None = Field(
        None, description="The caller's personal memory, where served."
    )

    @model_validator(mode="after")
    def _template_has_question(self) -> Variant:
        if self.prompt_template is not None and QUESTION_PLACEHOLDER not in self.prompt_template:
            raise ValueError(f"prompt_template must contain {QUESTION_PLACEHOLDER}")
        return self


# The schema's statement of "at least one variant needs a weight above 0" (a variant
# without one weighs 1). That names are unique is checked below; no schema can say it.
_SOME_WEIGHT: JsonDict = {
    "contains": {
        "anyOf": [
            {"not": {"required": ["weight"]}},
            {"properties": {"weight": {"exclusiveMinimum": 0}}},
        ]
    }
}


class ExperimentIn(RequestModel):
    """``POST /api/v1/experiments`` and ``PUT /api/v1/experiments/{id}``."""

    name: Name
    description: str = Field("", max_length=2000)
    status: ExperimentStatus = "draft"
    routes: Annotated[list[ExperimentRoute], Field(min_length=1)] = Field(
        default_factory=lambda: list[ExperimentRoute](["generate"])
    )
    variants: Annotated[
        list[Variant], Field(min_length=1, max_length=16, json_schema_extra=_SOME_WEIGHT)
    ]

    @model_validator(mode="after")
    def _variants(self) -> ExperimentIn:
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        if not any(variant.weight > 0 for variant in self.variants):
            raise ValueError("at least one variant needs a weight above 0")
        return self


class Experiment(ExperimentIn):
    id: str
    created_at: str
    updated_at: str


class VariantResult(ResponseModel):
    variant: str
    weight: float
    answers: int
    scored: int
    mean_score: float | None
    # The 95% confidence interval of the mean score (None below two scores).
    score_ci95: tuple[float, float] | None
    mean_latency_ms: float | None
    mean_prompt_tokens: float | None
    mean_completion_tokens: float | None
    cached: int
    # Welch's p-value against the best-scored variant (None for it, or too few scores).
    p_value: float | None = None


class ExperimentResults(ResponseModel):
    experiment: str
    name: str
    status: ExperimentStatus
    variants: list[VariantResult]
    # Set only when the best variant's mean score beats every other significantly.
    winner: str | None
    significance_level: float
