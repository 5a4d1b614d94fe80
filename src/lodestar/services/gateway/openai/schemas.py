"""Request bodies of the OpenAI-compatible API (the subset Lodestar serves).

Parameters that change nothing here (``user``, ``store: false``, ``metadata``,
``service_tier``, ``parallel_tool_calls``...) are accepted and ignored;
parameters the platform cannot honour are accepted only at their neutral values
(penalties 0, no ``logit_bias``), and anything else is a 400 naming the
parameter (code ``unsupported_value``), so that a request never silently loses
what it asked for.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator
from pydantic_core import PydanticCustomError

from lodestar import limits
from lodestar.services.gateway.schemas.common import TopP, given, none_of, refuse_bool_numbers

_MAX_STOP = 4
# Most choices (``n``) one request may ask for; each is a sequence decoded in parallel.
MAX_CHOICES = 8
# OpenAI's bounds: chat top_logprobs 0..20, the legacy completions logprobs 0..5.
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
_TOOL_NAME = r"^[A-Za-z0-9_-]{1,64}$"


def unsupported(message: str) -> PydanticCustomError:
    """A value Lodestar cannot honour (answered as code ``unsupported_value``)."""
    return PydanticCustomError("unsupported_value", message)


def _only(value: object) -> dict[str, Any]:
    """JSON Schema of a parameter accepted only at its neutral value (or null)."""
    return {"anyOf": [{"const": value}, {"type": "null"}]}


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    _no_bool_numbers = field_validator("*", mode="before")(classmethod(refuse_bool_numbers))


class TextPart(OpenAIModel):
    type: Literal["text"]
    text: str


class FunctionCallIn(OpenAIModel):
    name: str = Field(pattern=_TOOL_NAME)
    arguments: str


class ToolCallIn(OpenAIModel):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCallIn


# The rules of _tool_fields below, as the schema states them: only an assistant
# message calls tools, and a tool message names the call it answers.
_TOOL_FIELDS_SCHEMA: dict[str, Any] = {
    "allOf": [
        {
            "anyOf": [
                {"properties": {"role": {"const": "assistant"}}},
                {"not": given(tool_calls={"type": "array", "minItems": 1})},
            ]
        },
        {"anyOf": [{"not": given(role={"const": "tool"})}, given("tool_call_id")]},
    ]
}


class ChatMessageIn(OpenAIModel):
    model_config = ConfigDict(json_schema_extra=_TOOL_FIELDS_SCHEMA)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    # An empty text is a message that says nothing (answered, as by OpenAI's API); an
    # empty list of parts is refused, as there.
    content: str | Annotated[list[TextPart], Field(min_length=1)] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = Field(None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessageIn:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls is only allowed on assistant messages")
        if self.role == "tool" and not self.tool_call_id:
            raise PydanticCustomError(
                "missing", "a tool message needs the tool_call_id of the call it answers"
            )
        return self

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
    top_p: TopP | None = None
    stop: Stop | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # Lodestar's own: false never answers from the semantic cache, nor stores in it.
    cache: StrictBool = True

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value not in (None, 0):
            raise unsupported("is not supported; send 0 or leave it out")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise unsupported("is not supported")
        return value

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class FunctionIn(OpenAIModel):
    name: str = Field(pattern=_TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ToolIn(OpenAIModel):
    type: Literal["function"]
    function: FunctionIn


class FunctionName(OpenAIModel):
    name: str = Field(pattern=_TOOL_NAME)


class NamedToolChoice(OpenAIModel):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


_CALLS_TOOLS = {
    "allOf": [
        given(tools={"type": "array", "minItems": 1}),
        {"not": given(tool_choice={"const": "none"})},
    ]
}
# The rules of tools.check_chat that a schema can state: top_logprobs needs logprobs,
# tool_choice needs tools, and a request that may call tools asks for no other format.
# (That a named tool_choice is one of the tools, and that their names are unique,
# relate items no schema can compare.)
_CHAT_RULES: dict[str, Any] = {
    "allOf": [
        {"anyOf": [none_of("top_logprobs"), given(logprobs={"const": True})]},
        {
            "anyOf": [
                none_of("tool_choice"),
                given(tool_choice={"const": "none"}),
                given(tools={"type": "array", "minItems": 1}),
            ]
        },
        {
            "not": {
                "allOf": [
                    _CALLS_TOOLS,
                    given(response_format={"properties": {"type": {"not": {"const": "text"}}}}),
                ]
            }
        },
    ]
}
# best_of, if sent, equals n (1 when n is left out): candidates are not ranked here.
_BEST_OF_IS_N: dict[str, Any] = {
    "anyOf": [
        none_of("best_of"),
        {**given(best_of={"const": 1}), "not": given("n")},
        *(given(best_of={"const": k}, n={"const": k}) for k in range(1, MAX_CHOICES + 1)),
    ]
}


class ChatCompletionRequest(SamplingIn):
    model_config = ConfigDict(json_schema_extra=_CHAT_RULES)

    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=1, le=limits.MAX_CONTEXT_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=limits.MAX_CONTEXT_TOKENS)
    response_format: ResponseFormatIn | None = None
    logprobs: StrictBool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: Annotated[list[ToolIn], Field(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    store: StrictBool | None = None
    metadata: dict[str, str] | None = None
    service_tier: Literal["auto", "default", "flex", "priority"] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    modalities: list[Literal["text"]] | None = None

    @field_validator("store")
    @classmethod
    def _not_stored(cls, value: bool | None) -> bool | None:
        if value:
            raise unsupported("is not supported; send false or leave it out")
        return value

    @property
    def calls_tools(self) -> bool:
        """Whether the model may (or must) answer with a tool call."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens else self.max_tokens


class CompletionRequest(SamplingIn):
    model_config = ConfigDict(json_schema_extra=_BEST_OF_IS_N)

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    max_tokens: int | None = Field(16, ge=1, le=limits.MAX_CONTEXT_TOKENS)
    echo: StrictBool | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool | None) -> bool | None:
        if value:
            raise unsupported("is not supported; send false or leave it out")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: object) -> object:
        if value is not None:
            raise unsupported("is not supported")
        return value

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


# A text to embed has something besides whitespace (as OpenAI's API, which refuses an
# empty one); the embedding service words the refusal, naming the input.
_EmbedText = Annotated[str, Field(json_schema_extra={"pattern": r"\S"})]


class EmbeddingRequest(OpenAIModel):
    model: str = Field(min_length=1)
    input: _EmbedText | Annotated[list[_EmbedText], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=limits.MAX_DIMENSION)
    user: str | None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)
