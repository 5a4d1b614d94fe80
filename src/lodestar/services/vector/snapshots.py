"""Portable snapshots: one file with a collection's configuration, points and payloads.

The file does not depend on the engine's on-disk layout, so it restores into
any backend and any later engine version. Layout: a magic line, then frames
(4-byte big-endian length + bytes): a JSON header, then per chunk of points a
JSON frame (ids, payloads) and a frame of little-endian float32 vectors, and a
JSON footer with the point count. Files are written to a temporary name,
fsynced and renamed, so a snapshot is complete or absent; its SHA-256 is kept
beside it (``NAME.sha256``) and checked before a restore.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Final

import numpy as np

from lodestar.runtime.errors import FailedPrecondition, NotFound
from lodestar.services.vector.files import atomic_file, atomic_write
from lodestar.services.vector.models import (
    CollectionConfig,
    PointRecord,
    SnapshotInfo,
    config_from_dict,
    config_to_dict,
)

MAGIC: Final = b"LODESTAR-SNAPSHOT\n"
FORMAT_VERSION: Final = 1
SUFFIX: Final = ".snapshot"
CHECKSUM_SUFFIX: Final = ".sha256"
_LENGTH = struct.Struct(">I")
_READ_CHUNK: Final = 1 << 20


def snapshot_not_found(collection: str, name: str) -> NotFound:
    return NotFound(
        f"collection {collection!r} has no snapshot {name!r}",
        reason="SNAPSHOT_NOT_FOUND",
        metadata={"collection": collection, "snapshot": name},
    )


@dataclass(frozen=True)
class SnapshotHeader:
    collection: str
    config: CollectionConfig
    create_time: datetime


class _HashingWriter:
    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._handle.write(data)
        self.sha256.update(data)
        self.size += len(data)

    def frame(self, data: bytes) -> None:
        self.write(_LENGTH.pack(len(data)))
        self.write(data)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


class PortableSnapshots:
    """Snapshot files under ``root/<collection>/``. Methods block: run them in a thread."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, collection: str) -> Path:
        return self.root / collection

    def path(self, collection: str, name: str) -> Path:
        path = self._dir(collection) / name
        if not name.endswith(SUFFIX) or not path.is_file():
            raise snapshot_not_found(collection, name)
        return path

    def write(
        self, collection: str, config: CollectionConfig, chunks: Iterable[list[PointRecord]]
    ) -> SnapshotInfo:
        """Write a snapshot of the points yielded by ``chunks`` (each vector of the
        collection's dimension)."""
        created = datetime.now(UTC)
        name = f"{collection}-{created:%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(3)}{SUFFIX}"
        directory = self._dir(collection)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        count = 0
        with atomic_file(path) as handle:
            out = _HashingWriter(handle)
            out.write(MAGIC)
            out.frame(
                _json(
                    {
                        "format": FORMAT_VERSION,
                        "collection": collection,
                        "config": config_to_dict(config),
                        "create_time": created.isoformat(),
                    }
                )
            )
            for chunk in chunks:
                if not chunk:
                    continue
                out.frame(
                    _json({"ids": [p.id for p in chunk], "payloads": [p.payload for p in chunk]})
                )
                vectors = np.asarray([p.vector for p in chunk], dtype="<f4")
                if vectors.shape != (len(chunk), config.dimension):
                    raise ValueError("snapshot chunk vectors do not match the dimension")
                out.frame(vectors.tobytes())
                count += len(chunk)
            out.frame(_json({"points": count}))
        checksum = out.sha256.hexdigest()
        atomic_write(path.with_name(name + CHECKSUM_SUFFIX), checksum.encode())
        return SnapshotInfo(name, collection, out.size, created, checksum)

    def infos(self, collection: str) -> list[SnapshotInfo]:
        directory = self._dir(collection)
        if not directory.is_dir():
            return []
        infos = []
        for path in directory.iterdir():
            if not path.name.endswith(SUFFIX) or path.name.startswith("."):
                continue
            try:
                header = self._header(path)
                size = path.stat().st_size
            except (OSError, ValueError):
                continue  # a foreign or damaged file is not a snapshot
            infos.append(
                SnapshotInfo(path.name, collection, size, header.create_time, self._checksum(path))
            )
        infos.sort(key=lambda s: (s.create_time or datetime.min.replace(tzinfo=UTC), s.name))
        infos.reverse()
        return infos

    def read(self, collection: str, name: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of the snapshot's file from ``offset`` (fewer at its end)."""
        with open(self.path(collection, name), "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    def delete(self, collection: str, name: str) -> None:
        path = self.path(collection, name)
        path.with_name(name + CHECKSUM_SUFFIX).unlink(missing_ok=True)
        path.unlink()

    def _checksum(self, path: Path) -> str:
        try:
            return path.with_name(path.name + CHECKSUM_SUFFIX).read_text().strip()
        except OSError:
            return ""

    def _header(self, path: Path) -> SnapshotHeader:
        with open(path, "rb") as handle:
            return _read_header(handle)

    def open(
        self, collection: str, name: str
    ) -> tuple[SnapshotHeader, Iterator[list[PointRecord]]]:
        """Verify a snapshot's checksum; return its header and its points, chunk by chunk."""
        path = self.path(collection, name)
        expected = self._checksum(path)
        if expected:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while block := handle.read(_READ_CHUNK):
                    digest.update(block)
            if digest.hexdigest() != expected:
                raise FailedPrecondition(
                    f"snapshot {name!r} is damaged: its checksum does not match",
                    reason="SNAPSHOT_CORRUPT",
                )
        with open(path, "rb") as handle:
            header = _read_header(handle)
        return header, _read_points(path, header.config.dimension)


def _read_frame(handle: BinaryIO) -> bytes:
    raw = handle.read(_LENGTH.size)
    if len(raw) != _LENGTH.size:
        raise ValueError("truncated snapshot")
    (length,) = _LENGTH.unpack(raw)
    data = handle.read(length)
    if len(data) != length:
        raise ValueError("truncated snapshot")
    return data


def _read_header(handle: BinaryIO) -> SnapshotHeader:
    if handle.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a snapshot file")
    header = json.loads(_read_frame(handle))
    if header.get("format") != FORMAT_VERSION:
        raise ValueError(f"unsupported snapshot format {header.get('format')!r}")
    return SnapshotHeader(
        collection=str(header["collection"]),
        config=config_from_dict(header["config"]),
        create_time=datetime.fromisoformat(header["create_time"]),
    )


def _read_points(path: Path, dimension: int) -> Iterator[list[PointRecord]]:
    with open(path, "rb") as handle:
        _read_header(handle)
        seen = 0
        while True:
            meta = json.loads(_read_frame(handle))
            if "points" in meta:
                if meta["points"] != seen:
                    raise ValueError("snapshot point count does not match its footer")
                return
            ids, payloads = meta["ids"], meta["payloads"]
            vectors = np.frombuffer(_read_frame(handle), dtype="<f4").reshape(len(ids), dimension)
            rows: list[list[float]] = vectors.astype(np.float32).tolist()
            yield [PointRecord(i, v, p) for i, v, p in zip(ids, rows, payloads, strict=True)]
            seen += len(ids)
