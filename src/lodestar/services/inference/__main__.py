"""``python -m lodestar.services.inference``: run the inference service until SIGTERM."""

from __future__ import annotations

import asyncio
import sys

from lodestar.runtime.process import run_service
from lodestar.services.inference.server import create_server
from lodestar.services.inference.settings import InferenceSettings


def main() -> None:
    # The decode thread needs the GIL back the moment llama_decode returns; with the
    # default 5 ms switch interval a busy event loop can keep it waiting that long.
    sys.setswitchinterval(0.0005)
    settings = InferenceSettings()
    # Loading the model blocks for a moment: off the event loop.
    run_service(settings, "inference", lambda: asyncio.to_thread(create_server, settings))


if __name__ == "__main__":
    main()
