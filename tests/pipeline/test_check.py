"""The Check core: decisions, response bytes, audit records, and failing closed."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from helpers.decisions import ExplodingResolver, UnrenderableResolver, resolver_patch

from extauthz._pb.envoy.config.core.v3 import base_pb2
from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.decision import decision as decision_mod
from extauthz.identity.resolver import IdentityContext
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-to-api, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/api/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/api/admin*"]}}]
"""


@pytest.fixture
def core() -> CheckCore:
    engine = compile_policies(load_text(POLICY))
    return CheckCore(lambda: engine)


def run(core: CheckCore, **kw: Any) -> tuple[ext.CheckResponse, dict[str, Any]]:
    body, record, _ = core.check(check_request(**kw).SerializeToString())
    return ext.CheckResponse.FromString(body), record


def test_allow_sets_spiffe_id_header_with_overwrite(core: CheckCore) -> None:
    resp, record = run(core)
    assert resp.status.code == 0
    assert resp.WhichOneof("http_response") == "ok_response"
    headers = {h.header.key: h for h in resp.ok_response.headers}
    assert headers["x-spiffe-id"].header.value == "spiffe://example.org/ns/shop/sa/frontend"
    assert (
        headers["x-spiffe-id"].append_action
        == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    )
    # never removed after being set (Envoy removes after setting)
    assert "x-spiffe-id" not in resp.ok_response.headers_to_remove
    assert record["allowed"] is True
    assert record["policy"] == "shop/frontend-to-api"


def test_allow_without_peer_strips_client_identity_header() -> None:
    engine = compile_policies(
        load_text(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            "metadata: {name: open, namespace: istio-system}\n"
            "spec: {rules: [{to: [{operation: {paths: [/healthz]}}]}]}\n"
        )
    )
    body, _, decision = CheckCore(lambda: engine).check(
        check_request(principal="", path="/healthz", headers={"x-spiffe-id": "spiffe://evil/x"})
        .SerializeToString()
    )
    resp = ext.CheckResponse.FromString(body)
    assert decision.allowed
    assert resp.status.code == 0
    assert list(resp.ok_response.headers_to_remove) == ["x-spiffe-id", "x-forwarded-client-cert"]
    assert not [h for h in resp.ok_response.headers if h.header.key == "x-spiffe-id"]


def test_policy_deny_is_403_with_json_body(core: CheckCore) -> None:
    resp, record = run(core, path="/api/admin/users", request_id="req-1")
    assert resp.status.code == 7  # PERMISSION_DENIED
    assert resp.denied_response.status.code == 403
    body = json.loads(resp.denied_response.body)
    assert body == {"decision_id": record["decision_id"], "status": 403, "reason": "denied_by_policy"}
    assert record["decision_id"] != "req-1" and record["request_id"] == "req-1"
    assert record["policy"] == "istio-system/deny-admin"
    assert record["reason"] == "denied_by_policy"


def test_zero_trust_default_deny(core: CheckCore) -> None:
    resp, record = run(core, principal="spiffe://example.org/ns/other/sa/x")
    assert resp.denied_response.status.code == 403
    assert record["reason"] == "no_matching_policy"
    assert record["policy"] is None


def test_empty_policy_set_denies_everything() -> None:
    engine = compile_policies(load_text(""))
    body, record, _ = CheckCore(lambda: engine).check(check_request().SerializeToString())
    assert ext.CheckResponse.FromString(body).denied_response.status.code == 403
    assert record["reason"] == "no_matching_policy"


def test_non_canonical_path_is_400_even_when_policy_would_allow(core: CheckCore) -> None:
    resp, record = run(core, path="/api/%2E%2E/admin")
    assert resp.status.code == 3  # INVALID_ARGUMENT
    assert resp.denied_response.status.code == 400
    assert record["status"] == 400
    assert "encoded" in record["error"]


def test_invalid_spiffe_principal_never_matches(core: CheckCore) -> None:
    # a look-alike of the allowed principal that is not a valid SPIFFE ID
    for principal in (
        "spiffe://example.org/ns/shop/sa/frontend/",
        "spiffe://example.org//ns/shop/sa/frontend",
        "spiffe://EXAMPLE.org/ns/shop/sa/frontend",
        "example.org/ns/shop/sa/frontend",
    ):
        resp, record = run(core, principal=principal)
        assert resp.denied_response.status.code == 403, principal
        assert record["reason"] == "invalid_peer_identity"


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff\xff", b"\x0a\x05\x0a\x03\x0a\x01", b"\x0a" + b"\xff" * 10, b"garbage" * 100],
)
def test_malformed_bytes_answer_deny_not_an_exception(core: CheckCore, data: bytes) -> None:
    body, record, decision = core.check(data)
    resp = ext.CheckResponse.FromString(body)
    assert resp.status.code != 0
    assert resp.denied_response.status.code == 403
    assert not decision.allowed
    assert record["allowed"] is False


def test_empty_request_bytes_deny() -> None:
    engine = compile_policies(load_text(POLICY))
    body, record, _ = CheckCore(lambda: engine).check(b"")
    assert ext.CheckResponse.FromString(body).status.code != 0
    assert record["status"] in (400, 403)


def test_no_policy_loaded_denies() -> None:
    body, record, _ = CheckCore(lambda: None).check(check_request().SerializeToString())
    assert ext.CheckResponse.FromString(body).denied_response.status.code == 403
    assert record["reason"] == "no_policy_loaded"


def test_internal_error_fails_closed(core: CheckCore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        IdentityContext, "resolver", resolver_patch(ExplodingResolver(RuntimeError("engine exploded")))
    )
    body, record, decision = core.check(check_request().SerializeToString())
    resp = ext.CheckResponse.FromString(body)
    assert resp.status.code == 7
    assert resp.denied_response.status.code == 403
    assert decision.reason == "internal_error"
    assert record["allowed"] is False
    assert "exploded" not in resp.denied_response.body  # no internals leak to the client


def test_render_failure_still_answers_deny(core: CheckCore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(IdentityContext, "resolver", resolver_patch(UnrenderableResolver()))
    body, _, decision = core.check(check_request().SerializeToString())
    assert not decision.allowed
    assert decision.reason == "internal_error"
    assert ext.CheckResponse.FromString(body).status.code != 0


def test_audit_record_fields(core: CheckCore) -> None:
    _, record = run(core, request_id="abc", path="/api/items?token=secret")
    for key in ("time", "decision_id", "allowed", "status", "reason", "policy", "cache", "latency_us"):
        assert key in record
    assert record["source"] == {
        "principal": "spiffe://example.org/ns/shop/sa/frontend",
        "address": "10.0.0.5",
    }
    assert record["destination"] == {"principal": "spiffe://example.org/ns/shop/sa/api"}
    assert record["request"] == {"method": "GET", "host": "api.shop.svc", "path": "/api/items"}
    assert "secret" not in json.dumps(record)  # the query (which may carry tokens) is not recorded
    assert record["token"] == {"iss": None, "sub": None}
    assert record["time"].endswith("Z") and len(record["time"]) == len("2026-01-01T00:00:00.000000Z")


def test_generated_decision_ids_are_128_random_bits_in_hex() -> None:
    ids = {decision_mod.new_decision_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in ids)


def test_a_cache_hit_copies_the_decision_with_its_own_id() -> None:
    cached = decision_mod.Decision(True, 200, "allowed", "first", policy="ns/p", rule=2,
                                headers=(("x-a", "1"),))
    hit = decision_mod.cache_hit(cached, "second")
    assert (hit.decision_id, hit.cache) == ("second", "hit")
    assert (cached.decision_id, cached.cache) == ("first", "miss")  # the cached one is untouched
    assert (hit.allowed, hit.policy, hit.rule, hit.headers) == (True, "ns/p", 2, (("x-a", "1"),))


def test_metrics_count_each_outcome_and_reason_apart() -> None:
    from extauthz.metrics import Metrics

    m = Metrics()
    for allowed, reason in [(True, "allowed"), (True, "allowed"), (False, "denied_by_policy")]:
        m.observe(allowed, reason, 0.001)
    get = m.registry.get_sample_value
    assert get("extauthz_checks_total", {"outcome": "allow", "reason": "allowed"}) == 2.0
    assert get("extauthz_checks_total", {"outcome": "deny", "reason": "denied_by_policy"}) == 1.0
    assert get("extauthz_check_duration_seconds_count") == 3.0


def test_a_forked_worker_never_reuses_its_parents_pending_decision_ids() -> None:
    # In a fresh interpreter: in this process, earlier tests had drawn ids, and when exactly one
    # was left in the pool, new_decision_id() emptied it and the test failed (order-dependent).
    script = (
        "import os\n"
        "from extauthz.decision import decision as d\n"
        "d.new_decision_id()  # the pool now holds ids the parent will hand out\n"
        "assert d._id_pool\n"
        "pid = os.fork()\n"
        "if pid == 0:  # the child: nothing inherited\n"
        "    os._exit(0 if not d._id_pool else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "raise SystemExit(os.waitstatus_to_exitcode(status))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
