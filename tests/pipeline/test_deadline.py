"""A check decided after the caller's deadline is recorded and counted as what Envoy got: a deny
(issue 13). The transports pass the deadline in; the core decides "late" before the record."""

from __future__ import annotations

import io
import json
import time
from typing import Any

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.decision.audit import AuditLog, StreamSink
from extauthz.decision.cache import DecisionCache
from extauthz.metrics import Metrics
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
    to: [{operation: {paths: ["/api/*"]}}]
"""
ENGINE = compile_policies(load_text(POLICY))
ALLOWED = check_request(path="/api/items", request_id="r1").SerializeToString()


class Rig:
    def __init__(self) -> None:
        self.sink = StreamSink(io.StringIO())
        self.audit = AuditLog(self.sink)
        self.metrics = Metrics()
        self.core = CheckCore(
            lambda: ENGINE, cache=DecisionCache(), audit=self.audit, metrics=self.metrics
        )

    def records(self) -> list[dict[str, Any]]:
        self.audit.close()
        return [json.loads(x) for x in self.sink.stream.getvalue().splitlines()]  # type: ignore[attr-defined]

    def count(self, outcome: str, reason: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "extauthz_checks_total", {"outcome": outcome, "reason": reason}
        )


def test_an_allow_decided_after_the_deadline_is_a_recorded_deny() -> None:
    rig = Rig()
    for _ in range(2):  # a miss and a cache hit
        body = rig.core.answer(ALLOWED, deadline=time.monotonic() - 0.001)
        resp = ext.CheckResponse.FromString(body)
        assert resp.status.code != 0 and resp.denied_response.status.code == 403
        assert json.loads(resp.denied_response.body)["reason"] == "deadline_exceeded"
    records = rig.records()
    assert [(r["allowed"], r["status"], r["reason"]) for r in records] == [
        (False, 403, "deadline_exceeded")
    ] * 2
    assert [r["cache"] for r in records] == ["miss", "hit"]
    assert all(r["request_id"] == "r1" and "allowed" in r["error"] for r in records)
    assert rig.count("deny", "deadline_exceeded") == 2.0
    assert rig.count("allow", "allowed") is None


def test_in_time_or_without_a_deadline_the_decision_stands() -> None:
    rig = Rig()
    assert ext.CheckResponse.FromString(rig.core.answer(ALLOWED)).status.code == 0
    in_time = rig.core.answer(ALLOWED, deadline=time.monotonic() + 60)
    assert ext.CheckResponse.FromString(in_time).status.code == 0
    assert [r["reason"] for r in rig.records()] == ["allowed", "allowed"]
    assert rig.count("allow", "allowed") == 2.0


class _Context:
    """What grpcio's ServicerContext offers the handler about the deadline."""

    def __init__(self, left: float) -> None:
        self.left = left

    def time_remaining(self) -> float:
        return self.left


def test_grpcio_handler_reads_the_deadline_from_its_context(tmp_path: Any) -> None:
    from helpers import write_policies

    from extauthz.policy.store import PolicyStore
    from extauthz.serving.service import Service
    from extauthz.settings import Settings

    policies = write_policies(tmp_path / "policies", {"p.yaml": POLICY})
    store = PolicyStore(policies)
    store.load()
    audit = AuditLog.open(str(tmp_path / "audit.log"))
    service = Service(Settings(policies=str(policies)), store, audit)
    late = ext.CheckResponse.FromString(service.handle_check(ALLOWED, _Context(0.0)))
    no_deadline = ext.CheckResponse.FromString(service.handle_check(ALLOWED, _Context(9.2e18)))
    in_time = ext.CheckResponse.FromString(service.handle_check(ALLOWED, _Context(30.0)))
    audit.close()
    assert late.status.code != 0 and no_deadline.status.code == 0 and in_time.status.code == 0
    records = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert [r["reason"] for r in records] == ["deadline_exceeded", "allowed", "allowed"]
