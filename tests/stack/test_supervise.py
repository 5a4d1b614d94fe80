"""What a taken port and a dying service do, alone and under `lodestar run`.

A service whose port is taken exits with one line naming the setting that moves it;
`lodestar run` restarts a service that dies, with backoff, and stops the stack only
when one keeps dying. Every case runs real processes, as a person starts them.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.stack.launch import READY_LINE
from tests.stack.launch import free_port as _free_port

pytestmark = pytest.mark.slow

BACKENDS = ("embedding", "vector", "inference")


def _environment(tmp_path: Path) -> dict[str, str]:
    """Free ports for every service, a private data directory, no tracing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    for name in (*BACKENDS, "gateway"):
        prefix = f"LODESTAR_{name.upper()}_"
        env[f"{prefix}PORT"] = str(_free_port())
        env.pop(f"{prefix}HOST", None)
        if name != "gateway":
            env[f"{prefix}METRICS_PORT"] = str(_free_port())
    env["LODESTAR_VECTOR_DATA_DIR"] = str(tmp_path / "vector")
    return env


@contextmanager
def _held(port: int) -> Iterator[socket.socket]:
    """Another program listening on ``port``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock


def _serving(port: str) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class _Stack:
    """`lodestar run` in a process, its output read line by line as it comes."""

    def __init__(self, env: dict[str, str], *only: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lodestar.cli", "run", "--only", *only],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        threading.Thread(target=self._read, args=(self.process.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.process.stderr, False), daemon=True).start()

    def _read(self, stream: IO[str], is_stdout: bool) -> None:
        for line in stream:
            if is_stdout:
                self._new.put(line.rstrip())
            else:
                self.errors.append(line.rstrip())
        if is_stdout:
            self._new.put(None)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first line from now on that matches ``pattern``."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._new.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match
        output = "\n".join([*self.lines, "-- stderr --", *self.errors[-20:]])
        raise AssertionError(f"no line matching {pattern!r}:\n{output}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.mark.parametrize(
    ("service", "setting"),
    [
        ("embedding", "PORT"),
        ("vector", "METRICS_PORT"),
        ("inference", "PORT"),
        ("gateway", "PORT"),
    ],
)
def test_a_taken_port_is_one_line_naming_the_service_and_its_setting(
    tmp_path: Path, service: str, setting: str
) -> None:
    env = _environment(tmp_path)
    variable = f"LODESTAR_{service.upper()}_{setting}"
    port = int(env[variable])
    with _held(port):
        done = subprocess.run(
            [sys.executable, "-m", f"lodestar.services.{service}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    expected = f"{service}: port {port} on 127.0.0.1 is in use; set {variable} to another port"
    assert lines[0].endswith(expected), done.stderr


def test_run_restarts_a_killed_service_while_the_others_keep_running(tmp_path: Path) -> None:
    env = _environment(tmp_path)
    stack = _Stack(env, "embedding", "vector")
    try:
        pids = {}
        for _ in range(2):
            found = stack.wait_for(r"(\w+)\s+ready at \S+ \(pid (\d+)\)", 60)
            pids[found.group(1)] = int(found.group(2))
        stack.wait_for(re.escape(READY_LINE), 30)

        os.kill(pids["embedding"], signal.SIGKILL)
        stack.wait_for(r"embedding was killed by SIGKILL after [\d.]+ s; restarting in 1 s", 30)
        again = stack.wait_for(r"embedding ready again at \S+ \(pid (\d+)\)", 60)
        assert int(again.group(1)) != pids["embedding"]
        assert _serving(env["LODESTAR_EMBEDDING_PORT"])

        # The vector service ran on, untouched.
        os.kill(pids["vector"], 0)
        assert _serving(env["LODESTAR_VECTOR_PORT"])
        assert not any(re.search(r"vector (was killed|exited|restarted)", x) for x in stack.lines)

        stack.process.send_signal(signal.SIGINT)
        stack.wait_for(r"^stopped\.$", 60)
        assert stack.process.wait(timeout=30) == 0
    finally:
        stack.close()


def test_run_gives_up_on_a_service_that_keeps_dying(tmp_path: Path) -> None:
    env = _environment(tmp_path)
    port = int(env["LODESTAR_VECTOR_PORT"])
    with _held(port):
        stack = _Stack(env, "vector")
        try:
            died = r"vector exited with status 1 after [\d.]+ s; restarting in (\d+) s"
            delays = [stack.wait_for(died, 30).group(1) for _ in range(4)]
            stack.wait_for(r"^stopped\.$", 60)
            code = stack.process.wait(timeout=30)
        finally:
            stack.close()
    assert delays == ["1", "2", "4", "8"]
    assert code == 1
    assert "Traceback" not in "\n".join(stack.errors)
    gave_up = [line for line in stack.errors if line.startswith("error: vector died 5 times")]
    assert len(gave_up) == 1, stack.errors
    assert "giving up and stopping the stack" in gave_up[0]
    taken = f"vector: port {port} on 127.0.0.1 is in use; set LODESTAR_VECTOR_PORT to another port"
    assert sum(line.endswith(taken) for line in stack.errors) == 5, stack.errors
