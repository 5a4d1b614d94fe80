"""The optimizer process: builds a shard copy's indexes away from the service.

qdrant-edge's ``optimize()`` holds the Python GIL for the whole index build
(seconds to minutes), which would freeze every request of the service. So the
background optimizer (``indexing.py``) copies a collection's shard, runs this module
on the copy in a child process (``python -m lodestar.services.vector.optimizer``),
and swaps the optimized copy in once it is done, replaying the writes made meanwhile.

Usage: ``python -m lodestar.services.vector.optimizer SHARD_DIR CONFIG_JSON`` where
CONFIG_JSON is ``{"collection": <config dict>, "indexing_threshold_kb": int,
"indexing_threads": int, "search_threads": int, "nice": int, "parent": pid}``. Prints
``{"optimized": bool}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from lodestar.runtime.lifeline import die_with_parent


def optimize_shard(path: str, options: dict[str, Any]) -> bool:
    """Open the shard at ``path`` with the wanted configuration and optimize it."""
    # Imported here, not at the top: the process must first tie its life to the service's.
    import qdrant_edge as qe

    from lodestar.services.vector.edge import edge_config
    from lodestar.services.vector.models import config_from_dict

    config = edge_config(
        config_from_dict(options["collection"]),
        indexing_threshold_kb=int(options["indexing_threshold_kb"]),
        indexing_threads=int(options["indexing_threads"]),
        search_threads=int(options.get("search_threads", 0)) or None,
    )
    shard = qe.EdgeShard.load(path, config)
    try:
        changed = bool(shard.optimize())
        shard.flush()
    finally:
        shard.close()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path, raw = args
    options = json.loads(raw)
    die_with_parent(int(options.get("parent", 0)))
    with contextlib.suppress(OSError):
        os.nice(int(options.get("nice", 0)))
    changed = optimize_shard(path, options)
    print(json.dumps({"optimized": changed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
