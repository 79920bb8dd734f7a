"""The composition root: everything one serving process holds, built from settings in one place.

``open_policy_store`` and ``open_audit_log`` are the only places a PolicyStore and an AuditLog are
built from settings (the ``--workers`` supervisor uses them too); ``running`` builds a whole
``Service`` with its watchers and tears it down; the transports (grpcio.py, h2corn.py) only move
bytes between the network and ``Service.handle_check``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from grpc_health.v1 import health

from extauthz import reasons
from extauthz.decision.audit import AuditLog
from extauthz.decision.audit.shared import Offered
from extauthz.decision.cache import DecisionCache
from extauthz.decision.quarantine import Quarantine
from extauthz.decision.tracing import Tracer, config_from_env
from extauthz.envoy import response
from extauthz.envoy.grpc import AUTHZ_SERVICE
from extauthz.identity.bundles import BundleStore, BundleWatcher
from extauthz.identity.headers import IdentityHeaders
from extauthz.identity.resolver import IdentityContext
from extauthz.metrics import Metrics
from extauthz.pipeline import CheckCore
from extauthz.policy.store import DirectoryWatcher, PolicyStore
from extauthz.serving.health import HEALTH_SERVICES, SERVING, health_status
from extauthz.settings import Settings

if TYPE_CHECKING:
    from extauthz.decision.spans import Tracing
# grpcio reports the time left of a call without a deadline as ~9.2e18 seconds.
_NO_DEADLINE = 365 * 24 * 3600.0

log = logging.getLogger("extauthz.serving.service")


def open_policy_store(settings: Settings) -> PolicyStore:
    """The policy directory, loaded (raises PolicyError when the first load fails)."""
    store = PolicyStore(
        settings.policies,
        root_namespace=settings.root_namespace,
        xff_num_trusted_hops=settings.xff_num_trusted_hops,
    )
    store.load()
    return store


def open_audit_log(settings: Settings, count_offers: bool = True) -> AuditLog:
    """The audit log. ``count_offers`` False: a supervisor (its workers count what they offer).
    A ``--workers`` worker counts its offers in its supervisor's page (decision/audit/shared.py)."""
    audit = AuditLog.open(
        settings.audit_log,
        capacity=settings.audit_queue,
        max_bytes=settings.audit_max_bytes,
        backups=settings.audit_backups,
        overflow=settings.audit_overflow,
        hmac_key_file=settings.audit_hmac_key_file,
        count_offers=count_offers,
    )
    shared = Offered.from_env()
    if shared is not None:
        audit.count_offers(*shared, remote=True)
    return audit


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
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.audit = audit
        self.draining = False
        self.metrics = Metrics().install()
        self.metrics.watch_audit(audit)
        self.identity = identity or IdentityContext(
            trusted_proxies=settings.trusted_proxy, bind_token_to_peer=settings.bind_token_to_peer
        )
        self.cache = (
            DecisionCache(
                settings.cache_size,
                settings.cache_ttl,
                bundle_generation=self.identity.trust_generation,
            )
            if settings.cache_size
            else None
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
            self.identity,
            cache=self.cache,
            identity_headers=IdentityHeaders.from_mapping(settings.identity_headers),
            quarantine=self.quarantine,
            audit=audit,
            metrics=self.metrics,
            worker=worker,
            tracer=tracer,
            input_exclude=settings.audit_input_exclude,
        )
        self.health = health.HealthServicer()  # grpcio's servicer, kept in step with the rule
        store.listeners.append(self._on_reload)
        self._on_reload(store, store.engine is not None)

    def reload(self) -> None:
        """SIGHUP: re-read the policy directory and the trust bundle files."""
        self.store.reload()
        self.identity.bundles.reload()

    def health_status(self, service: str) -> int | None:
        """The one health rule (health.py) applied to this process; None for an unknown name."""
        return health_status(self.store, service, draining=self.draining)

    def start_draining(self) -> None:
        """Health turns NOT_SERVING for every name; checks are still decided."""
        self.draining = True
        self.metrics.serving.set(0)
        self.health.enter_graceful_shutdown()

    def _on_reload(self, store: PolicyStore, ok: bool) -> None:
        if ok and self.cache is not None:
            self.cache.clear()  # old entries could not match any more (generation): free them
        self.metrics.policy_reloads.labels("success" if ok else "failure").inc()
        self.metrics.policy_loaded.set(1 if ok else 0)
        self.metrics.policy_generation.set(store.generation)
        self.metrics.serving.set(1 if self.health_status(AUTHZ_SERVICE) == SERVING else 0)
        for name in HEALTH_SERVICES:
            status = self.health_status(name)
            if status is not None:
                self.health.set(name, status)

    def handle_check(self, data: bytes, context: Any, deadline: float | None = None) -> bytes:
        """The gRPC handler. Never raises: the worst case is the static deny answer.

        ``deadline`` (``time.monotonic()`` seconds) comes from the transport; under grpcio it is
        read from ``context.time_remaining()`` (a call without a deadline has years left).
        """
        try:
            if deadline is None and context is not None:
                left = context.time_remaining()
                if left is not None and left < _NO_DEADLINE:
                    deadline = time.monotonic() + left
            return self.core.answer(data, deadline)
        except Exception:
            log.exception("check handler failed; answering deny")
            return response.STATIC_DENY

    def handle_malformed(self, error: str, reason: str = reasons.MALFORMED) -> bytes:
        """A call whose gRPC framing was bad or whose body tripped a resource bound (transports
        that parse frames themselves): deny it, count it and audit it like an undecodable
        CheckRequest. Never raises."""
        try:
            return self.core.answer_malformed(error, reason)
        except Exception:
            log.exception("malformed-call handler failed; answering deny")
            return response.STATIC_DENY


@contextmanager
def running(settings: Settings, worker: int | None = None) -> Iterator[Service]:
    """A Service with its policy and bundle watchers (and the Workload API stream) running;
    everything stopped and the audit log flushed on exit."""
    store = open_policy_store(settings)
    bundles = BundleStore.from_flags(settings.trust_bundle)
    bundles.load()  # BundleError at startup: the caller reports it and exits non-zero
    identity = IdentityContext(
        bundles, settings.trusted_proxy, bind_token_to_peer=settings.bind_token_to_peer
    )
    workload_api = start_workload_api(settings, bundles)
    tracing = start_tracing()
    audit = open_audit_log(settings)
    service = Service(settings, store, audit, identity, worker=worker, tracer=tracing)
    if tracing is not None:
        service.metrics.watch_tracing(tracing)
    if settings.metrics:
        service.metrics.serve(settings.metrics)
    watcher = DirectoryWatcher(store)
    watcher.start()
    bundle_watcher = BundleWatcher(bundles)
    bundle_watcher.start()
    try:
        yield service
    finally:
        watcher.stop()
        bundle_watcher.stop()
        if workload_api is not None:
            workload_api.stop()
        if tracing is not None:
            tracing.shutdown()
        audit.close()
        log.info("stopped; %d audit records written, %d lost", audit.written, audit.lost)


def start_tracing() -> Tracing | None:
    """One span per check when the OTEL_* environment asks for it (decision/tracing.py); None
    when tracing is off. Raises TracingError for a setting extauthz cannot use."""
    config = config_from_env(os.environ)
    if config is None:
        return None
    from extauthz.decision.spans import start_tracing as start_sdk

    return start_sdk(config)


def start_workload_api(settings: Settings, bundles: BundleStore) -> Any:
    """Stream bundles from the SPIFFE Workload API when a socket is configured (or in the env)."""
    address = settings.workload_api or os.environ.get("SPIFFE_ENDPOINT_SOCKET")
    if not address:
        return None
    from extauthz.identity.workload_api import WorkloadApiWatcher

    client = WorkloadApiWatcher(address, bundles)
    client.start()
    log.info("streaming trust bundles from the SPIFFE Workload API at %s", address)
    return client
