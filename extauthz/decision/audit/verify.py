"""``audit verify``: check the chain through a set of files, oldest first."""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from extauthz.decision.audit.chain import GENESIS, ChainState, Hasher, split_sealed
from extauthz.decision.audit.head import read_head


@dataclass(frozen=True, slots=True)
class VerifyResult:
    records: int
    first_seq: int | None  # seq of the first record checked (1 when the chain starts there)
    broken: str | None = None  # "FILE:LINE: why" of the first broken record

    @property
    def ok(self) -> bool:
        return self.broken is None


def verify(
    paths: Iterable[str | Path], hasher: Hasher | None = None, head: str | Path | None = None
) -> VerifyResult:
    """Check the chain through ``paths`` (oldest file first); stop at the first broken record.

    ``head``: the anchored head file (head.py); the chain must end exactly there. None: no head
    check (a collector's copy of ``--audit-log -``, or older files alone)."""
    hasher = hasher or Hasher()
    state: ChainState | None = None
    first: int | None = None
    count = 0
    end = ""
    for path in paths:
        lineno = 0
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                where = f"{path}:{lineno}"
                problem = _check_line(raw, state, hasher)
                if isinstance(problem, str):
                    return VerifyResult(count, first, f"{where}: {problem}")
                state = problem
                if first is None:
                    first = state.seq
                count += 1
        end = f"{path}:{lineno + 1}"
    if head is not None:
        missing = _check_head(Path(head), state, hasher, end)
        if missing is not None:
            return VerifyResult(count, first, missing)
    return VerifyResult(count, first)


def _check_head(path: Path, state: ChainState | None, hasher: Hasher, end: str) -> str | None:
    head = read_head(path, hasher)
    if head is None:
        return f"{path}: head file missing: the newest records cannot be checked (--no-head: no anchor)"
    if isinstance(head, str):
        return f"{path}: {head}"
    seq, last = (state.seq, state.last_hash) if state is not None else (0, "")
    if seq < head.seq:
        return (
            f"{end}: records seq {seq + 1}..{head.seq} are missing at the end "
            f"(the head {path.name} anchors seq {head.seq})"
        )
    if seq > head.seq:
        return (
            f"{path}: the head anchors seq {head.seq} but the chain goes on to seq {seq}: the records "
            "after it are not anchored (a rolled-back head, or a crash between a write and its anchor)"
        )
    if last != head.hash:
        return f"{end}: the last record (seq {seq}) is not the one the head {path.name} anchors"
    return None


def _check_line(raw: bytes, state: ChainState | None, hasher: Hasher) -> ChainState | str:
    if not raw.endswith(b"\n"):
        return "incomplete last line (no newline)"
    try:
        line = raw[:-1].decode("ascii")
    except UnicodeDecodeError:
        return "non-ASCII byte in the record"
    parts = split_sealed(line)
    if parts is None:
        return "not a sealed record (no trailing hash)"
    body, digest = parts
    if digest.startswith("hmac-") and hasher.key is None:
        return "record is HMAC-keyed: give the key (--hmac-key-file)"
    if not hmac.compare_digest(hasher(body.encode("ascii")), digest):
        return "hash mismatch: the record was changed (or the key is wrong)"
    try:
        rec = json.loads(line)
    except ValueError:
        return "not valid JSON"
    seq, prev = rec.get("seq"), rec.get("prev_hash")
    if not isinstance(rec, dict) or not isinstance(seq, int) or not isinstance(prev, str):
        return "no seq / prev_hash"
    if rec.get("hash") != digest:
        return "hash member is not the record's last member"
    if state is None:
        if (seq == 1) != (prev == GENESIS):
            return "first record: seq 1 must start at the genesis and only seq 1 may"
    else:
        if prev != state.last_hash:
            return f"prev_hash does not match the record before (seq {state.seq})"
        if seq != state.seq + 1:
            return f"seq {seq} does not follow {state.seq}"
    return ChainState(seq, digest)
