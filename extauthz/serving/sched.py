"""CPU scheduling of the transport's I/O threads (h2corn's Tokio runtime).

Under load on one core, every time h2corn's I/O thread was woken (a request arrived, a response
was handed over) the kernel let it preempt the Python thread in the middle of a check: ~2.4
context switches per check each way, and ~37 us of the I/O thread's CPU per check (19 of it in
the kernel), against ~16 us without them (issue 14, bench/README.md). ``SCHED_BATCH`` on the I/O
threads (Linux: no wakeup preemption, same fair share of the CPU) lets the Python thread finish
what it is doing first; the I/O thread then runs when Python waits for work, handling many
requests per wake-up. The Python threads keep the normal policy, so the I/O thread still gets
the CPU at once whenever Python is idle.

``serve`` applies it unless ``io_threads_batch: false``. Where the policy cannot be set (not
Linux, a seccomp filter) nothing changes and the reason is logged once.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("extauthz.serving.sched")

# Threads of h2corn's Tokio runtime (its workers, and blocking-pool threads created later by them
# inherit the policy).
IO_THREAD_PREFIXES = ("tokio-",)


def thread_names(pid: int | str = "self") -> dict[int, str]:
    """Thread id -> name (``comm``) of the threads of ``pid``."""
    names: dict[int, str] = {}
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/comm") as f:
                names[int(tid)] = f.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
    return names


def batch_io_threads(prefixes: tuple[str, ...] = IO_THREAD_PREFIXES) -> int:
    """Put this process's I/O threads (names starting with one of ``prefixes``) under
    SCHED_BATCH. Returns how many threads were set."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None or not os.path.isdir("/proc/self/task"):
        log.info("SCHED_BATCH is not available here: I/O threads keep the default policy")
        return 0
    done = 0
    for tid, name in thread_names().items():
        if not name.startswith(prefixes):
            continue
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
        except OSError as exc:
            log.info("cannot set SCHED_BATCH on I/O thread %s (%s): default policy kept", name, exc)
            return done
        done += 1
    return done
