"""Exactly-once audit accounting under ``serve --workers 2``, through the real processes.

- A worker SIGKILLed with records still in its memory: the supervisor compares what the worker
  offered (shared counters, decision/audit/shared.py) with what reached it through the pipe and
  writes the difference into the chain as an ``audit_records_lost`` event. To hold records in
  the worker deterministically, the supervisor is stopped (SIGSTOP) first: the worker's pipe fills
  and its records wait in its queue; then the worker is killed and the supervisor continued.
- ``audit_overflow: deny`` with a full disk: the supervisor's writes fail, it tells the workers,
  and they deny with ``audit_unavailable`` (the workers used to keep allowing: their pipe always
  took the records).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from helpers import ExtauthzProcess, wait_until, write_policies
from helpers.faults import PUBLIC_POLICY, allowed_checks

from extauthz.decision.audit import verify
from extauthz.decision.audit.files import count_records, read_records, rotated_files
from extauthz.devenv.processes import worker_pids

pytestmark = pytest.mark.faults

LIMIT = 24 * 1024


def _serve(tmp_path: Path, config: str = "", preexec_fn: object = None) -> ExtauthzProcess:
    policies = write_policies(tmp_path / "policies", {"p.yaml": PUBLIC_POLICY})
    cfg = tmp_path / "config.yaml"
    cfg.write_text("workers: 2\n" + config)
    return ExtauthzProcess(
        policies, tmp_path / "run", extra_args=["--config", str(cfg)], preexec_fn=preexec_fn  # type: ignore[arg-type]
    ).start()


def test_a_worker_killed_with_records_in_memory_has_them_recorded_as_lost(tmp_path: Path) -> None:
    proc = _serve(tmp_path)
    try:
        assert proc.pid is not None
        wait_until(lambda: 0 in worker_pids(proc.pid or 0), 20)
        answered = allowed_checks(proc.grpc_target, 5)  # a worker 0 that works
        os.kill(proc.pid, signal.SIGSTOP)  # the supervisor reads no more: worker 0's pipe fills
        try:
            answered += allowed_checks(proc.grpc_target, 400, start=5)  # answered: records in memory
            os.kill(worker_pids(proc.pid)[0], signal.SIGKILL)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        # the supervisor sees the worker gone, settles its counts and writes the event
        wait_until(lambda: count_records(proc.audit_log).lost > 0, 30)
    finally:
        proc.stop()
    assert answered.count(0) == 405  # all allowed
    records, torn = read_records(proc.audit_log)
    assert not torn
    mine = [r for r in records if r.get("worker") == 0 and "decision_id" in r]
    lost = [r for r in records if r.get("event") == "audit_records_lost"]
    lost_allowed = sum(int(r["allowed"]) for r in lost)
    assert lost_allowed > 0  # the kill took records from memory ...
    assert len(mine) + lost_allowed == 405  # ... and every answer is a record or counted, once
    assert verify(rotated_files(proc.audit_log)).ok


def _limit_file_size() -> None:
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_overflow_deny_holds_under_workers_when_the_disk_is_full(tmp_path: Path) -> None:
    proc = _serve(tmp_path, "audit_overflow: deny\n", _limit_file_size)
    try:
        codes = allowed_checks(proc.grpc_target, 200)
    finally:
        proc.stop()
    # PERMISSION_DENIED (audit_unavailable): before, every check was allowed with a full disk
    assert 7 in codes, codes
    first = codes.index(7)
    records, _ = read_records(proc.audit_log)
    ids = {str(r.get("request_id") or r.get("decision_id")) for r in records}
    unrecorded = [i for i, c in enumerate(codes) if c == 0 and f"req-{i}" not in ids]
    # Only the records in flight when the supervisor's first write failed (answered, then lost
    # with it): never an allow without its record once the workers were told.
    assert all(i < first for i in unrecorded), (unrecorded, first)
