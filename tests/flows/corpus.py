"""A small corpus that ships with Python: the opening of some standard
library modules' docstrings, one passage each, and questions answered by them."""

from __future__ import annotations

import importlib
import inspect

MODULES = (
    "heapq",
    "csv",
    "statistics",
    "secrets",
    "colorsys",
    "timeit",
    "tempfile",
    "json",
    "sqlite3",
    "uuid",
    "sched",
    "zlib",
    "hmac",
    "ipaddress",
    "gzip",
    "fnmatch",
    "pickle",
    "copy",
)

# question → the module whose docstring answers it
QUESTIONS = {
    "Which module implements a priority queue with heaps?": "heapq",
    "How do I read and write comma separated value files?": "csv",
    "How can I compute averages, variance and standard deviation of data?": "statistics",
    "How do I generate cryptographically strong random tokens for passwords?": "secrets",
}


def passage(module: str, max_chars: int = 400) -> str:
    doc = inspect.getdoc(importlib.import_module(module)) or module
    text = " ".join(doc.split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def points(max_chars: int = 400) -> list[dict[str, object]]:
    """Points for ``POST /api/v1/vectors/insert`` (texts are embedded by the gateway)."""
    return [
        {"text": passage(module, max_chars), "payload": {"source": module}} for module in MODULES
    ]
