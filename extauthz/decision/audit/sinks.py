"""Where sealed lines go: a text stream, or a file rotated by size."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import IO

from extauthz.decision.audit.chain import ChainState, Hasher, last_line, state_after


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
            line = last_line(candidate)
            if line is not None:
                return state_after(line, hasher)
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
