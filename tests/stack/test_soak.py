"""``python -m bench.soak``, briefly: the whole stack under its mixed open-loop load
through the gateway, with no failed request, no lost write and no memory growth
past the limit, and the report that says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import LABELS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_soak_passes_and_reports_every_route_and_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--minutes", "0.1", "--warmup-s", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for label in LABELS.values():
        line = next(line for line in out.splitlines() if line[:28].strip() == label)
        requests, failed = line[28:].split()[:2]
        assert int(requests) > 0, line
        assert int(failed) == 0, line
    for process in ("embedding", "vector", "inference", "gateway", "vector engine"):
        assert any(line[:16].strip() == process and "%" in line for line in out.splitlines())
    assert "errors (warm-up included): 0" in out
    assert "soak PASS" in out
