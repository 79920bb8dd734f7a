"""The grpcio transport (``--transport grpcio``): Authorization/Check and grpc.health.v1 on one
listener. The handler moves raw bytes (no protobuf (de)serializers in grpcio's Python layer); the
Check core does the rest."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2_grpc

from extauthz.envoy.grpc import AUTHZ_SERVICE, CHECK_METHOD
from extauthz.serving import lifecycle
from extauthz.serving.service import Service
from extauthz.settings import Settings, parse_listen

log = logging.getLogger("extauthz.serving.grpcio")


# A connection lives at most this long (then GOAWAY; calls in flight get body_timeout to end):
# grpcio has no timeout for a request body that never completes, so this bounds how long an
# unfinished stream can hold its buffer (docs/security.md, "Resource bounds").
MAX_CONNECTION_AGE_SECONDS = 60.0


def grpcio_options(settings: Settings) -> list[tuple[str, int]]:
    """grpcio's resource bounds: the message cap (checked against the declared length, before
    the body is buffered), streams per connection, and connection age (the only bound grpcio has
    on how long an unfinished body can be held)."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", max(settings.max_message_bytes, 64 * 1024)),
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        ("grpc.max_connection_age_ms", int(MAX_CONNECTION_AGE_SECONDS * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.body_timeout * 1000)),
        ("grpc.so_reuseport", 0),
    ]


def max_concurrent_rpcs(settings: Settings) -> int:
    """Calls in progress per process (grpcio answers RESOURCE_EXHAUSTED beyond: Envoy denies):
    with each call's body capped, this bounds the bytes buffered by the process."""
    return max(1, settings.max_buffered_bytes // settings.max_message_bytes)


def build_server(service: Service, settings: Settings) -> tuple[grpc.Server, int]:
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="check"),
        options=grpcio_options(settings),
        maximum_concurrent_rpcs=max_concurrent_rpcs(settings),
    )
    check = grpc.unary_unary_rpc_method_handler(service.handle_check)  # bytes in, bytes out
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(AUTHZ_SERVICE, {CHECK_METHOD: check}),)
    )
    health_pb2_grpc.add_HealthServicer_to_server(service.health, server)
    kind, where = parse_listen(settings.listen)
    try:
        port = server.add_insecure_port(f"unix:{where}" if kind == "unix" else settings.listen)
    except RuntimeError as exc:  # grpcio's "Failed to bind"
        raise OSError(f"cannot listen on {settings.listen}: {exc}") from exc
    if kind != "unix" and port == 0:
        raise OSError(f"cannot listen on {settings.listen}")
    return server, port


def serve_grpcio(service: Service, settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT (drain), SIGHUP reloads. Returns the exit code."""
    server, port = build_server(service, settings)
    server.start()
    stop = threading.Event()
    lifecycle.install_signals(stop.set, lifecycle.in_background(service.reload, "sighup-reload"))
    log.info(
        "serving on %s (port %d, grpcio), policies from %s, generation %d",
        settings.listen,
        port,
        settings.policies,
        service.store.generation,
    )
    while not stop.wait(1.0):
        pass
    service.start_draining()
    lifecycle.log_not_serving(settings.drain_delay)
    if settings.drain_delay > 0:
        time.sleep(settings.drain_delay)
    lifecycle.log_draining(settings.drain_seconds)
    server.stop(settings.drain_seconds).wait()
    return 0
