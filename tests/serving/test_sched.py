"""h2corn's I/O threads run under SCHED_BATCH (serving/sched.py): they must not preempt a check
in progress (issue 14: ~2.4 context switches per check each way before)."""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import pytest
from helpers import ExtauthzProcess, wait_until, write_policies
from helpers.decisions import POLICY

from extauthz.serving.sched import batch_io_threads, thread_names
from extauthz.settings import SettingsError, build_settings

pytestmark = pytest.mark.skipif(
    not hasattr(os, "SCHED_BATCH") or not os.path.isdir("/proc/self/task"), reason="Linux only"
)


def _named_thread(name: str, stop: threading.Event, tids: dict[str, int]) -> threading.Thread:
    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME: the thread's comm
        tids[name] = threading.get_native_id()
        stop.wait(30)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_only_the_io_threads_get_sched_batch() -> None:
    stop = threading.Event()
    tids: dict[str, int] = {}
    threads = [_named_thread(n, stop, tids) for n in ("tokio-rt-worker", "audit-writer")]
    try:
        wait_until(lambda: len(tids) == 2 and set(tids) <= set(thread_names().values()), 15)
        assert batch_io_threads() >= 1  # (other tokio threads of this process would count too)
        assert os.sched_getscheduler(tids["tokio-rt-worker"]) == os.SCHED_BATCH
        assert os.sched_getscheduler(tids["audit-writer"]) == os.SCHED_OTHER
        assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_io_threads_batch_is_a_boolean_setting(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("io_threads_batch: false\n")
    assert build_settings(str(conf), {}).io_threads_batch is False
    assert build_settings(None, {}).io_threads_batch is True
    conf.write_text("io_threads_batch: sometimes\n")
    with pytest.raises(SettingsError):
        build_settings(str(conf), {})


def _io_policies(pid: int) -> set[int]:
    return {
        os.sched_getscheduler(tid)
        for tid, name in thread_names(pid).items()
        if name.startswith("tokio-")
    }


def test_serve_puts_h2corn_io_threads_under_sched_batch(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    write_policies(policies, {"p.yaml": POLICY})
    with ExtauthzProcess(policies, tmp_path / "run", extra_args=["--transport", "h2corn"]).start() as proc:
        assert proc.pid is not None
        wait_until(lambda: _io_policies(proc.pid or 0) == {os.SCHED_BATCH}, 15, what="SCHED_BATCH")
