"""Audit records: one JSON line per decision, written off the hot path.

The Check path builds a plain dict and hands it to ``AuditLog.emit``; a writer thread serialises
and writes it. Nothing secret is ever put in a record: tokens appear only as ``iss``/``sub``.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
from datetime import UTC, datetime
from typing import IO, Any

log = logging.getLogger("extauthz.audit")

MAX_FIELD_CHARS = 1024  # every string value is capped: no input can blow up a record


def rfc3339_now() -> str:
    """The current UTC time, RFC 3339 with microseconds (``2026-11-23T11:18:03.123456Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _cap(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= MAX_FIELD_CHARS else value[:MAX_FIELD_CHARS] + "…"
    if isinstance(value, dict):
        return {k: _cap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cap(v) for v in value]
    return value


def encode_record(record: dict[str, Any]) -> str:
    """One line of JSON: ASCII only, so no input byte can split or forge a line."""
    return json.dumps(_cap(record), ensure_ascii=True, separators=(",", ":"), sort_keys=False)


class AuditLog:
    """A bounded queue in front of a writer thread.

    ``emit`` never blocks the Check path; when the queue is full the record is counted as lost
    (``lost``) and a warning is logged, never silently dropped.
    """

    def __init__(self, stream: IO[str], *, capacity: int = 65536, owns_stream: bool = True) -> None:
        self._stream = stream
        self._owns = owns_stream
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=capacity)
        self.written = 0
        self.lost = 0
        self.write_errors = 0
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, path: str, *, capacity: int = 65536) -> AuditLog:
        if path == "-":
            return cls(sys.stdout, capacity=capacity, owns_stream=False)
        return cls(open(path, "a", encoding="ascii", buffering=1 << 16), capacity=capacity)

    def emit(self, record: dict[str, Any]) -> bool:
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            self.lost += 1
            if self.lost == 1 or self.lost % 1000 == 0:
                log.warning("audit queue full: %d records lost so far", self.lost)
            return False

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            batch = [record]
            while record is not None and len(batch) < 512:
                try:
                    record = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(record)
            lines = [encode_record(r) for r in batch if r is not None]
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                    self.written += len(lines)
                except (OSError, ValueError) as exc:
                    self.write_errors += 1
                    self.lost += len(lines)
                    log.error("audit write failed, %d records lost: %s", len(lines), exc)
            if batch[-1] is None:
                return

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the writer."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._owns:
            self._stream.close()
        else:
            self._stream.flush()
