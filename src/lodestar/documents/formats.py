"""Reading an uploaded document into text: plain text, Markdown, HTML and PDF.

Every format ends as one normalised text that the ingest chunker cuts (the one
chunker). HTML becomes Markdown-like text (its headings as ``#`` lines) so that
chunks keep their heading paths; a PDF's pages are joined by blank lines and
their start offsets kept, so that a chunk knows the page it starts on.
"""

from __future__ import annotations

import html
import io
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from enum import StrEnum
from html.parser import HTMLParser
from pathlib import PurePath

from lodestar.ingest.chunking import TextFormat, normalize_text


class DocumentFormat(StrEnum):
    TEXT = "text"
    MARKDOWN = "markdown"
    RST = "rst"
    HTML = "html"
    PDF = "pdf"


_BY_SUFFIX = {
    ".txt": DocumentFormat.TEXT,
    ".text": DocumentFormat.TEXT,
    ".log": DocumentFormat.TEXT,
    ".md": DocumentFormat.MARKDOWN,
    ".markdown": DocumentFormat.MARKDOWN,
    ".mkd": DocumentFormat.MARKDOWN,
    ".rst": DocumentFormat.RST,
    ".rest": DocumentFormat.RST,
    ".html": DocumentFormat.HTML,
    ".htm": DocumentFormat.HTML,
    ".pdf": DocumentFormat.PDF,
}
_BY_MEDIA_TYPE = {
    "text/plain": DocumentFormat.TEXT,
    "text/markdown": DocumentFormat.MARKDOWN,
    "text/x-markdown": DocumentFormat.MARKDOWN,
    "text/html": DocumentFormat.HTML,
    "application/xhtml+xml": DocumentFormat.HTML,
    "application/pdf": DocumentFormat.PDF,
}


class DocumentFormatError(ValueError):
    """The bytes are not a document of a format this module reads."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def detect_format(
    name: str, media_type: str | None, data: bytes, declared: str | None = None
) -> DocumentFormat:
    """The format ``declared``, else the file name's, else the media type's,
    else a PDF by its magic bytes; anything else is refused."""
    if declared:
        try:
            return DocumentFormat(declared.lower())
        except ValueError:
            raise DocumentFormatError(
                f"unknown format {declared!r}; one of: "
                + ", ".join(f.value for f in DocumentFormat),
                "UNSUPPORTED_FORMAT",
            ) from None
    by_name = _BY_SUFFIX.get(PurePath(name).suffix.lower()) if name else None
    if by_name is not None:
        return by_name
    base = (media_type or "").split(";")[0].strip().lower()
    if base in _BY_MEDIA_TYPE:
        return _BY_MEDIA_TYPE[base]
    if data.startswith(b"%PDF-"):
        return DocumentFormat.PDF
    shown = name or base or "the upload"
    raise DocumentFormatError(
        f"cannot tell the format of {shown!r}: send .txt, .md, .html or .pdf, or name the format",
        "UNSUPPORTED_FORMAT",
    )


@dataclass(frozen=True)
class ParsedDocument:
    """A document's text (normalised, what chunks are slices of) and structure."""

    text: str
    format: DocumentFormat
    title: str = ""
    # Offsets in ``text`` where pages 1, 2, ... start (PDF only).
    page_starts: tuple[int, ...] = field(default=())

    @property
    def chunk_format(self) -> TextFormat:
        if self.format in (DocumentFormat.MARKDOWN, DocumentFormat.HTML):
            return TextFormat.MARKDOWN
        if self.format is DocumentFormat.RST:
            return TextFormat.RST
        return TextFormat.PLAIN

    def page_at(self, offset: int) -> int | None:
        """The 1-based page holding ``offset``, for paged documents."""
        if not self.page_starts:
            return None
        return max(1, bisect_right(self.page_starts, offset))


def parse_document(data: bytes, fmt: DocumentFormat, encoding: str = "utf-8") -> ParsedDocument:
    if fmt is DocumentFormat.PDF:
        return _parse_pdf(data)
    try:
        text = normalize_text(data.decode(encoding))
    except UnicodeDecodeError as error:
        raise DocumentFormatError(
            f"the document is not valid {encoding} text ({error.reason} at byte {error.start})",
            "BAD_ENCODING",
        ) from None
    if "\x00" in text:
        raise DocumentFormatError("the document holds NUL bytes: not text", "NOT_TEXT")
    if fmt is DocumentFormat.HTML:
        return _parse_html(text)
    title = _markdown_title(text) if fmt is DocumentFormat.MARKDOWN else ""
    return ParsedDocument(text, fmt, title)


def parse_text(text: str, fmt: DocumentFormat) -> ParsedDocument:
    """A document sent as text (no bytes to decode)."""
    return parse_document(text.encode("utf-8"), fmt)


_MD_TITLE = re.compile(r"^ {0,3}#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def _markdown_title(text: str) -> str:
    found = _MD_TITLE.search(text)
    return found.group(1).strip()[:200] if found else ""


class _HtmlText(HTMLParser):
    """Visible text of an HTML page, headings as Markdown ``#`` lines."""

    _SKIP = frozenset({"script", "style", "noscript", "template", "head"})
    _BLOCK = frozenset(
        {"p", "div", "br", "li", "tr", "section", "article", "pre", "blockquote", "table", "ul"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skipping = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag in self._SKIP:
            self._skipping += 1
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self._BLOCK:
            self.parts.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif (len(tag) == 2 and tag[0] == "h" and tag[1] in "123456") or tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if not self._skipping:
            self.parts.append(re.sub(r"[ \t\n]+", " ", data))


def _parse_html(text: str) -> ParsedDocument:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    body = "".join(parser.parts)
    lines = [line.strip() for line in body.split("\n")]
    joined = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    title = html.unescape(parser.title).strip() or _markdown_title(joined)
    return ParsedDocument(joined, DocumentFormat.HTML, title[:200])


def _parse_pdf(data: bytes) -> ParsedDocument:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [normalize_text(page.extract_text() or "").strip() for page in reader.pages]
        metadata = reader.metadata
        title = str(metadata.title or "") if metadata is not None else ""
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as error:
        raise DocumentFormatError(f"the PDF could not be read: {error}", "BAD_PDF") from None
    starts: list[int] = []
    parts: list[str] = []
    offset = 0
    for page in pages:
        starts.append(offset)
        parts.append(page)
        offset += len(page) + 2
    return ParsedDocument(
        "\n\n".join(parts), DocumentFormat.PDF, title.strip()[:200], tuple(starts)
    )
