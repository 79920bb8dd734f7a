"""Offered-record counters, shared between processes and kept beside the log: ``PATH.offered``.

Exactly-once accounting across kills. Every process that makes records (the single process, or
each ``--workers`` worker) counts each record it offers to its audit log *before* queuing it, in
its own slot of one mapped page (one increment in memory, no system call):

- a ``MAP_SHARED`` file mapping survives a SIGKILL of any process that maps it (the kernel's page
  cache holds the page), not a machine crash (nothing is fsync'ed: docs/security.md);
- the head file (head.py) records, with each anchor, how many offered records the log accounts
  for up to its last record (written decision records, and the counts of the
  ``audit_records_lost`` events written);
- a restarting service compares the two before writing anything (``reconcile``): what was
  offered and neither reached the disk nor was counted in an event died in a process's memory
  (a queue, a pipe, a loss not yet written), and is written into the chain as an
  ``audit_records_lost`` event with ``reason: "process killed"``. The counts are cumulative, so
  a crash before that event reaches the disk makes the next start count the same loss, not twice.

The page also carries the supervisor's ``failing`` flag (``audit_overflow: deny`` under
``--workers N``), and with ``--workers N`` the supervisor settles a dead worker at once: what the
worker's slot grew by since it started, minus what arrived through its pipe (``Tally``).

The process that owns the log holds an exclusive ``flock`` on the file for its lifetime; its
workers inherit the same open file, hence the lock: a restart waits until every process of the
previous run is gone (their counts are final), and a second service on the same log cannot start.
Without a log file (``--audit-log -``) the supervisor uses the same page in memory (``memfd``).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extauthz.decision.audit.files import LOST_EVENT

ENV_AUDIT_FD = "EXTAUTHZ_WORKER_AUDIT_FD"  # "FD:SLOT" for a worker
SUFFIX = ".offered"
LOCK_WAIT = 30.0  # seconds a start waits for the processes of the previous run to be gone

_SIZE = 4096  # one page of little-endian u64 words
_MAGIC = int.from_bytes(b"EXTZOFF1", "little")
FAILING = 1  # word: 1 while the supervisor cannot write
_BASE = 2  # words 2, 3: counts carried over (allowed, denied) when the file was rebased
_SLOTS = 4  # word 4 + 2*slot: allowed, then denied, offered by slot ``slot``
MAX_SLOTS = (_SIZE // 8 - _SLOTS) // 2

KILLED_REASON = "process killed"


class OfferedLocked(OSError):
    """Another process holds the log's counters (a service on the same log, or its workers)."""


def offered_path(log_path: str | Path) -> Path:
    p = Path(log_path)
    return p.with_name(p.name + SUFFIX)


class Offered:
    """The mapped page. ``words``: the page as u64 words (index with ``slot_index``)."""

    def __init__(self, fd: int, path: Path | None = None, *, existed: bool = True) -> None:
        self.fd = fd
        self.path = path
        self.existed = existed  # False: created (or found unusable and reset) by this start
        self._map = mmap.mmap(fd, _SIZE)
        self.words = memoryview(self._map).cast("Q")

    @classmethod
    def in_memory(cls) -> Offered:
        """A page only the supervisor and its workers share (no log file to keep it beside)."""
        fd = os.memfd_create("extauthz-audit")
        os.ftruncate(fd, _SIZE)
        page = cls(fd, existed=False)
        page.words[0] = _MAGIC
        return page

    @classmethod
    def open(cls, path: Path, wait: float = LOCK_WAIT) -> Offered:
        """Open (or create) ``path`` and take its lock, waiting up to ``wait`` seconds for the
        processes of a previous run to be gone. Raises OfferedLocked after that."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd, path, wait)
            size = os.fstat(fd).st_size
            if size != _SIZE:
                os.ftruncate(fd, 0)  # new, or not ours: start it over (reconcile says so)
                os.ftruncate(fd, _SIZE)
            page = cls(fd, path, existed=size == _SIZE)
        except BaseException:
            os.close(fd)
            raise
        if page.words[0] != _MAGIC:
            page.words[: len(page.words)] = memoryview(bytes(_SIZE)).cast("Q")
            page.words[0] = _MAGIC
            page.existed = False
        return page

    @classmethod
    def from_env(cls) -> tuple[Offered, int] | None:
        """A worker: the supervisor's page (inherited descriptor) and this worker's slot."""
        value = os.environ.get(ENV_AUDIT_FD)
        if not value:
            return None
        fd, _, slot = value.partition(":")
        return cls(int(fd)), int(slot or 0)

    def env_value(self, slot: int) -> str:
        return f"{self.fd}:{slot}"

    @staticmethod
    def slot_index(slot: int) -> int:
        """The word of slot ``slot``'s allowed count (its denied count is the next word)."""
        if not 0 <= slot < MAX_SLOTS:
            raise ValueError(f"audit counter slot {slot} out of range (at most {MAX_SLOTS} workers)")
        return _SLOTS + 2 * slot

    def slot_counts(self, slot: int) -> tuple[int, int]:
        i = self.slot_index(slot)
        return int(self.words[i]), int(self.words[i + 1])

    def totals(self) -> tuple[int, int]:
        """(allowed, denied) records offered so far, every run and slot of this file."""
        w = self.words
        return int(w[_BASE] + sum(w[_SLOTS::2])), int(w[_BASE + 1] + sum(w[_SLOTS + 1 :: 2]))

    def rebase(self, allowed: int, denied: int) -> None:
        """Make ``totals()`` read (allowed, denied) (only while no other process counts)."""
        a, d = self.totals()
        w = self.words
        w[_BASE] = max(0, int(w[_BASE]) + allowed - a)
        w[_BASE + 1] = max(0, int(w[_BASE + 1]) + denied - d)

    def failing(self) -> bool:
        return self.words[FAILING] != 0

    def set_failing(self, failing: bool) -> None:
        self.words[FAILING] = 1 if failing else 0

    def close(self) -> None:
        """Unlock and close the descriptor (after the workers exited: they share the lock). The
        mapping stays (a record emitted after close still counts; it goes with the process)."""
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)  # the mapping holds a duplicate of the descriptor
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _lock(fd: int, path: Path, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise OfferedLocked(
                    f"{path} is held by another process: a service already writes this audit log "
                    "(or the workers of a killed one did not exit)"
                ) from None
            time.sleep(0.05)


def reconcile(
    page: Offered, accounted: tuple[int, int] | None
) -> tuple[tuple[int, int], list[tuple[dict[str, Any], tuple[int, int]]]]:
    """Compare what the previous runs offered with what the log accounts for (``accounted``: from
    the head, None when the head cannot say). Returns the count the log accounts for before the
    returned events are written, and the events, each with the offered records it accounts for.
    """
    offered = page.totals()
    if accounted is None:  # the head cannot say (head.py reports why): start counting again
        return offered, []
    if not page.existed:  # deleted or replaced while the head says records were counted
        page.rebase(*accounted)
        if accounted == (0, 0):
            return accounted, []
        name = page.path.name if page.path is not None else SUFFIX
        missing = {"event": "audit_offered_missing", "file": name, "accounted": list(accounted)}
        return accounted, [(missing, (0, 0))]
    lost = (max(0, offered[0] - accounted[0]), max(0, offered[1] - accounted[1]))
    events: list[tuple[dict[str, Any], tuple[int, int]]] = []
    if offered[0] < accounted[0] or offered[1] < accounted[1]:  # rolled back or edited
        behind: dict[str, Any] = {
            "event": "audit_offered_behind",
            "offered": list(offered),
            "accounted": list(accounted),
        }
        events.append((behind, (0, 0)))
    if lost != (0, 0):
        loss = {"event": LOST_EVENT, "allowed": lost[0], "denied": lost[1], "reason": KILLED_REASON}
        events.append((loss, lost))
    return (offered[0] - lost[0], offered[1] - lost[1]), events


@dataclass(slots=True)
class Tally:
    """Supervisor side: what arrived from one worker process through its pipe."""

    allowed: int = 0
    denied: int = 0
    reported_allowed: int = 0  # losses the worker wrote itself (its audit_records_lost events)
    reported_denied: int = 0

    def missing(self, offered: tuple[int, int]) -> tuple[int, int]:
        """(allowed, denied) of ``offered`` (the worker's own offers) that neither arrived nor
        were reported."""
        a, d = offered
        return (
            max(0, a - self.allowed - self.reported_allowed),
            max(0, d - self.denied - self.reported_denied),
        )
