"""Counters a ``--workers`` worker shares with its supervisor: exactly-once across processes.

One small shared memory page per worker process (``memfd``, inherited by the worker):

- the worker counts every record it offers to its audit log (allowed and denied apart) *before*
  queuing it, so a record still in the worker's memory when it is SIGKILLed is counted here;
- the supervisor counts the records that reached it through the pipe and the losses the worker
  reported itself (``audit_records_lost`` events); when the worker exits, the difference is the
  records that died with it, and the supervisor writes them into the chain as lost;
- the other way, the supervisor raises ``failing`` while its writes fail, so that a worker with
  ``audit_overflow: deny`` denies (``audit_unavailable``) instead of answering allows whose
  records cannot reach the disk.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

ENV_AUDIT_FD = "EXTAUTHZ_WORKER_AUDIT_FD"
_SIZE = 24
_COUNTS = struct.Struct("<QQ")  # offered allowed, offered denied
_FAILING = 16  # one byte: 1 while the supervisor cannot write


class SharedCounters:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, _SIZE)
        self._allowed = 0
        self._denied = 0

    @classmethod
    def create(cls) -> SharedCounters:
        fd = os.memfd_create("extauthz-audit", 0)  # not close-on-exec: the worker inherits it
        os.ftruncate(fd, _SIZE)
        return cls(fd)

    @classmethod
    def from_env(cls) -> SharedCounters | None:
        value = os.environ.get(ENV_AUDIT_FD)
        return cls(int(value)) if value else None

    def offered(self, allowed: bool) -> None:
        """Worker: one more record offered (call before queuing it)."""
        if allowed:
            self._allowed += 1
        else:
            self._denied += 1
        _COUNTS.pack_into(self._map, 0, self._allowed, self._denied)

    def counts(self) -> tuple[int, int]:
        """Supervisor: (allowed, denied) records the worker offered so far."""
        a, d = _COUNTS.unpack_from(self._map, 0)
        return int(a), int(d)

    def failing(self) -> bool:
        return self._map[_FAILING] != 0

    def set_failing(self, failing: bool) -> None:
        self._map[_FAILING] = 1 if failing else 0

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)


@dataclass(slots=True)
class Tally:
    """Supervisor side: what arrived from one worker process through its pipe."""

    allowed: int = 0
    denied: int = 0
    reported_allowed: int = 0  # losses the worker wrote itself (its audit_records_lost events)
    reported_denied: int = 0

    def missing(self, shared: SharedCounters) -> tuple[int, int]:
        """(allowed, denied) records the worker offered that neither arrived nor were reported."""
        a, d = shared.counts()
        return (
            max(0, a - self.allowed - self.reported_allowed),
            max(0, d - self.denied - self.reported_denied),
        )
