"""``python -m lodestar.services.gateway`` (or ``lodestar serve gateway``)."""

from __future__ import annotations

from lodestar.runtime import eventloop
from lodestar.services.gateway.server import serve
from lodestar.services.gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    eventloop.run(serve(settings), settings.event_loop)


if __name__ == "__main__":
    main()
