"""OpenAI's ``x-ratelimit-*`` response headers, from the gateway's own limits.

``-requests`` describe the subject's request budget for the route's class,
``-tokens`` its generated-token budget; resets are durations (``"12s"``), as
OpenAI writes them. A budget that is not limited sends no headers.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from lodestar.services.gateway.ratelimit import RateLimitDecision
from lodestar.services.gateway.state import STATE_RATE_LIMIT, request_state

# The token-budget decision of a generating route (set by the route, read here).
STATE_TOKEN_LIMIT = "lodestar.openai.token_limit"


def remember_tokens(scope: MutableMapping[str, Any], decision: RateLimitDecision | None) -> None:
    if decision is not None:
        request_state(scope)[STATE_TOKEN_LIMIT] = decision


def _headers(kind: str, decision: RateLimitDecision) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{kind}": str(decision.limit),
        f"x-ratelimit-remaining-{kind}": str(decision.remaining),
        f"x-ratelimit-reset-{kind}": f"{decision.reset_s}s",
    }


def rate_limit_headers(
    scope: MutableMapping[str, Any],
    *,
    refused: RateLimitDecision | None = None,
    refused_tokens: bool = False,
) -> dict[str, str]:
    """The headers for a response; ``refused`` is the decision of a 429."""
    state = request_state(scope)
    requests: RateLimitDecision | None = state.get(STATE_RATE_LIMIT)
    tokens: RateLimitDecision | None = state.get(STATE_TOKEN_LIMIT)
    if refused is not None:
        if refused_tokens:
            tokens = refused
        else:
            requests = refused
    out: dict[str, str] = {}
    if requests is not None:
        out.update(_headers("requests", requests))
    if tokens is not None:
        out.update(_headers("tokens", tokens))
    return out
