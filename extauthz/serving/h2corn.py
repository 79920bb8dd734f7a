"""The h2corn transport: gRPC Check and Health as an ASGI app on h2corn (Rust HTTP/2 server).

``serve --transport h2corn``. The same Check core as grpcio (``Service.handle_check``: request
bytes in, response bytes out); only the gRPC wire work differs, done here by hand:

- HTTP/2 prior knowledge (h2c) only, ``content-type: application/grpc``; anything else is 415.
- One length-prefixed message (flag byte 0, 4-byte big-endian length). A compressed message
  (flag 1: we announce no ``grpc-accept-encoding``), a truncated or trailing frame, or one larger
  than ``max_message_bytes`` is answered with a deny CheckResponse (``malformed_check_request``)
  rather than a gRPC error, so Envoy never has to apply its error policy.
- Resource bounds (``serving/bounds.py``, docs/security.md): the message cap while reading, a
  total body deadline, and budgets of unfinished body bytes per connection and per process; a
  tripped bound answers a deny (``resource_limit``). h2corn enforces the same bounds a little
  further out as a backstop (request body cap and idle timeout, streams per connection,
  flow-control windows): it resets the stream.
- ``grpc-timeout`` is honoured: a Check decided after its deadline is answered, audited and
  counted as a deny (``deadline_exceeded``: the core decides, ``CheckCore.answer``), so the record
  says what Envoy got (a 403, either this deny or its own ``status_on_error``); a late Health
  call answers DEADLINE_EXCEEDED.
- ``grpc-status`` always travels in trailers (``http.response.trailers``), after the headers.
- ``grpc.health.v1.Health`` is served here too (SERVING once a policy set is loaded,
  NOT_SERVING while draining): ``Check``, and ``Watch`` (the status, then every change; the
  stream ends when the server drains).
- SIGTERM: health turns NOT_SERVING, h2corn stops accepting and gives in-flight calls up to
  ``drain_seconds`` to finish; SIGHUP reloads policies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from grpc_health.v1 import health_pb2

from extauthz import reasons
from extauthz.envoy.grpc import (
    CHECK_PATH,
    DEADLINE_EXCEEDED,
    INTERNAL,
    NOT_FOUND,
    OK,
    UNIMPLEMENTED,
    frame,
    parse_grpc_timeout,
    unframe,
)
from extauthz.serving import bounds, lifecycle, sched
from extauthz.serving.service import Service
from extauthz.settings import Settings, parse_listen

log = logging.getLogger("extauthz.serving.h2corn")

HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
HEALTH_WATCH_PATH = "/grpc.health.v1.Health/Watch"
WATCH_POLL_SECONDS = 0.5
RESOURCE_EXHAUSTED = 8
# h2corn's backstop bounds sit this far beyond the app's own (h2corn_bounds).
BACKSTOP_SLACK_BYTES = 64 * 1024
BACKSTOP_SLACK_SECONDS = 1.0

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_RESPONSE_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/grpc")],
    "trailers": True,
}
_OK_TRAILERS = {"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")], "more_trailers": False}


class GrpcApp:
    """The ASGI application: Authorization/Check and Health/Check over gRPC."""

    def __init__(self, service: Service, settings: Settings | None = None) -> None:
        self.service = service
        s = settings if settings is not None else service.settings
        self.max_message_bytes = s.max_message_bytes
        self.limits = bounds.Limits(
            max_body=5 + s.max_message_bytes,
            timeout=s.body_timeout,
            budget=bounds.Budget(s.max_buffered_bytes_per_connection, s.max_buffered_bytes),
        )

    @property
    def draining(self) -> bool:
        return self.service.draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.monotonic()
        content_type = b""
        timeout: float | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = parse_grpc_timeout(value)
        if scope["method"] != "POST" or not content_type.startswith(b"application/grpc"):
            await _plain(send, 415, b"gRPC only\n")
            return
        body, refused = await bounds.read_body(receive, self.limits, bounds.connection_key(scope))
        if refused == bounds.GONE:  # reset by the client (or by h2corn's backstop): no one to answer
            return
        path = scope["path"]
        if path == CHECK_PATH:
            if refused is not None:
                answer = self._refused(refused)
            else:
                message, problem = unframe(body, self.max_message_bytes)
                if message is None:
                    answer = self.service.handle_malformed(problem or "bad gRPC frame")
                else:
                    deadline = start + timeout if timeout is not None else None
                    answer = self.service.handle_check(message, None, deadline)
        elif refused is not None:
            await _status_only(send, RESOURCE_EXHAUSTED, "request body refused: " + refused)
            return
        elif path == HEALTH_CHECK_PATH:
            code, answer_or_none = self._health(body)
            if answer_or_none is None:
                await _status_only(send, code, "unknown service")
                return
            answer = answer_or_none
        elif path == HEALTH_WATCH_PATH:
            await self._watch(body, receive, send)
            return
        else:
            await _status_only(send, UNIMPLEMENTED, f"unknown method {path}")
            return
        if path != CHECK_PATH and timeout is not None and time.monotonic() - start > timeout:
            await _status_only(send, DEADLINE_EXCEEDED, "deadline exceeded")
            return
        await send(_RESPONSE_START)
        await send({"type": "http.response.body", "body": frame(answer), "more_body": False})
        await send(_OK_TRAILERS)

    def _refused(self, why: str) -> bytes:
        """The deny for a Check whose body tripped a bound."""
        if why == bounds.TOO_LARGE:
            return self.service.handle_malformed(f"gRPC message larger than {self.max_message_bytes} bytes")
        detail = {
            bounds.TIMEOUT: f"request body not complete within {self.limits.timeout:g}s",
            bounds.BUDGET: "too many request body bytes buffered (per connection or process)",
        }[why]
        return self.service.handle_malformed(detail, reasons.RESOURCE_LIMIT)

    async def _watch(self, body: bytes, receive: Receive, send: Send) -> None:
        """Health/Watch: the status now, then each change, until the client goes away or the
        server drains (NOT_SERVING is sent, then the stream ends with OK)."""
        code, answer = self._health(body)
        if answer is None:
            await _status_only(send, code, "unknown service")
            return
        await send(_RESPONSE_START)
        await send({"type": "http.response.body", "body": frame(answer), "more_body": True})

        async def next_event() -> dict[str, Any]:
            return await receive()

        gone = asyncio.create_task(next_event())  # http.disconnect when the client leaves
        try:
            last = answer
            while not self.draining:
                done, _ = await asyncio.wait({gone}, timeout=WATCH_POLL_SECONDS)
                if done:
                    return
                _, now = self._health(body)
                if now is not None and now != last:
                    await send({"type": "http.response.body", "body": frame(now), "more_body": True})
                    last = now
            _, now = self._health(body)
            if now is not None and now != last:
                await send({"type": "http.response.body", "body": frame(now), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await send(_OK_TRAILERS)
        finally:
            gone.cancel()

    def _health(self, body: bytes) -> tuple[int, bytes | None]:
        message, _ = unframe(body, self.max_message_bytes)
        try:
            req = health_pb2.HealthCheckRequest.FromString(message or b"")
        except Exception:
            return INTERNAL, None
        status = self.service.health_status(req.service)
        if status is None:
            return NOT_FOUND, None
        return OK, health_pb2.HealthCheckResponse(status=status).SerializeToString()


async def _status_only(send: Send, code: int, message: str) -> None:
    await send(_RESPONSE_START)
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    await send(
        {
            "type": "http.response.trailers",
            "headers": [
                (b"grpc-status", str(code).encode()),
                (b"grpc-message", message.encode("ascii", "replace")),
            ],
            "more_trailers": False,
        }
    )


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def h2corn_bounds(settings: Settings) -> dict[str, Any]:
    """h2corn's own limits, set just outside the app's (``serving/bounds.py``) so that the app
    answers a deny first and h2corn's stream reset is the backstop: streams per connection,
    flow-control windows (what h2corn holds unread per stream and per connection), and for every
    path a request body cap and idle timeout (gRPC requests have none unless a policy sets them)."""
    from h2corn import RequestPolicy

    # Both windows: one largest message. What h2corn holds unread is then at most one message per
    # connection (bench/slow_streams.py: with 8 MiB windows, h2corn held ~4 MiB per connection
    # of an attacker's streams that the app had not read yet).
    window = min(max(settings.max_message_bytes + 5, 65_535), 2**31 - 1)
    return {
        "max_concurrent_streams": settings.max_streams_per_connection,
        "limit_connections": settings.max_connections,
        "h2_initial_stream_window_size": window,
        "h2_initial_connection_window_size": window,
        "request_policies": (
            RequestPolicy(
                path="/*",
                max_request_body_size=settings.max_message_bytes + 5 + BACKSTOP_SLACK_BYTES,
                timeout_request_body_idle=settings.body_timeout + BACKSTOP_SLACK_SECONDS,
                h2_timeout_response_stall=max(10.0, settings.body_timeout),
            ),
        ),
    }


def serve_h2corn(service: Service, settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT (graceful drain), SIGHUP reloads. Returns the exit code."""
    try:
        from h2corn import Config, Server
    except ImportError as exc:  # pragma: no cover - h2corn is a dependency
        raise OSError("--transport h2corn needs the h2corn package (pip install h2corn)") from exc

    kind, where = parse_listen(settings.listen)
    bind = f"unix:{where}" if kind == "unix" else settings.listen
    config = Config(
        bind=(bind,),
        grpc=True,
        http1=False,
        access_log=False,
        lifespan="off",
        runtime_threads=1,  # bench/README.md: one Tokio thread per worker process
        timeout_graceful_shutdown=settings.drain_seconds,
        **h2corn_bounds(settings),
    )
    app = GrpcApp(service, settings)
    server = Server(app, config)  # type: ignore[arg-type]

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def shutdown() -> None:
            lifecycle.log_draining(settings.drain_seconds)
            server.shutdown()

        def stop() -> None:
            if service.draining:
                return
            service.start_draining()  # health answers NOT_SERVING from now on; checks still decided
            lifecycle.log_not_serving(settings.drain_delay)
            if settings.drain_delay > 0:
                loop.call_later(settings.drain_delay, shutdown)
            else:
                shutdown()

        def reload() -> None:
            loop.run_in_executor(None, service.reload)

        lifecycle.install_signals(stop, reload, loop)
        serving = asyncio.ensure_future(server.serve())
        started = asyncio.ensure_future(server.wait_started())
        await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done():  # failed to start (address in use, ...): raise its error
            started.cancel()
            serving.result()
            return
        if settings.io_threads_batch:
            sched.batch_io_threads()
        log.info(
            "serving on %s (h2corn), policies from %s, generation %d",
            ", ".join(server.addresses),
            settings.policies,
            service.store.generation,
        )
        await serving

    asyncio.run(main())
    return 0
