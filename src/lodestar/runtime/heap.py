"""The garbage collector's settings for long-running services.

A service makes most of its long-lived objects at startup: modules, the app,
models, channels. Python's cyclic collector keeps examining them, and it runs
a young collection every 700 allocations, which a busy service reaches several
times per request. Once a service has started, it moves everything that exists
out of the collector's sight (``gc.freeze``) and collects young objects less
often. Garbage without cycles is freed at once by reference counting either
way; only cyclic garbage waits for the next collection.
"""

from __future__ import annotations

import gc


def settle_heap(young_threshold: int) -> None:
    """Freeze the objects made so far and collect young objects after
    ``young_threshold`` allocations (0 leaves Python's defaults)."""
    if young_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
