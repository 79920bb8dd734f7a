"""deploy/grafana (the dashboard) and deploy/prometheus (the alert rules) against a running
service: every metric they name is on its /metrics, no query groups by a per-peer label, and the
rules pass ``promtool check rules`` and their unit tests (``promtool test rules``).

promtool comes from Debian's ``prometheus`` package; ``make test`` installs it (Makefile
``test-deps``). Without it only the promtool tests are skipped, saying so."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from helpers import LOOPBACK, ExtauthzProcess, free_port, write_policies

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2_grpc as ext_grpc
from extauthz.tools.samples import check_request

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "extauthz-dashboard.json"
RULES = REPO / "deploy" / "prometheus" / "extauthz-rules.yaml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "extauthz-rules.test.yaml"

# Series Prometheus makes itself, not the service.
PROMETHEUS_OWN = {"up"}
# Labels a query may group by: the service's own (a closed set, none of them per peer) and the
# target's. Grouping by a peer, principal or address would make a series per caller.
ALLOWED_LABELS = {
    "job", "instance", "pod", "namespace", "le",
    "outcome", "reason", "decision", "result", "kind", "trust_domain", "name",
}
_NAME = re.compile(r"\b(extauthz_[a-zA-Z0-9_]+|up)\b")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"[{,]\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: items, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {paths: ["/items"]}}]
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """The series names a running ``extauthz serve --metrics`` exports (from its # TYPE lines,
    so a labelled family counts before its first sample)."""
    tmp = tmp_path_factory.mktemp("observability")
    port = free_port()
    policies = write_policies(tmp / "policies", {"p.yaml": POLICY})
    args = ["--metrics", f"{LOOPBACK}:{port}"]
    with ExtauthzProcess(policies, tmp / "run", extra_args=args).start() as proc:
        with grpc.insecure_channel(proc.grpc_target) as channel:
            ext_grpc.AuthorizationStub(channel).Check(check_request(path="/items"), timeout=10)
        text = urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10).read().decode()
    yield series_names(text)


def series_names(text: str) -> set[str]:
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = []
    for panel in dashboard["panels"]:
        queries += [t["expr"] for t in panel.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            queries.append(var["definition"])
    return queries


def rule_queries(rules: dict[str, Any]) -> list[str]:
    return [str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def unknown_names(queries: list[str], exported: set[str]) -> set[str]:
    """Metric names used in ``queries`` that the service does not export."""
    used = {name for q in queries for name in _NAME.findall(q)}
    return used - exported - PROMETHEUS_OWN


def labels_used(queries: list[str]) -> set[str]:
    labels: set[str] = set()
    for q in queries:
        for group in _GROUPING.findall(q):
            labels |= {label.strip() for label in group.split(",") if label.strip()}
        labels |= set(_MATCHER.findall(q))
    return labels


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def _rules() -> dict[str, Any]:
    return dict(yaml.safe_load(RULES.read_text(encoding="utf-8")))


def test_every_metric_the_dashboard_uses_is_exported(exported: set[str]) -> None:
    queries = dashboard_queries(_dashboard())
    assert len(queries) >= 20
    assert unknown_names(queries, exported) == set()


def test_every_metric_the_alert_rules_use_is_exported(exported: set[str]) -> None:
    queries = rule_queries(_rules())
    assert unknown_names(queries, exported) == set()


def test_a_misspelt_metric_name_is_caught(exported: set[str]) -> None:
    """The check above can fail: one letter off in a dashboard query or a rule is reported."""
    text = DASHBOARD.read_text(encoding="utf-8").replace(
        "extauthz_audit_queue_depth", "extauthz_audit_queue_dept"
    )
    assert unknown_names(dashboard_queries(json.loads(text)), exported) == {"extauthz_audit_queue_dept"}
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8").replace(
        "extauthz_audit_records_lost_total", "extauthz_audit_record_lost_total"
    ))
    assert unknown_names(rule_queries(rules), exported) == {"extauthz_audit_record_lost_total"}


def test_the_dashboard_and_rules_cover_what_operators_watch(exported: set[str]) -> None:
    dashboard = " ".join(dashboard_queries(_dashboard()))
    for name in (
        "extauthz_checks_total", "extauthz_check_duration_seconds_bucket",
        "extauthz_decision_cache_hits_total", "extauthz_audit_queue_depth",
        "extauthz_audit_records_lost_total", "extauthz_policy_reloads_total",
        "extauthz_trust_bundle_expiry_seconds", "extauthz_certificate_expiry_seconds",
        "extauthz_quarantines_total", "extauthz_serving",
    ):
        assert name in dashboard, name
    assert "by (instance)" in dashboard  # per worker: each serving process is an instance
    alerts = {rule["alert"]: str(rule["expr"]) for g in _rules()["groups"] for rule in g["rules"]}
    assert set(alerts) == {
        "ExtauthzDown", "ExtauthzNotServing", "ExtauthzInternalErrors", "ExtauthzDenyRateSpike",
        "ExtauthzAuditRecordsLost", "ExtauthzAuditWriteFailing", "ExtauthzPolicyReloadFailing",
        "ExtauthzTrustBundleExpiring", "ExtauthzCertificateExpiring",
        "ExtauthzCheckLatencyP99OverBudget",
    }
    assert "7 * 86400" in alerts["ExtauthzTrustBundleExpiring"]
    assert "7 * 86400" in alerts["ExtauthzCertificateExpiring"]
    assert 'reason="internal_error"' in alerts["ExtauthzInternalErrors"]


def test_no_query_groups_or_filters_by_a_per_peer_label() -> None:
    queries = dashboard_queries(_dashboard()) + rule_queries(_rules())
    assert labels_used(queries) <= ALLOWED_LABELS
    assert labels_used(['sum by (source_principal) (rate(extauthz_checks_total[5m]))']) == {
        "source_principal"
    }


def test_dashboard_panels_are_wired_to_the_datasource_variable() -> None:
    dashboard = _dashboard()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'job=~"$job"' in target["expr"], panel["title"]


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian's prometheus package; `make test` installs it)",
)


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    out = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 10 rules found" in out.stdout


@needs_promtool
def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(RULES.read_text(encoding="utf-8").replace("> 0.025", "> > 0.025"), encoding="utf-8")
    out = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0


@needs_promtool
def test_the_alerts_fire_on_the_series_they_watch() -> None:
    """promtool's rule unit tests: audit loss, refused reload, NOT_SERVING, an expiring bundle
    and internal errors each raise their alert with its labels and text."""
    out = subprocess.run(
        [str(PROMTOOL), "test", "rules", RULE_TESTS.name],
        capture_output=True, text=True, timeout=60, cwd=RULE_TESTS.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr
