"""Counting an audit log on disk: across rotated files, a torn line reported, not skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from extauthz.decision.audit import AuditLog, FileSink, verify
from extauthz.decision.audit.files import count_records, read_records, rotated_files


def test_counting_goes_across_rotated_files_and_reports_a_torn_line(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(FileSink(p, max_bytes=2000, backups=50))
    for i in range(100):
        log.emit({"allowed": i % 2 == 0, "decision_id": f"d{i}"})
    log.close()
    files = rotated_files(p)
    assert len(files) > 3 and verify(files).ok
    count = count_records(p)
    assert (count.decisions, count.allowed, count.torn) == (100, 50, [])
    with open(p, "a") as f:
        f.write('{"decision_id":"half')
    count = count_records(p)
    assert count.decisions == 100 and len(count.torn) == 1 and "no newline" in count.torn[0]
    records, torn = read_records(p)
    assert len(records) == 100 + count.events and len(torn) == 1


def test_the_process_helper_counts_rotated_files_and_reports_a_torn_line(tmp_path: Path) -> None:
    from helpers import ExtauthzProcess

    p = tmp_path / "audit.log"
    log = AuditLog(FileSink(p, max_bytes=2000, backups=50))
    for i in range(60):
        log.emit({"allowed": True, "decision_id": f"d{i}"})
    log.close()
    proc = ExtauthzProcess(tmp_path, tmp_path / "run", audit_log=p)  # not started
    ids = [r["decision_id"] for r in proc.audit_records() if "decision_id" in r]
    assert ids == [f"d{i}" for i in range(60)]  # across every rotated file, oldest first
    with open(p, "a") as f:
        f.write('{"decision_id":"half')
    with pytest.raises(AssertionError, match="no newline"):
        proc.audit_records()
