"""Prometheus metrics. Names follow Prometheus conventions (``_total``, ``_seconds``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Microsecond-range buckets: a check takes tens of microseconds to a few milliseconds.
_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)


class Metrics:
    """The service's metrics, on a registry of their own (tests create as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.checks = Counter(
            "extauthz_checks", "Authorization checks answered.", ["outcome", "reason"], registry=r
        )
        self.duration = Histogram(
            "extauthz_check_duration_seconds",
            "Time to answer one check, inside the service.",
            buckets=_BUCKETS,
            registry=r,
        )
        self.policy_generation = Gauge(
            "extauthz_policy_generation", "Generation of the policy set in force.", registry=r
        )
        self.policy_reloads = Counter(
            "extauthz_policy_reloads", "Policy reload attempts.", ["result"], registry=r
        )
        self.policy_loaded = Gauge(
            "extauthz_policy_last_reload_ok",
            "1 when the last policy reload succeeded, 0 when the last edit was refused.",
            registry=r,
        )
        self.audit_lost = Counter(
            "extauthz_audit_records_lost", "Audit records that could not be written.", registry=r
        )
        self.bad_requests = Counter(
            "extauthz_bad_requests",
            "Checks whose input was malformed or not canonical.",
            ["kind"],
            registry=r,
        )

    def observe(self, allowed: bool, reason: str, seconds: float) -> None:
        self.checks.labels("allow" if allowed else "deny", reason).inc()
        self.duration.observe(seconds)

    def serve(self, address: str) -> None:
        """Expose ``/metrics`` on ``HOST:PORT``."""
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry)
