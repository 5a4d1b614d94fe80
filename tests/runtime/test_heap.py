"""Garbage-collector settings taken once a service has started."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from lodestar.runtime.heap import settle_heap


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restore_gc")
def test_settling_freezes_what_exists_and_collects_young_objects_less_often() -> None:
    _, middle, old = gc.get_threshold()
    survivor = {"made": "at startup"}
    settle_heap(50_000)
    assert gc.get_threshold() == (50_000, middle, old)
    assert gc.get_freeze_count() > 0
    # Frozen objects are out of the collector's sight, not freed.
    assert not any(o is survivor for o in gc.get_objects())
    assert survivor == {"made": "at startup"}


@pytest.mark.usefixtures("restore_gc")
def test_zero_keeps_pythons_defaults() -> None:
    before = (gc.get_threshold(), gc.get_freeze_count())
    settle_heap(0)
    assert (gc.get_threshold(), gc.get_freeze_count()) == before
