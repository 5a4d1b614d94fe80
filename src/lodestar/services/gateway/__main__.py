"""``python -m lodestar.services.gateway`` (or ``lodestar serve gateway``)."""

from __future__ import annotations

from lodestar.runtime.process import run_service
from lodestar.services.gateway.server import create_service
from lodestar.services.gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    run_service(settings, "gateway", lambda: create_service(settings))


if __name__ == "__main__":
    main()
