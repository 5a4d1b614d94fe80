"""``lodestar token``: mint a development JWT for trying the API with curl.

    lodestar token --sub alice --role user --ttl 1h
    lodestar token --sub svc --permission SearchVectors --tenant acme --collection 'docs-*'

The token is signed with the gateway's HS256 key (``LODESTAR_GATEWAY_JWT_SIGNING_KEY``,
by default the public development key) and carries the configured issuer and
audience, so the gateway started with the same environment accepts it.
"""

from __future__ import annotations

import argparse
import sys

from lodestar.auth.permissions import Permission
from lodestar.auth.tokens import mint_token
from lodestar.services.gateway.auth import parse_duration
from lodestar.services.gateway.settings import GatewaySettings


def _parser(roles: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lodestar token", description="Mint a development JWT for the gateway."
    )
    parser.add_argument("--sub", required=True, help="subject (who the token is for)")
    parser.add_argument(
        "--role",
        action="append",
        default=[],
        help=f"role (repeatable); configured roles: {', '.join(roles)}",
    )
    parser.add_argument(
        "--permission",
        action="append",
        default=[],
        choices=[p.value for p in Permission],
        metavar="PERMISSION",
        help="extra permission (repeatable)",
    )
    parser.add_argument("--ttl", default="1h", help="lifetime, e.g. 90s, 15m, 1h, 7d (default 1h)")
    parser.add_argument("--tenant", default="", help="confine the token to this tenant")
    parser.add_argument(
        "--collection",
        action="append",
        default=None,
        help="allowed collection (repeatable; wildcards such as docs-* work)",
    )
    return parser


def token_main(argv: list[str]) -> int:
    settings = GatewaySettings()
    parser = _parser(sorted(settings.roles))
    args = parser.parse_args(argv)
    unknown = [role for role in args.role if role not in settings.roles]
    if unknown:
        parser.error(
            f"unknown role(s) {', '.join(unknown)}; configured: {', '.join(settings.roles)}"
        )
    if not args.role and not args.permission:
        parser.error("give at least one --role or --permission")
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as error:
        parser.error(str(error))
    if ttl <= 0:
        parser.error("--ttl must be positive")
    if settings.jwt_jwks_url:
        print(
            "warning: the gateway is configured with a JWKS URL and will refuse HS256 tokens",
            file=sys.stderr,
        )
    print(
        mint_token(
            settings,
            args.sub,
            args.role,
            ttl,
            tenant=args.tenant,
            collections=args.collection,
            permissions=args.permission,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(token_main(sys.argv[1:]))
