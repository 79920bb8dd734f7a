"""AuditLog: a bounded queue in front of a writer thread that seals and writes records."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from extauthz.decision.audit.chain import ChainState, Hasher, seal_body, split_sealed
from extauthz.decision.audit.files import LOST_EVENT
from extauthz.decision.audit.lines import Counts, accounting_line, weigh
from extauthz.decision.audit.record import encode_body, rfc3339_now
from extauthz.decision.audit.shared import Offered, offered_path, reconcile
from extauthz.decision.audit.sinks import FileSink, PartialWrite, Sink, StreamSink

log = logging.getLogger("extauthz.decision.audit")

OVERFLOW_DROP_ALLOWED = "drop-allowed"
OVERFLOW_DENY = "deny"
OVERFLOW_MODES = (OVERFLOW_DROP_ALLOWED, OVERFLOW_DENY)
_BATCH = 4096  # records sealed and written with one write()
_LINGER = 0.002  # seconds the writer waits for more records before writing a small batch
_IDLE_WAKE = 0.05  # an idle writer looks at the queue at least this often
_HOLD_MIN, _HOLD_MAX = 1.0, 30.0  # seconds writes stay "failing" after an error
PRESSURE_WAIT = 0.005  # seconds an emit waits for room before a record is refused
_PRESSURE_STEP = 0.0005
class AuditLog:
    """A bounded queue in front of a writer thread that seals and writes records.

    ``emit`` encodes the record on the caller's thread (the costly part, done once, with the
    record still fresh) and queues the line's body; the writer thread seals the bodies into the
    hash chain and writes each batch with one ``write()``, so it needs a few microseconds of the
    GIL per record and keeps pace with the fastest check rate.

    Back-pressure before loss: once the queue holds 7/8 of ``capacity`` records, ``emit`` waits
    (at most ``PRESSURE_WAIT``, the writer gets the GIL meanwhile) for room. When ``capacity``
    records still wait (the disk is slower than the checks) or the last write failed, an
    allowed-decision record is refused: counted in ``lost_allowed``, and with ``overflow="deny"``
    the caller turns the decision into a deny. Denied-decision records (and the service's own
    events) may still use ``reserve`` more places; past that they are counted in ``lost_denied``.
    Every loss is logged and, once writing works again, written into the log itself as an
    ``audit_records_lost`` event.

    ``offered``: the counters beside the log (shared.py). Opening compares them with what the
    log accounts for and writes what a killed process took with it as lost; ``count_offers``
    makes ``emit`` count each record there before queuing it.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        capacity: int = 65536,
        reserve: int | None = None,
        overflow: str = OVERFLOW_DROP_ALLOWED,
        hasher: Hasher | None = None,
        offered: Offered | None = None,
    ) -> None:
        if overflow not in OVERFLOW_MODES:
            raise ValueError(f"audit overflow must be one of {OVERFLOW_MODES}")
        self.sink = sink
        self.capacity = capacity
        self.high_water = capacity - capacity // 8
        self.reserve = max(1, capacity // 8) if reserve is None else reserve
        self.overflow = overflow
        self.hasher = hasher or Hasher()
        self.state = sink.initial_state(self.hasher)
        self.written = 0
        self.lost_allowed = 0
        self.lost_denied = 0
        self.write_errors = 0
        self.pressure_waits = 0  # emits that waited for room
        self.failing = False
        self._hold, self._hold_until = _HOLD_MIN, 0.0  # failing lasts at least this (see _write_failed)
        self._unreported = [0, 0]  # losses not yet written into the log: allowed, denied
        self._q: deque[tuple[bool, str]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._idle = False
        self._inflight = 0  # records taken off the queue whose write is not settled yet
        # Offered records are counted in a shared page (shared.py): ``_counts`` is the page,
        # ``_slot`` this process's allowed word (denied: the next); ``_remote``: a worker, which
        # reads the supervisor's failing flag there. The supervisor learns when its own writes
        # fail or work again through on_failing.
        self.offered = offered
        self._counts: memoryview | None = None
        self._slot = 0
        self._remote = False
        self.on_failing: Callable[[bool], None] | None = None
        events: list[tuple[dict[str, Any], Counts]] = [(e, (0, 0)) for e in sink.startup]
        self.accounted: Counts = (0, 0)  # offered records the log accounts for (the head's acc)
        if offered is not None:  # what a killed process took with it (shared.py)
            self.accounted, found = reconcile(offered, sink.accounted)
            events += found
        for event, acc in events:  # what a restart found comparing the log with its head
            log.error("audit log %s at startup: %s", event["event"], event)
            body = encode_body({"time": rfc3339_now(), **event})
            self._q.append((False, accounting_line(body, *acc)))
        # A head before the first record: a kill between a write and its anchor then finds the
        # head behind the log (and counts the records after it), never no head at all.
        sink.anchor(self.state, self._acc(), force=True)
        self._writer = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._writer.start()

    @classmethod
    def open(
        cls,
        path: str,
        *,
        capacity: int = 65536,
        max_bytes: int = 0,
        backups: int = 5,
        overflow: str = OVERFLOW_DROP_ALLOWED,
        hmac_key_file: str | None = None,
        count_offers: bool = True,
    ) -> AuditLog:
        """The log at ``path`` (``-``: standard output). A file log keeps its offered counters
        beside it (``PATH.offered``, locked while open; raises OfferedLocked when another
        process holds it); ``count_offers``: this process makes the records (not a supervisor)."""
        hasher = Hasher.from_key_file(hmac_key_file)
        if path == "-":
            return cls(StreamSink(sys.stdout), capacity=capacity, overflow=overflow, hasher=hasher)
        sink = FileSink(path, max_bytes=max_bytes, backups=backups)
        page = Offered.open(offered_path(path)) if sink.anchored else None
        try:
            audit = cls(sink, capacity=capacity, overflow=overflow, hasher=hasher, offered=page)
        except BaseException:
            if page is not None:
                page.close()
            raise
        if page is not None and count_offers:
            audit.count_offers(page, 0)
        return audit

    def count_offers(self, page: Offered, slot: int, remote: bool = False) -> None:
        """Count every record offered from now on in ``page``'s slot ``slot`` (before queuing
        it). ``remote``: a worker, whose supervisor writes (its failing flag is in the page)."""
        self._slot = page.slot_index(slot)
        self._remote = remote
        self._counts = page.words

    @property
    def lost(self) -> int:
        return self.lost_allowed + self.lost_denied

    @property
    def depth(self) -> int:
        """Records neither written nor counted as lost yet: queued, and the batch being written.

        0 means every record emitted so far is in ``written`` or ``lost`` (what a reader of the
        metrics waits for before comparing them with the checks answered)."""
        return len(self._q) + self._inflight

    def emit(self, record: dict[str, Any]) -> bool:
        """Queue ``record``; False when it was refused (and counted as lost)."""
        return self.emit_body(encode_body(record), record.get("allowed") is True)

    def emit_body(self, body: str, allowed: bool, wait: float = PRESSURE_WAIT) -> bool:
        """Queue an encoded record (``encode_body``'s output); False when refused (and counted).

        ``wait``: how long to wait for room when the queue is nearly full."""
        q = self._q
        counts = self._counts
        if counts is not None:  # counted before queued: a kill from here on loses it counted
            counts[self._slot + (not allowed)] += 1
            if self._remote and counts[1]:  # shared.FAILING: the supervisor cannot write
                return self._emit_slow(allowed, body, 0.0, failing=True)
        if len(q) < self.high_water and not self.failing and not self._closing:
            q.append((allowed, body))  # the common case: no lock (deque.append is atomic)
            if self._idle:
                with self._cond:
                    self._cond.notify()
            return True
        return self._emit_slow(allowed, body, wait)

    def _emit_slow(self, allowed: bool, body: str, wait: float, failing: bool = False) -> bool:
        q = self._q
        if not self.failing and not self._closing and len(q) >= self.high_water and wait > 0:
            self.pressure_waits += 1
            deadline = time.monotonic() + wait
            with self._cond:
                self._cond.notify()
            while len(q) >= self.high_water and not self.failing and not self._closing:
                if time.monotonic() >= deadline:
                    break
                time.sleep(_PRESSURE_STEP)  # the writer runs meanwhile
        with self._cond:
            n = len(q)
            if self._closing:  # nobody will write it any more
                self._lose([(allowed, body)])
                return False
            if (failing or self.failing or n >= self.capacity) and (
                allowed or n >= self.capacity + self.reserve
            ):
                self._lose([(allowed, body)])
                return False
            q.append((allowed, body))
            self._cond.notify()
        return True

    def count_lost(self, allowed: int, denied: int, why: str) -> None:
        """Records lost elsewhere (a worker killed with records in memory): counted, logged and
        written into the chain as an ``audit_records_lost`` event like the log's own losses."""
        if not (allowed or denied):
            return
        log.error("audit records lost: %d allowed, %d denied decisions (%s)", allowed, denied, why)
        with self._cond:
            if allowed:
                self._count_loss(True, allowed)
            if denied:
                self._count_loss(False, denied)
            self._cond.notify()

    def _lose(self, items: list[tuple[bool, str]]) -> None:
        """Count ``items`` as lost: a record as one, a loss event as its counts (under _cond)."""
        a, d = weigh(items)
        if a:
            self._count_loss(True, a)
        if d:
            self._count_loss(False, d)

    def _count_loss(self, allowed: bool, n: int) -> None:
        if allowed:
            self.lost_allowed += n
            self._unreported[0] += n
        else:
            self.lost_denied += n
            self._unreported[1] += n
        total = self.lost
        if total <= n or total // 1000 != (total - n) // 1000:
            log.warning(
                "audit records lost: %d of allowed decisions, %d of denied ones so far",
                self.lost_allowed,
                self.lost_denied,
            )

    def _run(self) -> None:
        q = self._q
        while True:
            anchor = False
            with self._cond:
                self._idle = True
                while not q and not self._closing and not (any(self._unreported) and not self.failing):
                    if not self._cond.wait(_IDLE_WAKE) and self.sink.anchor_due():
                        anchor = True  # idle: bring the head up to the last record written
                        break
                self._idle = False
            if anchor:
                self.sink.anchor(self.state, self._acc(), force=True)
                continue
            if len(q) < _BATCH and not self._closing and self.overflow != OVERFLOW_DENY:
                # (with overflow "deny" no lingering: fewer answered records in flight at a failure)
                time.sleep(_LINGER)  # let a batch build up: far fewer wake-ups under load
            n = min(_BATCH, len(q))
            self._inflight = n  # before popping: depth may count a record twice, never zero times
            batch = [q.popleft() for _ in range(n)]
            done = self._closing and not q
            if batch or (any(self._unreported) and (not self.failing or done)):
                self._write(batch)
            self._inflight = 0
            if done:
                return

    def _write(self, batch: list[tuple[bool, str]]) -> None:
        with self._cond:
            a, d = self._unreported
            self._unreported = [0, 0]
        items = batch
        if a or d:  # say in the log itself that records are missing before these
            loss = {"time": rfc3339_now(), "event": LOST_EVENT, "allowed": a, "denied": d}
            items = [(False, accounting_line(encode_body(loss), a, d)), *batch]
        saved = ChainState(self.state.seq, self.state.last_hash)
        state, hasher = self.state, self.hasher
        lines = [seal_body(b, state, hasher) for _, b in items]
        try:
            self.sink.write(lines)
        except (OSError, ValueError) as exc:
            self._write_failed(exc, saved, lines, items, len(items) - len(batch), (a, d))
            return
        self.written += len(items)
        self._account(items)
        self.sink.anchor(self.state, self._acc())
        if self.failing and time.monotonic() >= self._hold_until:
            with self._cond:
                self.failing = False
            log.warning("audit writing works again")
            if self.on_failing is not None:
                self.on_failing(False)

    def _acc(self) -> Counts | None:
        """The head's count: only a log with counters beside it keeps one (shared.py)."""
        return self.accounted if self.offered is not None else None

    def _account(self, items: list[tuple[bool, str]]) -> None:
        a, d = weigh(items)
        self.accounted = (self.accounted[0] + a, self.accounted[1] + d)

    def _write_failed(
        self,
        exc: Exception,
        saved: ChainState,
        lines: list[str],
        items: list[tuple[bool, str]],
        events: int,
        unreported: tuple[int, int],
    ) -> None:
        """Account a failed write: the lines that made it are written, the rest lost (once).
        ``items``: the ``events`` loss events first, then the batch."""
        done = exc.lines if isinstance(exc, PartialWrite) else 0
        if done:  # the chain continues after the last complete line on disk
            parts = split_sealed(lines[done - 1])
            self.state = ChainState(saved.seq + done, parts[1] if parts else saved.last_hash)
            self.written += done
            self._account(items[:done])
            self.sink.anchor(self.state, self._acc())
        else:
            self.state = saved
        self.write_errors += 1
        lost = items[max(done, events) :]
        with self._cond:
            was, self.failing = self.failing, True
            # Hold the failing state a while (doubling when writing fails again soon after it
            # came back): a nearly full disk takes a small write and refuses the next batch, and
            # each such flap would let allows through whose records then cannot be written.
            now = time.monotonic()
            self._hold = min(_HOLD_MAX, self._hold * 2) if now - self._hold_until < 10 else _HOLD_MIN
            self._hold_until = now + self._hold
            if events and not done:  # the loss event (first line) did not make it either
                self._unreported[0] += unreported[0]
                self._unreported[1] += unreported[1]
            self._lose(lost)
        log.error("audit write failed, %d records lost: %s", len(lost), exc)
        if isinstance(self.sink, FileSink):
            self.sink.fail()
        if not was and self.on_failing is not None:
            self.on_failing(True)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (or lost); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._q or not self._idle:
            if time.monotonic() > deadline or not self._writer.is_alive():
                return False
            time.sleep(0.001)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the writer."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._writer.join(timeout)
        with self._cond:  # appended after the writer's last look, or the writer is stuck: count
            self._lose([self._q.popleft() for _ in range(len(self._q))])
        self.sink.close()
        if self.offered is not None:
            self.offered.close()  # the lock goes (the mapping stays: a late emit still counts)
