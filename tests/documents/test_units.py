"""Document formats, chunk planning and citation markers, without services."""

from __future__ import annotations

import re
import time

import pytest
from fpdf import FPDF

from lodestar.documents import model
from lodestar.documents.formats import (
    DocumentFormat,
    DocumentFormatError,
    detect_format,
    parse_document,
)
from lodestar.documents.pipeline import DocumentInput, EmptyDocument, plan_chunks
from lodestar.ingest.chunking import ChunkingOptions
from lodestar.services.gateway.flows.citations import MarkerFilter, clean_markers, document_fields


def test_formats_are_told_by_name_media_type_or_magic() -> None:
    assert detect_format("a.md", None, b"") is DocumentFormat.MARKDOWN
    assert detect_format("", "text/html; charset=utf-8", b"") is DocumentFormat.HTML
    assert detect_format("upload", None, b"%PDF-1.7") is DocumentFormat.PDF
    assert detect_format("a.bin", None, b"", "text") is DocumentFormat.TEXT
    with pytest.raises(DocumentFormatError) as error:
        detect_format("a.docx", "application/octet-stream", b"PK")
    assert error.value.reason == "UNSUPPORTED_FORMAT"


def test_html_keeps_headings_and_drops_scripts() -> None:
    page = (
        b"<html><head><title>Tides</title><script>var x = 1;</script></head><body>"
        b"<h1>High water</h1><p>Twice a day.</p><h2>Springs</h2><p>At new moon.</p></body></html>"
    )
    parsed = parse_document(page, DocumentFormat.HTML)
    assert parsed.title == "Tides"
    assert "var x" not in parsed.text
    assert "# High water" in parsed.text
    assert "## Springs" in parsed.text
    chunks = plan_chunks(DocumentInput("d", "s", "t", parsed, len(page)), ChunkingOptions())
    assert chunks[-1].heading_path == ("High water", "Springs")


def test_pdf_pages_are_chunked_apart() -> None:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in ("First page text.", "Second page text."):
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    data = bytes(pdf.output())
    parsed = parse_document(data, DocumentFormat.PDF)
    chunks = plan_chunks(DocumentInput("d", "s", "t", parsed, len(data)), ChunkingOptions())
    assert [c.text for c in chunks] == ["First page text.", "Second page text."]
    assert [parsed.page_at(c.start) for c in chunks] == [1, 2]
    assert all(parsed.text[c.start : c.end] == c.text for c in chunks)


def test_empty_and_broken_input_is_refused() -> None:
    parsed = parse_document(b"  \n ", DocumentFormat.TEXT)
    with pytest.raises(EmptyDocument):
        plan_chunks(DocumentInput("d", "s", "t", parsed, 4), ChunkingOptions())
    with pytest.raises(DocumentFormatError) as error:
        parse_document(b"%PDF-1.4 nothing", DocumentFormat.PDF)
    assert error.value.reason == "BAD_PDF"
    with pytest.raises(DocumentFormatError):
        parse_document(b"\xff\xfe\xfa", DocumentFormat.TEXT)


def test_document_ids_and_versions() -> None:
    assert model.document_id_for("a.md") == model.document_id_for("a.md")
    assert model.document_id_for("a.md") != model.document_id_for("b.md")
    assert model.valid_document_id("guide-1.2@v3")
    assert not model.valid_document_id("../etc")
    assert not model.valid_document_id("a/b")
    assert not model.valid_document_id("")
    assert not model.valid_document_id("a..b")
    assert model.valid_document_id("a.b.")
    # The schemas state the rule as this pattern: it is the whole rule (with the length).
    assert re.fullmatch(model.DOCUMENT_ID_PATTERN, "a.b:c@d+e-f_g")
    assert not re.fullmatch(model.DOCUMENT_ID_PATTERN, "a..b")
    assert not re.fullmatch(model.DOCUMENT_ID_PATTERN, ".a")
    first, second = model.new_version(), model.new_version()
    assert first < second
    # A replacement sorts after the version it replaces, even one from a clock ahead.
    ahead = f"{(int(first.split('-')[0]) + 10**12):020d}-abcdef12"
    assert model.new_version(ahead) > ahead
    assert abs(model.version_time(first) - time.time()) < 60


def test_markers_naming_no_source_are_removed() -> None:
    assert clean_markers("Yes [1], and [2][3] but not [0] or [12].", 2) == (
        "Yes [1], and [2] but not  or ."
    )
    assert clean_markers("a list [x] and [ 1 ] stay", 1) == "a list [x] and [ 1 ] stay"


def test_a_stream_is_cleaned_across_deltas() -> None:
    deltas = ["It runs on lemonade [", "1", "][", "4]", " and [2", "] too [", "x]."]
    cleaner = MarkerFilter(2)
    out = "".join(cleaner.feed(d) for d in deltas) + cleaner.flush()
    assert out == clean_markers("".join(deltas), 2)
    assert out == "It runs on lemonade [1] and [2] too [x]."
    held = MarkerFilter(1)
    assert held.feed("end [3") == "end "
    assert held.flush() == "[3"  # never closed: not a marker


def test_sources_name_their_document() -> None:
    payload = {"document_id": "d", "title": "T", "chunk_index": 3, "page": 2.0, "text": "x"}
    assert document_fields(payload) == {"document_id": "d", "title": "T", "position": 3, "page": 2}
    assert document_fields({"text": "x"}) == {}
