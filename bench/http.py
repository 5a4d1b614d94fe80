"""A minimal keep-alive HTTP/1.1 client for latency measurements.

A general-purpose Python client (httpx) spends a few hundred microseconds of
CPU per request on its own (URL and header models, JSON encoding, connection
pool bookkeeping), which would be counted as the server's latency. Load tools
(wrk, k6, vegeta) write the request bytes and read the response with next to
no work; this client does the same from asyncio: one connection, one request
at a time, ``Content-Length`` bodies only (the gateway's JSON answers).
"""

from __future__ import annotations

import asyncio

import orjson


class HttpError(Exception):
    """A response the client cannot read (chunked, malformed) or a closed connection."""


class KeepAliveHttp:
    """One keep-alive connection to ``host:port``, sending ``headers`` on every request."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        fixed = {"Host": f"{host}:{port}", **(headers or {})}
        self._headers = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        return await self.request("GET", path)

    async def post_json(self, path: str, body: object) -> tuple[int, bytes]:
        return await self.request("POST", path, orjson.dumps(body))

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """Status and body of one request."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        head = f"{method} {path} HTTP/1.1\r\n{self._headers}"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._writer.write(head.encode("latin-1") + b"\r\n" + body)
        try:
            raw = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            await self.close()
            raise HttpError("the server closed the connection") from None
        lines = raw.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise HttpError(f"malformed status line {lines[0]!r}") from None
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"transfer-encoding":
                raise HttpError("chunked responses are not supported")
        if length is None:
            raise HttpError("the response has no Content-Length")
        return status, await self._reader.readexactly(length)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._reader = None
