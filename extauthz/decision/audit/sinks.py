"""Where sealed lines go: a text stream, or a file rotated by size."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import IO, Any

from extauthz.decision.audit.chain import ChainState, Hasher, last_line, state_after
from extauthz.decision.audit.files import rotated_files
from extauthz.decision.audit.head import Counts, HeadFile, head_path, startup_events

log = logging.getLogger("extauthz.decision.audit")
ANCHOR_EVERY = 0.05  # seconds: the head lags the log by at most this (and is exact after close)


class StreamSink:
    """Standard output (or any text stream): no rotation, the chain starts with each run."""

    def __init__(self, stream: IO[str], *, owns: bool = False) -> None:
        self.stream = stream
        self.owns = owns
        self.startup: list[dict[str, Any]] = []  # no head to compare with: nothing to report
        self.accounted: Counts | None = None  # nor what a previous run accounted for

    def initial_state(self, hasher: Hasher) -> ChainState:
        return ChainState()

    def anchor_due(self) -> bool:
        return False

    def anchor(self, state: ChainState, acc: Counts | None = None, force: bool = False) -> None:
        """No file, no head: the collector keeps the newest seq and hash (docs/security.md)."""

    def write(self, lines: list[str]) -> None:
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.owns:
            self.stream.close()
        else:
            self.stream.flush()


class PartialWrite(OSError):
    """A write failed after ``lines`` complete lines of it were on disk (any torn tail removed)."""

    def __init__(self, cause: OSError, lines: int) -> None:
        super().__init__(cause.errno, f"{cause.strerror or cause} after {lines} lines")
        self.lines = lines


class FileSink:
    """A file rotated by size: ``PATH`` -> ``PATH.1`` -> ... -> ``PATH.<backups>`` (dropped).

    Written through the raw file descriptor (``O_APPEND``): a write that fails part way (disk
    full, EFBIG) is cut back to its last complete line with ``ftruncate``, and the caller learns
    how many lines made it (``PartialWrite``): a record is either one complete line or not there.
    """

    def __init__(self, path: str | Path, *, max_bytes: int = 0, backups: int = 5) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = max(1, backups)
        self._fd: int | None = None
        self._size = 0
        self.head = head_path(self.path)
        # Only a regular file gets a head and rotation: never rename /dev/null or a FIFO away.
        self.anchored = not self.path.exists() or self.path.is_file()
        if not self.anchored:
            self.max_bytes = 0
        self._head = HeadFile(self.head)
        self._anchored = 0.0  # when the head was last written
        self._unanchored: tuple[ChainState, Counts | None] | None = None
        self.startup: list[dict[str, Any]] = []  # events a restart writes first (head.py)
        self.accounted: Counts | None = None  # offered records the log accounts for (head.py)
        self._hasher = Hasher()
        self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size

    def initial_state(self, hasher: Hasher) -> ChainState:
        self._hasher = hasher
        state = ChainState()
        for candidate in (self.path, self.path.with_name(self.path.name + ".1")):
            line = last_line(candidate)
            if line is not None:
                state = state_after(line, hasher)
                break
        if self.anchored:
            files = rotated_files(self.path)
            state, self.startup, self.accounted = startup_events(self.head, state, hasher, files)
        return state

    def anchor_due(self) -> bool:
        """Records were written since the head was last written."""
        return self._unanchored is not None and self.anchored

    def anchor(self, state: ChainState, acc: Counts | None = None, force: bool = False) -> None:
        """Rewrite the head file with the last record on disk and ``acc``, the offered records
        the log accounts for up to it (at most every ANCHOR_EVERY s)."""
        if not self.anchored:
            return
        now = time.monotonic()
        if not force and now - self._anchored < ANCHOR_EVERY:
            self._unanchored = ChainState(state.seq, state.last_hash), acc
            return
        self._anchored, self._unanchored = now, None
        try:
            self._head.write(state, self._hasher, acc)
        except OSError as exc:  # the records are on disk; verify will say the head is behind
            log.warning("cannot anchor the audit chain head in %s: %s", self.head, exc)

    def write(self, lines: list[str]) -> None:
        if self._fd is None:  # a previous failure closed it: try again
            self._open()
        chunk: list[str] = []
        size = self._size
        done = 0
        try:
            for line in lines:
                n = len(line) + 1
                if self.max_bytes and size and size + n > self.max_bytes:
                    self._put(chunk)
                    done += len(chunk)
                    chunk = []
                    self.rotate()
                    size = 0
                chunk.append(line)
                size += n
            self._put(chunk)
        except PartialWrite as exc:
            raise PartialWrite(exc, done + exc.lines) from exc
        except OSError as exc:
            raise PartialWrite(exc, done) from exc

    def _put(self, chunk: list[str]) -> None:
        if not chunk:
            return
        assert self._fd is not None
        data = ("\n".join(chunk) + "\n").encode("ascii")
        view = memoryview(data)
        start = self._size
        sent = 0
        try:
            while sent < len(data):
                sent += os.write(self._fd, view[sent:])
        except OSError as exc:
            whole = data.rfind(b"\n", 0, sent) + 1  # bytes of complete lines on disk
            if sent > whole:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start + whole)  # no torn line left behind
            self._size = start + whole
            raise PartialWrite(exc, data.count(b"\n", 0, whole)) from exc
        self._size = start + len(data)

    def rotate(self) -> None:
        if not self.anchored:  # not a regular file: nothing to rotate
            return
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.path.exists():
            self.path.replace(self.path.with_name(self.path.name + ".1"))
        self._open()

    def fail(self) -> None:
        """After a write error: drop the descriptor so that the next write reopens the file."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        if self._unanchored is not None:
            self.anchor(*self._unanchored, force=True)
        self._head.close()
        self.fail()


Sink = StreamSink | FileSink
