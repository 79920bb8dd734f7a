"""The loss column of the load benchmarks: every check must leave one audit record.

A server under test writes its audit log to a real file in a temporary directory (not
/dev/null). Around each measured point the records in the log's rotated set are counted once the
writer has caught up (the files stop growing); the row then says:

- ``checks``: the checks h2load saw answered (warm-up included: those are audited too);
- ``records``: decision records the log gained meanwhile (h2load does not count the checks still in
  flight when its time is up, so ``records`` may exceed ``checks`` by up to connections x streams);
- ``lost``: records the service itself counted as lost (``audit_records_lost`` events in the log,
  which both one process and the ``--workers`` supervisor write) plus checks with no record at all;
- ``valid``: False when ``lost`` > 0, or a line is torn. A row with losses is not a result.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import Load, load_grpc, measure

from extauthz.decision.audit.files import LogCount, count_records, rotated_files

AUDIT_COLUMNS = ["checks", "records", "lost", "valid"]


@contextmanager
def audit_file(name: str) -> Iterator[Path]:
    """A fresh audit log path in its own temporary directory, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-audit-{name}-"))
    try:
        yield tmp / "audit.jsonl"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def settled(path: Path, quiet: float = 0.5, timeout: float = 120.0) -> LogCount:
    """Count the log once its files stopped growing for ``quiet`` seconds (the writer is done)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        size = sum(p.stat().st_size for p in rotated_files(path) if p.exists())
        now = time.monotonic()
        if size != last:
            last, since = size, now
        elif now - since >= quiet:
            break
        time.sleep(0.1)
    else:
        print(f"audit log {path} still growing after {timeout:.0f}s", file=sys.stderr)
    return count_records(path)


def audit_columns(before: LogCount, after: LogCount, checks: int) -> dict[str, Any]:
    records = after.decisions - before.decisions
    counted = after.lost - before.lost
    missing = max(0, checks - records)
    torn = after.torn
    cols: dict[str, Any] = {
        "checks": checks,
        "records": records,
        "lost": counted + missing,
        "valid": counted + missing == 0 and not torn,
    }
    if torn:
        cols["torn"] = torn[:5]
    return cols


def audited_point(
    pids: Mapping[str, int], port: int, body: bytes, seconds: float, audit: Path | None, **kw: Any
) -> tuple[Load, dict[str, float], dict[str, Any]]:
    """``grpc_point`` with the audit count: 1 s warm-up, ``seconds`` measured, then the count."""
    before = settled(audit) if audit is not None else None
    warm: list[Load] = []
    load, split = measure(
        pids,
        lambda: load_grpc(port, body, seconds=seconds, warmup=0, **kw),
        warm=lambda: warm.append(load_grpc(port, body, seconds=1, warmup=0, **kw)),
    )
    if audit is None or before is None:
        return load, split, {"checks": "", "records": "", "lost": "", "valid": "no audit log"}
    checks = sum(x.ok for x in (*warm, load))
    return load, split, audit_columns(before, settled(audit), checks)
