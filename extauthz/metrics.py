"""Prometheus metrics. Names follow Prometheus conventions (``_total``, ``_seconds``).

Counters the hot path owns (checks, cache hits) are prometheus-client objects; state that other
parts keep anyway (audit queue and losses, cache size, quarantines, expiry times) is read only
when ``/metrics`` is scraped, by a collector, so it costs nothing per check.

Hooks for the identity code (trust bundles, certificates, JWKS), safe to call without metrics:
``bundle_expiry(td, not_after)``, ``certificate_expiry(name, not_after)``,
``jwks_fetch(issuer, ok)``. They report to the ``Metrics`` that was ``install()``-ed last.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


# What the scrape-time collector reads of the parts it watches (metrics is the lowest layer: it
# names the attributes it needs instead of importing the classes that have them).
class AuditLog(Protocol):
    @property
    def depth(self) -> int: ...
    written: int
    lost_allowed: int
    lost_denied: int
    write_errors: int
    failing: bool


class DecisionCache(Protocol):
    hits: int
    misses: int

    @property
    def maxsize(self) -> float: ...

    def __len__(self) -> int: ...


class Quarantine(Protocol):
    quarantines: int

    @property
    def active(self) -> int: ...


class Tracing(Protocol):
    @property
    def exported(self) -> int: ...
    @property
    def dropped(self) -> int: ...


# Microsecond-range buckets: a check takes tens of microseconds to a few milliseconds.
_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 1.0,
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
        self.bad_requests = Counter(
            "extauthz_bad_requests",
            "Checks whose input was malformed, not canonical, or over a resource bound.",
            ["kind"],
            registry=r,
        )
        self.jwks_fetches = Counter(
            "extauthz_jwks_fetches", "JWKS fetches attempted.", ["issuer"], registry=r
        )
        self.jwks_failures = Counter(
            "extauthz_jwks_fetch_failures", "JWKS fetches that failed.", ["issuer"], registry=r
        )
        self.serving = Gauge(
            "extauthz_serving",
            "1 while the Authorization health service answers SERVING (policies loaded, not draining).",
            registry=r,
        )
        self._live = _LiveCollector()
        r.register(self._live)
        # Bound children of `checks` per (allowed, reason): .labels() costs more than .inc().
        self._check_counters: dict[tuple[bool, str], Any] = {}

    def observe(self, allowed: bool, reason: str, seconds: float) -> None:
        counter = self._check_counters.get((allowed, reason))
        if counter is None:  # reasons are a closed set: this dict stays small
            counter = self.checks.labels("allow" if allowed else "deny", reason)
            self._check_counters[(allowed, reason)] = counter
        counter.inc()
        self.duration.observe(seconds)

    # State read at scrape time.
    def watch_audit(self, audit: AuditLog) -> None:
        self._live.audit = audit

    def watch_cache(self, cache: DecisionCache) -> None:
        self._live.cache = cache

    def watch_quarantine(self, quarantine: Quarantine) -> None:
        self._live.quarantine = quarantine

    def watch_tracing(self, tracing: Tracing) -> None:
        self._live.tracing = tracing

    def set_expiry(self, kind: str, name: str, not_after: float | None) -> None:
        """``kind`` "bundle" or "certificate"; ``not_after`` None forgets the entry."""
        if not_after is None:
            self._live.expiry.pop((kind, name), None)
        else:
            self._live.expiry[(kind, name)] = not_after

    def install(self) -> Metrics:
        """Make this the target of the module-level hooks."""
        global _active
        _active = self
        return self

    def serve(self, address: str) -> None:
        """Expose ``/metrics`` on ``HOST:PORT``."""
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry)


class _LiveCollector(Collector):
    def __init__(self) -> None:
        self.audit: AuditLog | None = None
        self.cache: DecisionCache | None = None
        self.quarantine: Quarantine | None = None
        self.tracing: Tracing | None = None
        self.expiry: dict[tuple[str, str], float] = {}

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        bundles = GaugeMetricFamily(
            "extauthz_trust_bundle_expiry_seconds",
            "Seconds until the earliest CA certificate of a trust bundle expires (negative: expired).",
            labels=["trust_domain"],
        )
        certs = GaugeMetricFamily(
            "extauthz_certificate_expiry_seconds",
            "Seconds until a certificate the service holds expires (negative: expired).",
            labels=["name"],
        )
        for (kind, name), not_after in sorted(self.expiry.items()):
            (bundles if kind == "bundle" else certs).add_metric([name], not_after - now)
        yield bundles
        yield certs
        # Always exported (zero when the part is off), so that alerts never see an absent series.
        a, c, q = self.audit, self.cache, self.quarantine
        yield GaugeMetricFamily(
            "extauthz_audit_queue_depth",
            "Audit records waiting to be written.",
            a.depth if a is not None else 0,
        )
        yield CounterMetricFamily(
            "extauthz_audit_records_written",
            "Audit records written.",
            a.written if a is not None else 0,
        )
        lost = CounterMetricFamily(
            "extauthz_audit_records_lost",
            "Audit records that could not be written, by the decision they record.",
            labels=["decision"],
        )
        lost.add_metric(["allow"], a.lost_allowed if a is not None else 0)
        lost.add_metric(["deny"], a.lost_denied if a is not None else 0)
        yield lost
        yield CounterMetricFamily(
            "extauthz_audit_write_errors",
            "Failed writes to the audit log.",
            a.write_errors if a is not None else 0,
        )
        yield GaugeMetricFamily(
            "extauthz_audit_failing",
            "1 while audit writes fail.",
            1 if a is not None and a.failing else 0,
        )
        yield CounterMetricFamily(
            "extauthz_decision_cache_hits",
            "Checks answered from the decision cache.",
            c.hits if c is not None else 0,
        )
        yield CounterMetricFamily(
            "extauthz_decision_cache_misses",
            "Cacheable checks not found in the decision cache.",
            c.misses if c is not None else 0,
        )
        yield GaugeMetricFamily(
            "extauthz_decision_cache_entries", "Decisions in the cache.", len(c) if c is not None else 0
        )
        yield GaugeMetricFamily(
            "extauthz_decision_cache_capacity",
            "Most decisions the cache holds (0: the cache is off).",
            c.maxsize if c is not None else 0,
        )
        yield CounterMetricFamily(
            "extauthz_quarantines",
            "Callers put in quarantine for too many denials.",
            q.quarantines if q is not None else 0,
        )
        yield GaugeMetricFamily(
            "extauthz_quarantined_callers",
            "Callers in quarantine now.",
            q.active if q is not None else 0,
        )
        t = self.tracing
        yield CounterMetricFamily(
            "extauthz_trace_spans_exported",
            "Check spans the trace exporter delivered (0 while tracing is off).",
            t.exported if t is not None else 0,
        )
        yield CounterMetricFamily(
            "extauthz_trace_spans_dropped",
            "Check spans dropped: the export queue was full or the collector did not take them.",
            t.dropped if t is not None else 0,
        )


_active: Metrics | None = None


def bundle_expiry(trust_domain: str, not_after: float | None) -> None:
    """The identity code reports a trust bundle's earliest notAfter (epoch seconds)."""
    if _active is not None:
        _active.set_expiry("bundle", trust_domain, not_after)


def certificate_expiry(name: str, not_after: float | None) -> None:
    """The identity code reports a certificate's notAfter (epoch seconds)."""
    if _active is not None:
        _active.set_expiry("certificate", name, not_after)


def jwks_fetch(issuer: str, ok: bool) -> None:
    """The identity code reports one JWKS fetch and whether it worked."""
    if _active is not None:
        _active.jwks_fetches.labels(issuer).inc()
        if not ok:
            _active.jwks_failures.labels(issuer).inc()
