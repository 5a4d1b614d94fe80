"""The process bootstrap every service runs (``runtime.process.run_service``).

Each case runs a service in a process of its own, the way ``python -m`` does, and
stops it with a signal.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from pydantic_settings import SettingsConfigDict

from lodestar.runtime.process import PortInUse, ports_in_use
from lodestar.runtime.settings import ServerSettings

_SERVICE = """
import asyncio, gc, sys
from lodestar.runtime.process import run_service
from lodestar.runtime.settings import ServiceSettings


class Probe:
    async def start(self):
        print("started", flush=True)

    async def stop(self):
        loop = type(asyncio.get_running_loop()).__module__
        frozen = gc.get_freeze_count() > 0
        print("stopped", gc.get_threshold()[0], frozen, loop, flush=True)


async def build():
    print("building", flush=True)
    if sys.argv[1] == "slow":
        await asyncio.sleep(1)
    return Probe()


run_service(ServiceSettings(), "probe", build)
print("exited", flush=True)
"""


def _run_until(
    signum: signal.Signals, wait_for: str, build: str = "fast", loop: str = "asyncio"
) -> tuple[int, list[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVICE, build],
        env={**os.environ, "LODESTAR_GC_THRESHOLD": "12345", "LODESTAR_EVENT_LOOP": loop},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        while (line := process.stdout.readline().strip()) != wait_for:
            assert line, f"the service exited before printing {wait_for!r}"
            lines.append(line)
        lines.append(line)
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, lines + out.split(), err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_the_service_and_the_process_exits_cleanly(
    signum: signal.Signals,
) -> None:
    code, lines, err = _run_until(signum, "started")
    assert code == 0, err
    assert "Traceback" not in err
    # Stopped on the loop it ran on, with the heap settled after it started.
    assert lines == [
        "building",
        "started",
        "stopped",
        "12345",
        "True",
        "asyncio.unix_events",
        "exited",
    ]


def test_the_event_loop_is_the_one_the_settings_name() -> None:
    code, lines, err = _run_until(signal.SIGTERM, "started", loop="uvloop")
    assert code == 0, err
    assert lines[5] == "uvloop"


def test_a_stop_asked_for_while_the_service_is_built_stops_it_once_built() -> None:
    code, lines, err = _run_until(signal.SIGTERM, "building", build="slow")
    assert code == 0, err
    assert lines[:3] == ["building", "started", "stopped"]
    assert lines[-1] == "exited"


class _Settings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="LODESTAR_PROBE_", frozen=True)


def test_a_taken_port_is_found_with_the_variable_that_moves_it() -> None:
    with socket.socket() as held, socket.socket() as free:
        held.bind(("127.0.0.1", 0))
        held.listen()
        free.bind(("127.0.0.1", 0))
        taken, free_port = held.getsockname()[1], free.getsockname()[1]
        free.close()
        settings = _Settings(port=free_port, metrics_port=taken)
        variable = "LODESTAR_PROBE_METRICS_PORT"
        assert ports_in_use(settings) == [PortInUse("127.0.0.1", taken, variable)]
        assert str(ports_in_use(settings)[0]) == (
            f"port {taken} on 127.0.0.1 is in use; set LODESTAR_PROBE_METRICS_PORT to another port"
        )
        # Port 0 picks a free port: never taken.
        assert ports_in_use(_Settings(port=0, metrics_port=None)) == []
