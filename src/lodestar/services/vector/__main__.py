"""``python -m lodestar.services.vector``: run the vector service until SIGTERM."""

from __future__ import annotations

from lodestar.runtime.process import run_service
from lodestar.services.vector.server import create_server
from lodestar.services.vector.settings import VectorSettings


def main() -> None:
    settings = VectorSettings()
    run_service(
        settings,
        "vector",
        lambda: create_server(settings),
        # Its engine process and optimizer processes inherit the policy.
        cpu_scheduling=settings.cpu_scheduling,
    )


if __name__ == "__main__":
    main()
