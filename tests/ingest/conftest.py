"""Fixtures of the ingest tests: the real embedding and vector services on port 0,
and a small corpus that ships with Python (the reference topics of ``pydoc``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from lodestar.ingest.sinks import GrpcSink
from lodestar.runtime.server import GrpcServer
from lodestar.services.embedding.engine import EmbeddingEngine
from lodestar.services.embedding.server import create_server as create_embedding_server
from lodestar.services.embedding.settings import EmbeddingSettings, bundled_model_path
from lodestar.services.vector.server import create_server as create_vector_server
from lodestar.services.vector.settings import VectorSettings

# Language-reference topics, each a reST-like text with titles: a few dozen chunks.
CORPUS_TOPICS = ("assert", "break", "del", "global", "pass", "while", "with", "lambda")


@dataclass(frozen=True)
class Services:
    embedding_address: str
    vector_address: str

    def sink(self, **kwargs: object) -> GrpcSink:
        return GrpcSink(self.embedding_address, self.vector_address, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def engine() -> EmbeddingEngine:
    return EmbeddingEngine.load(bundled_model_path())


@pytest.fixture(scope="session")
async def services(
    engine: EmbeddingEngine, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Services]:
    embedding = create_embedding_server(
        EmbeddingSettings(port=0, metrics_port=None, shutdown_grace_s=2), engine
    )
    vector: GrpcServer = await create_vector_server(
        VectorSettings(
            port=0,
            metrics_port=None,
            shutdown_grace_s=2,
            data_dir=tmp_path_factory.mktemp("vector-data"),
        )
    )
    embedding_port = await embedding.start()
    vector_port = await vector.start()
    yield Services(f"127.0.0.1:{embedding_port}", f"127.0.0.1:{vector_port}")
    await embedding.stop(2)
    await vector.stop(2)


def write_corpus(directory: Path, names: tuple[str, ...] = CORPUS_TOPICS) -> Path:
    """The pydoc topics as .rst files, plus one Markdown file made from two of them."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / f"{name}.rst").write_text(topics[name], encoding="utf-8")
    guide = "# Loops\n\n## for\n\n" + topics["for"] + "\n\n## continue\n\n" + topics["continue"]
    (directory / "guide.md").write_text(guide, encoding="utf-8")
    return directory


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")
