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

from extauthz.envoy.grpc import AUTHZ_SERVICE, CHECK_METHOD, MAX_MESSAGE_BYTES
from extauthz.serving import lifecycle
from extauthz.serving.service import Service
from extauthz.settings import Settings, parse_listen

log = logging.getLogger("extauthz.serving.grpcio")


def build_server(service: Service, settings: Settings) -> tuple[grpc.Server, int]:
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="check"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
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
