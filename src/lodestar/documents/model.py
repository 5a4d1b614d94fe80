"""What a stored document is: its chunks, and the metadata its first chunk carries.

A document has no record of its own: its metadata (title, format, bytes,
created and updated times) is kept in the payload of its chunk 0, and every
chunk carries the document id and version. A separate record point would need a
vector of the collection's dimension and would come back from every search of
the collection; a companion collection would show in the collection list and
outlive a deleted collection. With the metadata on chunk 0 a list of documents
is a filtered page of points (chunk_index 0), paginated by the vector service
itself, and a document can never exist without its chunks.

A version is committed when its chunk 0 is stored, which is written last: a
version cut off half-way has no chunk 0 and is invisible to the documents API
(and deleted by the next write or delete of the document), while the previous
version stays whole until the new one is committed. Versions are totally
ordered (as strings: creation time, then a random tie-break), and the greatest
committed version is the current one: every writer and reader agrees on it
without talking to the others (see ``pipeline``).
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

# Payload keys of a document's chunks.
DOCUMENT_ID = "document_id"
DOCUMENT_VERSION = "document_version"
TITLE = "title"
SOURCE = "source"
POSITION = "chunk_index"
CHUNK_COUNT = "chunk_count"
PAGE = "page"
# Only on chunk 0: the document's metadata.
DOCUMENT_FORMAT = "document_format"
DOCUMENT_BYTES = "document_bytes"
CREATED_AT = "document_created_at"
UPDATED_AT = "document_updated_at"

# Payload fields worth an index in a collection that holds documents.
PAYLOAD_SCHEMA: dict[str, str] = {
    DOCUMENT_ID: "keyword",
    DOCUMENT_VERSION: "keyword",
    SOURCE: "keyword",
    POSITION: "integer",
}

MAX_DOCUMENT_ID_CHARS = 200
# Letters, digits and . _ : @ + -, starting with a letter or digit, never "..":
# written without lookarounds so that an OpenAPI schema can state it as it is.
DOCUMENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_:@+-]*(?:\.[A-Za-z0-9_:@+-]+)*\.?$"
_ID_PATTERN = re.compile(DOCUMENT_ID_PATTERN)
_NAMESPACE = uuid.UUID("0d6f1c2e-8a4b-5f1e-9c3d-646f63756d65")


def valid_document_id(text: str) -> bool:
    return 0 < len(text) <= MAX_DOCUMENT_ID_CHARS and _ID_PATTERN.fullmatch(text) is not None


def document_id_for(source: str) -> str:
    """A document id derived from its source: the same source names the same
    document, so uploading it again replaces it."""
    return "doc-" + uuid.uuid5(_NAMESPACE, source).hex[:24]


def new_version(after: str = "") -> str:
    """A version id that sorts by creation time (then at random), and after
    ``after`` (the current version), so that a replacement outranks what it
    replaces even where the clocks of two writers disagree."""
    floor = _version_ns(after) + 1 if after else 0
    return f"{max(time.time_ns(), floor):020d}-{uuid.uuid4().hex[:8]}"


def _version_ns(version: str) -> int:
    head = version.partition("-")[0]
    return int(head) if head.isdigit() else 0


def version_time(version: str) -> float:
    """When a version was made, in seconds since the epoch (0 if unknown)."""
    return _version_ns(version) / 1e9


def chunk_point_id(document_id: str, version: str, position: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{document_id}\x00{version}\x00{position}"))


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class DocumentInfo:
    """A committed document, as its chunk 0 describes it."""

    id: str
    version: str
    title: str
    source: str
    format: str
    chunks: int
    bytes: int
    created_at: str
    updated_at: str
    # ready, processing (a job is writing a new version) or failed (the last
    # job failed and nothing was committed since); see the README.
    status: str = "ready"
    job: str = ""
    error: str = ""

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> DocumentInfo:
        return cls(
            id=str(payload.get(DOCUMENT_ID, "")),
            version=str(payload.get(DOCUMENT_VERSION, "")),
            title=str(payload.get(TITLE, "")),
            source=str(payload.get(SOURCE, "")),
            format=str(payload.get(DOCUMENT_FORMAT, "")),
            chunks=int(payload.get(CHUNK_COUNT, 0) or 0),
            bytes=int(payload.get(DOCUMENT_BYTES, 0) or 0),
            created_at=str(payload.get(CREATED_AT, "")),
            updated_at=str(payload.get(UPDATED_AT, "")),
        )

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> DocumentInfo:
        """From the documents API's JSON (``as_dict``)."""
        return cls(**{k: body[k] for k in cls.__dataclass_fields__ if k in body})

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "version": self.version,
            "title": self.title,
            "source": self.source,
            "format": self.format,
            "chunks": self.chunks,
            "bytes": self.bytes,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "status": self.status,
        }
        if self.job:
            out["job"] = self.job
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class StoredChunk:
    id: str
    position: int
    text: str
    page: int | None
    payload: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "position": self.position, "text": self.text}
        if self.page is not None:
            out["page"] = self.page
        heading = self.payload.get("heading")
        if isinstance(heading, str):
            out["heading"] = heading
        return out
