"""Backend addresses that name every pod: DNS targets the gateway resolves itself.

A backend address ``dns:///name:port`` (the system resolver: /etc/hosts, the search
domains of resolv.conf) or ``dns://server[:port]/name:port`` (A records from that DNS
server) stands for every address the name resolves to, each a replica of its own with
its own channel and breaker. With a headless Service that is one address per ready
pod, so calls spread over every pod, not over the one connection a Service's virtual
IP would give. The name is resolved again every ``interval_s``: addresses that appear
join the pool, addresses that disappear leave it. A resolution that fails or finds
nothing keeps the last addresses, so that a DNS hiccup never empties a pool. Any
other address is one replica, as given.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import dns.asyncresolver
import dns.exception

_log = logging.getLogger(__name__)

# How often a DNS target is resolved again: a pod that becomes ready gets calls, and
# one that goes away stops getting them, within this long of its DNS record changing.
RESOLVE_INTERVAL_S: Final = 5.0
# Longest wait for one resolution.
RESOLVE_TIMEOUT_S: Final = 2.0

_SCHEME: Final = "dns:"
_DNS_PORT: Final = 53


def _host_port(text: str, default_port: int | None) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"{text!r} has no port")
        return host, default_port
    if not port_text.isdigit() or not host:
        raise ValueError(f"{text!r} is not host:port")
    return host, int(port_text)


def replica_address(ip: str, port: int) -> str:
    """``ip:port``, with an IPv6 address in brackets as gRPC targets want."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True, slots=True)
class DnsTarget:
    """A name whose addresses are the replicas, all on one port; ``authority`` is
    the DNS server to ask (host, port), or ``None`` for the system resolver."""

    name: str
    port: int
    authority: tuple[str, int] | None = None

    async def resolve(self, timeout_s: float = RESOLVE_TIMEOUT_S) -> list[str]:
        """Every address of the name, as ``ip:port``, sorted."""
        if self.authority is None:
            loop = asyncio.get_running_loop()
            infos = await asyncio.wait_for(
                loop.getaddrinfo(self.name, self.port, type=socket.SOCK_STREAM), timeout_s
            )
            ips = {str(info[4][0]) for info in infos}
        else:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [self.authority[0]]
            resolver.port = self.authority[1]
            answer = await resolver.resolve(self.name, "A", lifetime=timeout_s)
            ips = {rdata.to_text() for rdata in answer}
        return sorted(replica_address(ip, self.port) for ip in ips)


def parse_target(address: str) -> DnsTarget | None:
    """The DNS target an address names, or ``None`` for a fixed ``host:port``.

    Raises ValueError for a ``dns:`` address that is malformed.
    """
    if not address.startswith(_SCHEME):
        return None
    rest = address.removeprefix(_SCHEME)
    authority: tuple[str, int] | None = None
    if rest.startswith("//"):
        server, slash, rest = rest[2:].partition("/")
        if not slash:
            raise ValueError(f"{address!r}: expected dns:///name:port or dns://server/name:port")
        if server:
            host, port = _host_port(server, _DNS_PORT)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"{address!r}: the DNS server must be an IP address") from None
            authority = (host, port)
    name, port = _host_port(rest, None)
    return DnsTarget(name, port, authority)


class Discovery:
    """Keeps the addresses of some DNS targets current and reports each change.

    ``on_change`` gets the union of every target's addresses whenever it differs from
    the last one reported. ``start`` resolves once (so that the first calls find
    replicas), then again every ``interval_s`` until ``close``.
    """

    def __init__(
        self,
        backend: str,
        targets: Sequence[DnsTarget],
        on_change: Callable[[frozenset[str]], None],
        interval_s: float = RESOLVE_INTERVAL_S,
    ) -> None:
        self.backend = backend
        self.targets = list(targets)
        self.interval_s = interval_s
        self._on_change = on_change
        self._found: dict[DnsTarget, list[str]] = {}
        self._reported: frozenset[str] | None = None
        self._first: asyncio.Task[None] | None = None
        self._loop: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def resolved(self) -> bool:
        """Whether the first resolution has finished."""
        return self._first is not None and self._first.done()

    async def start(self) -> None:
        """Resolve every target once, and keep doing so in the background; calls
        after the first wait for the first resolution to finish."""
        if self._first is None:
            self._first = asyncio.create_task(self.refresh(), name=f"resolve {self.backend}")
            self._first.add_done_callback(lambda _: self._start_loop())
        await asyncio.shield(self._first)

    def _start_loop(self) -> None:
        if self._loop is None and not self._closed:
            self._loop = asyncio.create_task(self._run(), name=f"re-resolve {self.backend}")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.refresh()

    async def refresh(self) -> None:
        """Resolve every target now and report the addresses if they changed."""
        results = await asyncio.gather(
            *(target.resolve() for target in self.targets), return_exceptions=True
        )
        for target, result in zip(self.targets, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, (OSError, TimeoutError, dns.exception.DNSException)):
                    raise result
                _log.warning(
                    "%s: cannot resolve %s (%s); keeping its last addresses",
                    self.backend,
                    target.name,
                    result or type(result).__name__,
                )
            elif result:
                self._found[target] = result
            else:
                _log.warning(
                    "%s: %s has no address; keeping its last ones", self.backend, target.name
                )
        addresses = frozenset(a for found in self._found.values() for a in found)
        if addresses != self._reported:
            self._reported = addresses
            _log.info("%s replicas: %s", self.backend, ", ".join(sorted(addresses)) or "none")
            self._on_change(addresses)

    async def close(self) -> None:
        self._closed = True
        for task in (self._loop, self._first):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
