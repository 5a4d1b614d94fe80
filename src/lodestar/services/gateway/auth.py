"""The gateway's side of bearer tokens: what it takes from the shared verifier
(``lodestar.auth.tokens``, which the gRPC services use too) and the durations the
``lodestar token`` command reads.
"""

from __future__ import annotations

import re

from lodestar.auth.tokens import TokenVerifier, mint_token

__all__ = ["TokenVerifier", "mint_token", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``1h``, ``7d`` or ``250ms``."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 1h or 7d")
    return float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2) or "s"]
