"""``lodestar run`` started as a user starts it, on free ports, for the tests that
need the whole stack as processes (its own tests and the console's)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

READY_LINE = "Ctrl-C stops everything."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_env(data_dir: Path) -> dict[str, str]:
    """This environment with every service on a free loopback port, the vector
    data in ``data_dir`` and no OpenTelemetry exporter."""
    env = dict(os.environ)
    for name in ("EMBEDDING", "VECTOR", "INFERENCE", "GATEWAY"):
        env[f"LODESTAR_{name}_PORT"] = str(free_port())
        env.pop(f"LODESTAR_{name}_HOST", None)
        if name != "GATEWAY":
            env[f"LODESTAR_{name}_METRICS_PORT"] = str(free_port())
    env["LODESTAR_VECTOR_DATA_DIR"] = str(data_dir)
    for key in [k for k in env if k.startswith("OTEL_")]:
        del env[key]
    return env


def start_run(env: dict[str, str], timeout_s: float) -> tuple[subprocess.Popen[str], str]:
    """``lodestar run`` with ``env`` and the banner it printed up to its ready line.
    The caller stops the process; it is killed here only when it never got ready."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lodestar.cli", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if READY_LINE in line:
                break
        banner = "\n".join(lines)
        assert READY_LINE in banner, f"stack did not become ready:\n{banner}"
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, banner
