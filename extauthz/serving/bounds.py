"""Resource bounds on request bodies (h2corn transport): no single client can pin the memory.

A Check body is read under four bounds (settings, documented in docs/security.md):

- ``max_message_bytes``: the gRPC message cap, enforced while reading: the stream is refused as
  soon as more than ``5 + max_message_bytes`` bytes arrived, never after buffering the rest.
- ``body_timeout``: the whole body must arrive within this many seconds of the call's start (a
  total deadline: a client trickling one byte a second does not renew it).
- ``max_buffered_bytes_per_connection`` and ``max_buffered_bytes`` (the process): the bytes of
  bodies still being read (held across a wait for more DATA). A chunk that would go over either
  budget refuses its stream. A body that arrives whole in its first chunk (every normal check:
  Envoy sends one DATA frame with END_STREAM) is decided without waiting and holds no budget, so
  clients that fill the budget with unfinished streams do not stop other clients' checks.

Connections are told apart by the client address in the ASGI scope; on a unix socket the ASGI
server gives none, and only the process budget (and h2corn's per-connection flow-control window)
applies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
ConnectionKey = tuple[str, int] | None

# Why a body was refused: the text goes into the deny's audit record (``error``).
TOO_LARGE = "too_large"
TIMEOUT = "timeout"
BUDGET = "budget"
GONE = "gone"  # the client reset the stream or went away: nothing to answer


@dataclass
class Budget:
    """Bytes of request bodies being read, per connection and for the whole process."""

    per_connection: int
    per_process: int
    total: int = 0
    by_connection: dict[ConnectionKey, int] = field(default_factory=dict)

    def take(self, conn: ConnectionKey, n: int) -> bool:
        """Reserve ``n`` bytes for a body on ``conn``; False (nothing reserved) if over a bound."""
        held = self.by_connection.get(conn, 0) if conn is not None else 0
        if self.total + n > self.per_process or held + n > self.per_connection:
            return False
        self.total += n
        if conn is not None:
            self.by_connection[conn] = held + n
        return True

    def give(self, conn: ConnectionKey, n: int) -> None:
        """Release ``n`` bytes taken for a body on ``conn``."""
        if n <= 0:
            return
        self.total -= n
        if conn is not None:
            left = self.by_connection.get(conn, 0) - n
            if left > 0:
                self.by_connection[conn] = left
            else:
                self.by_connection.pop(conn, None)


class Deadlines:
    """The body deadlines of one event loop's reads, kept by one timer for all of them.

    ``asyncio.timeout`` per call armed and cancelled a timer handle for every Check (h2corn
    hands every body over as the message plus an empty last event, so every call waits once):
    ~10 us of a cached check's CPU (issue 14, ``bench/run.py asgi --split``). Here a read only
    registers its task and deadline in a dict; one timer, armed at the earliest deadline and at
    most every ``granularity`` seconds, cancels the reads past theirs (``read_body`` turns that
    cancellation into TIMEOUT). A deadline is kept at most ``granularity`` late.
    """

    def __init__(self, granularity: float = 0.05) -> None:
        self.granularity = granularity
        # task -> (deadline, its cancellation requests when it entered: asyncio.timeout's rule)
        self._pending: dict[asyncio.Task[Any], tuple[float, int]] = {}
        self._expired: dict[asyncio.Task[Any], int] = {}  # task -> its cancellations before ours
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's

    def enter(self, task: asyncio.Task[Any], deadline: float) -> None:
        self._pending[task] = (deadline, task.cancelling())
        loop = asyncio.get_running_loop()
        if self._timer is None or self._loop is not loop:  # (an app outliving its first loop)
            self._loop = loop
            self._timer = loop.call_at(deadline, self._fire)

    def leave(self, task: asyncio.Task[Any]) -> None:
        self._pending.pop(task, None)
        if self._expired:
            self._expired.pop(task, None)

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """Whether ``task`` was cancelled here and only here (then that cancellation is
        withdrawn: the caller answers TIMEOUT instead). Cancelled from elsewhere as well (the
        server shutting down): False, and the cancellation goes on."""
        before = self._expired.pop(task, None)
        if before is None:
            return False
        return task.uncancel() <= before

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            return  # a timer of a loop this app no longer runs on
        self._timer = None
        pending = self._pending
        if not pending:
            return
        now = loop.time()
        late = [t for t, (d, _) in pending.items() if d <= now and t.get_loop() is loop]
        for task in late:
            self._expired[task] = pending.pop(task)[1]
            task.cancel()
        if pending:
            when = max(min(d for d, _ in pending.values()), now + self.granularity)
            self._timer = loop.call_at(when, self._fire)


@dataclass
class Limits:
    """The bounds one body is read under."""

    max_body: int  # 5 + max_message_bytes: the frame header and the message
    timeout: float
    budget: Budget
    deadlines: Deadlines = field(default_factory=Deadlines)


def connection_key(scope: dict[str, Any]) -> ConnectionKey:
    """The client's (host, port): one TCP connection. None when the server gives no address."""
    client = scope.get("client")
    if isinstance(client, (tuple, list)) and len(client) == 2 and client[1]:
        return str(client[0]), int(client[1])
    return None


def _declares_too_much(head: bytes, max_body: int) -> bool:
    """The gRPC frame header (flag, 4-byte length) announces a message over the cap: refuse it
    before its bytes arrive."""
    return len(head) >= 5 and 5 + int.from_bytes(head[1:5], "big") > max_body


async def read_body(receive: Receive, limits: Limits, conn: ConnectionKey) -> tuple[bytes, str | None]:
    """The whole request body, or (b"", why it was refused: TOO_LARGE, TIMEOUT, BUDGET, GONE).

    Once its first event is in, the body must be complete ``limits.timeout`` seconds later (the
    wait for that first event is bounded by h2corn's ``timeout_request_body_idle``, the
    backstop set just outside ``body_timeout``: serving/h2corn.py ``h2corn_bounds``).

    Every byte held across a wait is reserved in ``limits.budget`` and released on return."""
    first = await receive()
    if first["type"] != "http.request":
        return b"", GONE
    chunk = first.get("body", b"")
    if len(chunk) > limits.max_body or _declares_too_much(chunk, limits.max_body):
        return b"", TOO_LARGE
    if not first.get("more_body", False):
        return chunk, None  # complete at once: nothing held across a wait
    chunks = [chunk]
    size = len(chunk)
    held = 0
    budget = limits.budget
    deadlines = limits.deadlines
    task = asyncio.current_task()
    assert task is not None
    try:
        if not budget.take(conn, size):
            return b"", BUDGET
        held = size
        deadlines.enter(task, asyncio.get_running_loop().time() + limits.timeout)
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return b"", GONE
            chunk = msg.get("body", b"")
            if chunk:
                size += len(chunk)
                header_done = size - len(chunk) < 5 <= size
                if size > limits.max_body or (
                    header_done and _declares_too_much(b"".join((*chunks, chunk)), limits.max_body)
                ):
                    return b"", TOO_LARGE
                if not budget.take(conn, len(chunk)):
                    return b"", BUDGET
                held += len(chunk)
                chunks.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(chunks), None
    except asyncio.CancelledError:
        if deadlines.expired(task):
            return b"", TIMEOUT
        raise
    finally:
        deadlines.leave(task)  # (and forgets an expiry a cancellation from elsewhere overtook)
        chunks.clear()
        budget.give(conn, held)

