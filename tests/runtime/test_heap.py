"""Garbage-collector settings taken once a service has started.

Each case runs in its own interpreter: freezing and unfreezing this test
process's heap would move a full collection of it into some later test.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, sys
from lodestar.runtime.heap import settle_heap
survivor = [["made at startup"]]  # lists are always tracked
before = gc.get_threshold()
settle_heap(int(sys.argv[1]))
print(json.dumps({
    "before": before,
    "after": gc.get_threshold(),
    "frozen": gc.get_freeze_count(),
    "tracked": any(o is survivor for o in gc.get_objects()),
    "survivor": survivor,
}))
"""


def _settle(threshold: int) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(threshold)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_settling_freezes_what_exists_and_collects_young_objects_less_often() -> None:
    result = _settle(50_000)
    before, after = result["before"], result["after"]
    assert isinstance(before, list)
    assert isinstance(after, list)
    assert after == [50_000, before[1], before[2]]
    assert isinstance(result["frozen"], int)
    assert result["frozen"] > 0
    # Frozen objects are out of the collector's sight, not freed.
    assert result["tracked"] is False
    assert result["survivor"] == [["made at startup"]]


def test_zero_keeps_pythons_defaults() -> None:
    result = _settle(0)
    assert result["after"] == result["before"]
    assert result["frozen"] == 0
    assert result["tracked"] is True
