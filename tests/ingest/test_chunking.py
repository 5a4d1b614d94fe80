"""Chunking: sizes, overlap, natural boundaries, headings, ids."""

from __future__ import annotations

import random
import re

import pytest

from lodestar.ingest.chunking import (
    Chunk,
    ChunkingOptions,
    TextFormat,
    chunk_id,
    chunk_ids,
    format_for_name,
    normalize_text,
    split_text,
)

WORDS = [
    "vector",
    "index",
    "payload",
    "query",
    "embedding",
    "model",
    "shard",
    "replica",
    "segment",
    "cosine",
    "distance",
    "filter",
    "tenant",
    "snapshot",
    "batch",
    "latency",
    "throughput",
    "gateway",
    "token",
    "stream",
]


def prose(paragraphs: int, seed: int = 7) -> str:
    """Paragraphs of sentences of random words, deterministic."""
    rng = random.Random(seed)
    out = []
    for _ in range(paragraphs):
        sentences = []
        for _ in range(rng.randint(2, 6)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
            sentences.append(" ".join(words).capitalize() + rng.choice(".!?"))
        out.append(" ".join(sentences))
    return "\n\n".join(out)


def check_invariants(text: str, chunks: list[Chunk], options: ChunkingOptions) -> None:
    """Every chunk is a trimmed slice within the budget; overlaps stay within the limit;
    together the chunks cover every non-space character."""
    covered = [False] * len(text)
    for i, chunk in enumerate(chunks):
        assert chunk.index == i
        assert chunk.text == text[chunk.start : chunk.end]
        assert 0 < len(chunk.text) <= options.size
        assert not chunk.text[0].isspace()
        assert not chunk.text[-1].isspace()
        for position in range(chunk.start, chunk.end):
            covered[position] = True
        if i and chunks[i - 1].heading_path == chunk.heading_path:
            previous = chunks[i - 1]
            assert chunk.start > previous.start, "chunks must move forward"
            assert previous.end - chunk.start <= options.overlap
    missing = [i for i, done in enumerate(covered) if not done and not text[i].isspace()]
    assert not missing, f"characters not in any chunk at {missing[:5]}"


def test_short_text_is_one_chunk() -> None:
    chunks = split_text("  Hello, world. \n", TextFormat.PLAIN, ChunkingOptions(100, 10))
    assert [(c.text, c.start, c.end) for c in chunks] == [("Hello, world.", 2, 15)]
    assert chunks[0].heading is None


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t\n", "\ufeff"])
def test_empty_text_has_no_chunks(text: str) -> None:
    assert split_text(normalize_text(text), TextFormat.MARKDOWN) == []


@pytest.mark.parametrize(("size", "overlap"), [(200, 40), (500, 100), (120, 0), (64, 32)])
def test_chunks_are_slices_within_budget_and_cover_the_text(size: int, overlap: int) -> None:
    text = prose(40)
    options = ChunkingOptions(size, overlap)
    chunks = split_text(text, TextFormat.PLAIN, options)
    assert len(chunks) > len(text) // size
    check_invariants(text, chunks, options)


def test_consecutive_chunks_overlap_at_sentence_starts() -> None:
    text = prose(30)
    options = ChunkingOptions(400, 120)
    chunks = split_text(text, TextFormat.PLAIN, options)
    overlaps = [chunks[i - 1].end - chunks[i].start for i in range(1, len(chunks))]
    assert all(0 < overlap <= 120 for overlap in overlaps)
    # The repeated part begins where a sentence (or paragraph) begins.
    sentence_starts = {m.end() for m in re.finditer(r"[.!?]\s+", text)} | {0}
    assert sum(c.start in sentence_starts for c in chunks) >= len(chunks) * 0.8


def test_zero_overlap_makes_disjoint_chunks() -> None:
    chunks = split_text(prose(20), TextFormat.PLAIN, ChunkingOptions(300, 0))
    assert all(chunks[i - 1].end <= chunks[i].start for i in range(1, len(chunks)))


def test_cut_prefers_paragraph_break_then_sentence_end() -> None:
    first = "Alpha beta gamma. " * 10  # 180 characters
    text = first.strip() + "\n\n" + "Delta epsilon zeta. " * 10
    chunks = split_text(text, TextFormat.PLAIN, ChunkingOptions(300, 0))
    # The paragraph break at 179 wins over later sentence ends within the budget.
    assert chunks[0].text == first.strip()
    one_paragraph = "Alpha beta gamma delta. " * 30
    chunks = split_text(one_paragraph.strip(), TextFormat.PLAIN, ChunkingOptions(100, 0))
    assert all(c.text.endswith(".") for c in chunks)


def test_huge_single_line_is_cut_hard_with_exact_overlap() -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(10_000))
    options = ChunkingOptions(1000, 100)
    chunks = split_text(text, TextFormat.PLAIN, options)
    assert [c.start for c in chunks] == [*list(range(0, 9000, 900)), 9000]
    assert chunks[-1].end == len(text)
    assert all(len(c.text) == 1000 for c in chunks[:-1])
    check_invariants(text, chunks, options)


def test_long_line_with_spaces_is_cut_between_words() -> None:
    text = " ".join(f"word{i}" for i in range(3000))  # one line, no sentence ends
    options = ChunkingOptions(500, 50)
    chunks = split_text(text, TextFormat.PLAIN, options)
    check_invariants(text, chunks, options)
    for chunk in chunks:
        assert re.fullmatch(r"word\d+( word\d+)*", chunk.text), chunk.text[:40]


def test_markdown_sections_carry_their_heading_path() -> None:
    text = normalize_text(
        "---\ntitle: Guide\n---\n\nIntro text.\n\n# Guide\n\nWelcome.\n\n"
        "## Install\n\nRun pip.\n\n```sh\n# not a heading\npip install x\n```\n\n"
        "Setup notes\n-----------\n\nMore words.\n\n# Usage #\n\nCall it.\n"
    )
    chunks = split_text(text, TextFormat.MARKDOWN, ChunkingOptions(500, 50))
    by_heading = {c.heading: c for c in chunks}
    assert [c.heading_path for c in chunks] == [
        (),
        ("Guide",),
        ("Guide", "Install"),
        ("Guide", "Setup notes"),
        ("Usage",),
    ]
    assert by_heading[None].text.startswith("---\ntitle: Guide")
    assert "# not a heading" in by_heading["Install"].text  # the fence is kept whole
    assert by_heading["Install"].text.endswith("```")
    assert by_heading["Usage"].text == "# Usage #\n\nCall it."


def test_markdown_blank_line_in_code_fence_is_not_a_paragraph_break() -> None:
    code = "```\n" + "\n\n".join(f"line_{i} = {i}" for i in range(40)) + "\n```"
    text = "# Code\n\n" + code
    chunks = split_text(text, TextFormat.MARKDOWN, ChunkingOptions(200, 0))
    # Cuts still happen (the block is too long) but only at line ends.
    assert len(chunks) > 2
    assert all(c.text.endswith(("```", "Code")) or re.search(r"= \d+$", c.text) for c in chunks)


def test_heading_without_text_joins_the_next_section() -> None:
    text = "# Book\n\n## Chapter\n\nThe chapter text."
    chunks = split_text(text, TextFormat.MARKDOWN, ChunkingOptions(200, 20))
    assert len(chunks) == 1
    assert chunks[0].text == text
    assert chunks[0].heading_path == ("Book", "Chapter")


def test_rst_titles_are_sections_with_levels_by_first_appearance() -> None:
    text = (
        "=====\nGuide\n=====\n\nPreface.\n\nInstall\n-------\n\nRun it.\n\n"
        "Details\n~~~~~~~\n\nFine print.\n\nUsage\n-------\n\nCall it.\n\n"
        "+-----+-----+\n| a   | b   |\n+=====+=====+\n"
    )
    chunks = split_text(text, TextFormat.RST, ChunkingOptions(500, 0))
    assert [c.heading_path for c in chunks] == [
        ("Guide",),
        ("Guide", "Install"),
        ("Guide", "Install", "Details"),
        ("Guide", "Usage"),
    ]
    assert "| a   | b   |" in chunks[-1].text


def test_plain_text_ignores_heading_syntax() -> None:
    chunks = split_text("# not a heading\n\ntext", TextFormat.PLAIN, ChunkingOptions(100, 0))
    assert [c.heading_path for c in chunks] == [()]


def test_line_endings_do_not_change_chunks() -> None:
    text = prose(10)
    unix = split_text(normalize_text(text), TextFormat.PLAIN, ChunkingOptions(200, 40))
    windows = split_text(
        normalize_text("\ufeff" + text.replace("\n", "\r\n")),
        TextFormat.PLAIN,
        ChunkingOptions(200, 40),
    )
    assert [c.text for c in unix] == [c.text for c in windows]


@pytest.mark.parametrize(
    ("size", "overlap", "message"),
    [(10, 0, "at least"), (100, -1, "negative"), (100, 51, "half")],
)
def test_bad_options_are_refused(size: int, overlap: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChunkingOptions(size, overlap)


def test_fingerprint_changes_with_options() -> None:
    assert ChunkingOptions(800, 100).fingerprint == ChunkingOptions(800, 100).fingerprint
    assert ChunkingOptions(800, 100).fingerprint != ChunkingOptions(800, 50).fingerprint


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("README.md", TextFormat.MARKDOWN),
        ("notes.MARKDOWN", TextFormat.MARKDOWN),
        ("index.rst", TextFormat.RST),
        ("a.txt", TextFormat.PLAIN),
        ("Makefile", TextFormat.PLAIN),
    ],
)
def test_format_follows_the_extension(name: str, expected: TextFormat) -> None:
    assert format_for_name(name) is expected


# --- ids -----------------------------------------------------------------------------------


def test_ids_are_stable_uuids_of_source_and_content() -> None:
    chunks = split_text(prose(20), TextFormat.PLAIN, ChunkingOptions(300, 50))
    first = chunk_ids("/docs/a.txt", chunks)
    again = chunk_ids(
        "/docs/a.txt", split_text(prose(20), TextFormat.PLAIN, ChunkingOptions(300, 50))
    )
    assert first == again
    assert len(set(first)) == len(first)
    assert all(re.fullmatch(r"[0-9a-f-]{36}", i) and i[14] == "5" for i in first)
    assert set(first).isdisjoint(chunk_ids("/docs/b.txt", chunks))
    assert first[0] == chunk_id("/docs/a.txt", chunks[0].content_hash)


def test_identical_chunks_of_one_source_get_distinct_ids() -> None:
    paragraph = "The same boilerplate paragraph appears here. " * 3
    text = "\n\n".join([paragraph.strip()] * 3)
    chunks = split_text(text, TextFormat.PLAIN, ChunkingOptions(150, 0))
    assert len({c.content_hash for c in chunks}) == 1
    assert len(set(chunk_ids("src", chunks))) == len(chunks) == 3


def test_editing_one_paragraph_keeps_the_ids_of_the_others() -> None:
    paragraphs = prose(12).split("\n\n")
    options = ChunkingOptions(2000, 0)  # roughly one chunk per few paragraphs
    before = chunk_ids("doc", split_text("\n\n".join(paragraphs), TextFormat.PLAIN, options))
    paragraphs[-1] = "A completely rewritten closing paragraph."
    after = chunk_ids("doc", split_text("\n\n".join(paragraphs), TextFormat.PLAIN, options))
    assert before[:-1] == after[:-1]
    assert before[-1] != after[-1]
