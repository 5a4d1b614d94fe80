"""Outgoing gRPC channels with the platform's options and tracing."""

from __future__ import annotations

import grpc

from lodestar.runtime.keepalive import KeepaliveSettings, client_options
from lodestar.runtime.server import MAX_MESSAGE_BYTES
from lodestar.runtime.telemetry import tracing_client_interceptors


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


def insecure_channel(address: str) -> grpc.aio.Channel:
    """An aio channel to a Lodestar service (retries are the caller's policy)."""
    return grpc.aio.insecure_channel(
        address, options=channel_options(), interceptors=tracing_client_interceptors()
    )
