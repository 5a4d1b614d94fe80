"""Outgoing gRPC channels with the platform's options, TLS and tracing."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from lodestar.runtime.keepalive import KeepaliveSettings, client_options
from lodestar.runtime.server import MAX_MESSAGE_BYTES
from lodestar.runtime.telemetry import tracing_client_interceptors
from lodestar.runtime.tls import TlsSettings, channel_credentials


def channel_options() -> list[tuple[str, int | str]]:
    """The options of every channel to a Lodestar service: its message size limit,
    keepalive pings the servers accept (the interval read from the environment, as
    the servers read it), and no retries by gRPC (retries are the caller's policy)."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        *client_options(KeepaliveSettings().grpc_keepalive_s),
        ("grpc.enable_retries", 0),
    ]


def reconnecting_options(reconnect_backoff_max_s: float) -> list[tuple[str, int | str]]:
    """``channel_options`` for a channel that reconnects to a replica that comes
    back within ``reconnect_backoff_max_s``, not minutes (gRPC's default backoff)."""
    backoff_ms = max(100, int(reconnect_backoff_max_s * 1000))
    return [
        *channel_options(),
        ("grpc.initial_reconnect_backoff_ms", min(backoff_ms, 250)),
        ("grpc.min_reconnect_backoff_ms", min(backoff_ms, 250)),
        ("grpc.max_reconnect_backoff_ms", backoff_ms),
    ]


def open_channel(
    address: str,
    tls: TlsSettings | None = None,
    options: Sequence[tuple[str, int | str]] | None = None,
    server_name: str | None = None,
) -> grpc.aio.Channel:
    """An aio channel to a Lodestar service: TLS when ``tls`` (by default the
    environment's ``LODESTAR_GRPC_TLS_DIR``) names certificates, plaintext otherwise.

    ``server_name`` is the name the server's certificate must carry, where
    ``address`` is not it (an address a DNS name resolved to)."""
    credentials = channel_credentials(tls if tls is not None else TlsSettings())
    opts = list(channel_options() if options is None else options)
    interceptors = tracing_client_interceptors() or None
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=opts, interceptors=interceptors)
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(address, credentials, options=opts, interceptors=interceptors)


def insecure_channel(address: str) -> grpc.aio.Channel:
    """A plaintext aio channel to a Lodestar service (retries are the caller's policy)."""
    return grpc.aio.insecure_channel(
        address, options=channel_options(), interceptors=tracing_client_interceptors()
    )
