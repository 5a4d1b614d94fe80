"""REST models of text generation."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StrictBool, model_validator

from lodestar import limits
from lodestar.services.gateway.schemas.common import (
    CollectionName,
    Float32,
    RequestModel,
    ResponseModel,
    TopP,
    UInt64,
    exactly_one_of,
    given,
    none_of,
)
from lodestar.services.gateway.schemas.vector import Filter


class ChatRole(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class ChatMessage(RequestModel):
    role: ChatRole
    content: str = Field(min_length=1)


class ResponseFormat(RequestModel):
    """Constrain the output: any JSON object, a JSON Schema, or a GBNF grammar."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "allOf": [
                        {"properties": {"type": {"enum": ["text", "json_object"]}}},
                        none_of("json_schema", "grammar"),
                    ]
                },
                {
                    "allOf": [
                        {"properties": {"type": {"const": "json_schema"}}},
                        given("json_schema"),
                        none_of("grammar"),
                    ]
                },
                {
                    "allOf": [
                        {"properties": {"type": {"const": "grammar"}}},
                        given(grammar={"type": "string", "minLength": 1}),
                        none_of("json_schema"),
                    ]
                },
            ]
        }
    )

    type: Literal["text", "json_object", "json_schema", "grammar"]
    json_schema: dict[str, Any] | None = Field(None, description="For type json_schema.")
    grammar: str | None = Field(None, description="For type grammar (llama.cpp GBNF).")

    @model_validator(mode="after")
    def _consistent(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs json_schema")
        if self.type == "grammar" and not self.grammar:
            raise ValueError("type grammar needs grammar")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError("json_schema is only for type json_schema")
        if self.type != "grammar" and self.grammar is not None:
            raise ValueError("grammar is only for type grammar")
        return self


class GenerateItem(RequestModel):
    """One generation: a raw ``prompt`` or chat ``messages``, and sampling options."""

    model_config = ConfigDict(json_schema_extra=exactly_one_of("prompt", "messages"))

    prompt: str | None = Field(None, min_length=1)
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    max_tokens: int | None = Field(None, ge=1, le=limits.MAX_CONTEXT_TOKENS)
    temperature: float | None = Field(None, ge=limits.TEMPERATURE[0], le=limits.TEMPERATURE[1])
    top_p: TopP | None = None
    top_k: int | None = Field(None, ge=0, le=limits.MAX_TOP_K)
    min_p: float | None = Field(None, ge=limits.MIN_P[0], le=limits.MIN_P[1])
    repeat_penalty: float | None = Field(
        None, ge=limits.REPEAT_PENALTY[0], le=limits.REPEAT_PENALTY[1]
    )
    stop: (
        Annotated[
            list[Annotated[str, Field(min_length=1)]],
            Field(max_length=limits.MAX_STOP_SEQUENCES),
        ]
        | None
    ) = None
    seed: UInt64 | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> GenerateItem:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class ContextOptions(RequestModel):
    """Retrieval-augmented generation: passages to ground the answer in."""

    collection: CollectionName
    limit: int = Field(5, ge=1, le=50)
    score_threshold: Float32 | None = None
    filter: Filter | None = None


class GenerateRequest(GenerateItem):
    """``POST /api/v1/generate``; ``stream: true`` answers with Server-Sent Events."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                exactly_one_of("prompt", "messages"),
                {
                    "anyOf": [
                        none_of("collection"),
                        given(store_embedding={"const": True}),
                        given(use_feedback={"const": True}),
                    ]
                },
                {"anyOf": [none_of("conversation_id"), given("messages")]},
            ]
        }
    )

    stream: StrictBool = False
    store_embedding: StrictBool = Field(
        False, description="Store prompt and answer as a vector; the response has its id."
    )
    collection: CollectionName | None = Field(
        None,
        description="Where store_embedding stores and use_feedback looks (default: conversations).",
    )
    context: ContextOptions | None = Field(
        None, description="Retrieve passages and answer from them, with sources."
    )
    use_feedback: StrictBool = Field(
        False, description="Use well-scored past interactions as examples."
    )
    session_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Conversation the interaction belongs to (stored with store_embedding).",
    )
    conversation_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Keep this exchange as a turn of the caller's own conversation (a new id "
        "starts one); the model sees the earlier turns, oldest dropped when they do not fit. "
        "Send only the new messages.",
    )
    memory: StrictBool = Field(
        False,
        description="Recall the caller's own relevant past interactions into the context, "
        "and remember this one.",
    )
    cache: StrictBool = Field(
        True, description="false: never answer from the semantic cache, nor store in it."
    )

    @model_validator(mode="after")
    def _collection_needs_store(self) -> GenerateRequest:
        if self.collection is not None and not (self.store_embedding or self.use_feedback):
            raise ValueError(
                "collection is where store_embedding stores and use_feedback looks; "
                "set store_embedding or use_feedback"
            )
        if self.conversation_id is not None and self.messages is None:
            raise ValueError("conversation_id needs messages (the new turn), not prompt")
        return self


class Usage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # Of the prompt tokens, those the inference service took from its prompt cache.
    cached_prompt_tokens: int = 0


class Timing(ResponseModel):
    time_to_first_token_ms: float
    total_ms: float
    queue_ms: float


FinishReason = Literal["stop", "length", "cancelled", "unspecified"]


class GenerateResponse(ResponseModel):
    text: str
    finish_reason: FinishReason
    usage: Usage
    model: str
    timing: Timing | None = None


class ItemError(ResponseModel):
    code: str
    message: str
    reason: str
    status: int


class BatchItemResult(ResponseModel):
    response: GenerateResponse | None = None
    error: ItemError | None = None


class BatchGenerateRequest(RequestModel):
    requests: Annotated[list[GenerateItem], Field(min_length=1, max_length=64)]


class BatchGenerateResponse(ResponseModel):
    results: list[BatchItemResult]
