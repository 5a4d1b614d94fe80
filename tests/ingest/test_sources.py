"""Finding and reading sources; the checkpoint."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from lodestar.ingest.checkpoint import Checkpoint, checkpoint_scope
from lodestar.ingest.chunking import TextFormat
from lodestar.ingest.sources import Document, SourceError, Unreadable, discover, read_source


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "docs" / "deep").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\ntext")
    (tmp_path / "docs" / "deep" / "b.rst").write_text("B\n=\n\ntext")
    (tmp_path / "docs" / "c.txt").write_text("c")
    (tmp_path / "docs" / "d.markdown").write_text("d")
    (tmp_path / "docs" / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "docs" / ".hidden.md").write_text("hidden")
    (tmp_path / ".git" / "notes.txt").write_text("git internals")
    (tmp_path / "script.py").write_text("print()")
    return tmp_path


def test_directories_are_searched_recursively_for_text_files(tree: Path) -> None:
    refs = discover([str(tree)])
    names = [Path(r.source).relative_to(tree.resolve()).as_posix() for r in refs]
    assert names == ["docs/a.md", "docs/c.txt", "docs/d.markdown", "docs/deep/b.rst"]
    formats = {Path(r.source).name: r.format for r in refs}
    assert formats["a.md"] is TextFormat.MARKDOWN
    assert formats["b.rst"] is TextFormat.RST
    assert formats["c.txt"] is TextFormat.PLAIN


def test_sources_are_absolute_paths_whatever_the_working_directory(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tree / "docs")
    relative = discover(["a.md"])
    assert relative[0].source == (tree / "docs" / "a.md").resolve().as_posix()
    # The same file named twice (directly and through its directory) is ingested once.
    assert len(discover(["a.md", str(tree / "docs" / "a.md")])) == 1


def test_named_files_are_taken_whatever_their_extension(tree: Path) -> None:
    refs = discover([str(tree / "script.py")])
    assert [Path(r.source).name for r in refs] == ["script.py"]


def test_glob_patterns_replace_the_defaults(tree: Path) -> None:
    refs = discover([str(tree)], patterns=["*.rst", "*.png"])
    assert sorted(Path(r.source).name for r in refs) == ["b.rst", "image.png"]


def test_missing_paths_are_named(tree: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.md.*gone"):
        discover([str(tree / "nope.md"), str(tree), str(tree / "gone")])


def test_stdin_once_with_its_name_and_format() -> None:
    [ref] = discover(["-"], stdin_name="notes", stdin_format=TextFormat.MARKDOWN)
    assert (ref.source, ref.path, ref.format, ref.is_stdin) == (
        "notes",
        None,
        TextFormat.MARKDOWN,
        True,
    )
    with pytest.raises(SourceError, match="only once"):
        discover(["-", "-"])


def test_forced_format_applies_to_every_file(tree: Path) -> None:
    refs = discover([str(tree)], forced_format=TextFormat.PLAIN)
    assert {r.format for r in refs} == {TextFormat.PLAIN}


def _read(tmp_path: Path, data: bytes, name: str = "f.txt") -> Document | Unreadable:
    path = tmp_path / name
    path.write_bytes(data)
    [ref] = discover([str(path)])
    return read_source(ref)


def test_text_is_decoded_and_normalised(tmp_path: Path) -> None:
    document = _read(tmp_path, "\ufeffcafé\r\nnext\rline".encode())
    assert isinstance(document, Document)
    assert document.text == "café\nnext\nline"
    assert len(document.file_hash) == 64
    utf16 = _read(tmp_path, "naïve".encode("utf-16"), "u.txt")
    assert isinstance(utf16, Document)
    assert utf16.text == "naïve"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("café".encode("latin-1"), "not valid utf-8"),
    ],
)
def test_binary_and_undecodable_files_are_unreadable(
    tmp_path: Path, data: bytes, reason: str
) -> None:
    result = _read(tmp_path, data)
    assert isinstance(result, Unreadable)
    assert reason in result.reason


def test_another_encoding_can_be_chosen(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("café".encode("latin-1"))
    [ref] = discover([str(path)])
    document = read_source(ref, encoding="latin-1")
    assert isinstance(document, Document)
    assert document.text == "café"


def test_a_file_that_cannot_be_opened_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "dangling.md").symlink_to(tmp_path / "missing-target.md")
    [ref] = discover([str(tmp_path)])
    result = read_source(ref)
    assert isinstance(result, Unreadable)
    assert "No such file" in result.reason


def test_stdin_is_read_from_the_given_stream() -> None:
    [ref] = discover(["-"])
    document = read_source(ref, stdin=io.BytesIO(b"# Piped\n\ntext"))
    assert isinstance(document, Document)
    assert document.text == "# Piped\n\ntext"


# --- checkpoint ----------------------------------------------------------------------------


def test_checkpoint_remembers_files_by_hash_within_a_scope(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ingest.sqlite3"
    scope = checkpoint_scope("grpc://v:1", "", "docs", "2025-01-01T00:00:00Z", "chars-v1:800:100")
    checkpoint = Checkpoint(path, scope)
    assert not checkpoint.is_done("/a.md", "h1")
    checkpoint.record("/a.md", "h1", 3)
    assert checkpoint.is_done("/a.md", "h1")
    assert not checkpoint.is_done("/a.md", "h2"), "a changed file is not done"
    checkpoint.close()

    reopened = Checkpoint(path, scope)
    assert reopened.is_done("/a.md", "h1"), "the checkpoint survives the process"
    reopened.record("/a.md", "h2", 4)
    assert reopened.is_done("/a.md", "h2")
    assert not reopened.is_done("/a.md", "h1")
    reopened.forget("/a.md")
    assert not reopened.is_done("/a.md", "h2")
    reopened.close()

    # A recreated collection (new epoch) or new chunking rules start afresh.
    for other in (
        checkpoint_scope("grpc://v:1", "", "docs", "2025-02-01T00:00:00Z", "chars-v1:800:100"),
        checkpoint_scope("grpc://v:1", "", "docs", "2025-01-01T00:00:00Z", "chars-v1:400:100"),
        checkpoint_scope("grpc://v:1", "acme", "docs", "2025-01-01T00:00:00Z", "chars-v1:800:100"),
    ):
        fresh = Checkpoint(path, other)
        fresh.record("/b.md", "x", 1)
        assert not fresh.is_done("/a.md", "h1")
        fresh.close()
