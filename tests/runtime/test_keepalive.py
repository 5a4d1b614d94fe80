"""Keepalive: servers accept the pings of the platform's channels, so a call that
stays silent for many ping intervals completes, on the connection it started on.

The silent call runs in a child process with gRPC's keepalive trace on, so that the
test sees the pings the server received and any GOAWAY it sent. With a server that
kept gRPC's default minimum between pings (5 minutes), the fifth ping of the call is
its third strike: the server answers GOAWAY "too_many_pings" and the call fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from lodestar.embedding.v1 import embedding_service_pb2 as pb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as pb_grpc
from lodestar.runtime.channels import channel_options, insecure_channel
from lodestar.runtime.keepalive import client_options, server_options
from lodestar.runtime.server import GrpcServer, ServiceRegistration
from lodestar.runtime.settings import ServerSettings

INTERVAL_S = 1
# Eight pings' worth of silence: well past the fifth ping, where a server with
# gRPC's default ping policy closes the connection.
SILENCE_S = 8 * INTERVAL_S


@pytest.mark.parametrize("interval_s", [1.0, 30.0, 3600.0])
def test_servers_accept_the_pings_clients_send(interval_s: float) -> None:
    client = dict(client_options(interval_s))
    server = dict(server_options(interval_s))
    assert server["grpc.http2.min_ping_interval_without_data_ms"] < client["grpc.keepalive_time_ms"]
    # Pings on a connection with no call are sent, and accepted.
    assert client["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.keepalive_permit_without_calls"] == 1
    # A call that receives no data may see any number of pings.
    assert client["grpc.http2.max_pings_without_data"] == 0
    # A live client's pings come before the server's own.
    assert server["grpc.keepalive_time_ms"] > client["grpc.keepalive_time_ms"]


def test_channels_and_servers_read_one_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LODESTAR_GRPC_KEEPALIVE_S", "7")
    assert dict(channel_options())["grpc.keepalive_time_ms"] == 7000
    assert ServerSettings().grpc_keepalive_s == 7.0


def test_a_silent_call_outlives_many_pings() -> None:
    env = {
        **os.environ,
        "LODESTAR_GRPC_KEEPALIVE_S": str(INTERVAL_S),
        "GRPC_VERBOSITY": "debug",
        "GRPC_TRACE": "http_keepalive",
    }
    child = subprocess.run(
        [sys.executable, str(Path(__file__))],
        env=env,
        capture_output=True,
        text=True,
        timeout=SILENCE_S + 50,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    silent, quick = json.loads(child.stdout)
    assert silent["code"] == "OK", silent
    assert quick["code"] == "OK", quick
    # The second call went over the same connection: none was closed in between.
    assert quick["peer"] == silent["peer"]
    log = child.stderr
    received = [line for line in log.splitlines() if "SERVER[" in line and "received ping" in line]
    assert len(received) >= 3, log[-4000:]
    assert "too_many_pings" not in log
    assert "GOAWAY" not in log.upper()


class _SilentServicer(pb_grpc.EmbeddingServiceServicer):
    """Answers after the seconds its first text names, sending nothing before."""

    async def EmbedTexts(
        self, request: pb.EmbedTextsRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedTextsResponse:
        await asyncio.sleep(float(request.texts[0]))
        # The client's address and port: the same for calls on one connection.
        return pb.EmbedTextsResponse(model=context.peer())


async def _silent_then_quick() -> list[dict[str, str]]:
    """A silent call, then a quick one on the same channel: each call's status and
    the client address the server saw."""
    servicer = _SilentServicer()
    server = GrpcServer(
        ServerSettings(host="127.0.0.1", port=0),
        [
            ServiceRegistration(
                "lodestar.embedding.v1.EmbeddingService",
                lambda s: pb_grpc.add_EmbeddingServiceServicer_to_server(servicer, s),
            )
        ],
    )
    port = await server.start()
    results: list[dict[str, str]] = []
    try:
        async with insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            for seconds in (SILENCE_S, 0):
                request = pb.EmbedTextsRequest(texts=[str(seconds)])
                try:
                    reply = await stub.EmbedTexts(request, timeout=SILENCE_S + 30)
                except grpc.aio.AioRpcError as error:
                    results.append({"code": error.code().name, "details": error.details() or ""})
                else:
                    results.append({"code": "OK", "peer": reply.model})
    finally:
        await server.stop(0)
    return results


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_silent_then_quick())))
