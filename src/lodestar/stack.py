"""``lodestar run``: the whole stack as local processes on embedded defaults.

Starts each service as its own process (the same command a container runs),
waits until each reports healthy, prints the addresses and a ready admin token,
and on Ctrl-C (or SIGTERM) stops them gracefully, the gateway before the services
it calls. A service that dies is restarted with backoff; one that keeps dying stops
the stack.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lodestar.runtime.tls import TlsSettings, channel_credentials

STARTUP_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class _Service:
    name: str
    kind: str  # "grpc" or "http"
    port: int
    metrics_port: int | None

    @property
    def env_prefix(self) -> str:
        return f"LODESTAR_{self.name.upper()}_"

    def resolved_port(self) -> int:
        return int(os.environ.get(f"{self.env_prefix}PORT", self.port))

    def resolved_host(self) -> str:
        return os.environ.get(f"{self.env_prefix}HOST", "127.0.0.1")

    def address(self) -> str:
        return f"{self.resolved_host()}:{self.resolved_port()}"


_BACKENDS = (
    _Service("embedding", "grpc", 50051, 9101),
    _Service("vector", "grpc", 50052, 9102),
    _Service("inference", "grpc", 50053, 9103),
)
_GATEWAY = _Service("gateway", "http", 8080, None)


def _available(service: _Service) -> bool:
    return importlib.util.find_spec(f"lodestar.services.{service.name}.__main__") is not None


def _environment(services: Sequence[_Service]) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("LODESTAR_VECTOR_DATA_DIR", str(Path(".data/vector").resolve()))
    for service in services:
        env.setdefault(f"{service.env_prefix}PORT", str(service.port))
        if service.metrics_port is not None:
            env.setdefault(f"{service.env_prefix}METRICS_PORT", str(service.metrics_port))
        if service.kind == "grpc":
            env.setdefault(f"LODESTAR_GATEWAY_{service.name.upper()}_ADDRESSES", service.address())
    return env


def _healthy(service: _Service) -> bool:
    if service.kind == "http":
        url = f"http://{service.address()}/api/v1/health"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False
    credentials = channel_credentials(TlsSettings())
    with (
        grpc.insecure_channel(service.address())
        if credentials is None
        else grpc.secure_channel(service.address(), credentials)
    ) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


RESTART_FIRST_DELAY_S = 1.0
RESTART_MAX_DELAY_S = 30.0
# A service that stayed up this long is restarted after the first delay again.
STABLE_AFTER_S = 60.0
# The stack gives up on a service that dies this often within the window.
GIVE_UP_DEATHS = 5
GIVE_UP_WINDOW_S = 300.0


class GaveUp(RuntimeError):
    """A service kept dying: restarting it again would not help."""


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _say(message: str) -> None:
    """A line of the stack's own log, stamped with the time."""
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


@dataclass
class _Supervised:
    """One service's process and its restart history."""

    service: _Service
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ready: bool = False
    times_ready: int = 0
    restart_at: float | None = None
    delay_s: float = RESTART_FIRST_DELAY_S
    deaths: deque[float] = field(default_factory=deque)


class _Stack:
    """The services' processes, each restarted with backoff when it dies.

    A service that dies is started again after a delay that doubles from
    ``RESTART_FIRST_DELAY_S`` up to ``RESTART_MAX_DELAY_S``, and goes back to the first
    delay once a run of it lasted ``STABLE_AFTER_S``; ``GIVE_UP_DEATHS`` deaths within
    ``GIVE_UP_WINDOW_S`` stop the stack (``GaveUp``), since it would keep failing."""

    def __init__(self, services: Sequence[_Service]) -> None:
        self.services = list(services)
        self.env = _environment(self.services)
        self.supervised: dict[str, _Supervised] = {}

    def _launch(self, entry: _Supervised) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", f"lodestar.services.{entry.service.name}"], env=self.env
        )
        entry.process = process
        entry.started = time.monotonic()
        entry.ready = False
        entry.restart_at = None
        return process

    def _died(self, entry: _Supervised, code: int) -> None:
        now = time.monotonic()
        name = entry.service.name
        ran_s = now - entry.started
        entry.process = None
        entry.ready = False
        entry.deaths.append(now)
        while entry.deaths and entry.deaths[0] < now - GIVE_UP_WINDOW_S:
            entry.deaths.popleft()
        if len(entry.deaths) >= GIVE_UP_DEATHS:
            raise GaveUp(
                f"{name} died {len(entry.deaths)} times within {GIVE_UP_WINDOW_S:.0f} s (last: "
                f"{_describe_exit(code)} after {ran_s:.1f} s); giving up and stopping the "
                "stack (its own log above says why it stopped)"
            )
        if ran_s >= STABLE_AFTER_S:
            entry.delay_s = RESTART_FIRST_DELAY_S
        entry.restart_at = now + entry.delay_s
        _say(
            f"{name} {_describe_exit(code)} after {ran_s:.1f} s; restarting in {entry.delay_s:g} s"
        )
        entry.delay_s = min(entry.delay_s * 2, RESTART_MAX_DELAY_S)

    def _tick(self) -> None:
        """One round over the services: restart those due, note those now healthy, and
        handle those that died."""
        for entry in self.supervised.values():
            name = entry.service.name
            if entry.process is None:
                if entry.restart_at is not None and time.monotonic() >= entry.restart_at:
                    _say(f"{name} restarted (pid {self._launch(entry).pid})")
                continue
            code = entry.process.poll()
            if code is not None:
                self._died(entry, code)
            elif not entry.ready and _healthy(entry.service):
                entry.ready = True
                entry.times_ready += 1
                where = f"{entry.service.address()} (pid {entry.process.pid})"
                if entry.times_ready == 1:
                    print(f"  {name:<10} ready at {where}", flush=True)
                else:
                    _say(f"{name} ready again at {where}")

    def start(self, group: Sequence[_Service]) -> None:
        """Start ``group`` and wait until each is healthy (restarting any that dies)."""
        for service in group:
            entry = self.supervised[service.name] = _Supervised(service)
            self._launch(entry)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while pending := [s.name for s in group if not self.supervised[s.name].ready]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {', '.join(pending)} to become healthy")
            time.sleep(0.3)
            self._tick()

    def stop(self) -> None:
        """The gateway first, so that its last calls (the usage records it flushes on
        the way out) still find the backends; then the backends together."""
        for kind in ("http", "grpc"):
            self._stop(
                [
                    e.process
                    for e in self.supervised.values()
                    if e.service.kind == kind and e.process is not None
                ]
            )

    @staticmethod
    def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def watch(self) -> NoReturn:
        """Keep the services running until a signal, or until one keeps dying (raises
        ``GaveUp``)."""
        while True:
            time.sleep(0.5)
            self._tick()


def _admin_token() -> str | None:
    """A development admin token signed with the key the gateway runs with.

    The gateway's process inherits this environment, so its settings (signing
    key, issuer, audience) are the ones read here.
    """
    try:
        tokens = importlib.import_module("lodestar.auth.tokens")
        settings = importlib.import_module("lodestar.services.gateway.settings")
    except ImportError:
        return None
    token: str = tokens.mint_token(settings.GatewaySettings(), "admin", ["admin"], 24 * 3600)
    return token


def run_stack(only: Sequence[str] | None = None) -> int:
    wanted = set(only or ())
    chosen = [s for s in (*_BACKENDS, _GATEWAY) if (not wanted or s.name in wanted)]
    services = [s for s in chosen if _available(s)]
    stack = _Stack(services)

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    print("starting Lodestar:", ", ".join(s.name for s in services), flush=True)
    try:
        stack.start([s for s in services if s.kind == "grpc"])
        stack.start([s for s in services if s.kind == "http"])
        for service in services:
            if service.metrics_port is not None:
                port = stack.env[f"{service.env_prefix}METRICS_PORT"]
                print(f"  {service.name:<10} metrics at http://127.0.0.1:{port}/metrics")
        if any(s.name == "gateway" for s in services):
            base = f"http://{_GATEWAY.address()}"
            print(f"\nREST API: {base}/api/v1  (docs: {base}/docs)")
            print(f"console:  {base}/console/  (sign in with the token below)")
            token = _admin_token()
            if token:
                print(f"admin token (24 h):\n  export LODESTAR_TOKEN={token}")
                print(f'  curl -H "Authorization: Bearer $LODESTAR_TOKEN" {base}/api/v1/health')
        print("\nCtrl-C stops everything.", flush=True)
        stack.watch()
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()
        print("stopped.", flush=True)
