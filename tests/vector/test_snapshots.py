"""Unit tests of the portable snapshot file format."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lodestar.runtime.errors import FailedPrecondition, NotFound
from lodestar.services.vector import models as m
from lodestar.services.vector.snapshots import MAGIC, PortableSnapshots

CONFIG = m.CollectionConfig(
    dimension=3,
    distance=m.Distance.DOT,
    payload_schema={"k": m.FieldType.KEYWORD},
    hnsw=m.HnswOptions(m=8),
    quantization=m.ScalarQuantization(quantile=0.9),
    embedding_model="e",
)


def _chunks() -> list[list[m.PointRecord]]:
    return [
        [
            m.PointRecord(1, [1.0, 2.0, 3.0], {"k": "a", "nested": [1, {"x": None}]}),
            m.PointRecord("0b7e5b7b-eafe-45dc-b454-c2ecc768de00", [0.5, 0.25, -1.0], None),
        ],
        [],
        [m.PointRecord(3, [0.0, 0.0, 1.0], {})],
    ]


def test_round_trip(tmp_path: Path) -> None:
    store = PortableSnapshots(tmp_path)
    info = store.write("docs", CONFIG, iter(_chunks()))
    assert info.collection == "docs"
    assert info.name.endswith(".snapshot")
    path = tmp_path / "docs" / info.name
    assert path.read_bytes().startswith(MAGIC)
    assert info.size_bytes == path.stat().st_size
    assert len(info.checksum) == 64
    # Only the snapshot and its checksum: the temporary file is gone.
    assert sorted(p.name for p in path.parent.iterdir()) == [info.name, info.name + ".sha256"]

    header, chunks = store.open("docs", info.name)
    assert header.collection == "docs"
    assert header.config == CONFIG
    points = [p for chunk in chunks for p in chunk]
    assert [p.id for p in points] == [1, "0b7e5b7b-eafe-45dc-b454-c2ecc768de00", 3]
    assert points[0].vector == [1.0, 2.0, 3.0]
    assert points[0].payload == {
        "k": "a",
        "nested": [1, {"x": None}],
    }
    assert points[1].payload is None
    assert points[1].vector == [0.5, 0.25, -1.0]
    assert [s.name for s in store.infos("docs")] == [info.name]


def test_listing_is_newest_first_and_skips_foreign_files(tmp_path: Path) -> None:
    store = PortableSnapshots(tmp_path)
    first = store.write("docs", CONFIG, iter(_chunks()))
    second = store.write("docs", CONFIG, iter(_chunks()))
    (tmp_path / "docs" / "junk.snapshot").write_bytes(b"not a snapshot")
    assert [s.name for s in store.infos("docs")] == [second.name, first.name]
    assert store.infos("never-made") == []


def test_a_damaged_snapshot_is_refused(tmp_path: Path) -> None:
    store = PortableSnapshots(tmp_path)
    info = store.write("docs", CONFIG, iter(_chunks()))
    path = tmp_path / "docs" / info.name
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FailedPrecondition):
        store.open("docs", info.name)


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store = PortableSnapshots(tmp_path)

    def broken() -> object:
        yield _chunks()[0]
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        store.write("docs", CONFIG, broken())  # type: ignore[arg-type]
    assert os.listdir(tmp_path / "docs") == []


def test_delete_and_missing(tmp_path: Path) -> None:
    store = PortableSnapshots(tmp_path)
    info = store.write("docs", CONFIG, iter(_chunks()))
    store.delete("docs", info.name)
    assert store.infos("docs") == []
    with pytest.raises(NotFound):
        store.delete("docs", info.name)
    with pytest.raises(NotFound):
        store.open("docs", "other.snapshot")
