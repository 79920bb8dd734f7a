"""A SIGKILL of the process that writes the audit log loses no record unnoticed.

The records the killed process (and, under ``--workers N``, its pipes and workers) still held in
memory are counted as offered in ``AUDIT_LOG.offered`` (decision/audit/shared.py) before they
were queued; the restart on the same log compares that with what the log accounts for (its head)
and writes the difference as an ``audit_records_lost`` event with ``reason: "process killed"``.
Every check the client saw answered is then a record in the log or counted in such an event,
exactly once, and ``audit verify`` passes (head included).

Records are held in memory deterministically, never by racing the writer:

- supervisor, pipes and workers: the supervisor (the only writer) is stopped with SIGSTOP, so
  every check answered afterwards has its record in worker 0's pipe or queue; then SIGKILL;
- the writer's own memory (one process, and the supervisor): the log's file-size limit
  (RLIMIT_FSIZE) makes every write past it fail, so the records answered afterwards are lost in
  memory, counted, waiting for a write that works to record the loss; then SIGKILL.
"""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path

import pytest
from helpers import ExtauthzProcess, wait_until, write_policies
from helpers.faults import PUBLIC_POLICY, allowed_checks

from extauthz.decision.audit import verify
from extauthz.decision.audit.files import read_records, rotated_files
from extauthz.decision.audit.head import head_path
from extauthz.decision.audit.shared import KILLED_REASON
from extauthz.devenv.processes import worker_pids

pytestmark = pytest.mark.faults

LIMIT = 24 * 1024


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def _serve(tmp_path: Path, run: str, workers: int, preexec_fn: object = None) -> ExtauthzProcess:
    policies = write_policies(tmp_path / "policies", {"p.yaml": PUBLIC_POLICY})
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"workers: {workers}\n")
    return ExtauthzProcess(
        policies,
        tmp_path / run,
        audit_log=tmp_path / "audit.log",
        extra_args=["--config", str(cfg)],
        preexec_fn=preexec_fn,  # type: ignore[arg-type]
    ).start(timeout=60)  # a restart waits for the killed run's workers to be gone


def _kill(proc: ExtauthzProcess) -> None:
    assert proc.proc is not None
    os.kill(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait(10)
    proc.stop()  # closes the output files


def _restart_and_account(tmp_path: Path, workers: int, answered: int) -> int:
    """Restart on the same log, stop it cleanly; check every answered check is a record or
    counted once. Returns how many were counted as lost by the restart."""
    again = _serve(tmp_path, "run2", workers)
    again.stop()
    log = tmp_path / "audit.log"
    records, torn = read_records(log)
    assert not torn
    mine = {r["request_id"] for r in records if "decision_id" in r and r.get("request_id")}
    lost = [r for r in records if r.get("event") == "audit_records_lost"]
    assert sum(int(r["denied"]) for r in lost) == 0  # every check was allowed
    lost_allowed = sum(int(r["allowed"]) for r in lost)
    # exactly once: written, or counted (by the restart, or before the kill), never both
    assert len(mine) + lost_allowed == answered, (len(mine), lost_allowed, lost)
    killed = [r for r in lost if r.get("reason") == KILLED_REASON]
    assert len(killed) == 1, lost  # the restart's one account of what the kill took
    result = verify(rotated_files(log), head=head_path(log))
    assert result.ok, result.broken
    return int(killed[0]["allowed"])


def test_a_supervisor_killed_with_records_in_pipes_and_workers_has_them_counted_at_restart(
    tmp_path: Path,
) -> None:
    proc = _serve(tmp_path, "run1", 2)
    assert proc.pid is not None
    wait_until(lambda: 0 in worker_pids(proc.pid or 0), 20)
    answered = allowed_checks(proc.grpc_target, 5)
    os.kill(proc.pid, signal.SIGSTOP)  # the only writer stops: nothing answered from here on
    try:  # can reach the disk before the kill
        answered += allowed_checks(proc.grpc_target, 300, start=5)
    finally:
        _kill(proc)  # SIGKILL ends a stopped process too; its workers then exit on their own
    assert answered.count(0) == 305  # all allowed
    killed = _restart_and_account(tmp_path, 2, 305)
    assert killed >= 300  # the checks answered while it was stopped, at least


@pytest.mark.parametrize("workers", [1, 2])
def test_a_writer_killed_with_losses_in_memory_has_them_counted_at_restart(
    tmp_path: Path, workers: int
) -> None:
    proc = _serve(tmp_path, "run1", workers, _limit_file_size)
    try:
        answered = allowed_checks(proc.grpc_target, 150)  # ~700 bytes a record: most cannot be written
    finally:
        _kill(proc)
    assert answered.count(0) == 150
    killed = _restart_and_account(tmp_path, workers, 150)
    assert killed > 0
