"""The CPU scheduling policy a service puts its process under (``runtime.scheduling``).

Each check runs in a process of its own, so that the test process keeps its policy.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux policies")

_CHECK = """
import os, sys, threading
from lodestar.runtime import scheduling

policy = {"batch": os.SCHED_BATCH, "normal": os.SCHED_OTHER}[sys.argv[1]]
release = threading.Event()
before = threading.Thread(target=release.wait)  # a thread that exists already
before.start()
applied = scheduling.apply(sys.argv[1])
seen = {}
after = threading.Thread(target=lambda: seen.update(after=os.sched_getscheduler(0)))
after.start()
after.join()
child = os.fork()
if child == 0:
    os._exit(0 if os.sched_getscheduler(0) == policy else 1)
_, status = os.waitpid(child, 0)
print(applied, os.sched_getscheduler(0) == policy,
      os.sched_getscheduler(before.native_id) == policy, seen["after"] == policy,
      os.waitstatus_to_exitcode(status) == 0)
release.set()
"""


@pytest.mark.parametrize("start", ["normal", "batch"])
@pytest.mark.parametrize("choice", ["batch", "normal"])
def test_every_thread_and_every_later_thread_and_process_run_the_chosen_policy(
    choice: str, start: str
) -> None:
    # ``start``: the policy the process was started under (chrt's, say); the choice wins.
    preexec = (
        (lambda: os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0)))
        if start == "batch"
        else None
    )
    out = subprocess.run(
        [sys.executable, "-c", _CHECK, choice],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=preexec,
    ).stdout.split()
    # applied, the calling thread, a thread started before, one started after, a child
    assert out == ["True"] * 5
