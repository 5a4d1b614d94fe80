"""The ``lodestar`` command: run services, the whole stack, and the tools.

lodestar run                         start every service and the gateway
lodestar serve embedding|vector|inference|gateway
lodestar token --sub alice --role user --ttl 1h
lodestar ingest PATH... --collection NAME
lodestar worker                      run document jobs from the Redis queue
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

SERVICES = ("embedding", "vector", "inference", "gateway")

# Subcommands whose arguments belong to another module's parser.
_DELEGATED: dict[str, tuple[str, str, str]] = {
    "token": ("lodestar.services.gateway.cli", "token_main", "mint a development JWT"),
    "ingest": ("lodestar.ingest", "ingest_main", "chunk, embed and store text files"),
    "worker": (
        "lodestar.services.gateway.documents.worker",
        "worker_main",
        "run document jobs from the Redis queue",
    ),
}


def _delegate(module: str, function: str) -> Callable[[list[str]], int]:
    entry: Callable[[list[str]], int] = getattr(importlib.import_module(module), function)
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in _DELEGATED:
        module, function, _ = _DELEGATED[args[0]]
        return _delegate(module, function)(args[1:])

    parser = argparse.ArgumentParser(prog="lodestar", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start the whole stack on embedded defaults")
    run.add_argument(
        "--only", nargs="+", choices=SERVICES, help="start only these services (default: all)"
    )
    serve = commands.add_parser("serve", help="run one service in the foreground")
    serve.add_argument("service", choices=SERVICES)
    for name, (_, _, help_text) in _DELEGATED.items():
        commands.add_parser(name, help=help_text, add_help=False)
    parsed = parser.parse_args(args)

    if parsed.command == "serve":
        service_main: Callable[[], None] = importlib.import_module(
            f"lodestar.services.{parsed.service}.__main__"
        ).main
        service_main()
        return 0
    from lodestar.stack import run_stack

    return run_stack(parsed.only)


if __name__ == "__main__":
    sys.exit(main())
