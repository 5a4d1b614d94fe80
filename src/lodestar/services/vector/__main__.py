"""``python -m lodestar.services.vector``: run the vector service until SIGTERM."""

from __future__ import annotations

from lodestar.runtime import eventloop, scheduling
from lodestar.runtime.server import GrpcServer, serve
from lodestar.services.vector.server import create_server
from lodestar.services.vector.settings import VectorSettings


def main() -> None:
    settings = VectorSettings()
    # Before the server starts its threads and the engine process: they inherit it.
    scheduling.apply(settings.cpu_scheduling)

    async def build() -> GrpcServer:
        return await create_server(settings)

    eventloop.run(serve(settings, "vector", build), settings.event_loop)


if __name__ == "__main__":
    main()
