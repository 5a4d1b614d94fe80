"""``python -m lodestar.services.vector``: run the vector service until SIGTERM."""

from __future__ import annotations

import asyncio

from lodestar.runtime.server import GrpcServer, serve
from lodestar.services.vector.server import create_server
from lodestar.services.vector.settings import VectorSettings


def main() -> None:
    settings = VectorSettings()

    async def build() -> GrpcServer:
        return await create_server(settings)

    asyncio.run(serve(settings, "vector", build))


if __name__ == "__main__":
    main()
