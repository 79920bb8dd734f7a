"""Audit records: one JSON line per decision, hash-chained, written off the hot path.

The Check path builds a plain dict and hands it to ``AuditLog.emit``; a writer thread serialises,
chains and writes it. Nothing secret is ever put in a record: tokens appear only as ``iss``/``sub``.

Every line is a JSON object whose last three members are added here:

* ``seq``: 1, 2, 3, ... for the whole chain (continuing across rotation and restarts);
* ``prev_hash``: the ``hash`` of the record before it (``GENESIS`` for the first one);
* ``hash``: ``sha256:HEX`` (or ``hmac-sha256:HEX`` with a key) of the line's bytes up to, not
  including, ``,"hash":`` followed by ``}``. The line must end exactly with that member.

Changing a byte breaks the record's own hash; removing, inserting or swapping records breaks the
next record's ``prev_hash`` and ``seq``. Without a key the chain shows accidents and clumsy edits;
with a key (``audit_hmac_key_file``) nobody without the key can write a record that verifies.
What no chain shows by itself: records cut off the end of the newest file (compare ``seq`` with
``extauthz_audit_records_written_total``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("extauthz.decision.audit")

MAX_FIELD_CHARS = 1024  # every string value is capped: no input can blow up a record
MAX_LIST_ITEMS = 64
GENESIS = "genesis"
HASH_MEMBER = ',"hash":"'
OVERFLOW_DROP_ALLOWED = "drop-allowed"
OVERFLOW_DENY = "deny"
OVERFLOW_MODES = (OVERFLOW_DROP_ALLOWED, OVERFLOW_DENY)
_BATCH = 512
_LINGER = 0.002  # seconds the writer waits for more records before writing a batch
_TAIL_BYTES = 1 << 20  # how far back to look for the last record when continuing a file


_second: tuple[int, str] = (-1, "")  # the last whole second formatted (one tuple: swapped whole)


def rfc3339_now() -> str:
    """The current UTC time, RFC 3339 with microseconds (``2026-11-23T11:18:03.123456Z``).

    On every check: the date and time are formatted once a second, the microseconds each call.
    """
    global _second
    us = time.time_ns() // 1000
    sec, frac = divmod(us, 1_000_000)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{frac:06d}Z"


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _cap(value: Any) -> Any:
    """A copy of ``value`` with every string capped (keys too) and only JSON types left."""
    if isinstance(value, str):
        value = str(value)  # a plain str, whatever subclass came in
        return value if len(value) <= MAX_FIELD_CHARS else value[:MAX_FIELD_CHARS] + "…"
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {_cap(str(k)): _cap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cap(v) for v in value[:MAX_LIST_ITEMS]]
    return _cap(str(value))


def encode_record(record: dict[str, Any]) -> str:
    """One line of JSON: ASCII only, so no input byte can split or forge a line."""
    return json.dumps(_cap(record), ensure_ascii=True, separators=(",", ":"))


# ----------------------------------------------------------------------------- the chain


class Hasher:
    """``sha256:HEX`` of a line, or ``hmac-sha256:HEX`` under a secret key."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key

    @classmethod
    def from_key_file(cls, path: str | None) -> Hasher:
        if not path:
            return cls()
        key = Path(path).read_bytes().strip()
        if len(key) < 16:
            raise ValueError(f"audit HMAC key file {path}: use at least 16 bytes of secret")
        return cls(key)

    def __call__(self, data: bytes) -> str:
        if self.key is None:
            return "sha256:" + hashlib.sha256(data).hexdigest()
        return "hmac-sha256:" + hmac.new(self.key, data, hashlib.sha256).hexdigest()


@dataclass(slots=True)
class ChainState:
    seq: int = 0
    last_hash: str = GENESIS


_CHAIN_KEYS = ("seq", "prev_hash", "hash")


# Built once: json.dumps() with arguments builds a new encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def _encode_body(record: dict[str, Any]) -> str:
    """The record as compact ASCII JSON, capped; without the chain members."""
    if "seq" not in record and "prev_hash" not in record and "hash" not in record:
        try:
            body = _ENCODER.encode(record)
        except (TypeError, ValueError):
            body = ""
        # A line this short cannot hold an over-long value: skip the capping walk (the common case).
        if body.startswith("{") and len(body) <= MAX_FIELD_CHARS:
            return body
    rec = _cap(record)
    for k in _CHAIN_KEYS:
        rec.pop(k, None)
    return _ENCODER.encode(rec)


def seal(record: dict[str, Any], state: ChainState, hasher: Hasher) -> str:
    """Encode ``record`` as the next line of the chain (no newline) and advance ``state``."""
    body = _encode_body(record)
    seq = state.seq + 1
    chain = f'"seq":{seq},"prev_hash":"{state.last_hash}"}}'
    body = body[:-1] + ("," if body != "{}" else "") + chain
    digest = hasher(body.encode("ascii"))
    state.seq = seq
    state.last_hash = digest
    return body[:-1] + HASH_MEMBER + digest + '"}'


def split_sealed(line: str) -> tuple[str, str] | None:
    """(the hashed body, the hash) of a sealed line, or None when it is not shaped like one."""
    i = line.rfind(HASH_MEMBER)
    if i == -1 or not line.endswith('"}'):
        return None
    digest = line[i + len(HASH_MEMBER) : -2]
    if '"' in digest or "\\" in digest:
        return None
    return line[:i] + "}", digest


def _state_after(line: str, hasher: Hasher) -> ChainState:
    """The chain state a new record continues from, given the last line written."""
    parts = split_sealed(line)
    if parts is not None:
        try:
            seq = json.loads(parts[0]).get("seq")
        except ValueError:
            seq = None
        if isinstance(seq, int):
            return ChainState(seq, parts[1])
    # A damaged last line: chain onto its bytes; ``audit verify`` will show the damage there.
    log.warning("the last audit record is damaged; continuing the chain after it")
    return ChainState(0, hasher(line.encode("ascii", "replace")))


def _last_line(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL_BYTES))
            tail = f.read()
    except FileNotFoundError:
        return None
    lines = [x for x in tail.split(b"\n") if x.strip()]
    return lines[-1].decode("ascii", "replace") if lines else None


# ----------------------------------------------------------------------------- sinks


class StreamSink:
    """Standard output (or any text stream): no rotation, the chain starts with each run."""

    def __init__(self, stream: IO[str], *, owns: bool = False) -> None:
        self.stream = stream
        self.owns = owns

    def initial_state(self, hasher: Hasher) -> ChainState:
        return ChainState()

    def write(self, lines: list[str]) -> None:
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.owns:
            self.stream.close()
        else:
            self.stream.flush()


class FileSink:
    """A file rotated by size: ``PATH`` -> ``PATH.1`` -> ... -> ``PATH.<backups>`` (dropped)."""

    def __init__(self, path: str | Path, *, max_bytes: int = 0, backups: int = 5) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = max(1, backups)
        self._f: IO[str] | None = None
        self._size = 0
        self._open()

    def _open(self) -> None:
        self._f = open(self.path, "a", encoding="ascii")  # noqa: SIM115 - closed in close()
        self._size = self._f.tell()

    def initial_state(self, hasher: Hasher) -> ChainState:
        for candidate in (self.path, self.path.with_name(self.path.name + ".1")):
            line = _last_line(candidate)
            if line is not None:
                return _state_after(line, hasher)
        return ChainState()

    def write(self, lines: list[str]) -> None:
        if self._f is None:  # a previous failure closed it: try again
            self._open()
        chunk: list[str] = []
        size = self._size
        for line in lines:
            n = len(line) + 1
            if self.max_bytes and size and size + n > self.max_bytes:
                self._put(chunk)
                chunk = []
                self.rotate()
                size = 0
            chunk.append(line)
            size += n
        self._put(chunk)

    def _put(self, chunk: list[str]) -> None:
        if not chunk:
            return
        assert self._f is not None
        data = "\n".join(chunk) + "\n"
        self._f.write(data)
        self._f.flush()
        self._size += len(data)

    def rotate(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.path.exists():
            self.path.replace(self.path.with_name(self.path.name + ".1"))
        self._open()

    def fail(self) -> None:
        """After a write error: drop the handle so that the next write reopens the file."""
        f, self._f = self._f, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


Sink = StreamSink | FileSink


# ----------------------------------------------------------------------------- the log


class AuditLog:
    """A bounded queue in front of a writer thread that seals and writes records.

    ``emit`` never blocks. When ``capacity`` records wait already (the writer fell behind) or the
    last write failed, an allowed-decision record is refused: counted in ``lost_allowed``, and
    with ``overflow="deny"`` the caller turns the decision into a deny. Denied-decision records
    (and the service's own events) may still use ``reserve`` more places; past that they are
    counted in ``lost_denied``. Every loss is logged and, once writing works again, written into
    the log itself as an ``audit_records_lost`` event.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        capacity: int = 65536,
        reserve: int | None = None,
        overflow: str = OVERFLOW_DROP_ALLOWED,
        hasher: Hasher | None = None,
    ) -> None:
        if overflow not in OVERFLOW_MODES:
            raise ValueError(f"audit overflow must be one of {OVERFLOW_MODES}")
        self.sink = sink
        self.capacity = capacity
        self.reserve = max(1, capacity // 8) if reserve is None else reserve
        self.overflow = overflow
        self.hasher = hasher or Hasher()
        self.state = sink.initial_state(self.hasher)
        self.written = 0
        self.lost_allowed = 0
        self.lost_denied = 0
        self.write_errors = 0
        self.failing = False
        self._unreported = [0, 0]  # losses not yet written into the log: allowed, denied
        self._q: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._idle = False
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

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
    ) -> AuditLog:
        hasher = Hasher.from_key_file(hmac_key_file)
        sink: Sink = (
            StreamSink(sys.stdout)
            if path == "-"
            else FileSink(path, max_bytes=max_bytes, backups=backups)
        )
        return cls(sink, capacity=capacity, overflow=overflow, hasher=hasher)

    @property
    def lost(self) -> int:
        return self.lost_allowed + self.lost_denied

    @property
    def depth(self) -> int:
        return len(self._q)

    def emit(self, record: dict[str, Any]) -> bool:
        """Queue ``record``; False when it was refused (and counted as lost)."""
        allowed = record.get("allowed") is True
        with self._cond:
            n = len(self._q)
            if self._closing:  # nobody will write it any more
                self._count_loss(allowed, 1)
                return False
            if (self.failing or n >= self.capacity) and (
                allowed or n >= self.capacity + self.reserve
            ):
                self._count_loss(allowed, 1)
                return False
            self._q.append(record)
            if self._idle:
                self._cond.notify()
        return True

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
        while True:
            with self._cond:
                self._idle = True
                while not self._q and not self._closing:
                    self._cond.wait()
                self._idle = False
            if len(self._q) < _BATCH and not self._closing:
                time.sleep(_LINGER)  # let a batch build up: far fewer wake-ups under load
            with self._cond:
                batch = [self._q.popleft() for _ in range(min(_BATCH, len(self._q)))]
                done = self._closing and not self._q
            if batch:
                self._write(batch)
            if done:
                return

    def _write(self, batch: list[dict[str, Any]]) -> None:
        with self._cond:
            a, d = self._unreported
            self._unreported = [0, 0]
        records = batch
        if a or d:  # say in the log itself that records are missing before these
            loss = {"time": rfc3339_now(), "event": "audit_records_lost", "allowed": a, "denied": d}
            records = [loss, *batch]
        saved = ChainState(self.state.seq, self.state.last_hash)
        try:
            self.sink.write([seal(r, self.state, self.hasher) for r in records])
        except (OSError, ValueError) as exc:
            self.state = saved  # the chain continues from what is on disk
            self.write_errors += 1
            with self._cond:
                self.failing = True
                self._unreported[0] += a
                self._unreported[1] += d
                for allowed in (True, False):
                    n = sum(1 for r in batch if (r.get("allowed") is True) is allowed)
                    if n:
                        self._count_loss(allowed, n)
            log.error("audit write failed, %d records lost: %s", len(batch), exc)
            if isinstance(self.sink, FileSink):
                self.sink.fail()
            return
        self.written += len(records)
        if self.failing:
            with self._cond:
                self.failing = False
            log.warning("audit writing works again")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (or lost); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._q or not self._idle:
            if time.monotonic() > deadline or not self._thread.is_alive():
                return False
            time.sleep(0.001)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the writer."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        self.sink.close()


# ----------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class VerifyResult:
    records: int
    first_seq: int | None  # seq of the first record checked (1 when the chain starts there)
    broken: str | None = None  # "FILE:LINE: why" of the first broken record

    @property
    def ok(self) -> bool:
        return self.broken is None


def verify(paths: Iterable[str | Path], hasher: Hasher | None = None) -> VerifyResult:
    """Check the chain through ``paths`` (oldest file first); stop at the first broken record."""
    hasher = hasher or Hasher()
    state: ChainState | None = None
    first: int | None = None
    count = 0
    for path in paths:
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
    return VerifyResult(count, first)


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
