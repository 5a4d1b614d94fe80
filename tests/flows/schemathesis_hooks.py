"""Schemathesis hooks of the contract test (loaded through SCHEMATHESIS_HOOKS).

Generation is the one expensive operation: a schema-valid ``max_tokens`` may ask
for a whole context of tokens, which on a test machine is a minute a request. A
valid ``max_tokens`` is lowered to a few tokens (and an absent one set), so that
every generation route still answers for real; invalid values are sent as
generated, so the schema's range is still checked.
"""

from __future__ import annotations

from typing import Any

import schemathesis

MAX_TOKENS = 4
_GENERATION_PATHS = ("/api/v1/generate", "/v1/chat/completions", "/v1/completions")
_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")


def _cap(body: dict[str, Any]) -> None:
    for field in _TOKEN_FIELDS:
        value = body.get(field)
        if type(value) is int and value > MAX_TOKENS:
            body[field] = MAX_TOKENS
    if "max_completion_tokens" not in body and "max_tokens" not in body:
        body["max_tokens"] = MAX_TOKENS


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    if not case.path.startswith(_GENERATION_PATHS) or not isinstance(case.body, dict):
        return
    _cap(case.body)
    for item in case.body.get("requests") or ():
        if isinstance(item, dict):
            _cap(item)
