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
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.stack.launch import run_env, start_run

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
STARTUP_TIMEOUT_S = 240


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
    env = run_env(tmp_path / "vector")
    process, banner = start_run(env, STARTUP_TIMEOUT_S)
    try:
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
