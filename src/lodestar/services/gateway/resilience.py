"""Calls to backend replicas: deadlines, circuit breakers, failover, retries.

Each backend service has a pool of replicas, one gRPC channel and one circuit
breaker each. A call goes to the least busy replica whose breaker is closed.
After ``failure_threshold`` consecutive failures (UNAVAILABLE, or a deadline
that the client did not shorten) the breaker opens and the replica gets no
traffic; ``open_s`` later a gRPC health check probes it (half-open) and, if it
answers SERVING, the breaker closes again. Probing with a health check rather
than with a client's request means no client request is sacrificed to find
out. Idempotent calls that fail with UNAVAILABLE are retried once, on another
replica when there is one. When no replica is healthy, an idempotent call waits
for one to come back (connectable and passing a health probe), at most one
breaker period and within its deadline, so that reads ride out a restart; any
other call, or one whose wait ends with none back, fails at once with 503 and a
Retry-After of the time until the next probe.

A backend's addresses may be DNS targets (``discovery``): the pool then holds one
replica per address the name resolves to and follows the records as they change.
A replica whose address leaves the records gets no new calls, and its channel
closes once its calls in flight have finished.

Every backend call takes one of two paths, ``ReplicaPool.unary`` and
``ReplicaPool.stream``, given an ``Rpc``: the service and method name, which
find the generated stub's method, and whether the RPC is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, Generic, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lodestar.runtime import channels
from lodestar.runtime.keepalive import MAX_CONNECTION_AGE_GRACE_S
from lodestar.runtime.tls import TlsSettings
from lodestar.services.gateway.backend_errors import AllReplicasUnavailable, backend_error
from lodestar.services.gateway.deadline import CallOptions, Deadline
from lodestar.services.gateway.discovery import RESOLVE_INTERVAL_S, Discovery, parse_target
from lodestar.services.gateway.metrics import (
    BACKEND_DURATION_BY,
    remove_breaker_state,
    set_breaker_state,
)

_log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


# --- circuit breaker ---------------------------------------------------------------------


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """closed → open after N consecutive failures → half-open probe → closed."""

    def __init__(
        self,
        failure_threshold: int,
        open_s: float,
        on_change: Callable[[BreakerState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self._on_change = on_change
        self._clock = clock

    def _set(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state)

    @property
    def closed(self) -> bool:
        return self.state is BreakerState.CLOSED

    def probe_due(self) -> bool:
        return self.state is BreakerState.OPEN and self._clock() - self.opened_at >= self.open_s

    def retry_after(self) -> float:
        if self.state is BreakerState.OPEN:
            return max(0.0, self.opened_at + self.open_s - self._clock())
        return 0.0

    def begin_probe(self) -> None:
        self._set(BreakerState.HALF_OPEN)

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED
            and self.consecutive_failures >= self.failure_threshold
        ):
            self.opened_at = self._clock()
            self._set(BreakerState.OPEN)


# --- replicas and pools ------------------------------------------------------------------


class Replica:
    """One backend address: its channel, a generated stub per service, its
    breaker and its load."""

    def __init__(
        self,
        backend: str,
        address: str,
        channel: grpc.aio.Channel,
        stubs: dict[str, object],
        breaker: CircuitBreaker,
    ) -> None:
        self.backend = backend
        self.address = address
        self.channel = channel
        self.stubs = stubs
        self.breaker = breaker
        self.in_flight = 0
        self.health = health_pb2_grpc.HealthStub(channel)

    def connection_failing(self) -> bool:
        state = self.channel.get_state(try_to_connect=False)
        return state is grpc.ChannelConnectivity.TRANSIENT_FAILURE


@dataclass(frozen=True, slots=True)
class ReplicaHealth:
    address: str
    breaker: str
    serving: str
    in_flight: int


# Deadline of a half-open probe (a gRPC health check): a replica that is up answers
# one in milliseconds.
PROBE_TIMEOUT_S: Final = 1.0
# First pause between health probes of a replica that accepts connections but is not
# serving yet, while a call waits for it (doubling up to PROBE_TIMEOUT_S).
RECOVERY_PAUSE_S: Final = 0.05
# Longest wait between a channel's attempts to reconnect to a replica that is down,
# so that one that comes back is found within seconds, not minutes.
RECONNECT_BACKOFF_MAX_S: Final = 2.0


# An idempotent call is retried on these. CANCELLED reaches here only when the
# server cancelled the call (a cancelled client request raises CancelledError
# instead): a replica shutting down does that to the calls it was serving.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


def _is_replica_failure(code: grpc.StatusCode, deadline: Deadline) -> bool:
    if code is grpc.StatusCode.UNAVAILABLE:
        return True
    return code is grpc.StatusCode.DEADLINE_EXCEEDED and not deadline.shortened


StubFactory = Callable[[grpc.aio.Channel], object]


@dataclass(frozen=True, slots=True)
class Rpc(Generic[Req, Resp]):
    """One RPC of a backend service, by name, and whether it is idempotent:
    safe to send again when the first reply was lost (UNAVAILABLE), because
    doing its work twice leaves the same result as doing it once."""

    service: str
    method: str
    idempotent: bool


class ReplicaPool:
    """The replicas of one backend and the one policy for calling them.

    ``stubs`` maps each service the backend serves (full name) to its
    generated stub class; ``service_name`` is the one its health is checked by.
    Channels use ``tls``'s certificates; a DNS replica's, under the resolved name.
    """

    def __init__(
        self,
        backend: str,
        service_name: str,
        addresses: Sequence[str],
        stubs: Mapping[str, StubFactory],
        *,
        failure_threshold: int = 5,
        open_s: float = 5.0,
        resolve_interval_s: float = RESOLVE_INTERVAL_S,
        tls: TlsSettings | None = None,
    ) -> None:
        if not addresses:
            raise ValueError(f"{backend}: at least one replica address is needed")
        self.backend = backend
        self.service_name = service_name
        self._stubs = stubs
        self._failure_threshold = failure_threshold
        self._open_s = open_s
        # A channel retries a replica that is down at least as often as its breaker
        # probes it, so that a probe finds a replica that came back connected.
        self._options = channels.reconnecting_options(min(RECONNECT_BACKOFF_MAX_S, open_s))
        self._tls = tls
        targets = [(address, parse_target(address)) for address in addresses]
        self._fixed = [address for address, target in targets if target is None]
        dns_targets = [target for _, target in targets if target is not None]
        self._dns_name = dns_targets[0].name if dns_targets else None
        self.replicas: list[Replica] = [self._replica(a) for a in dict.fromkeys(self._fixed)]
        self._discovery = (
            Discovery(backend, dns_targets, self._follow, resolve_interval_s)
            if dns_targets
            else None
        )
        self._retiring: dict[asyncio.Task[None], Replica] = {}
        self._next = 0
        self._probes: dict[int, asyncio.Task[bool]] = {}

    def _replica(self, address: str) -> Replica:
        name = None if address in self._fixed else self._dns_name
        channel = channels.open_channel(address, self._tls, self._options, name)
        set_breaker_state(self.backend, address, BreakerState.CLOSED.name.lower())
        breaker = CircuitBreaker(
            self._failure_threshold, self._open_s, on_change=self._state_logger(address)
        )
        per_service = {service: make(channel) for service, make in self._stubs.items()}
        return Replica(self.backend, address, channel, per_service, breaker)

    def reopen(self) -> None:
        """New channels to every replica (renewed certificates); calls in flight
        finish on the old ones, which close after them."""
        old, self.replicas = self.replicas, [self._replica(r.address) for r in self.replicas]
        for replica in old:
            task = asyncio.create_task(replica.channel.close(MAX_CONNECTION_AGE_GRACE_S))
            self._retiring[task] = replica
            task.add_done_callback(lambda done: self._retiring.pop(done, None))

    def _follow(self, resolved: frozenset[str]) -> None:
        """Make the replicas those of the fixed addresses and of ``resolved``."""
        wanted = dict.fromkeys([*self._fixed, *sorted(resolved)])
        kept = [r for r in self.replicas if r.address in wanted]
        known = {r.address for r in kept}
        for replica in self.replicas:
            if replica.address not in wanted:
                self._retire(replica)
        self.replicas = kept + [self._replica(a) for a in wanted if a not in known]

    def _retire(self, replica: Replica) -> None:
        """No new calls for ``replica``; its channel closes when its calls finish
        (cut only after the longest time a server lets a call outlive its connection)."""
        _log.info("%s replica %s: left the records, draining", self.backend, replica.address)
        remove_breaker_state(self.backend, replica.address)
        task = asyncio.create_task(
            replica.channel.close(MAX_CONNECTION_AGE_GRACE_S), name=f"retire {replica.address}"
        )
        self._retiring[task] = replica
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def _discover(self) -> None:
        if self._discovery is not None and not self._discovery.resolved:
            await self._discovery.start()

    def _state_logger(self, address: str) -> Callable[[BreakerState], None]:
        def changed(state: BreakerState) -> None:
            set_breaker_state(self.backend, address, state.name.lower())
            log = _log.warning if state is BreakerState.OPEN else _log.info
            log("%s replica %s: circuit breaker %s", self.backend, address, state.name.lower())

        return changed

    # -- choosing a replica --

    def _pick(self, exclude: Replica | None) -> Replica | None:
        replicas = self.replicas
        count = len(replicas)
        if not count:
            return None
        start = self._next % count
        self._next = (start + 1) % count
        best: Replica | None = None
        best_key: tuple[bool, int] = (True, 1 << 30)
        for i in range(count):
            replica = replicas[(start + i) % count]
            breaker = replica.breaker
            if not breaker.closed:
                if breaker.probe_due():
                    self._start_probe(replica)
                continue
            if replica is exclude:
                continue
            failing = replica.connection_failing()
            if failing:
                # A replica that cannot be connected to fails every call it
                # would get: count that against it rather than send it calls.
                breaker.record_failure()
                if not breaker.closed:
                    continue
            key = (failing, replica.in_flight)
            if best is None or key < best_key:
                best, best_key = replica, key
        if best is None and exclude is not None and exclude.breaker.closed and exclude in replicas:
            return exclude
        return best

    async def _choose(self, exclude: Replica | None, deadline: Deadline, wait: bool) -> Replica:
        """A replica for the next attempt, other than ``exclude`` when another is
        healthy. With ``wait`` (an idempotent call) and none healthy, the call waits
        for one to come back instead of failing: see ``_recovered``."""
        await self._discover()
        replica = self._pick(exclude)
        if replica is not None and not (wait and replica is exclude):
            return replica
        if wait:
            back = await self._recovered(deadline)
            if back is not None:
                return back
        elif self._probes:
            # Every breaker is open but some replica is being probed: a quick
            # answer from it beats refusing the request.
            timeout = min(PROBE_TIMEOUT_S, max(0.0, deadline.remaining()))
            await asyncio.wait(
                list(self._probes.values()), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            replica = self._pick(exclude)
        if replica is not None:
            return replica
        retry_after = min((r.breaker.retry_after() for r in self.replicas), default=0.0)
        raise AllReplicasUnavailable(
            f"every replica of the {self.backend} service is failing; retry shortly",
            reason="BACKEND_UNAVAILABLE",
            metadata={"backend": self.backend},
            retry_after_s=max(1.0, retry_after),
        )

    async def _recovered(self, deadline: Deadline) -> Replica | None:
        """The first replica to accept connections and pass a health probe again,
        waiting at most one breaker period and never past ``deadline``; None if
        none does. A restarting service (one process per data directory, as the
        embedded vector service is) is back well within a breaker period, and a read
        waiting for it beats a 503; the wait is bounded so that calls to a backend
        that is really down do not pile up."""
        loop = asyncio.get_running_loop()
        end = loop.time() + min(self._open_s, max(0.0, deadline.remaining()))
        pause = RECOVERY_PAUSE_S
        while (left := end - loop.time()) > 0:
            waiting = [
                asyncio.ensure_future(replica.channel.channel_ready()) for replica in self.replicas
            ]
            if not waiting:
                return None
            done, pending = await asyncio.wait(
                waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            for future in pending:
                future.cancel()
            if not done:
                return None
            for replica in self.replicas:
                state = replica.channel.get_state(try_to_connect=False)
                if state is grpc.ChannelConnectivity.READY and await self._probe_once(replica):
                    return replica
            # Connected but not serving (still draining, or still starting):
            # look again shortly.
            await asyncio.sleep(min(pause, max(0.0, end - loop.time())))
            pause = min(pause * 2, PROBE_TIMEOUT_S)
        return None

    async def _probe_once(self, replica: Replica) -> bool:
        """Whether ``replica`` is serving, by the probe in flight for it or a new one
        (concurrent waiters share one health check)."""
        self._start_probe(replica)
        task = self._probes.get(id(replica))
        if task is None:  # pragma: no cover - it ended within the call above
            return replica.breaker.closed
        return await asyncio.shield(task)

    def _start_probe(self, replica: Replica) -> None:
        key = id(replica)
        if key in self._probes:
            return
        replica.breaker.begin_probe()
        task = asyncio.create_task(self._probe(replica), name=f"probe {replica.address}")
        self._probes[key] = task
        task.add_done_callback(lambda _: self._probes.pop(key, None))

    async def _probe(self, replica: Replica) -> bool:
        try:
            reply = await replica.health.Check(
                health_pb2.HealthCheckRequest(service=self.service_name),
                timeout=PROBE_TIMEOUT_S,
                wait_for_ready=True,
            )
            serving = bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            serving = False
        if serving:
            replica.breaker.record_success()
        else:
            replica.breaker.record_failure()
        return serving

    # -- calls --

    def _settle(self, replica: Replica, code: grpc.StatusCode, deadline: Deadline) -> None:
        if code is grpc.StatusCode.CANCELLED:
            return
        if _is_replica_failure(code, deadline):
            replica.breaker.record_failure()
        else:
            # Any answer from the service, errors included, proves it alive.
            replica.breaker.record_success()

    async def unary(self, rpc: Rpc[Req, Resp], request: Req, options: CallOptions) -> Resp:
        """``rpc``'s reply from a healthy replica, within the deadline; an
        idempotent call that fails with UNAVAILABLE is retried once."""
        method = rpc.method
        attempts = 2 if rpc.idempotent else 1
        exclude: Replica | None = None
        for attempt in range(attempts):
            replica = await self._choose(exclude, options.deadline, rpc.idempotent)
            timeout = options.deadline.timeout(self.backend)
            call: Any = getattr(replica.stubs[rpc.service], method)
            replica.in_flight += 1
            start = time.perf_counter()
            try:
                result: Resp = await call(request, timeout=timeout, metadata=options.metadata)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                BACKEND_DURATION_BY(self.backend, method, code.name).observe(
                    time.perf_counter() - start
                )
                self._settle(replica, code, options.deadline)
                if code in _RETRYABLE and attempt + 1 < attempts:
                    exclude = replica
                    continue
                raise backend_error(self.backend, error) from None
            except asyncio.CancelledError:
                BACKEND_DURATION_BY(self.backend, method, "CANCELLED").observe(
                    time.perf_counter() - start
                )
                raise
            finally:
                replica.in_flight -= 1
            BACKEND_DURATION_BY(self.backend, method, "OK").observe(time.perf_counter() - start)
            if not replica.breaker.closed or replica.breaker.consecutive_failures:
                replica.breaker.record_success()
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def stream(
        self, rpc: Rpc[Req, Resp], request: Req, options: CallOptions
    ) -> AsyncIterator[Resp]:
        """Messages of a server-streaming ``rpc``; the call is cancelled if the
        consumer stops early (client disconnect). An idempotent stream that
        fails with UNAVAILABLE before its first message is retried once."""
        method = rpc.method
        attempts = 2 if rpc.idempotent else 1
        exclude: Replica | None = None
        for attempt in range(attempts):
            replica = await self._choose(exclude, options.deadline, rpc.idempotent)
            open_call: Any = getattr(replica.stubs[rpc.service], method)
            call: grpc.aio.UnaryStreamCall[Req, Resp] = open_call(
                request, timeout=options.deadline.timeout(self.backend), metadata=options.metadata
            )
            replica.in_flight += 1
            start = time.perf_counter()
            code_name = "OK"
            received = False
            try:
                async for message in call:
                    received = True
                    yield message
                self._settle(replica, grpc.StatusCode.OK, options.deadline)
                return
            except grpc.aio.AioRpcError as error:
                code = error.code()
                code_name = code.name
                self._settle(replica, code, options.deadline)
                if code in _RETRYABLE and not received and attempt + 1 < attempts:
                    exclude = replica
                    continue
                raise backend_error(self.backend, error) from None
            except (asyncio.CancelledError, GeneratorExit):
                code_name = "CANCELLED"
                raise
            finally:
                if not call.done():
                    call.cancel()
                replica.in_flight -= 1
                BACKEND_DURATION_BY(self.backend, method, code_name).observe(
                    time.perf_counter() - start
                )

    # -- health and lifecycle --

    async def health(self, check_timeout_s: float = 1.0) -> list[ReplicaHealth]:
        """Each replica's gRPC health and breaker state (probes due ones)."""
        await self._discover()

        async def check(replica: Replica) -> ReplicaHealth:
            try:
                reply = await replica.health.Check(
                    health_pb2.HealthCheckRequest(service=self.service_name),
                    timeout=check_timeout_s,
                )
                serving = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as error:
                serving = (
                    "UNREACHABLE"
                    if error.code() is not grpc.StatusCode.NOT_FOUND
                    else ("SERVICE_UNKNOWN")
                )
            if serving == "SERVING" and replica.breaker.probe_due():
                self._start_probe(replica)
            return ReplicaHealth(
                replica.address,
                replica.breaker.state.name.lower(),
                serving,
                replica.in_flight,
            )

        return list(await asyncio.gather(*(check(r) for r in self.replicas)))

    async def close(self) -> None:
        if self._discovery is not None:
            await self._discovery.close()
        for task in list(self._probes.values()):
            task.cancel()
        for task in list(self._probes.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        retiring = list(self._retiring.items())
        for closing, _ in retiring:
            closing.cancel()
        await asyncio.gather(*(closing for closing, _ in retiring), return_exceptions=True)
        draining = [replica for _, replica in retiring]
        await asyncio.gather(*(r.channel.close() for r in [*self.replicas, *draining]))
