"""Request bodies of the OpenAI-compatible API (the subset Lodestar serves).

Parameters the platform cannot honour are accepted only at their neutral
values (``n: 1``, ``logprobs: false``, penalties 0, no tools), so that a
request never silently loses what it asked for.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from lodestar import limits
from lodestar.services.gateway.schemas.common import refuse_bool_numbers

_MAX_STOP = 4


def _only(value: object) -> dict[str, Any]:
    """JSON Schema of a parameter accepted only at its neutral value (or null)."""
    return {"anyOf": [{"const": value}, {"type": "null"}]}


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    _no_bool_numbers = field_validator("*", mode="before")(classmethod(refuse_bool_numbers))


class TextPart(OpenAIModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JsonSchemaFormat(OpenAIModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormatIn(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormatIn:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs json_schema")
        return self


class StreamOptions(OpenAIModel):
    include_usage: StrictBool = False


Stop = str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=_MAX_STOP)]


class SamplingIn(OpenAIModel):
    """Options shared by chat and text completions."""

    model: str = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=limits.TEMPERATURE[0], le=limits.TEMPERATURE[1])
    top_p: float | None = Field(None, gt=limits.TOP_P[0], le=limits.TOP_P[1])
    stop: Stop | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    # The schema states the one value each of these accepts (the validators below).
    n: int | None = Field(None, json_schema_extra=_only(1))
    presence_penalty: float | None = Field(None, json_schema_extra=_only(0))
    frequency_penalty: float | None = Field(None, json_schema_extra=_only(0))
    logit_bias: dict[str, float] | None = Field(None, json_schema_extra={"maxProperties": 0})
    user: str | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value not in (None, 0):
            raise ValueError("is not supported; send 0 or leave it out")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("is not supported")
        return value

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingIn):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=1, le=limits.MAX_CONTEXT_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=limits.MAX_CONTEXT_TOKENS)
    response_format: ResponseFormatIn | None = None
    logprobs: StrictBool | None = Field(None, json_schema_extra=_only(False))
    tools: list[Any] | None = Field(None, json_schema_extra={"maxItems": 0})
    tool_choice: str | dict[str, Any] | None = Field(None, json_schema_extra=_only("none"))
    parallel_tool_calls: StrictBool | None = None
    store: StrictBool | None = Field(None, json_schema_extra=_only(False))
    metadata: dict[str, str] | None = None

    @field_validator("logprobs", "store")
    @classmethod
    def _not_true(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("is not supported; send false or leave it out")
        return value

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("tool calling is not supported")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if value not in (None, "none"):
            raise ValueError("tool calling is not supported")
        return value

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens else self.max_tokens


class CompletionRequest(SamplingIn):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    max_tokens: int | None = Field(16, ge=1, le=limits.MAX_CONTEXT_TOKENS)
    echo: StrictBool | None = Field(None, json_schema_extra=_only(False))
    logprobs: int | None = Field(None, json_schema_extra={"type": "null"})
    suffix: str | None = Field(None, json_schema_extra={"type": "null"})
    best_of: int | None = Field(None, json_schema_extra=_only(1))

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("is not supported; send false or leave it out")
        return value

    @field_validator("logprobs", "suffix")
    @classmethod
    def _unsupported(cls, value: object) -> object:
        if value is not None:
            raise ValueError("is not supported")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of_one(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only best_of=1 is supported")
        return value

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class EmbeddingRequest(OpenAIModel):
    model: str = Field(min_length=1)
    input: str | Annotated[list[str], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=limits.MAX_DIMENSION)
    user: str | None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)
