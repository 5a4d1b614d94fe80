"""Citations of a grounded answer: what each source says of its document, and
the answer's ``[n]`` markers kept only where they name a returned source.

The prompt numbers the passages it shows ``[1]``, ``[2]``, ... in the order of
the returned ``sources``; a marker the model makes up (``[7]`` with three
sources, ``[0]``) would send a reader nowhere, so it is removed, whole answers
and streams alike. A stream holds back only text that may still become a
marker (an opening bracket and digits), so tokens flow as before.
"""

from __future__ import annotations

import re
from typing import Any

_MARKER = re.compile(r"\[(\d{1,4})\]")
# A marker that a later delta may complete: "[" followed by digits only, at the end.
_PARTIAL = re.compile(r"\[\d{0,4}$")

# Payload keys of a document chunk (as ``lodestar.documents.model`` writes them).
_DOCUMENT_FIELDS = (
    ("document_id", "document_id"),
    ("title", "title"),
    ("chunk_index", "position"),
    ("page", "page"),
)


def document_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """The source's document id, title, chunk position and page, where its
    payload has them."""
    out: dict[str, Any] = {}
    for key, name in _DOCUMENT_FIELDS:
        value = payload.get(key)
        if value is None or isinstance(value, dict | list):
            continue
        if name in ("position", "page") and isinstance(value, float) and value.is_integer():
            value = int(value)
        out[name] = value
    return out


def clean_markers(text: str, sources: int) -> str:
    """``text`` without ``[n]`` markers that name no source (n outside 1..sources)."""

    def keep(match: re.Match[str]) -> str:
        return match.group(0) if 1 <= int(match.group(1)) <= sources else ""

    return _MARKER.sub(keep, text)


class MarkerFilter:
    """``clean_markers`` over a stream of text deltas."""

    def __init__(self, sources: int) -> None:
        self._sources = sources
        self._held = ""

    def feed(self, delta: str) -> str:
        text = self._held + delta
        partial = _PARTIAL.search(text)
        cut = partial.start() if partial else len(text)
        self._held = text[cut:]
        return clean_markers(text[:cut], self._sources)

    def flush(self) -> str:
        held, self._held = self._held, ""
        return clean_markers(held, self._sources)
