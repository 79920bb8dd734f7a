"""Reading an audit log on disk: the rotated set, oldest first, and counting what it holds.

Used by ``audit verify`` callers, the test helpers and the benchmarks: a count goes across every
rotated file (``PATH.N`` ... ``PATH.1``, ``PATH``) and reports a torn or unreadable line instead
of skipping it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOST_EVENT = "audit_records_lost"
# The service's own notes at startup (head.py, shared.py): they stand for no offered record.
UNOFFERED_EVENTS = frozenset(
    {
        "audit_head_missing",
        "audit_head_invalid",
        "audit_head_behind",
        "audit_records_missing",
        "audit_offered_missing",
        "audit_offered_behind",
    }
)
_DECISION_KEY = b'"decision_id":'
_LOST_KEY = b'"event":"' + LOST_EVENT.encode() + b'"'


def rotated_files(path: str | Path) -> list[Path]:
    """``PATH.N`` ... ``PATH.1``, ``PATH``: the files of one log that exist, oldest first."""
    path = Path(path)
    older: list[Path] = []
    i = 1
    while True:
        p = path.with_name(f"{path.name}.{i}")
        if not p.exists():
            break
        older.append(p)
        i += 1
    return [*reversed(older), *([path] if path.exists() else [])]


@dataclass(slots=True)
class LogCount:
    """What a log holds: lines, decision records, events, losses it states, torn lines."""

    lines: int = 0
    decisions: int = 0
    allowed: int = 0
    events: int = 0
    lost_allowed: int = 0  # the sum of the audit_records_lost events' counts
    lost_denied: int = 0
    torn: list[str] = field(default_factory=list)  # "FILE:LINE: why"

    @property
    def lost(self) -> int:
        return self.lost_allowed + self.lost_denied


def count_records(paths: list[Path] | str | Path) -> LogCount:
    """Count the records of ``paths`` (a list, oldest first, or one log path: its rotated set)."""
    files = rotated_files(paths) if isinstance(paths, str | Path) else paths
    out = LogCount()
    for p in files:
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            continue
        lines = data.split(b"\n")
        if lines[-1]:
            out.torn.append(f"{p}:{len(lines)}: incomplete last line (no newline)")
        for n, line in enumerate(lines[:-1], 1):
            if not (line.startswith(b"{") and line.endswith(b"}")):
                out.torn.append(f"{p}:{n}: not a JSON object line")
                continue
            out.lines += 1
            if _DECISION_KEY in line:
                out.decisions += 1
                out.allowed += b'"allowed":true' in line
            else:
                out.events += 1
                if _LOST_KEY in line:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        out.torn.append(f"{p}:{n}: not valid JSON")
                        continue
                    out.lost_allowed += int(rec.get("allowed") or 0)
                    out.lost_denied += int(rec.get("denied") or 0)
    return out


def read_records(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every record of a log's rotated set, oldest first, and the torn lines ("FILE:LINE: why")."""
    records: list[dict[str, Any]] = []
    torn: list[str] = []
    for p in rotated_files(path):
        lines = p.read_bytes().split(b"\n")
        if lines[-1]:
            torn.append(f"{p}:{len(lines)}: incomplete last line (no newline)")
        for n, line in enumerate(lines[:-1], 1):
            try:
                rec = json.loads(line)
            except ValueError:
                torn.append(f"{p}:{n}: not valid JSON")
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                torn.append(f"{p}:{n}: not a JSON object")
    return records, torn


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def offered_weight(rec: dict[str, Any]) -> tuple[int, int]:
    """(allowed, denied) offered records a line of the log accounts for: a record (decision or
    event) one, an ``audit_records_lost`` event its counts, the startup notes none."""
    event = rec.get("event")
    if event is not None and "decision_id" not in rec:
        if event == LOST_EVENT:
            return _count(rec.get("allowed")), _count(rec.get("denied"))
        if event in UNOFFERED_EVENTS:
            return 0, 0
    return (1, 0) if rec.get("allowed") is True else (0, 1)


def _backwards(path: Path, chunk: int = 1 << 20) -> Iterator[dict[str, Any] | None]:
    """The lines of ``path``, newest first, parsed (None for a line that is not a JSON object)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    with f:
        end = f.seek(0, os.SEEK_END)
        rest = b""
        while end > 0:
            start = max(0, end - chunk)
            f.seek(start)
            data = f.read(end - start) + rest
            end = start
            lines = data.split(b"\n")
            rest = lines.pop(0) if start > 0 else b""
            for raw in reversed(lines):
                if raw.strip():
                    yield _parse(raw)
        if rest.strip():
            yield _parse(rest)


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def weight_after(files: list[Path], seq: int) -> tuple[int, int] | None:
    """The offered records the lines after ``seq`` account for (``offered_weight``), reading the
    log's files (oldest first) from the end. None when they do not reach back to ``seq``."""
    allowed = denied = 0
    first: int | None = None
    for path in reversed(files):
        for rec in _backwards(path):
            if rec is None:
                continue  # a torn line accounts for nothing (verify names it)
            n = rec.get("seq")
            if isinstance(n, int) and n <= seq:
                return allowed, denied
            a, d = offered_weight(rec)
            allowed, denied = allowed + a, denied + d
            first = n if isinstance(n, int) else first
    return (allowed, denied) if first == seq + 1 else None
