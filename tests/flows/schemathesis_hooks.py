"""Schemathesis hooks of the contract test (loaded through SCHEMATHESIS_HOOKS).

A page token in a request body is sent empty, as the query's is (see
``_first_page``), and an experiment's repeated variant names are made unique
(``_unique_variant_names``), as a chat request's tool names are, with a named
``tool_choice`` one of them (``_tools_agree``): facts of a valid request that no
schema can state.

Generation is the one expensive operation: a schema-valid request may ask for a
whole context of tokens from a long prompt, a minute a request on a test
machine. Before a generation request is sent, a valid ``max_tokens`` is lowered
to a few tokens (an absent one set), prompt texts are cut to a few characters
and a batch to a few items: each change keeps a valid request valid and leaves
an invalid value as generated, so every generation route still answers for real
and the schema's ranges are still checked.
"""

from __future__ import annotations

from typing import Any

import schemathesis

from lodestar import limits

MAX_TOKENS = 4
MAX_TEXT = 24
MAX_ITEMS = 2
_GENERATION_PATHS = ("/api/v1/generate", "/v1/chat/completions", "/v1/completions")
_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
_MAX_BATCH = 64  # BatchGenerateRequest.requests: longer is invalid, and sent as it is


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[:MAX_TEXT]
    if isinstance(value, list):
        return [_short(item) for item in value]
    if isinstance(value, dict):
        return {k: _short(v) if k in ("content", "text") else v for k, v in value.items()}
    return value


def _cap(body: dict[str, Any]) -> None:
    for field in _TOKEN_FIELDS:
        value = body.get(field)
        if type(value) is int and MAX_TOKENS < value <= limits.MAX_CONTEXT_TOKENS:
            body[field] = MAX_TOKENS
    if "max_completion_tokens" not in body and "max_tokens" not in body:
        body["max_tokens"] = MAX_TOKENS
    for field in ("prompt", "messages"):
        if field in body:
            body[field] = _short(body[field])


def _first_page(case: Any) -> None:
    """A page token is opaque (AIP-158): only one a previous page returned is valid,
    which no schema can state. As the query's ``page_token`` (``schemathesis.toml``),
    a valid request body's is sent empty, so the lists are tested from their first
    page; an invalid request's is left as generated."""
    negative = case.meta is not None and case.meta.generation.mode.is_negative
    if not negative and isinstance(case.body, dict):
        token = case.body.get("page_token")
        if isinstance(token, str):
            case.body["page_token"] = ""


def _unique_variant_names(case: Any) -> None:
    """An experiment's variants have unique names, which no schema can state (JSON
    Schema's uniqueItems compares whole items): a valid request's repeated names are
    made unique, keeping them valid names."""
    negative = case.meta is not None and case.meta.generation.mode.is_negative
    variants = case.body.get("variants") if isinstance(case.body, dict) else None
    if (
        negative
        or not case.path.startswith("/api/v1/experiments")
        or not isinstance(variants, list)
    ):
        return
    seen: set[str] = set()
    for index, variant in enumerate(variants):
        if isinstance(variant, dict) and isinstance(variant.get("name"), str):
            if variant["name"] in seen:
                variant["name"] = f"{variant['name'][:56]}-{index}"
            seen.add(variant["name"])


def _tools_agree(body: dict[str, Any]) -> None:
    """A chat request's tools have unique names and a named ``tool_choice`` is one of
    them: relations between items that no schema can state. A valid request's are
    made so (repeated names made unique, the choice naming the first tool)."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return
    names: list[str] = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            if function["name"] in names:
                function["name"] = f"{function['name'][:56]}_{index}"
            names.append(function["name"])
    choice = body.get("tool_choice")
    function = choice.get("function") if isinstance(choice, dict) else None
    if names and isinstance(function, dict) and function.get("name") not in names:
        function["name"] = names[0]


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    _first_page(case)
    _unique_variant_names(case)
    negative = case.meta is not None and case.meta.generation.mode.is_negative
    if not negative and case.path == "/v1/chat/completions" and isinstance(case.body, dict):
        _tools_agree(case.body)
    if not case.path.startswith(_GENERATION_PATHS) or not isinstance(case.body, dict):
        return
    _cap(case.body)
    items = case.body.get("requests")
    if isinstance(items, list):
        if len(items) <= _MAX_BATCH:
            del items[MAX_ITEMS:]
        for item in items:
            if isinstance(item, dict):
                _cap(item)
