"""Loopback ports and bounded waits."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]  # the source checkout (editable install)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    *,
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` until true; raise ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, max_bytes: int = 4000) -> str:
    """The end of a (log) file, for error messages."""
    try:
        data = path.read_bytes()
    except OSError:
        return "<no output>"
    return data[-max_bytes:].decode("utf-8", "replace")
