"""Run every benchmark, one process each, and print their figures.

    python -m bench                 # all of them
    python -m bench embedding vector

Each benchmark measures the raw library and the Lodestar service side by side
in the same run and prints their ratio; see each module's docstring.
The soak run (``python -m bench.soak``) and the rolling restart
(``python -m bench.rolling_restart``) are not among them: they run for minutes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ORDER = (
    "embedding",
    "vector",
    "inference",
    "gateway",
    "flows",
    "ingest",
    "documents",
    "semantic_cache",
)


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    available = [name for name in ORDER if (here / f"{name}.py").exists()]
    chosen = argv or available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(available)}")
        return 2
    failed = []
    for name in chosen:
        print(f"\n=== bench.{name} ===", flush=True)
        if subprocess.call([sys.executable, "-m", f"bench.{name}"]) != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
