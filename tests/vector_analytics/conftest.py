"""Fixtures for the analytics store: a store on a temporary directory with a settable clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lodestar.services.vector.analytics_store import AnalyticsStore


class Clock:
    """Wall-clock time the test moves by hand (unix seconds)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[AnalyticsStore]:
    opened = AnalyticsStore(tmp_path / "analytics.sqlite3", clock=clock)
    yield opened
    opened.close()
