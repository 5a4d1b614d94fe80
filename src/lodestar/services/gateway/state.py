"""What a request's handling leaves in its ASGI scope for the layers around it.

Routes and dependencies write these keys of ``scope["state"]``; the outer
layers (the gateway middleware, usage accounting) read them once the response
is sent. The keys live here, below both, so that inner code never imports the
middleware.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]

# The rate-limit decision (``ratelimit.Decision``) whose headers go on the response.
STATE_RATE_LIMIT = "lodestar.rate_limit"
# The authenticated subject, for the access log and usage events.
STATE_SUBJECT = "lodestar.subject"
# (prompt tokens, completion tokens) a generating route used, for usage accounting.
STATE_TOKENS = "lodestar.tokens"


def request_state(scope: Scope) -> dict[str, Any]:
    """The request's state mapping (made on first use)."""
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


def set_tokens(scope: Scope, prompt_tokens: int, completion_tokens: int) -> None:
    """Count ``prompt_tokens`` and ``completion_tokens`` for this request."""
    request_state(scope)[STATE_TOKENS] = (prompt_tokens, completion_tokens)
