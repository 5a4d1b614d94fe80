"""Outgoing gRPC channels with the platform's options and tracing."""

from __future__ import annotations

import grpc

from lodestar.runtime.server import MAX_MESSAGE_BYTES
from lodestar.runtime.telemetry import tracing_client_interceptors

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
]


def insecure_channel(address: str) -> grpc.aio.Channel:
    """An aio channel to a Lodestar service (retries are the caller's policy)."""
    return grpc.aio.insecure_channel(
        address, options=CHANNEL_OPTIONS, interceptors=tracing_client_interceptors()
    )
