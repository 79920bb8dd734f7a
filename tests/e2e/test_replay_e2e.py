"""``extauthz replay`` on an audit log the real service wrote for requests through the real Envoy
(mTLS, rotated log), run as the command users run (issue 15, "Done when")."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
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
    wait_until,
    write_policies,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(envoy_binary() is None, reason="envoy binary not installed"),
]

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend, namespace: shop}
spec:
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/api/*", "/team/*"]}}]
"""
# (who, path, extra headers): what each sent request is; the path names its record
SENT = [
    ("frontend", "/api/items", []),
    ("frontend", "/api/orders", [("x-tenant", "acme")]),
    ("frontend", "/team/x", []),
    ("frontend", "/admin", []),
    ("intruder", "/api/items/intruder", []),
    ("api", "/api/items/api", []),
]
EXPECTED = {"/api/items": 200, "/api/orders": 200, "/team/x": 200, "/admin": 403,
            "/api/items/intruder": 403, "/api/items/api": 403}


@dataclass
class Logged:
    files: list[Path]
    ids: dict[str, str]  # request path -> decision_id
    workdir: Path


def _records(files: list[Path]) -> list[dict[str, Any]]:
    out = []
    for f in files:
        lines = f.read_text().split("\n")
        out += [json.loads(x) for x in lines[:-1] if x.strip()]
    return [r for r in out if "decision_id" in r]


@pytest.fixture(scope="module")
def logged(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, echo_server: EchoServer
) -> Iterator[Logged]:
    base = tmp_path_factory.mktemp("e2e-replay")
    policies = write_policies(base / "policies", {"p.yaml": POLICY})
    config = base / "extauthz.yaml"
    config.write_text("audit_max_bytes: 2500\naudit_backups: 20\ncache_size: 0\n")
    authz = ExtauthzProcess(policies, base / "extauthz", extra_args=["--config", str(config)]).start()
    try:
        envoy = EnvoyProcess(
            base / "envoy",
            upstream=echo_server.address,
            authz_endpoints=[authz.endpoint],
            tls=pki.envoy_tls(),
            context_extensions={"namespace": "shop"},
            timeout_s=2.0,
        ).start()
        try:
            for who, path, headers in SENT:
                r = https_request(envoy.listen_port, "GET", path, ca_file=pki.ca_file,
                                  client=pki.files[who], headers=headers)
                assert r.status == EXPECTED[path], (path, r)

            def files() -> list[Path]:
                return sorted(authz.audit_log.parent.glob(authz.audit_log.name + "*"))

            wait_until(lambda: len(_records(files())) >= len(SENT), 10.0, what="audit records")
        finally:
            envoy.stop()
    finally:
        authz.stop()
    logs = files()
    assert len(logs) > 1, "the log was meant to rotate"
    records = _records(logs)
    ids = {r["request"]["path"]: r["decision_id"] for r in records}
    assert set(ids) == set(EXPECTED) and len(records) == len(SENT)
    yield Logged(logs, ids, base)


def replay(logged: Logged, name: str, policy: str) -> tuple[int, dict[str, Any]]:
    policies = write_policies(logged.workdir / name, {"p.yaml": policy})
    files = [str(f) for f in reversed(logged.files)]  # any order
    proc = subprocess.run(
        [sys.executable, "-m", "extauthz", "replay", "--policies", str(policies), "--format", "json",
         *files],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_the_same_policies_keep_every_decision(logged: Logged) -> None:
    code, doc = replay(logged, "same", POLICY)
    assert code == 0
    assert (doc["decisions"], doc["stay"], doc["cannot_decide"]) == (len(SENT), len(SENT), 0)
    assert doc["allow_to_deny"] == doc["deny_to_allow"] == 0 and doc["unreadable"] == 0


def test_an_edit_flips_exactly_the_known_decisions(logged: Logged) -> None:
    edited = POLICY.replace('paths: ["/api/*", "/team/*"]', 'paths: ["/api/*"]') + """\
  - from: [{source: {principals: ["example.org/ns/other/sa/intruder"]}}]
    to: [{operation: {paths: ["/api/items/intruder"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-orders, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/api/orders"]}}]}]
"""
    code, doc = replay(logged, "edited", edited)
    assert code == 1
    flips = {f["decision_id"]: f for f in doc["flipped"]}
    ids = logged.ids
    assert set(flips) == {ids["/team/x"], ids["/api/orders"], ids["/api/items/intruder"]}
    assert (doc["allow_to_deny"], doc["deny_to_allow"], doc["stay"]) == (2, 1, 3)
    orders = flips[ids["/api/orders"]]
    assert orders["before"] == {"allowed": True, "status": 200, "reason": "allowed",
                                "policy": "shop/frontend", "rule": 0}
    assert orders["after"]["policy"] == "shop/no-orders" and orders["after"]["status"] == 403
    assert orders["request"].endswith(" /api/orders") and orders["time"]
    intruder = flips[ids["/api/items/intruder"]]
    assert intruder["before"]["reason"] == "no_matching_policy"
    assert (intruder["after"]["allowed"], intruder["after"]["rule"]) == (True, 1)


def test_a_rule_reading_an_unrecorded_header_cannot_be_decided(logged: Logged) -> None:
    reads_tenant = POLICY + """\
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-evil-tenant, namespace: shop}
spec:
  action: DENY
  rules: [{when: [{key: "request.headers[x-tenant]", values: ["evil"]}]}]
"""
    code, doc = replay(logged, "tenant", reads_tenant)
    assert code == 0  # nothing flips: nothing is guessed either
    assert doc["cannot_decide"] == len(SENT) and doc["stay"] == 0
    why = "not recorded: request.headers[x-tenant], request.headers[x_tenant]"
    assert doc["cannot_decide_why"] == {why: len(SENT)}
    assert {u["decision_id"] for u in doc["undecided"]} == set(logged.ids.values())
