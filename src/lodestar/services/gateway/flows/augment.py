"""What retrieval and feedback gather for one generation, and the stage that
turns it into the prompt the model sees.

Retrieval (``context``) and feedback (``use_feedback``) stages only collect:
passages and examples go into the request's ``Augmentation``. The compose stage,
which runs after them, fits what was collected into the model's context (see
``budget``), rewrites the inference request, and fills the response's
``sources``, ``context`` and ``feedback`` fields.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from lodestar.auth.permissions import Permission
from lodestar.runtime.errors import InvalidArgument
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.flows import citations, prompting
from lodestar.services.gateway.flows.budget import fit_into_request
from lodestar.services.gateway.flows.prompting import Example, Passage, Turn
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.pipeline import Generation
from lodestar.services.gateway.schemas.inference import ContextOptions, GenerateRequest

_STATE_KEY = "flows_augmentation"
# Characters of a question embedded for retrieval: far more than an embedding
# model reads, and far fewer than the embedding service accepts.
QUESTION_MAX_CHARS: Final = 2000


@dataclass
class Augmentation:
    question: str
    vector: list[float] | None = None
    # Retrieval: set when the request has ``context``.
    context: ContextOptions | None = None
    passages: list[Passage] = field(default_factory=list)
    retrieved: int = 0
    # Feedback: set when the request has ``use_feedback``.
    feedback_collection: str | None = None
    examples: list[Example] = field(default_factory=list)
    timing_ms: dict[str, float] = field(default_factory=dict)


def augmentation_of(generation: Generation) -> Augmentation | None:
    found: Augmentation | None = getattr(generation.call.request.state, _STATE_KEY, None)
    return found


def augmentation(generation: Generation) -> Augmentation:
    """This generation's augmentation, made on first use from the request as
    the caller sent it."""
    found = augmentation_of(generation)
    if found is None:
        found = Augmentation(prompting.question_of(generation.request))
        setattr(generation.call.request.state, _STATE_KEY, found)
    return found


def _elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


async def question_vector(
    call: Call, augmented: Augmentation, runtime: FlowsRuntime
) -> list[float]:
    """The question's embedding, computed once per generation."""
    if augmented.vector is None:
        question = augmented.question.strip()
        if not question:
            raise InvalidArgument(
                "context and use_feedback need a question: a prompt or a user message with text",
                field="messages",
                reason="EMPTY_QUESTION",
            )
        start = time.perf_counter()
        vectors = await call.backends.embedding.embed([question[:QUESTION_MAX_CHARS]], call.options)
        augmented.vector = vectors[0]
        augmented.timing_ms["embed"] = _elapsed_ms(start)
    return augmented.vector


def _source(
    passage: Passage, citation: int, runtime: FlowsRuntime, text_key: str
) -> dict[str, Any]:
    chars = runtime.settings.source_excerpt_chars
    out: dict[str, Any] = {
        "id": passage.id,
        "score": passage.score,
        "citation": citation,
        "excerpt": prompting.excerpt(passage.text, chars),
        "payload": prompting.payload_excerpt(passage.payload, skip=text_key, chars=chars),
        **citations.document_fields(passage.payload),
    }
    if passage.truncated:
        out["truncated"] = True
    return out


class ComposeStage:
    """Always runs (after retrieval and feedback); does nothing for a plain
    generation."""

    option = "compose"

    def __init__(self, runtime: FlowsRuntime) -> None:
        self._runtime = runtime

    def permissions(self, body: GenerateRequest) -> Iterable[Permission]:
        return ()

    async def before(self, generation: Generation) -> None:
        augmented = augmentation_of(generation)
        if augmented is None:
            return
        start = time.perf_counter()
        call = generation.call
        request = generation.request
        info = await self._runtime.inference_info(call)
        settings = self._runtime.settings
        pieces: list[Passage | Example] = [
            p.cut(settings.passage_max_chars) if p.size > settings.passage_max_chars else p
            for p in augmented.passages
        ]
        pieces.extend(
            e.cut(settings.example_max_chars) if e.size > settings.example_max_chars else e
            for e in augmented.examples
        )
        context_requested = augmented.context is not None
        raw_prompt = bool(request.prompt) and not info.has_chat_template
        original = prompting.turns_of(request)

        def split(chosen: Sequence[Passage | Example]) -> tuple[list[Passage], list[Example]]:
            return (
                [p for p in chosen if isinstance(p, Passage)],
                [p for p in chosen if isinstance(p, Example)],
            )

        def render(chosen: Sequence[Passage | Example]) -> str | list[Turn]:
            passages, examples = split(chosen)
            if raw_prompt:
                return prompting.compose_prompt(
                    request.prompt, passages, examples, context_requested=context_requested
                )
            return prompting.compose_turns(
                original, passages, examples, context_requested=context_requested
            )

        fitted, room = await fit_into_request(call, self._runtime, request, pieces, render)
        augmented.timing_ms["prompt"] = _elapsed_ms(start)
        used_passages, used_examples = split(fitted.pieces)
        budget = {
            "prompt_tokens": fitted.prompt_tokens,
            "max_tokens": room.max_tokens,
            "context_size": room.context_size,
        }
        if augmented.context is not None:
            self._describe_context(generation, augmented, used_passages, budget)
        if augmented.feedback_collection is not None:
            generation.extra["feedback"] = {
                "collection": augmented.feedback_collection,
                "found": len(augmented.examples),
                "examples": [
                    {"id": e.id, "similarity": e.similarity, "score": e.feedback_score}
                    for e in used_examples
                ],
            }

    def _describe_context(
        self,
        generation: Generation,
        augmented: Augmentation,
        used: list[Passage],
        budget: dict[str, int],
    ) -> None:
        assert augmented.context is not None
        text_key = generation.call.settings.store_text_key
        generation.sources = [
            _source(passage, number, self._runtime, text_key)
            for number, passage in enumerate(used, start=1)
        ]
        generation.text_filter = citations.MarkerFilter(len(used))
        context: dict[str, Any] = {
            "collection": augmented.context.collection,
            "found": bool(augmented.passages),
            "retrieved": augmented.retrieved,
            "used": len(used),
            **budget,
            "timing_ms": dict(augmented.timing_ms),
        }
        if not augmented.passages:
            threshold = augmented.context.score_threshold
            above = f" scored above {threshold}" if threshold is not None else " matched"
            context["message"] = (
                f"no passage in collection {augmented.context.collection!r}{above}; "
                "the answer is not grounded in any source"
            )
        elif not used:
            context["message"] = (
                f"{len(augmented.passages)} passages were found but none fits in the "
                f"model's context next to the prompt and max_tokens={budget['max_tokens']}; "
                "lower max_tokens to make room"
            )
        generation.extra["context"] = context

    async def after(self, generation: Generation) -> None:
        if generation.sources is not None:
            generation.text = citations.clean_markers(generation.text, len(generation.sources))
