"""Splitting documents into overlapping chunks on natural boundaries.

Sizes are counted in **characters** (Unicode code points), not model tokens:
chunk boundaries, and therefore chunk ids, stay the same whichever embedding
model is served, and no tokenizer is needed on the client. The default of 600
characters (80 of overlap) stays within the 256-token window of
all-MiniLM-L6-v2 even for technical text full of code and tables (about three
characters a token; English prose runs nearer four): on the Python language
reference, 97% of chunks fit. Chunks the model had to truncate are counted in
the ingest summary, so a size too large for the model shows.

How a document is cut:

1. Markdown and reStructuredText are first divided into sections at their
   headings (ATX ``#`` and setext headings for Markdown, underlined or
   overlined titles for reStructuredText; headings inside fenced code blocks
   do not count). A chunk never spans two sections, and it carries its
   section's heading path. A heading with no text of its own before the next
   heading is kept together with that next section. Plain text is one section.
2. Within a section, a chunk is cut at the strongest boundary in the second
   half of the size budget: a paragraph break, else a sentence end, else a
   line end, else a space; a run of text without any whitespace is cut hard at
   the size limit (a huge single line never makes a huge chunk).
3. The next chunk starts up to ``overlap`` characters before the previous
   one ended, at the earliest sentence (or paragraph) start in that window,
   else a line start, else a word start; after a hard cut the overlap is
   exactly ``overlap`` characters.

Chunk texts are exact slices of the document after line endings are
normalised to ``\\n`` (offsets refer to that text), so they start and end on
non-whitespace characters and keep code blocks intact.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePath

# Fixed namespace of chunk ids: uuid5(namespace, source + chunk hash).
CHUNK_ID_NAMESPACE = uuid.UUID("5d0c3c4e-6b1e-5c53-9a52-6c6f64657374")

# Bumped whenever the cutting rules change, so that checkpoints made with the
# old rules do not skip files whose chunks would now differ.
CHUNKER_VERSION = 1

DEFAULT_CHUNK_SIZE = 600
DEFAULT_CHUNK_OVERLAP = 80
MIN_CHUNK_SIZE = 20


class TextFormat(StrEnum):
    """How a document's structure is read."""

    PLAIN = "plain"
    MARKDOWN = "markdown"
    RST = "rst"


_FORMAT_BY_SUFFIX = {
    ".md": TextFormat.MARKDOWN,
    ".markdown": TextFormat.MARKDOWN,
    ".mdown": TextFormat.MARKDOWN,
    ".mkd": TextFormat.MARKDOWN,
    ".rst": TextFormat.RST,
    ".rest": TextFormat.RST,
}


def format_for_name(name: str) -> TextFormat:
    """The format a file name implies (plain text unless Markdown or reST)."""
    return _FORMAT_BY_SUFFIX.get(PurePath(name).suffix.lower(), TextFormat.PLAIN)


@dataclass(frozen=True)
class ChunkingOptions:
    """Chunk size and overlap, in characters."""

    size: int = DEFAULT_CHUNK_SIZE
    overlap: int = DEFAULT_CHUNK_OVERLAP

    def __post_init__(self) -> None:
        if self.size < MIN_CHUNK_SIZE:
            raise ValueError(f"chunk size must be at least {MIN_CHUNK_SIZE} characters")
        if self.overlap < 0:
            raise ValueError("chunk overlap cannot be negative")
        if self.overlap * 2 > self.size:
            raise ValueError(
                f"chunk overlap ({self.overlap}) must be at most half the chunk size ({self.size})"
            )

    @property
    def fingerprint(self) -> str:
        """Identifies the cutting rules: equal fingerprints cut a text the same way."""
        return f"chars-v{CHUNKER_VERSION}:{self.size}:{self.overlap}"


@dataclass(frozen=True)
class Chunk:
    """One piece of a document, ``text == document[start:end]``."""

    index: int
    text: str
    start: int
    end: int
    heading_path: tuple[str, ...] = ()
    content_hash: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(self.text.encode("utf-8")).hexdigest()
        object.__setattr__(self, "content_hash", digest)

    @property
    def heading(self) -> str | None:
        """The nearest heading above the chunk, if the document has one."""
        return self.heading_path[-1] if self.heading_path else None


def chunk_id(source: str, content_hash: str, occurrence: int = 0) -> str:
    """The point id of a chunk: UUIDv5 of its source and content hash.

    ``occurrence`` tells apart identical chunks of the same source (the second
    copy is 1, and so on), so a repeated passage is stored once per copy.
    """
    name = f"{source}\x00{content_hash}"
    if occurrence:
        name += f"\x00{occurrence}"
    return str(uuid.uuid5(CHUNK_ID_NAMESPACE, name))


def chunk_ids(source: str, chunks: Sequence[Chunk]) -> list[str]:
    """Ids of a document's chunks, in order (stable across runs)."""
    seen: dict[str, int] = {}
    ids = []
    for chunk in chunks:
        occurrence = seen.get(chunk.content_hash, 0)
        seen[chunk.content_hash] = occurrence + 1
        ids.append(chunk_id(source, chunk.content_hash, occurrence))
    return ids


def normalize_text(text: str) -> str:
    """Line endings to ``\\n`` and no byte-order mark: the text chunks are cut from."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


# --- sections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Heading:
    start: int  # where the heading (its overline or title line) begins
    body: int  # where the text under it begins
    level: int
    title: str


@dataclass(frozen=True)
class _Section:
    start: int
    end: int
    path: tuple[str, ...]


_LINE = re.compile(r"[^\n]*(?:\n|$)")
_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*$")
_RST_ADORNMENT = re.compile(r"([!-/:-@\[-`{-~])\1*$")
_FRONT_MATTER = re.compile(r"---[ \t]*\n.*?\n(?:---|\.\.\.)[ \t]*(?:\n|$)", re.DOTALL)


def _lines(text: str) -> list[tuple[int, str]]:
    """(offset, line without its newline) for every line."""
    lines = []
    for match in _LINE.finditer(text):
        if match.start() == len(text) and match.start() > 0:
            break
        lines.append((match.start(), match.group().rstrip("\n")))
    return lines


def _markdown_headings(text: str, fenced: list[tuple[int, int]]) -> list[_Heading]:
    headings: list[_Heading] = []
    skip_until = 0
    front = _FRONT_MATTER.match(text)
    if front:
        skip_until = front.end()
    lines = _lines(text)
    fence_starts = {start for start, _ in fenced}
    in_fence_until = -1
    for i, (offset, line) in enumerate(lines):
        if offset < skip_until or offset < in_fence_until:
            continue
        if offset in fence_starts:
            in_fence_until = next(end for start, end in fenced if start == offset)
            continue
        atx = _ATX.match(line)
        if atx:
            title = (atx.group(2) or "").strip()
            body = offset + len(line) + 1
            headings.append(_Heading(offset, body, len(atx.group(1)), title))
            continue
        # Setext: one non-blank, unindented title line after a blank line (or
        # the start), underlined with === (level 1) or --- (level 2, 3+ dashes).
        if i + 1 < len(lines) and line.strip() and not line.startswith((" ", "\t")):
            under_offset, under = lines[i + 1]
            setext = _SETEXT.match(under)
            previous_blank = i == 0 or not lines[i - 1][1].strip() or lines[i - 1][0] < skip_until
            if (
                setext
                and previous_blank
                and under_offset >= in_fence_until
                and (setext.group(1)[0] == "=" or len(setext.group(1)) >= 3)
                and not _is_list_or_quote(line)
            ):
                level = 1 if setext.group(1)[0] == "=" else 2
                body = under_offset + len(under) + 1
                headings.append(_Heading(offset, body, level, line.strip()))
    return headings


def _is_list_or_quote(line: str) -> bool:
    stripped = line.lstrip()
    return stripped.startswith((">", "- ", "* ", "+ ", "|")) or bool(
        re.match(r"\d+[.)]\s", stripped)
    )


def _rst_headings(text: str) -> list[_Heading]:
    """Titles underlined (optionally also overlined) with one repeated punctuation
    character; levels follow the order in which adornment styles first appear."""
    lines = _lines(text)
    styles: dict[tuple[str, bool], int] = {}
    headings: list[_Heading] = []
    i = 0
    while i < len(lines):
        offset, line = lines[i]
        title_index = i
        overline = False
        if _RST_ADORNMENT.match(line) and len(line) >= 3 and i + 2 < len(lines):
            # An overline: adornment, title, the same adornment.
            _, title_line = lines[i + 1]
            _, under = lines[i + 2]
            if title_line.strip() and under == line:
                overline = True
                title_index = i + 1
        if overline:
            title = lines[title_index][1].strip()
            under_offset, under = lines[title_index + 1]
        else:
            if (
                not line.strip()
                or line.startswith((" ", "\t"))
                or _RST_ADORNMENT.match(line)
                or i + 1 >= len(lines)
                or (i > 0 and lines[i - 1][1].strip())
            ):
                i += 1
                continue
            under_offset, under = lines[i + 1]
            if not (_RST_ADORNMENT.match(under) and len(under) >= max(len(line.rstrip()), 3)):
                i += 1
                continue
            title = line.strip()
        style = (under[0], overline)
        level = styles.setdefault(style, len(styles) + 1)
        headings.append(_Heading(offset, under_offset + len(under) + 1, level, title))
        i = title_index + 2
    return headings


def _fenced_blocks(text: str) -> list[tuple[int, int]]:
    """(start, end) of every fenced code block in Markdown (an unclosed fence runs to the end)."""
    blocks: list[tuple[int, int]] = []
    opening: tuple[int, str] | None = None
    for offset, line in _lines(text):
        fence = _FENCE.match(line)
        if opening is None:
            if fence:
                opening = (offset, fence.group(1))
        elif (
            fence
            and fence.group(1)[0] == opening[1][0]
            and len(fence.group(1)) >= len(opening[1])
            and not line[fence.end() :].strip()
        ):
            blocks.append((opening[0], offset + len(line)))
            opening = None
    if opening is not None:
        blocks.append((opening[0], len(text)))
    return blocks


def _sections(text: str, fmt: TextFormat, fenced: list[tuple[int, int]]) -> list[_Section]:
    if fmt is TextFormat.MARKDOWN:
        headings = _markdown_headings(text, fenced)
    elif fmt is TextFormat.RST:
        headings = _rst_headings(text)
    else:
        headings = []
    sections: list[_Section] = []
    if not headings or text[: headings[0].start].strip():
        sections.append(_Section(0, headings[0].start if headings else len(text), ()))
    stack: list[_Heading] = []
    pending_start: int | None = None
    for i, heading in enumerate(headings):
        while stack and stack[-1].level >= heading.level:
            stack.pop()
        stack.append(heading)
        end = headings[i + 1].start if i + 1 < len(headings) else len(text)
        start = heading.start if pending_start is None else pending_start
        if not text[heading.body : end].strip() and i + 1 < len(headings):
            # A heading with nothing under it joins the next section.
            pending_start = start
            continue
        pending_start = None
        sections.append(_Section(start, end, tuple(h.title for h in stack if h.title)))
    return sections


# --- boundaries ----------------------------------------------------------------------------

_PARAGRAPH_END = re.compile(r"\S(?=[ \t]*\n[ \t]*\n)")
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]*_]*(?=\s)|[。！？]")
_LINE_END = re.compile(r"\S(?=[ \t]*\n)")
_WORD_END = re.compile(r"\S(?=\s)")
_NON_SPACE = re.compile(r"\S")


class _Boundaries:
    """Positions where a chunk may end, by strength (paragraph > sentence > line > word).

    A position is the offset just after the last character of the chunk.
    """

    def __init__(self, text: str, fenced: list[tuple[int, int]]) -> None:
        paragraphs: list[int] = []
        lines = [m.end() for m in _LINE_END.finditer(text)]
        for m in _PARAGRAPH_END.finditer(text):
            # A blank line inside a fenced code block is only a line break.
            if not _inside(m.end(), fenced):
                paragraphs.append(m.end())
        self.by_strength: list[list[int]] = [
            paragraphs,
            [m.end() for m in _SENTENCE_END.finditer(text)],
            lines,
            [m.end() for m in _WORD_END.finditer(text)],
        ]

    def cut(self, low: int, high: int, floor: int) -> int | None:
        """The best end in (floor, high]: the strongest in [low, high], latest first,
        else the latest of any strength."""
        for positions in self.by_strength:
            i = bisect_right(positions, high) - 1
            if i >= 0 and positions[i] >= low and positions[i] > floor:
                return positions[i]
        best: int | None = None
        for positions in self.by_strength:
            i = bisect_right(positions, high) - 1
            if i >= 0 and positions[i] > floor and (best is None or positions[i] > best):
                best = positions[i]
        return best

    def overlap_start(self, low: int, high: int) -> int | None:
        """The earliest boundary in [low, high): a sentence end or paragraph break
        first, else a line end, else a word end."""
        paragraph, sentence, line, word = self.by_strength
        for tier in ((paragraph, sentence), (line,), (word,)):
            found = [
                p
                for p in (_first_at_least(positions, low) for positions in tier)
                if p is not None and p < high
            ]
            if found:
                return min(found)
        return None


def _first_at_least(positions: list[int], low: int) -> int | None:
    i = bisect_left(positions, low)
    return positions[i] if i < len(positions) else None


def _inside(position: int, blocks: list[tuple[int, int]]) -> bool:
    return any(start <= position < end for start, end in blocks)


def _next_non_space(text: str, position: int, end: int) -> int:
    match = _NON_SPACE.search(text, position, end)
    return match.start() if match else end


def _last_non_space_end(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


# --- chunking ------------------------------------------------------------------------------


def split_text(
    text: str, fmt: TextFormat = TextFormat.PLAIN, options: ChunkingOptions | None = None
) -> list[Chunk]:
    """Cut a (normalised) document into chunks; an empty or blank text has none."""
    options = options or ChunkingOptions()
    fenced = _fenced_blocks(text) if fmt is TextFormat.MARKDOWN else []
    boundaries = _Boundaries(text, fenced)
    chunks: list[Chunk] = []
    for section in _sections(text, fmt, fenced):
        for start, end in _cut_section(text, section.start, section.end, boundaries, options):
            chunks.append(Chunk(len(chunks), text[start:end], start, end, section.path))
    return chunks


def _cut_section(
    text: str, start: int, end: int, boundaries: _Boundaries, options: ChunkingOptions
) -> list[tuple[int, int]]:
    size, overlap = options.size, options.overlap
    end = _last_non_space_end(text, start, end)
    cursor = _next_non_space(text, start, end)
    spans: list[tuple[int, int]] = []
    previous_end = cursor
    while cursor < end:
        limit = cursor + size
        if end <= limit:
            spans.append((cursor, end))
            break
        cut = boundaries.cut(cursor + size // 2, limit, previous_end)
        hard = cut is None
        if cut is None:
            cut = limit
        spans.append((cursor, _last_non_space_end(text, cursor, cut)))
        previous_end = cut
        next_start = _next_non_space(text, cut, end)
        if overlap and cut - cursor > overlap:
            boundary = boundaries.overlap_start(cut - overlap, cut)
            if boundary is not None and boundary > cursor:
                candidate = _next_non_space(text, boundary, end)
                if cursor < candidate < cut:
                    next_start = candidate
            elif hard:
                next_start = cut - overlap
        cursor = next_start
    return spans
