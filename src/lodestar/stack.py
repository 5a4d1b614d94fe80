"""``lodestar run``: the whole stack as local processes on embedded defaults.

Starts each service as its own process (the same command a container runs),
waits until each reports healthy, prints the addresses and a ready admin token,
and on Ctrl-C (or SIGTERM) stops them in reverse order, each gracefully.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
    with grpc.insecure_channel(service.address()) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class _Stack:
    def __init__(self, services: Sequence[_Service]) -> None:
        self.services = list(services)
        self.env = _environment(self.services)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, group: Sequence[_Service]) -> None:
        for service in group:
            self.processes[service.name] = subprocess.Popen(
                [sys.executable, "-m", f"lodestar.services.{service.name}"], env=self.env
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        pending = list(group)
        while pending:
            for service in list(pending):
                code = self.processes[service.name].poll()
                if code is not None:
                    raise RuntimeError(f"{service.name} exited with status {code} while starting")
                if _healthy(service):
                    print(f"  {service.name:<10} ready at {service.address()}", flush=True)
                    pending.remove(service)
            if pending and time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise RuntimeError(f"timed out waiting for {names} to become healthy")
            time.sleep(0.3)

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def watch(self) -> int:
        """Block until a signal or until a service dies; return the exit status."""
        while True:
            for name, process in self.processes.items():
                code = process.poll()
                if code is not None:
                    print(f"{name} exited with status {code}; stopping the stack", flush=True)
                    return 1
            time.sleep(0.5)


def _admin_token() -> str | None:
    """A development admin token signed with the key the gateway runs with.

    The gateway's process inherits this environment, so its settings (signing
    key, issuer, audience) are the ones read here.
    """
    try:
        auth = importlib.import_module("lodestar.services.gateway.auth")
        settings = importlib.import_module("lodestar.services.gateway.settings")
    except ImportError:
        return None
    token: str = auth.mint_token(settings.GatewaySettings(), "admin", ["admin"], 24 * 3600)
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
            token = _admin_token()
            if token:
                print(f"admin token (24 h):\n  export LODESTAR_TOKEN={token}")
                print(f'  curl -H "Authorization: Bearer $LODESTAR_TOKEN" {base}/api/v1/health')
        print("\nCtrl-C stops everything.", flush=True)
        return stack.watch()
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()
        print("stopped.", flush=True)
