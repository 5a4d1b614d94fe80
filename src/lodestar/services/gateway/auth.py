"""The durations the ``lodestar token`` command reads; tokens themselves are
made and verified by ``lodestar.auth.tokens``, shared with the gRPC services."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``1h``, ``7d`` or ``250ms``."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 1h or 7d")
    return float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2) or "s"]
