"""`lodestar run` (what `make run` starts): the whole stack as processes.

Starts it the way a person does, waits for the ready banner, uses the printed
admin token against the gateway (the README's quick-start commands among it, run
as written), then stops it with Ctrl-C (SIGINT) and expects every process to exit
cleanly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

READY_LINE = "Ctrl-C stops everything."
README = Path(__file__).resolve().parents[2] / "README.md"
STARTUP_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _readme_quick_start() -> str:
    """The shell commands the README's quick start tells a reader to try."""
    after = README.read_text().split("Then, for example:", 1)[1]
    return after.split("```bash\n", 1)[1].split("```", 1)[0]


def _run_quick_start(gateway: str, token: str) -> str:
    commands = _readme_quick_start().replace("localhost:8080", gateway.removeprefix("http://"))
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands],
        env={
            **os.environ,
            "LODESTAR_TOKEN": token,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_run_starts_every_service_prints_a_token_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = dict(os.environ)
    for name in ("EMBEDDING", "VECTOR", "INFERENCE", "GATEWAY"):
        env[f"LODESTAR_{name}_PORT"] = str(_free_port())
        env.pop(f"LODESTAR_{name}_HOST", None)
        if name != "GATEWAY":
            env[f"LODESTAR_{name}_METRICS_PORT"] = str(_free_port())
    env["LODESTAR_VECTOR_DATA_DIR"] = str(tmp_path / "vector")
    for key in [k for k in env if k.startswith("OTEL_")]:
        del env[key]
    process = subprocess.Popen(
        [sys.executable, "-m", "lodestar.cli", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
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
        for service in ("embedding", "vector", "inference", "gateway"):
            assert re.search(rf"{service}\s+ready at 127\.0\.0\.1:\d+", banner), banner
        token_match = re.search(r"LODESTAR_TOKEN=(\S+)", banner)
        assert token_match, banner
        gateway = f"http://127.0.0.1:{env['LODESTAR_GATEWAY_PORT']}"

        status, body = _get(f"{gateway}/api/v1/health", token_match.group(1))
        assert status == 200, body
        backends = json.dumps(body)
        for service in ("embedding", "vector", "inference"):
            assert service in backends
        status, _ = _get(f"{gateway}/api/v1/collections", "not-a-token")
        assert status == 401

        answers = _run_quick_start(gateway, token_match.group(1))
        assert '"error"' not in answers, answers
        assert '"name":"notes"' in answers, answers  # created
        assert '"embedded":1' in answers, answers  # inserted by text
        assert '"text":"The cat sat on the mat."' in answers, answers  # found by text
        assert '"finish_reason":' in answers, answers  # generated
        assert "event: token" in answers, answers  # streamed
        assert "event: done" in answers, answers
        minted = answers.strip().splitlines()[-1]
        assert minted.count(".") == 2, answers  # a JWT from `lodestar token`

        process.send_signal(signal.SIGINT)
        remaining, _ = process.communicate(timeout=90)
        assert process.returncode == 0
        assert "stopped." in remaining
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
