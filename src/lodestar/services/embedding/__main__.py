"""``python -m lodestar.services.embedding``: run the embedding service until SIGTERM."""

from __future__ import annotations

import asyncio

from lodestar.runtime.server import GrpcServer, serve
from lodestar.services.embedding.server import create_server
from lodestar.services.embedding.settings import EmbeddingSettings


def main() -> None:
    settings = EmbeddingSettings()

    async def build() -> GrpcServer:
        # Loading the model blocks for a few seconds; keep the loop responsive.
        return await asyncio.to_thread(create_server, settings)

    asyncio.run(serve(settings, "embedding", build))


if __name__ == "__main__":
    main()
