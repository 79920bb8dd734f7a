"""Through the real Envoy: identity headers, cache, quarantine, metrics, a verifiable audit log."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    FRONTEND_ID,
    DevPki,
    EchoServer,
    EnvoyProcess,
    ExtauthzProcess,
    HttpResult,
    envoy_binary,
    free_port,
    https_request,
    write_policies,
)

from extauthz.decision.audit import Hasher, verify

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(envoy_binary() is None, reason="envoy binary not installed"),
]

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: workloads-to-api, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend", "example.org/ns/shop/sa/api"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/api/*"]}}]
"""

KEY = b"e2e-audit-hmac-key-0123456789"


@dataclass
class Stack:
    pki: DevPki
    echo: EchoServer
    authz: ExtauthzProcess
    envoy: EnvoyProcess
    metrics_port: int
    key_file: Path
    sent: int = 0

    def request(self, who: str, path: str, headers: list[tuple[str, str]] | None = None) -> HttpResult:
        self.sent += 1
        return https_request(
            self.envoy.listen_port,
            "GET",
            path,
            ca_file=self.pki.ca_file,
            client=self.pki.files[who],
            headers=headers or [],
        )

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pki: DevPki, echo_server: EchoServer) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("e2e-decisions")
    policies = write_policies(base / "policies", {"p.yaml": POLICY})
    key_file = base / "hmac.key"
    key_file.write_bytes(KEY)
    config = base / "extauthz.yaml"
    config.write_text(
        f"""
identity_headers: {{x-spiffe-id: peer, x-peer-trust-domain: peer_trust_domain, x-user: token_subject}}
audit_hmac_key_file: {key_file}
cache_size: 1000
anomaly_quarantine: true
anomaly_max_denies: 3
anomaly_window_seconds: 30
anomaly_quarantine_seconds: 2
"""
    )
    metrics_port = free_port()
    authz = ExtauthzProcess(
        policies,
        base / "extauthz",
        extra_args=["--config", str(config), "--metrics", f"127.0.0.1:{metrics_port}"],
    ).start()
    try:
        envoy = EnvoyProcess(
            base / "envoy",
            upstream=echo_server.address,
            authz_endpoints=[authz.endpoint],
            tls=pki.envoy_tls(),
            context_extensions={"namespace": "shop"},
            timeout_s=2.0,
        ).start()
    except BaseException:
        authz.stop()
        raise
    try:
        yield Stack(pki, echo_server, authz, envoy, metrics_port, key_file)
    finally:
        envoy.stop()
        authz.stop()


def test_configured_identity_headers_replace_or_remove_client_copies(stack: Stack) -> None:
    stack.echo.clear()
    spoof = [("x-user", "admin"), ("x-peer-trust-domain", "evil.org"), ("x-spiffe-id", "spiffe://evil/x")]
    r = stack.request("frontend", "/api/items", spoof)
    assert r.status == 200, r
    [seen] = stack.echo.requests
    assert seen.header_values("x-spiffe-id") == [FRONTEND_ID]
    assert seen.header_values("x-peer-trust-domain") == ["example.org"]
    assert seen.header_values("x-user") == []  # no token: removed, never passed through


def test_repeated_requests_hit_the_cache_and_show_in_metrics(stack: Stack) -> None:
    for _ in range(5):
        assert stack.request("frontend", "/api/cached").status == 200
    records = stack.authz.wait_audit(stack.sent)
    mine = [r for r in records if r.get("request", {}).get("path") == "/api/cached"]
    assert [r["cache"] for r in mine] == ["miss", "hit", "hit", "hit", "hit"]
    assert len({r["decision_id"] for r in mine}) == 5  # each answer names its own request
    text = stack.metrics()
    hits = [ln for ln in text.splitlines() if ln.startswith("extauthz_decision_cache_hits_total ")]
    assert hits and float(hits[0].split()[1]) >= 4
    assert 'extauthz_checks_total{outcome="allow",reason="allowed"}' in text
    assert "extauthz_audit_queue_depth" in text


def test_deny_names_the_decision_for_the_client(stack: Stack) -> None:
    r = stack.request("intruder", "/api/items")
    assert r.status == 403
    decision_id = r.headers.get("x-extauthz-decision-id")
    assert decision_id and r.json()["decision_id"] == decision_id


def test_quarantine_and_release_through_envoy(stack: Stack) -> None:
    assert stack.request("api", "/api/items").status == 200
    for _ in range(4):
        assert stack.request("api", "/admin").status == 403
    r = stack.request("api", "/api/items")  # allowed by policy, and cached: quarantined anyway
    assert r.status == 403 and r.json()["reason"] == "quarantined"
    time.sleep(2.2)
    assert stack.request("api", "/api/items").status == 200
    records = stack.authz.wait_audit(stack.sent)
    events = [r["event"] for r in records if "event" in r]
    assert "quarantine_start" in events


def test_decision_ids_are_the_services_and_the_request_id_is_envoys(stack: Stack) -> None:
    """Two requests with the same x-request-id get two decision ids; each record's request_id is
    the x-request-id Envoy sent upstream, and the deny body names its record's decision id."""
    stack.echo.clear()
    same = [("x-request-id", "chosen-by-the-client")]
    for _ in range(2):
        assert stack.request("frontend", "/api/request-ids", same).status == 200
    envoys = [seen.header("x-request-id") for seen in stack.echo.requests]
    denied = stack.request("intruder", "/api/request-ids", same)
    assert denied.status == 403
    deny_id = denied.json()["decision_id"]
    deadline = time.monotonic() + 10  # records are written in batches: wait for all three
    while True:
        records = stack.authz.audit_records()
        mine = [r for r in records if r.get("request", {}).get("path") == "/api/request-ids"]
        if len(mine) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [r["request_id"] for r in mine[:2]] == envoys and all(envoys)
    ids = [r["decision_id"] for r in mine]
    assert len(set(ids)) == 3 and not set(ids) & {*envoys, "chosen-by-the-client"}
    [deny_record] = [r for r in mine if r["decision_id"] == deny_id]
    assert deny_record["allowed"] is False
    assert deny_record["request_id"] and deny_record["request_id"] != deny_id


# Last: it stops the service.
def test_audit_log_has_one_record_per_check_and_verifies(stack: Stack) -> None:
    stack.authz.wait_audit(stack.sent)
    assert stack.authz.stop() == 0
    records = stack.authz.audit_records()
    decisions = [r for r in records if "event" not in r]
    assert len(decisions) == stack.sent
    log = stack.authz.audit_log
    assert verify([log], Hasher(KEY)).ok
    assert not verify([log]).ok  # keyed: without the key nothing verifies
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0x20
    log.write_bytes(bytes(data))
    assert not verify([log], Hasher(KEY)).ok

