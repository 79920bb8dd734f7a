"""A raw HTTP/2 gRPC client for the resource-bound tests and ``bench/slow_streams.py``.

It does what no well-behaved gRPC client does: opens many Check streams on one connection and
sends body bytes without ever ending them, so the server's per-stream, per-connection and
per-process bounds and its body timeout can be seen at work. Loopback only; every wait is bounded.
Needs the ``h2`` package (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from extauthz.envoy.grpc import CHECK_PATH, frame, unframe


@dataclass
class StreamState:
    """What the server did with one stream."""

    sent: int = 0
    status: int | None = None
    body: bytearray = field(default_factory=bytearray)
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    reset: int | None = None  # RST_STREAM error code
    ended: bool = False

    @property
    def finished(self) -> bool:
        """Answered (END_STREAM from the server) or reset."""
        return self.ended or self.reset is not None

    @property
    def grpc_status(self) -> int | None:
        value = self.trailers.get(b"grpc-status")
        return int(value) if value is not None else None

    def message(self) -> bytes | None:
        msg, _ = unframe(bytes(self.body))
        return msg


class RawH2:
    """One h2c connection to ``host:port`` (HTTP/2 prior knowledge, as Envoy talks to extauthz)."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.streams: dict[int, StreamState] = {}
        self.closed = False  # GOAWAY received or the socket ended
        self._flush()
        self.pump(0.2)  # the server's SETTINGS (max concurrent streams, windows)

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self._flush()
        except (OSError, h2.exceptions.ProtocolError):
            pass
        self.sock.close()
        self.closed = True

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def max_streams(self) -> int:
        """The server's SETTINGS_MAX_CONCURRENT_STREAMS."""
        return int(self.conn.remote_settings.max_concurrent_streams)

    def open(self, path: str = CHECK_PATH, extra: list[tuple[bytes, bytes]] | None = None) -> int:
        """Start a gRPC call (HEADERS only); returns the stream id."""
        sid = int(self.conn.get_next_available_stream_id())
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", b"extauthz"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            *(extra or []),
        ]
        self.conn.send_headers(sid, headers)
        self.streams[sid] = StreamState()
        self._flush()
        return sid

    def send(self, sid: int, data: bytes, end: bool = False, timeout: float = 5.0) -> int:
        """Send ``data`` on stream ``sid`` as flow control allows, waiting up to ``timeout`` for
        window; stops early when the stream is reset or answered. Returns the bytes sent."""
        state = self.streams[sid]
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        while view and not state.finished and not self.closed:
            try:
                window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                break
            if window <= 0:
                if time.monotonic() >= deadline:
                    break
                self.pump(min(0.05, max(0.0, deadline - time.monotonic())))
                continue
            chunk = view[:window]
            try:
                self.conn.send_data(sid, bytes(chunk))
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                break
            view = view[len(chunk) :]
            state.sent += len(chunk)
            if not self._flush():
                break
        if end and not view and not state.finished and not self.closed:
            try:
                self.conn.end_stream(sid)
                self._flush()
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
        return len(data) - len(view)

    def call(self, message: bytes, timeout: float = 5.0) -> StreamState:
        """A complete unary call: the framed message, END_STREAM, then wait for the answer."""
        sid = self.open()
        self.send(sid, frame(message), end=True, timeout=timeout)
        state = self.streams[sid]
        self.wait(lambda: state.finished, timeout)
        return state

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Read from the server until ``done()`` or ``timeout`` seconds; returns ``done()``."""
        deadline = time.monotonic() + timeout
        while not done() and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.pump(min(left, 0.1))
        return done()

    def pump(self, timeout: float) -> None:
        """Read what the server sent within ``timeout`` seconds and apply it."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return
        except OSError:
            self.closed = True
            return
        if not data:
            self.closed = True
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return
        for event in events:
            self._apply(event)
        self._flush()

    def _apply(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", None)
        state = self.streams.get(sid) if sid else None
        if isinstance(event, h2.events.ResponseReceived) and state is not None:
            for name, value in event.headers or []:
                if name == b":status":
                    state.status = int(value)
                elif name == b"grpc-status":  # trailers-only response
                    state.trailers[bytes(name)] = bytes(value)
        elif isinstance(event, h2.events.DataReceived):
            if state is not None and event.data:
                state.body += event.data
            if event.flow_controlled_length and sid:
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.TrailersReceived) and state is not None:
            state.trailers.update((bytes(n), bytes(v)) for n, v in event.headers or [])
        elif isinstance(event, h2.events.StreamEnded) and state is not None:
            state.ended = True
        elif isinstance(event, h2.events.StreamReset) and state is not None:
            state.reset = int(event.error_code or 0)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    def _flush(self) -> bool:
        out = self.conn.data_to_send()
        if not out:
            return True
        try:
            self.sock.sendall(out)
        except TimeoutError:
            return False
        except OSError:
            self.closed = True
            return False
        return True
