"""Finding the files to ingest and reading them as text.

A path on the command line may be a file (ingested whatever its extension), a
directory (searched recursively for files matching the patterns; hidden files
and directories, such as ``.git``, are left out; symbolic links to directories
are not followed) or ``-`` for standard input.

A file is identified by its absolute path (symbolic links resolved), so the
same file gets the same chunk ids whichever directory the command runs from;
standard input is identified by ``--stdin-name`` (default ``stdin``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lodestar.ingest.chunking import TextFormat, format_for_name, normalize_text

DEFAULT_PATTERNS = ("*.txt", "*.md", "*.markdown", "*.rst")
STDIN = "-"
# A NUL byte in the first block means a binary file, not text in a strange encoding.
_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class SourceRef:
    """A file (or standard input) to ingest."""

    source: str  # the identity stored in payloads and hashed into ids
    path: Path | None  # None for standard input
    format: TextFormat

    @property
    def is_stdin(self) -> bool:
        return self.path is None


@dataclass(frozen=True)
class Document:
    """A source's text, normalised, with the hash of its bytes."""

    ref: SourceRef
    text: str
    file_hash: str
    size_bytes: int


@dataclass(frozen=True)
class Unreadable:
    """A source that could not be read as text, and why."""

    ref: SourceRef
    reason: str


class SourceError(ValueError):
    """A command-line path that does not exist or cannot be searched."""


def discover(
    paths: Sequence[str],
    *,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    stdin_name: str = "stdin",
    stdin_format: TextFormat = TextFormat.MARKDOWN,
    forced_format: TextFormat | None = None,
) -> list[SourceRef]:
    """The sources the paths name, each once, in command-line then path order.

    Raises SourceError naming every path that does not exist.
    """
    missing = [p for p in paths if p != STDIN and not os.path.lexists(p)]
    if missing:
        raise SourceError(f"no such file or directory: {', '.join(missing)}")
    if paths.count(STDIN) > 1:
        raise SourceError("'-' (standard input) can be given only once")
    refs: dict[str, SourceRef] = {}
    for given in paths:
        if given == STDIN:
            refs.setdefault(
                f"\x00{stdin_name}", SourceRef(stdin_name, None, forced_format or stdin_format)
            )
            continue
        path = Path(given)
        files = _walk(path, patterns) if path.is_dir() else [path]
        for file in files:
            try:
                resolved = file.resolve(strict=True)
            except OSError:  # a dangling link: reported as unreadable under its own name
                resolved = file.absolute()
            source = resolved.as_posix()
            fmt = forced_format or format_for_name(resolved.name)
            refs.setdefault(source, SourceRef(source, resolved, fmt))
    return list(refs.values())


def _walk(root: Path, patterns: Sequence[str]) -> Iterable[Path]:
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and any(fnmatch.fnmatch(name, p) for p in patterns):
                yield Path(directory) / name


def read_source(
    ref: SourceRef, *, encoding: str = "utf-8", stdin: BinaryIO | None = None
) -> Document | Unreadable:
    """Read and decode a source; an unreadable or binary file is an Unreadable."""
    try:
        data = ref.path.read_bytes() if ref.path else (stdin or sys.stdin.buffer).read()
    except IsADirectoryError:
        return Unreadable(ref, "is a directory")
    except PermissionError:
        return Unreadable(ref, "permission denied")
    except OSError as error:
        return Unreadable(ref, error.strerror or str(error))
    if b"\x00" in data[:_SNIFF_BYTES] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return Unreadable(ref, "binary file (contains NUL bytes)")
    try:
        text = _decode(data, encoding)
    except UnicodeDecodeError as error:
        return Unreadable(ref, f"not valid {error.encoding} text (byte {error.start})")
    except LookupError:
        return Unreadable(ref, f"unknown encoding {encoding!r}")
    return Document(ref, normalize_text(text), hashlib.sha256(data).hexdigest(), len(data))


def _decode(data: bytes, encoding: str) -> str:
    # A byte-order mark says what the file is, whatever the default encoding.
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    return data.decode(encoding)
