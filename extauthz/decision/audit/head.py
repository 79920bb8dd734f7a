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

The head also carries ``acc``: how many offered records (allowed, denied) the log accounts for
up to that record (shared.py), sealed with it; a restart adds what the records after a head
that is behind account for.
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
from extauthz.decision.audit.files import weight_after

SUFFIX = ".head"


def head_path(log_path: str | Path) -> Path:
    """Where the head of the log at ``log_path`` is kept (for a rotated ``PATH.N``: PATH's)."""
    p = Path(log_path)
    stem, _, suffix = p.name.rpartition(".")
    if stem and suffix.isdigit():
        p = p.with_name(stem)
    return p.with_name(p.name + SUFFIX)


Counts = tuple[int, int]  # offered records accounted for: allowed, denied


def _mac(hasher: Hasher, seq: int, digest: str, acc: Counts | None = None) -> str:
    tail = f":{acc[0]}:{acc[1]}" if acc is not None else ""
    return hasher(f"extauthz-audit-head:{seq}:{digest}{tail}".encode("ascii"))


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: str
    acc: Counts | None = None  # None: a head written before the counts were kept

    def render(self, hasher: Hasher) -> bytes:
        doc: dict[str, Any] = {"seq": self.seq, "hash": self.hash}
        if self.acc is not None:
            doc["acc"] = list(self.acc)
        doc["mac"] = _mac(hasher, self.seq, self.hash, self.acc)
        return (json.dumps(doc, separators=(",", ":")) + "\n").encode("ascii")


HEAD_BYTES = 256  # the head record, padded: rewritten in place with one pwrite()


class HeadFile:
    """The head file, kept open: each anchor is one ``pwrite`` of a fixed-size record at offset
    0 (one page: no reader sees a mix of two heads; no truncation, no rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def write(self, state: ChainState, hasher: Hasher, acc: Counts | None = None) -> None:
        data = Head(state.seq, state.last_hash, acc).render(hasher)
        record = data[:-1].ljust(HEAD_BYTES - 1) + b"\n"
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR)
            except FileNotFoundError:  # the first head: whole or absent, never an empty file
                tmp = self.path.with_name("." + self.path.name + ".tmp")  # (no log glob matches it)
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.pwrite(fd, record, 0)
                    os.rename(tmp, self.path)
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
                return
        os.pwrite(self._fd, record, 0)

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
    raw_acc = doc.get("acc")
    acc: Counts | None = None
    if raw_acc is not None:
        if not (
            isinstance(raw_acc, list)
            and len(raw_acc) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in raw_acc)
        ):
            return "not a head record"
        acc = (raw_acc[0], raw_acc[1])
    if mac.startswith("hmac-") and hasher.key is None:
        return "the head is HMAC-keyed: give the key (--hmac-key-file)"
    if not hmac.compare_digest(_mac(hasher, seq, digest, acc), mac):
        return "seal mismatch: the head was changed (or the key is wrong)"
    return Head(seq, digest, acc)


def startup_events(
    path: Path, log_state: ChainState, hasher: Hasher, files: list[Path] | None = None
) -> tuple[ChainState, list[dict[str, Any]], Counts | None]:
    """The state a restarting log continues from, the events to write first (see above), and
    the offered records the log accounts for at its end (None: the head cannot say).
    ``files``: the log's files, oldest first (to count the records after a head behind)."""
    head = read_head(path, hasher)
    if head is None:
        if log_state.seq == 0:  # a new log: it accounts for nothing yet
            return log_state, [], (0, 0)
        event = {"event": "audit_head_missing", "head": path.name, "seq": log_state.seq}
        return log_state, [event], None
    if isinstance(head, str):
        return log_state, [{"event": "audit_head_invalid", "head": path.name, "why": head}], None
    if head.seq == log_state.seq and head.hash == log_state.last_hash:
        return log_state, [], head.acc
    if head.seq >= log_state.seq:  # the log ends before its head: the newest records are gone
        event = {
            "event": "audit_records_missing",
            "after_seq": log_state.seq,
            "head_seq": head.seq,
            "missing": head.seq - log_state.seq,
        }
        return ChainState(head.seq, head.hash), [event], head.acc
    acc = head.acc
    if acc is not None:  # a crash between a write and its anchor: count the records after it
        after = weight_after(files or [], head.seq)
        acc = (acc[0] + after[0], acc[1] + after[1]) if after is not None else None
    event = {"event": "audit_head_behind", "head_seq": head.seq, "seq": log_state.seq}
    return log_state, [event], acc
