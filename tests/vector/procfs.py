"""Finding processes and telling whether they have exited, through Linux's /proc."""

from __future__ import annotations

import os
from pathlib import Path


def _parent(entry: Path) -> int:
    return int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])


def processes(*parts: str, parent: int | None = None) -> list[int]:
    """Live processes whose command line contains every one of ``parts`` (and, when
    given, whose parent is ``parent``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
            if parent is not None and _parent(entry) != parent:
                continue
        except (OSError, ValueError):
            continue
        if all(part in command for part in parts):
            found.append(int(entry.name))
    return found


def exited(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def resident_bytes(pid: int) -> int:
    """The process's resident set size."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def maps_file(pid: int, fragment: str) -> bool:
    """A file whose path contains ``fragment`` is mapped into the process."""
    return fragment in Path(f"/proc/{pid}/maps").read_text()
