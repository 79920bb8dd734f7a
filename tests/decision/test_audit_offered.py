"""Offered counters beside the log (``PATH.offered``) and the accounted counts in its head.

A kill is simulated here by counting offers in the page that never reach the log (what a process
SIGKILLed with records in memory leaves behind); tests/faults/test_audit_kill.py kills real ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from extauthz.decision.audit import AuditLog, FileSink, Hasher, verify
from extauthz.decision.audit.files import rotated_files
from extauthz.decision.audit.head import Head, head_path, read_head
from extauthz.decision.audit.shared import (
    KILLED_REASON,
    Offered,
    OfferedLocked,
    offered_path,
    reconcile,
)

KEY = b"0123456789abcdef-secret"


def run(p: Path, allowed: int = 0, denied: int = 0, **kw: int) -> None:
    """One run of a service on ``p``: ``allowed`` and ``denied`` decisions, closed cleanly."""
    log = AuditLog.open(str(p), **kw)
    for i in range(allowed + denied):
        log.emit({"decision_id": f"d{i}", "allowed": i < allowed})
    log.close()


def killed_with(p: Path, allowed: int, denied: int) -> None:
    """What a kill leaves: offers counted in the page that never reached the log."""
    page = Offered.open(offered_path(p))
    i = page.slot_index(0)
    page.words[i] += allowed
    page.words[i + 1] += denied
    page.close()


def records(p: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for f in rotated_files(p):
        out += [json.loads(line) for line in f.read_text().splitlines()]
    return out


def losses(p: Path) -> list[dict[str, object]]:
    return [r for r in records(p) if r.get("event") == "audit_records_lost"]


def assert_verifies(p: Path) -> None:
    result = verify(rotated_files(p), head=head_path(p))
    assert result.ok, result.broken


def test_a_clean_run_accounts_for_every_offer(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    run(p, allowed=3, denied=2)
    page = Offered.open(offered_path(p))
    assert page.totals() == (3, 2)
    page.close()
    head = read_head(head_path(p), Hasher())
    assert isinstance(head, Head) and head.acc == (3, 2)
    run(p, allowed=1)
    assert losses(p) == []
    assert_verifies(p)


def test_a_kill_is_counted_once_by_the_next_start(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    run(p, allowed=2, denied=1)
    killed_with(p, allowed=4, denied=3)
    run(p, allowed=1)
    run(p)  # counted once: the next start finds nothing more
    (lost,) = losses(p)
    assert (lost["allowed"], lost["denied"], lost["reason"]) == (4, 3, KILLED_REASON)
    decisions = [r for r in records(p) if "decision_id" in r]
    assert len(decisions) == 4
    assert_verifies(p)


def test_a_kill_before_anything_was_written_is_counted(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    killed_with(p, allowed=5, denied=0)  # a page, no log and no head yet
    run(p)
    assert [(r["allowed"], r["denied"]) for r in losses(p)] == [(5, 0)]


def test_a_kill_that_left_the_head_behind_counts_only_what_is_missing(tmp_path: Path) -> None:
    """SIGKILL between a write and its anchor: the records after the head are on disk and are
    counted from the log itself (across rotation), not reported as lost."""
    p = tmp_path / "audit.log"
    run(p, allowed=2, max_bytes=200, backups=20)
    old_head = head_path(p).read_bytes()
    run(p, allowed=6, denied=2, max_bytes=200, backups=20)  # rotates: the records after the head span files
    assert len(rotated_files(p)) > 3
    head_path(p).write_bytes(old_head)  # the head as a kill right after the first run leaves it
    killed_with(p, allowed=1, denied=1)
    run(p, max_bytes=200, backups=20)
    names = [r.get("event") for r in records(p) if "event" in r]
    assert "audit_head_behind" in names
    assert [(r["allowed"], r["denied"]) for r in losses(p)] == [(1, 1)]


def test_a_start_that_dies_before_writing_its_loss_event_leaves_it_to_the_next(tmp_path: Path) -> None:
    page = Offered.in_memory()
    page.existed = True  # as a page found beside the log
    page.words[page.slot_index(3)] += 7
    # the head accounts for 2 of them: both starts (the first one killed before it wrote) say 5
    assert reconcile(page, (2, 0)) == reconcile(page, (2, 0))
    accounted, found = reconcile(page, (2, 0))
    assert accounted == (2, 0)
    assert [(e["allowed"], e["denied"], acc) for e, acc in found] == [(5, 0, (5, 0))]
    page.close()


def test_a_deleted_offered_file_is_recorded_not_counted_as_loss(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    run(p, allowed=3)
    offered_path(p).unlink()
    run(p, allowed=1)
    run(p)
    names = [r.get("event") for r in records(p) if "event" in r]
    assert names == ["audit_offered_missing"]
    assert losses(p) == []


def test_a_rolled_back_offered_file_is_recorded(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    run(p, allowed=1)
    shutil.copy(offered_path(p), tmp_path / "old")
    run(p, allowed=3)
    shutil.copy(tmp_path / "old", offered_path(p))
    run(p)
    run(p)
    behind = [r for r in records(p) if r.get("event") == "audit_offered_behind"]
    assert len(behind) == 1 and behind[0]["offered"] == [1, 0] and behind[0]["accounted"] == [4, 0]
    assert losses(p) == []


def test_one_log_one_service(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog.open(str(p))
    try:
        with pytest.raises(OfferedLocked):
            Offered.open(offered_path(p), wait=0.2)
    finally:
        log.close()
    Offered.open(offered_path(p), wait=0.2).close()  # free once it closed


def test_the_accounted_counts_are_sealed_with_the_head(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    (tmp_path / "key").write_bytes(KEY)
    run(p, allowed=2)
    doc = json.loads(head_path(p).read_bytes())
    assert doc["acc"] == [2, 0]
    doc["acc"] = [9, 0]  # claim more was written: would hide a loss
    head_path(p).write_text(json.dumps(doc))
    assert "seal mismatch" in str(read_head(head_path(p), Hasher()))
    old = Head(doc["seq"], doc["hash"]).render(Hasher())  # a head from before the counts
    head_path(p).write_bytes(old)
    assert read_head(head_path(p), Hasher()) == Head(doc["seq"], doc["hash"])
    assert_verifies(p)


def test_a_log_written_without_counters_then_with_them_reports_no_loss(tmp_path: Path) -> None:
    """A head without ``acc`` (an older version, or an AuditLog made without counters): the
    next start cannot compare and starts counting from there, reporting nothing."""
    p = tmp_path / "audit.log"
    log = AuditLog(FileSink(p))
    for i in range(3):
        log.emit({"decision_id": f"d{i}", "allowed": True})
    log.close()
    head = read_head(head_path(p), Hasher())
    assert isinstance(head, Head) and head.acc is None
    run(p, allowed=2)
    killed_with(p, allowed=1, denied=0)
    run(p)
    assert [(r["allowed"], r["denied"]) for r in losses(p)] == [(1, 0)]
    assert_verifies(p)
