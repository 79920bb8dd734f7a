"""The grpcio transport: Authorization/Check and grpc.health.v1 on one listener.

The handler moves raw bytes (no protobuf (de)serializers in grpcio's Python layer); the Check
core does the rest. Metrics and the audit record are taken here, after the answer is built.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extauthz import response
from extauthz.anomaly import Quarantine
from extauthz.audit import AuditLog
from extauthz.cache import DecisionCache
from extauthz.check import CheckCore
from extauthz.metrics import Metrics
from extauthz.reload import DirectoryWatcher, PolicyStore
from extauthz.response import IdentityHeaders
from extauthz.settings import Settings, parse_listen

log = logging.getLogger("extauthz.server")

AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
CHECK_METHOD = "Check"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class Service:
    """Everything one serving process holds: policies, core, audit, metrics, health."""

    def __init__(self, settings: Settings, store: PolicyStore, audit: AuditLog) -> None:
        self.settings = settings
        self.store = store
        self.audit = audit
        self.metrics = Metrics().install()
        self.metrics.watch_audit(audit)
        self.cache = (
            DecisionCache(settings.cache_size, settings.cache_ttl) if settings.cache_size else None
        )
        if self.cache is not None:
            self.metrics.watch_cache(self.cache)
        self.quarantine = (
            Quarantine(
                max_denies=settings.anomaly_max_denies,
                window=settings.anomaly_window_seconds,
                duration=settings.anomaly_quarantine_seconds,
                max_tracked=settings.anomaly_max_tracked,
            )
            if settings.anomaly_quarantine
            else None
        )
        if self.quarantine is not None:
            self.metrics.watch_quarantine(self.quarantine)
        self.core = CheckCore(
            lambda: store.engine,
            cache=self.cache,
            identity_headers=IdentityHeaders.from_mapping(settings.identity_headers),
            quarantine=self.quarantine,
            audit=audit,
            metrics=self.metrics,
        )
        self.health = health.HealthServicer()
        store.listeners.append(self._on_reload)
        self._on_reload(store, store.engine is not None)

    def _on_reload(self, store: PolicyStore, ok: bool) -> None:
        if ok and self.cache is not None:
            self.cache.clear()  # old entries could not match any more (generation): free them
        self.metrics.policy_reloads.labels("success" if ok else "failure").inc()
        self.metrics.policy_loaded.set(1 if ok else 0)
        self.metrics.policy_generation.set(store.generation)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if store.engine is not None
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", AUTHZ_SERVICE):
            self.health.set(name, status)

    def handle_check(self, data: bytes, context: Any) -> bytes:
        """The gRPC handler. Never raises: the worst case is the static deny answer."""
        try:
            return self.core.answer(data)
        except Exception:
            log.exception("check handler failed; answering deny")
            return response.STATIC_DENY


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
    if kind == "unix":
        port = server.add_insecure_port(f"unix:{where}")
    else:
        port = server.add_insecure_port(settings.listen)
        if port == 0:
            raise OSError(f"cannot listen on {settings.listen}")
    return server, port


def serve(settings: Settings) -> int:
    """Run the service until SIGTERM/SIGINT. Raises PolicyError when the first load fails."""
    store = PolicyStore(settings.policies, root_namespace=settings.root_namespace)
    store.load()
    audit = AuditLog.open(
        settings.audit_log,
        capacity=settings.audit_queue,
        max_bytes=settings.audit_max_bytes,
        backups=settings.audit_backups,
        overflow=settings.audit_overflow,
        hmac_key_file=settings.audit_hmac_key_file,
    )
    service = Service(settings, store, audit)
    if settings.metrics:
        service.metrics.serve(settings.metrics)
    server, port = build_server(service, settings)
    server.start()
    watcher = DirectoryWatcher(store)
    watcher.start()
    stop = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=store.reload, name="sighup-reload", daemon=True).start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    log.info(
        "serving on %s (port %d), policies from %s, generation %d",
        settings.listen,
        port,
        settings.policies,
        store.generation,
    )
    while not stop.wait(1.0):
        pass
    log.info("stopping: draining in-flight checks (up to %.1fs)", settings.drain_seconds)
    service.health.enter_graceful_shutdown()
    server.stop(settings.drain_seconds).wait()
    watcher.stop()
    audit.close()
    log.info("stopped; %d audit records written, %d lost", audit.written, audit.lost)
    return 0
