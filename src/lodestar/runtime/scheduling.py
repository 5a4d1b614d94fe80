"""The Linux CPU scheduling policy of a service's processes.

Under ``SCHED_BATCH`` a thread that wakes up does not preempt the thread running on
its CPU: it runs on an idle CPU if there is one, and otherwise when the running
thread's time slice ends or it blocks. Nothing else changes: the same share of the
CPU, the same niceness.

A gRPC call to a grpc.aio server wakes several threads in turn: grpc's event-engine
threads read and write the sockets, its completion-queue thread hands each event to
the event loop, and the event loop runs the handler. Under the normal policy each of
those wake-ups preempts whatever runs on its CPU, the event loop and a busy engine
process included; under ``SCHED_BATCH`` a busy vector service makes far fewer context
switches per search and spends less CPU on each. A lone caller on an idle machine
sees the same latency either way, since a wake-up finds an idle CPU.

The policy belongs to each thread. ``apply`` sets it on every thread of the calling
process. Threads and processes started later inherit it from the thread that starts
them, across ``exec`` too, so the vector engine process and its optimizer processes
inherit it.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

_log = logging.getLogger(__name__)

CpuScheduling = Literal["batch", "normal"]


def apply(choice: CpuScheduling) -> bool:
    """Put every thread of this process under ``choice``'s policy; False where the
    platform has no such policy or refuses it (the process runs on under its own)."""
    if not hasattr(os, "SCHED_BATCH"):
        if choice == "batch":
            _log.info("SCHED_BATCH is not available on this platform; running as it is")
        return False
    policy = os.SCHED_BATCH if choice == "batch" else os.SCHED_OTHER
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]  # no /proc: the calling thread, the one that starts the others
    try:
        for tid in threads:
            try:
                os.sched_setscheduler(tid, policy, os.sched_param(0))
            except ProcessLookupError:  # a thread that has exited since the listing
                continue
    except OSError as error:
        _log.warning("cannot set the CPU scheduling policy to %s: %s", choice, error)
        return False
    return True
