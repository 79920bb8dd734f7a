"""Metrics: names, labels, microsecond buckets, and the hooks the identity code calls."""

from __future__ import annotations

import io
import re

from helpers.decisions import POLICY
from prometheus_client import generate_latest

from extauthz import metrics as metrics_mod
from extauthz.decision.audit import AuditLog, StreamSink
from extauthz.decision.cache import DecisionCache
from extauthz.metrics import Metrics
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request

ENGINE = compile_policies(load_text(POLICY))


def sample(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in metrics"
    return float(m.group(1))


def test_check_cache_and_audit_metrics() -> None:
    m = Metrics()
    cache = DecisionCache()
    audit = AuditLog(StreamSink(io.StringIO()))
    m.watch_cache(cache)
    m.watch_audit(audit)
    core = CheckCore(lambda: ENGINE, cache=cache, audit=audit, metrics=m)
    ok = check_request(headers={"x-tenant": "acme"}).SerializeToString()
    for _ in range(3):
        core.answer(ok)
    core.answer(check_request(path="/a//b").SerializeToString())
    audit.close()
    text = generate_latest(m.registry).decode()
    assert sample(text, 'extauthz_checks_total{outcome="allow",reason="allowed"}') == 3
    assert sample(text, 'extauthz_checks_total{outcome="deny",reason="invalid_request"}') == 1
    assert sample(text, "extauthz_check_duration_seconds_count") == 4
    assert 'extauthz_check_duration_seconds_bucket{le="1e-05"}' in text  # 10 microseconds
    assert sample(text, "extauthz_decision_cache_hits_total") == 2
    assert sample(text, "extauthz_decision_cache_misses_total") == 1
    assert sample(text, "extauthz_decision_cache_entries") == 1
    assert sample(text, "extauthz_audit_records_written_total") == 4
    assert sample(text, 'extauthz_audit_records_lost_total{decision="allow"}') == 0
    assert sample(text, "extauthz_audit_queue_depth") == 0
    assert sample(text, 'extauthz_bad_requests_total{kind="non_canonical"}') == 1


def test_expiry_and_jwks_hooks() -> None:
    m = Metrics().install()
    metrics_mod.bundle_expiry("example.org", 4_000_000_000.0)
    metrics_mod.certificate_expiry("serving", 1.0)
    metrics_mod.jwks_fetch("https://issuer.example", ok=True)
    metrics_mod.jwks_fetch("https://issuer.example", ok=False)
    text = generate_latest(m.registry).decode()
    left = sample(text, 'extauthz_trust_bundle_expiry_seconds{trust_domain="example.org"}')
    assert 2_000_000_000 < left < 4_000_000_000
    assert sample(text, 'extauthz_certificate_expiry_seconds{name="serving"}') < 0  # expired
    assert sample(text, 'extauthz_jwks_fetches_total{issuer="https://issuer.example"}') == 2
    assert sample(text, 'extauthz_jwks_fetch_failures_total{issuer="https://issuer.example"}') == 1
    metrics_mod.bundle_expiry("example.org", None)
    assert "example.org" not in generate_latest(m.registry).decode()


def test_hooks_are_safe_without_metrics() -> None:
    metrics_mod._active = None
    metrics_mod.bundle_expiry("x", 1.0)
    metrics_mod.jwks_fetch("x", ok=False)
