"""The gateway's HTTP protocol writes each plain response to the socket at once.

uvicorn's own httptools protocol, driven with real request bytes, over a
transport that records the writes that would reach the socket.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from lodestar.services.gateway.transport import CoalescingHttpToolsProtocol, CoalescingTransport

REQUEST = b"GET /thing HTTP/1.1\r\nHost: gateway\r\n\r\n"


class SocketTransport(asyncio.Transport):
    """Records writes (one entry per write, as one system call each)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def plain(scope: Any, receive: Any, send: Any) -> None:
    body = b'{"ok": true}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"12")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def stream(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/x")]}
    )
    await send({"type": "http.response.body", "body": b"first", "more_body": True})
    await asyncio.sleep(0.01)
    await send({"type": "http.response.body", "body": b"second", "more_body": True})
    await asyncio.sleep(0.01)
    await send({"type": "http.response.body", "body": b""})


async def serve_one(
    app: Any, protocol_class: type[HttpToolsProtocol] = CoalescingHttpToolsProtocol
) -> SocketTransport:
    config = uvicorn.Config(app, log_config=None, access_log=False, server_header=False)
    config.load()
    protocol = protocol_class(config, ServerState(), {}, asyncio.get_running_loop())
    transport = SocketTransport()
    protocol.connection_made(transport)
    protocol.data_received(REQUEST)
    assert protocol.cycle is not None
    for _ in range(200):
        if protocol.cycle.response_complete:
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0)  # the end of the step that completed the response
    protocol.connection_lost(None)
    return transport


async def test_a_plain_response_reaches_the_socket_in_one_write() -> None:
    transport = await serve_one(plain)
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"content-length: 12" in head
    assert body == b'{"ok": true}'


async def test_uvicorn_alone_writes_headers_and_body_separately() -> None:
    # What the protocol changes: the same response through uvicorn's own protocol.
    transport = await serve_one(plain, HttpToolsProtocol)
    assert len(transport.writes) == 2
    assert transport.writes[1] == b'{"ok": true}'


async def test_a_stream_sends_each_step_as_it_ends() -> None:
    transport = await serve_one(stream)
    # Headers and the first chunk were written in one step; each later chunk in its own.
    assert len(transport.writes) == 3
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK")
    assert transport.writes[0].endswith(b"5\r\nfirst\r\n")
    assert transport.writes[1] == b"6\r\nsecond\r\n"
    assert transport.writes[2] == b"0\r\n\r\n"


async def test_close_sends_what_is_pending_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    socket = SocketTransport()
    transport = CoalescingTransport(socket, loop)
    transport.write(b"a")
    transport.write(b"b")
    assert socket.writes == []
    assert transport.get_write_buffer_size() == 2
    transport.close()
    assert socket.writes == [b"ab"]
    assert socket.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert socket.writes == [b"ab"]

    socket = SocketTransport()
    transport = CoalescingTransport(socket, loop)
    transport.write(b"lost")
    transport.abort()
    await asyncio.sleep(0)
    assert socket.writes == []
    assert socket.aborted


async def test_nothing_is_written_once_the_socket_is_closing() -> None:
    socket = SocketTransport()
    transport = CoalescingTransport(socket, asyncio.get_running_loop())
    transport.write(b"late")
    socket.closed = True
    await asyncio.sleep(0)
    assert socket.writes == []
    assert transport.get_extra_info("peername") == ("127.0.0.1", 50000)


@pytest.mark.parametrize("app", [plain, stream])
async def test_the_response_bytes_are_the_same_as_uvicorns(app: Any) -> None:
    ours = await serve_one(app)
    theirs = await serve_one(app, HttpToolsProtocol)

    def without_date(raw: bytes) -> bytes:
        return b"\r\n".join(
            line for line in raw.split(b"\r\n") if not line.lower().startswith(b"date:")
        )

    assert without_date(b"".join(ours.writes)) == without_date(b"".join(theirs.writes))
