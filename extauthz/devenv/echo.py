"""An upstream HTTP/1.1 echo server: answers 200 with JSON describing the request it got."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from extauthz.devenv.net import LOOPBACK


@dataclass(frozen=True)
class EchoRequest:
    """One request as the upstream received it."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    """(lower-case name, value) in arrival order, repeats kept."""
    body: bytes

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive)."""
        key = name.lower()
        return [v for k, v in self.headers if k == key]

    def header(self, name: str) -> str | None:
        """The values of header ``name`` joined by ``,``, or None if absent."""
        values = self.header_values(name)
        return ",".join(values) if values else None


def echo_document(req: EchoRequest) -> dict[str, Any]:
    """The JSON body the echo server answers with."""
    joined: dict[str, str] = {}
    for k, v in req.headers:
        joined[k] = f"{joined[k]},{v}" if k in joined else v
    return {
        "method": req.method,
        "path": req.path,
        "headers": joined,
        "header_list": [[k, v] for k, v in req.headers],
        "body": req.body.decode("utf-8", "replace"),
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle the body waits for the peer's delayed
    # ACK (~40 ms on Linux) on every keep-alive response, which capped each soak client at ~25
    # allowed requests/s.
    disable_nagle_algorithm = True
    server: _EchoHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        req = EchoRequest(
            method=self.command,
            path=self.path,
            headers=tuple((k.lower(), v) for k, v in self.headers.items()),
            body=self._read_body(),
        )
        self.server.record(req)
        payload = json.dumps(echo_document(req)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class _EchoHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.lock = threading.Lock()
        self.received: list[EchoRequest] = []

    def record(self, req: EchoRequest) -> None:
        with self.lock:
            self.received.append(req)


class EchoServer:
    """Threaded loopback echo server on a random port. Use as a context manager or start/stop."""

    def __init__(self, host: str = LOOPBACK) -> None:
        self._server = _EchoHTTPServer((host, 0))
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        """``HOST:PORT``, as an Envoy upstream endpoint."""
        return f"{self.host}:{self.port}"

    @property
    def requests(self) -> list[EchoRequest]:
        """A copy of every request received since start or the last :meth:`clear`."""
        with self._server.lock:
            return list(self._server.received)

    @property
    def last(self) -> EchoRequest | None:
        reqs = self.requests
        return reqs[-1] if reqs else None

    def clear(self) -> None:
        with self._server.lock:
            self._server.received.clear()

    def start(self) -> EchoServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"echo-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> EchoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
