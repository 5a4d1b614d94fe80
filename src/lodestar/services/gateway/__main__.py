"""``python -m lodestar.services.gateway`` (or ``lodestar serve gateway``)."""

from __future__ import annotations

import asyncio

from lodestar.services.gateway.server import serve
from lodestar.services.gateway.settings import GatewaySettings


def main() -> None:
    asyncio.run(serve(GatewaySettings()))


if __name__ == "__main__":
    main()
