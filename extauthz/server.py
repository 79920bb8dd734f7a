"""The grpcio transport: Authorization/Check and grpc.health.v1 on one listener.

The handler moves raw bytes (no protobuf (de)serializers in grpcio's Python layer); the Check
core does the rest. Metrics and the audit record are taken here, after the answer is built.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extauthz import response
from extauthz.anomaly import Quarantine
from extauthz.audit import AuditLog
from extauthz.authn import IdentityContext
from extauthz.bundles import BundleStore, BundleWatcher
from extauthz.cache import DecisionCache
from extauthz.check import CheckCore
from extauthz.metrics import Metrics
from extauthz.reload import DirectoryWatcher, PolicyStore
from extauthz.response import IdentityHeaders
from extauthz.settings import Settings, parse_listen

log = logging.getLogger("extauthz.server")

AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
CHECK_METHOD = "Check"
POLICY_HEALTH_SERVICE = "extauthz.policy"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class Service:
    """Everything one serving process holds: policies, core, audit, metrics, health."""

    def __init__(
        self,
        settings: Settings,
        store: PolicyStore,
        audit: AuditLog,
        identity: IdentityContext | None = None,
        *,
        worker: int | None = None,
    ) -> None:
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
        self.identity = identity or IdentityContext(
            trusted_proxies=settings.trusted_proxy, bind_token_to_peer=settings.bind_token_to_peer
        )
        self.core = CheckCore(
            lambda: store.engine,
            self.identity,
            cache=self.cache,
            identity_headers=IdentityHeaders.from_mapping(settings.identity_headers),
            quarantine=self.quarantine,
            audit=audit,
            metrics=self.metrics,
            worker=worker,
        )
        self.health = health.HealthServicer()
        store.listeners.append(self._on_reload)
        self._on_reload(store, store.engine is not None)

    def reload(self) -> None:
        """SIGHUP: re-read the policy directory and the trust bundle files."""
        self.store.reload()
        self.identity.bundles.reload()

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
        # Health detail: SERVING while the last policy edit loaded, NOT_SERVING while the last
        # good set keeps serving after a refused edit (the log and the metrics say why).
        self.health.set(
            POLICY_HEALTH_SERVICE,
            health_pb2.HealthCheckResponse.SERVING
            if ok and store.engine is not None
            else health_pb2.HealthCheckResponse.NOT_SERVING,
        )

    def handle_check(self, data: bytes, context: Any) -> bytes:
        """The gRPC handler. Never raises: the worst case is the static deny answer."""
        try:
            return self.core.answer(data)
        except Exception:
            log.exception("check handler failed; answering deny")
            return response.STATIC_DENY


    def handle_malformed(self, error: str) -> bytes:
        """A call whose gRPC framing was bad (transports that parse frames themselves): deny it,
        count it and audit it like an undecodable CheckRequest. Never raises."""
        try:
            return self.core.answer_malformed(error)
        except Exception:
            log.exception("malformed-call handler failed; answering deny")
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
    try:
        port = server.add_insecure_port(f"unix:{where}" if kind == "unix" else settings.listen)
    except RuntimeError as exc:  # grpcio's "Failed to bind"
        raise OSError(f"cannot listen on {settings.listen}: {exc}") from exc
    if kind != "unix" and port == 0:
        raise OSError(f"cannot listen on {settings.listen}")
    return server, port


def serve(settings: Settings) -> int:
    """Run the service until SIGTERM/SIGINT. Raises PolicyError when the first load fails.

    ``--workers N`` (N > 1) runs a supervisor and N worker processes (extauthz.workers)."""
    if settings.workers > 1:
        from extauthz.workers import supervise

        return supervise(settings)
    return serve_worker(settings)


def serve_worker(settings: Settings, worker: int | None = None) -> int:
    """One serving process on ``settings.listen`` with the chosen transport."""
    store = PolicyStore(
        settings.policies,
        root_namespace=settings.root_namespace,
        xff_num_trusted_hops=settings.xff_num_trusted_hops,
    )
    store.load()
    bundles = BundleStore.from_flags(settings.trust_bundle)
    bundles.load()  # BundleError at startup: the caller reports it and exits non-zero
    identity = IdentityContext(
        bundles, settings.trusted_proxy, bind_token_to_peer=settings.bind_token_to_peer
    )
    workload_api = start_workload_api(settings, bundles)
    audit = AuditLog.open(
        settings.audit_log,
        capacity=settings.audit_queue,
        max_bytes=settings.audit_max_bytes,
        backups=settings.audit_backups,
        overflow=settings.audit_overflow,
        hmac_key_file=settings.audit_hmac_key_file,
    )
    service = Service(settings, store, audit, identity, worker=worker)
    if settings.metrics:
        service.metrics.serve(settings.metrics)
    watcher = DirectoryWatcher(store)
    watcher.start()
    bundle_watcher = BundleWatcher(bundles)
    bundle_watcher.start()
    try:
        if settings.transport == "h2corn":
            from extauthz.transport_h2corn import serve_h2corn

            return serve_h2corn(service, settings)
        return _serve_grpcio(service, settings)
    finally:
        watcher.stop()
        bundle_watcher.stop()
        if workload_api is not None:
            workload_api.stop()
        audit.close()
        log.info("stopped; %d audit records written, %d lost", audit.written, audit.lost)


def _serve_grpcio(service: Service, settings: Settings) -> int:
    store = service.store
    server, port = build_server(service, settings)
    server.start()
    stop = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=service.reload, name="sighup-reload", daemon=True).start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    log.info(
        "serving on %s (port %d, grpcio), policies from %s, generation %d",
        settings.listen,
        port,
        settings.policies,
        store.generation,
    )
    while not stop.wait(1.0):
        pass
    service.health.enter_graceful_shutdown()
    if settings.drain_delay > 0:
        log.info("stopping: NOT_SERVING, still deciding for %.1fs", settings.drain_delay)
        time.sleep(settings.drain_delay)
    log.info("stopping: draining in-flight checks (up to %.1fs)", settings.drain_seconds)
    server.stop(settings.drain_seconds).wait()
    return 0


def start_workload_api(settings: Settings, bundles: BundleStore) -> Any:
    """Stream bundles from the SPIFFE Workload API when a socket is configured (or in the env)."""
    address = settings.workload_api or os.environ.get("SPIFFE_ENDPOINT_SOCKET")
    if not address:
        return None
    from extauthz.workload_api import WorkloadApiWatcher

    client = WorkloadApiWatcher(address, bundles)
    client.start()
    log.info("streaming trust bundles from the SPIFFE Workload API at %s", address)
    return client
