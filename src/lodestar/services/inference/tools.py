"""Tool calling: tools and tool calls in the prompt, and the grammar of one call.

A call is written as the JSON object ``{"name": <tool name>, "arguments": {...}}``
(the shape most chat templates use inside their tool-call markers), and the grammar
makes the model write exactly that, with arguments valid for the named tool's JSON
schema. A template that renders tools itself gets them as ``tools``; for one that
does not, the tools and the call format are described in the system message, so that
the model knows what it may call either way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lodestar.runtime.errors import InvalidArgument

MAX_TOOLS = 128
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Plain text instead of a call: anything that does not open a JSON object.
_TEXT_RULES = "root ::= tool-call | plain-text\nplain-text ::= [^{] .*\n"


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call; ``parameters`` is its arguments' JSON schema."""

    name: str
    description: str
    parameters: dict[str, Any]

    def template_entry(self) -> dict[str, Any]:
        """The tool as chat templates (and OpenAI's API) describe it."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


def parse_tool(index: int, name: str, description: str, parameters: str) -> ToolSpec:
    """A tool from its wire form; InvalidArgument naming ``tools[index]`` when unusable."""
    field = f"tools[{index}]"
    if not _TOOL_NAME.match(name):
        raise InvalidArgument(
            f"{field}.name must be 1 to 64 letters, digits, '_' or '-'",
            field=f"{field}.name",
            reason="INVALID_TOOL_NAME",
        )
    schema: Any = {"type": "object"}
    if parameters.strip():
        try:
            schema = json.loads(parameters)
        except json.JSONDecodeError as error:
            raise InvalidArgument(
                f"{field}.parameters is not valid JSON: {error}",
                field=f"{field}.parameters",
                reason="INVALID_JSON_SCHEMA",
            ) from None
        if not isinstance(schema, dict):
            raise InvalidArgument(
                f"{field}.parameters must be a JSON Schema object",
                field=f"{field}.parameters",
                reason="INVALID_JSON_SCHEMA",
            )
    return ToolSpec(name, description, schema)


def check_tools(tools: Sequence[ToolSpec]) -> None:
    if len(tools) > MAX_TOOLS:
        raise InvalidArgument(
            f"tools has {len(tools)} entries; at most {MAX_TOOLS} are allowed",
            field="tools",
            reason="TOO_MANY_TOOLS",
        )
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        if tool.name in seen:
            raise InvalidArgument(
                f"tools[{index}].name {tool.name!r} is used twice",
                field=f"tools[{index}].name",
                reason="DUPLICATE_TOOL",
            )
        seen.add(tool.name)


def call_text(name: str, arguments: str) -> str:
    """A call as the model writes it (for assistant turns of templates without tool support)."""
    try:
        parsed: Any = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        parsed = arguments
    return json.dumps({"name": name, "arguments": parsed}, ensure_ascii=False)


def arguments_value(arguments: str) -> Any:
    """Arguments as templates expect them: the parsed object (text if it is not JSON)."""
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return arguments


def tools_instruction(tools: Sequence[ToolSpec]) -> str:
    """The system-message text describing the tools, for templates that do not render them."""
    lines = [
        "You can call the following tools. To call one, answer with only a JSON object "
        '{"name": <tool name>, "arguments": <arguments object>}.',
        "Tools:",
    ]
    lines.extend(
        json.dumps(tool.template_entry()["function"], ensure_ascii=False) for tool in tools
    )
    return "\n".join(lines)


def with_tools(
    messages: list[dict[str, Any]], tools: Sequence[ToolSpec], *, template_renders_tools: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Messages and the ``tools`` argument for the chat template."""
    if not tools:
        return messages, None
    if template_renders_tools:
        return messages, [tool.template_entry() for tool in tools]
    instruction = tools_instruction(tools)
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0])
        content = first["content"]
        first["content"] = f"{content}\n\n{instruction}" if content else instruction
        return [first, *messages[1:]], None
    return [{"role": "system", "content": instruction}, *messages], None


def call_grammar(
    tools: Sequence[ToolSpec], names: Sequence[str], *, allow_text: bool, field: str
) -> str:
    """GBNF for one call of one of ``names`` (every tool when empty), or plain text too."""
    from llama_cpp import llama_grammar

    if not tools:
        raise InvalidArgument(
            f"{field} needs tools; the request has none", field=field, reason="NO_TOOLS"
        )
    by_name: Mapping[str, ToolSpec] = {tool.name: tool for tool in tools}
    for index, name in enumerate(names):
        if name not in by_name:
            raise InvalidArgument(
                f"{field}.names[{index}] {name!r} is not one of the request's tools",
                field=f"{field}.names[{index}]",
                reason="UNKNOWN_TOOL",
            )
    chosen = [by_name[name] for name in names] if names else list(tools)
    variants = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in chosen
    ]
    schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
    try:
        gbnf: str = llama_grammar.json_schema_to_gbnf(json.dumps(schema), ["name", "arguments"])
    except Exception as error:
        raise InvalidArgument(
            f"the tools' parameters cannot be turned into a grammar: {error}",
            field="tools",
            reason="INVALID_JSON_SCHEMA",
        ) from None
    if not allow_text:
        return gbnf
    renamed = re.sub(r"^root ::=", "tool-call ::=", gbnf, count=1, flags=re.MULTILINE)
    return _TEXT_RULES + renamed
