"""``python -m lodestar.services.embedding``: run the embedding service until SIGTERM."""

from __future__ import annotations

import asyncio

from lodestar.runtime.process import run_service
from lodestar.services.embedding.server import create_server
from lodestar.services.embedding.settings import EmbeddingSettings


def main() -> None:
    settings = EmbeddingSettings()
    # Loading the model blocks for a few seconds: off the event loop.
    run_service(settings, "embedding", lambda: asyncio.to_thread(create_server, settings))


if __name__ == "__main__":
    main()
