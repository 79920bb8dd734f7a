"""End to end through the real Envoy: each action (ALLOW, DENY, AUDIT, dry-run) decides, or does
not, exactly as documented, and the audit record says which policy did what."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    DevPki,
    EchoServer,
    EnvoyProcess,
    ExtauthzProcess,
    envoy_binary,
    https_request,
    write_policies,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(envoy_binary() is None, reason="envoy binary not installed"),
]

H = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
POLICIES = {
    "allow.yaml": H + """metadata: {name: frontend-reads, namespace: shop}
spec:
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/api/*"]}}]
""",
    "deny.yaml": H + """metadata: {name: deny-secret, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/api/secret", "/api/secret/*"]}}]
""",
    "audit.yaml": H + """metadata: {name: audit-reports, namespace: istio-system}
spec:
  action: AUDIT
  rules:
  - to: [{operation: {methods: ["GET"], paths: ["/api/reports/*"]}}]
""",
    "dry-run.yaml": H + """metadata:
  name: dry-deny-beta
  namespace: istio-system
  annotations: {"istio.io/dry-run": "true"}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/api/beta/*"]}}]
---
""" + H + """metadata:
  name: dry-allow-public
  namespace: shop
  annotations: {"istio.io/dry-run": "true"}
spec:
  rules:
  - to: [{operation: {paths: ["/public/*"]}}]
""",
}


class Stack:
    def __init__(self, pki: DevPki, authz: ExtauthzProcess, envoy: EnvoyProcess) -> None:
        self.pki, self.authz, self.envoy = pki, authz, envoy

    def get(self, who: str, path: str) -> tuple[int, dict[str, Any]]:
        """Send GET ``path`` as ``who``; return the status and the request's audit record."""
        before = len(self.authz.audit_records())
        res = https_request(self.envoy.listen_port, "GET", path, ca_file=self.pki.ca_file,
                            client=self.pki.files[who])
        records = self.authz.wait_audit(before + 1, timeout=5.0)
        record = next(r for r in reversed(records) if r["request"]["path"] == path)
        return res.status, record


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pki: DevPki, echo_server: EchoServer) -> Iterator[Stack]:
    base: Path = tmp_path_factory.mktemp("actions")
    authz = ExtauthzProcess(write_policies(base / "policies", POLICIES), base / "extauthz").start()
    try:
        envoy = EnvoyProcess(base / "envoy", upstream=echo_server.address, authz_endpoints=[authz.endpoint],
                             tls=pki.envoy_tls(), context_extensions={"namespace": "shop"},
                             timeout_s=2.0).start()
    except BaseException:
        authz.stop()
        raise
    try:
        yield Stack(pki, authz, envoy)
    finally:
        envoy.stop()
        authz.stop()


def test_allow(stack: Stack) -> None:
    status, rec = stack.get("frontend", "/api/items")
    assert status == 200
    assert rec["allowed"] and rec["policy"] == "shop/frontend-reads" and rec["rule"] == 0
    status, rec = stack.get("intruder", "/api/items")
    assert status == 403 and rec["reason"] == "no_matching_policy" and rec["policy"] is None


def test_deny_wins(stack: Stack) -> None:
    status, rec = stack.get("frontend", "/api/secret/keys")
    assert status == 403
    assert rec["reason"] == "denied_by_policy" and rec["policy"] == "istio-system/deny-secret"


def test_audit_marks_without_deciding(stack: Stack) -> None:
    status, rec = stack.get("frontend", "/api/reports/q3")
    assert status == 200 and rec["audit_policies"] == ["istio-system/audit-reports"]
    status, rec = stack.get("intruder", "/api/reports/q3")
    assert status == 403 and rec["audit_policies"] == ["istio-system/audit-reports"]
    status, rec = stack.get("frontend", "/api/items/1")
    assert status == 200 and rec["audit_policies"] == []


def test_dry_run_is_reported_not_enforced(stack: Stack) -> None:
    status, rec = stack.get("frontend", "/api/beta/feature")
    assert status == 200  # the dry-run DENY matched but is not enforced
    assert {"policy": "istio-system/dry-deny-beta", "result": "deny_match"} in rec["dry_run"]
    status, rec = stack.get("frontend", "/public/page")
    assert status == 403  # the dry-run ALLOW matched but does not allow
    assert {"policy": "shop/dry-allow-public", "result": "allow_match"} in rec["dry_run"]
