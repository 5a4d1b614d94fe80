"""Native programs a benchmark measures or drives beside the service, when built.

Each is built by the make target of its name into ``.tools/`` and can be given by
path instead; ``--no-NAME`` leaves it out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent / ".tools"


def add_tool_option(
    parser: argparse.ArgumentParser, name: str, built: Path, *, what: str, without: str
) -> None:
    """``--NAME PATH`` (default: ``built`` when it is there) and ``--no-NAME``."""
    parser.add_argument(
        f"--{name}",
        type=Path,
        default=built if built.is_file() else None,
        help=f"{what} (default: the one `make {name}` builds, when it is there)",
    )
    parser.add_argument(f"--no-{name}", action="store_true", help=without)


def chosen_tool(
    parser: argparse.ArgumentParser, args: argparse.Namespace, name: str
) -> Path | None:
    """The program to use, or None; an error for a path that is not a file."""
    dest = name.replace("-", "_")
    if getattr(args, f"no_{dest}"):
        return None
    path: Path | None = getattr(args, dest)
    if path is not None and not path.is_file():
        parser.error(f"--{name}: no file {path}")
    return path
