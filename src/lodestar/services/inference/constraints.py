"""Constrained output: a JSON object, a JSON schema or a GBNF grammar, as GBNF text.

The GBNF is compiled by llama.cpp's grammar sampler; JSON schemas are converted with
llama-cpp-python's converter (the same one llama.cpp's server uses, ported to Python).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from lodestar.runtime.errors import InvalidArgument

# ``tool_call``'s source is the GBNF built from the request's tools (``tools.call_grammar``).
ConstraintKind = Literal["json_object", "json_schema", "grammar", "tool_call"]

MAX_CONSTRAINT_CHARS = 100_000


@dataclass(frozen=True)
class OutputConstraint:
    """What the output must match; ``source`` is the schema or grammar text."""

    kind: ConstraintKind
    source: str = ""

    @property
    def field(self) -> str:
        return f"constraint.{self.kind}"


def to_gbnf(constraint: OutputConstraint) -> str:
    """GBNF for a constraint; InvalidArgument naming the field when it is unusable."""
    from llama_cpp import llama_grammar

    field = constraint.field
    if constraint.kind == "json_object":
        return llama_grammar.JSON_GBNF
    if constraint.kind == "tool_call":
        return constraint.source
    source = constraint.source
    if not source.strip():
        raise InvalidArgument(f"{field} is empty", field=field, reason="EMPTY_CONSTRAINT")
    if len(source) > MAX_CONSTRAINT_CHARS:
        raise InvalidArgument(
            f"{field} has {len(source)} characters; the limit is {MAX_CONSTRAINT_CHARS}",
            field=field,
            reason="CONSTRAINT_TOO_LONG",
        )
    if constraint.kind == "grammar":
        return source
    try:
        schema = json.loads(source)
    except json.JSONDecodeError as error:
        raise InvalidArgument(
            f"{field} is not valid JSON: {error}", field=field, reason="INVALID_JSON_SCHEMA"
        ) from None
    if not isinstance(schema, dict | bool):
        raise InvalidArgument(
            f"{field} must be a JSON Schema object, not {type(schema).__name__}",
            field=field,
            reason="INVALID_JSON_SCHEMA",
        )
    try:
        gbnf: str = llama_grammar.json_schema_to_gbnf(json.dumps(schema))
    except Exception as error:
        raise InvalidArgument(
            f"{field} cannot be turned into a grammar: {error or type(error).__name__}",
            field=field,
            reason="INVALID_JSON_SCHEMA",
        ) from None
    return gbnf
