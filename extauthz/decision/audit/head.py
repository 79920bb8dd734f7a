"""The chain's head, anchored outside the log: ``PATH.head`` beside ``PATH``.

A chain alone cannot show that its newest records were cut off. After its writes (at most every
``ANCHOR_EVERY`` seconds, as soon as the writer is idle, and when the log closes) the file sink
rewrites ``PATH.head`` in place with the ``seq`` and ``hash`` of the last record on disk, sealed
with the log's hasher (HMAC with the key when one is configured). ``audit verify`` then requires
the chain to end exactly at the anchored head, and a restarting service compares the head with
the log's last record:

- the log ends before the head (records removed): the chain continues *from the head*, so the
  gap stays in the chain for good, after an ``audit_records_missing`` event that names it;
- the head is missing, unreadable, badly sealed or behind the log (deleted, edited, rolled
  back, or a crash between a write and its anchor): an ``audit_head_*`` event, and the chain
  continues from the log.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extauthz.decision.audit.chain import ChainState, Hasher

SUFFIX = ".head"


def head_path(log_path: str | Path) -> Path:
    """Where the head of the log at ``log_path`` is kept (for a rotated ``PATH.N``: PATH's)."""
    p = Path(log_path)
    stem, _, suffix = p.name.rpartition(".")
    if stem and suffix.isdigit():
        p = p.with_name(stem)
    return p.with_name(p.name + SUFFIX)


def _mac(hasher: Hasher, seq: int, digest: str) -> str:
    return hasher(f"extauthz-audit-head:{seq}:{digest}".encode("ascii"))


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: str

    def render(self, hasher: Hasher) -> bytes:
        doc = {"seq": self.seq, "hash": self.hash, "mac": _mac(hasher, self.seq, self.hash)}
        return (json.dumps(doc, separators=(",", ":")) + "\n").encode("ascii")


HEAD_BYTES = 256  # the head record, padded: rewritten in place with one pwrite()


class HeadFile:
    """The head file, kept open: each anchor is one ``pwrite`` of a fixed-size record at offset
    0 (one page: no reader sees a mix of two heads; no truncation, no rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def write(self, state: ChainState, hasher: Hasher) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        data = Head(state.seq, state.last_hash).render(hasher)
        os.pwrite(self._fd, data[:-1].ljust(HEAD_BYTES - 1) + b"\n", 0)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def read_head(path: Path, hasher: Hasher) -> Head | str | None:
    """The head at ``path``; None when there is none; a string saying why it is not valid."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    try:
        doc: Any = json.loads(raw)
        seq, digest, mac = doc["seq"], doc["hash"], doc["mac"]
    except (ValueError, KeyError, TypeError):
        return "not a head record"
    if not isinstance(seq, int) or not isinstance(digest, str) or not isinstance(mac, str):
        return "not a head record"
    if mac.startswith("hmac-") and hasher.key is None:
        return "the head is HMAC-keyed: give the key (--hmac-key-file)"
    if not hmac.compare_digest(_mac(hasher, seq, digest), mac):
        return "seal mismatch: the head was changed (or the key is wrong)"
    return Head(seq, digest)


def startup_events(
    path: Path, log_state: ChainState, hasher: Hasher
) -> tuple[ChainState, list[dict[str, Any]]]:
    """The state a restarting log continues from, and the events to write first (see above)."""
    head = read_head(path, hasher)
    if head is None:
        if log_state.seq == 0:
            return log_state, []  # a new log
        return log_state, [{"event": "audit_head_missing", "head": path.name, "seq": log_state.seq}]
    if isinstance(head, str):
        return log_state, [{"event": "audit_head_invalid", "head": path.name, "why": head}]
    if head.seq == log_state.seq and head.hash == log_state.last_hash:
        return log_state, []
    if head.seq >= log_state.seq:  # the log ends before its head: the newest records are gone
        event = {
            "event": "audit_records_missing",
            "after_seq": log_state.seq,
            "head_seq": head.seq,
            "missing": head.seq - log_state.seq,
        }
        return ChainState(head.seq, head.hash), [event]
    return log_state, [{"event": "audit_head_behind", "head_seq": head.seq, "seq": log_state.seq}]


