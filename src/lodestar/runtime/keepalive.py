"""Keepalive pings between the platform's gRPC clients and servers, defined once.

Clients ping each connection every ``grpc_keepalive_s``, with or without calls in
flight: a peer that vanished, or a connection a proxy dropped, is found within that
interval plus ``KEEPALIVE_TIMEOUT_S``, and a proxy that closes idle connections sees
traffic. A gRPC server counts each ping that comes sooner than its minimum interval
as a strike (its default minimum is 5 minutes, and 2 hours on a connection with no
call) and, at the third strike, answers GOAWAY ENHANCE_YOUR_CALM "too_many_pings",
failing every call on the connection. Only data the server sends clears the strikes,
so a call that stays silent (a long generation or batch) is the one that gets cut.
Both sides' options are therefore derived here from one interval, which every
process reads from the same variable: servers accept pings at half of it (slack for
timers), with or without calls.

Servers also bound each connection's age, so that a long-lived client (one that
reached a backend through a Service's virtual IP) reconnects now and then and
spreads over pods that were added since; calls in flight then get a long grace.
"""

from __future__ import annotations

from typing import Final

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# How long a ping may wait for its acknowledgement before the connection is closed.
KEEPALIVE_TIMEOUT_S: Final = 10.0

# A server asks each client to reconnect (GOAWAY, calls in flight unharmed) after this
# long, give or take gRPC's 10% jitter: clients rebalance within minutes of a scale-up.
MAX_CONNECTION_AGE_S: Final = 300.0
# How long calls in flight may go on after that GOAWAY before the server cuts the
# connection: beyond any deadline the gateway gives a call by default.
MAX_CONNECTION_AGE_GRACE_S: Final = 3600.0

GrpcOptions = list[tuple[str, int]]


class KeepaliveSettings(BaseSettings):
    """The keepalive interval, under one variable for every process (services and
    gateway), so that clients never ping more often than servers accept."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    grpc_keepalive_s: float = Field(
        30.0,
        ge=1.0,
        le=3600.0,
        validation_alias=AliasChoices("LODESTAR_GRPC_KEEPALIVE_S"),
        description="Seconds between the keepalive pings on every gRPC connection between "
        "the gateway and the services, calls in flight or not; servers accept pings down "
        "to half of it. Set the same value on every process. Lower it when a proxy, load "
        "balancer or NAT between them drops connections idle for less than twice this; "
        "raise it only to cut pings over very many connections.",
    )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def client_options(interval_s: float) -> GrpcOptions:
    """Channel options: ping every ``interval_s``, with no limit on pings sent while
    a call receives no data (gRPC's default stops after two)."""
    return [
        ("grpc.keepalive_time_ms", _ms(interval_s)),
        ("grpc.keepalive_timeout_ms", _ms(KEEPALIVE_TIMEOUT_S)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_options(interval_s: float) -> GrpcOptions:
    """Server options that accept the pings of ``client_options(interval_s)``, on
    silent calls and idle connections alike. The server pings a client only after
    twice the interval without hearing from it: a live client's own pings come first,
    so a connection carries one ping an interval, and a vanished client is still
    found (its calls cancelled) within two intervals and the timeout. Connections
    are bounded in age (``MAX_CONNECTION_AGE_S``) so that clients rebalance."""
    return [
        ("grpc.keepalive_time_ms", _ms(2 * interval_s)),
        ("grpc.keepalive_timeout_ms", _ms(KEEPALIVE_TIMEOUT_S)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(interval_s / 2)),
        ("grpc.max_connection_age_ms", _ms(MAX_CONNECTION_AGE_S)),
        ("grpc.max_connection_age_grace_ms", _ms(MAX_CONNECTION_AGE_GRACE_S)),
    ]
