"""A decision-cache hit's audit record, spliced into the template kept on the cache entry, is the
record ``audit_record`` + ``encode_body`` make for that hit, byte for byte (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extauthz.decision.audit import AuditLog
from extauthz.decision.audit.chain import unsealed_body
from extauthz.decision.audit.record import MAX_FIELD_CHARS, encode_body
from extauthz.decision.cache import DecisionCache
from extauthz.decision.decision import Decision
from extauthz.decision.quarantine import Quarantine
from extauthz.decision.record import HitRecord, hit_record, hit_template
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request

H = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
POLICY = (
    H
    + """metadata: {name: frontend-to-api, namespace: shop}
spec:
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/api/*"]}}]
    when: [{key: "request.headers[x-tenant]", notValues: ["blocked"]}]
---
"""
    + H
    + """metadata: {name: deny-admin, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/api/admin*"]}}]
---
"""
    + H
    + """metadata: {name: audit-reports, namespace: istio-system}
spec:
  action: AUDIT
  rules:
  - to: [{operation: {paths: ["/api/*"]}}]
---
"""
    + H
    + """metadata:
  name: dry-deny
  namespace: istio-system
  annotations: {"istio.io/dry-run": "true"}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/api/*"]}}]
"""
)

LONG = MAX_FIELD_CHARS + 300
CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "policy deny": {"path": "/api/admin/users"},
    "no match": {"principal": "spiffe://example.org/ns/other/sa/x"},
    "unicode": {
        "headers": {"x-tenant": "é\u2028💥\"\\"},
        "context_extensions": {"ns": "ünï\x00\"quote\"\\", "ö": "ß"},
        "request_id": "rid-é-\u2028-💥",
    },
    "long values, capped": {
        "path": "/api/" + "p" * LONG,
        "headers": {"x-tenant": "t" * LONG},  # unrecorded: too long
        "context_extensions": {"k" * LONG: "v" * LONG, "unicode": "é" * LONG},
        "request_id": "r" * LONG,
        "destination_principal": "spiffe://example.org/" + "d" * LONG,
    },
    "no request id": {"request_id": ""},
}


def _lines(path: Path) -> list[str]:
    bodies = [unsealed_body(line) for line in path.read_text().splitlines()]
    assert all(b is not None for b in bodies)
    return [b for b in bodies if b is not None]


@pytest.mark.parametrize("view", [False, True], ids=["from the message", "from the view"])
@pytest.mark.parametrize("case", list(CASES))
def test_hit_record_is_the_encoded_audit_record(tmp_path: Path, case: str, view: bool) -> None:
    engine = compile_policies(load_text(POLICY))
    audit = AuditLog.open(str(tmp_path / "audit.jsonl"))
    # A quarantine makes the core build the request view before the cache lookup.
    core = CheckCore(
        lambda: engine,
        cache=DecisionCache(100, 60.0),
        audit=audit,
        worker=3,
        quarantine=Quarantine() if view else None,
    )
    kw = CASES[case]
    rid = kw.get("request_id", "r-1")
    first = check_request(**{**kw, "request_id": "first-" + rid if rid else ""})
    _, miss, _ = core.check(first.SerializeToString())  # the miss: an ordinary record dict
    assert miss["cache"] == "miss"
    second = check_request(**{**kw, "request_id": rid})
    core.answer(second.SerializeToString())  # the hit: written from the template
    audit.close()
    (line,) = _lines(tmp_path / "audit.jsonl")
    hit = json.loads(line)
    assert hit["cache"] == "hit"
    # What audit_record + encode_body make for this hit: the miss's record, with the members
    # that differ per request taken from the hit.
    expected = dict(miss)
    expected.update(
        time=hit["time"], decision_id=hit["decision_id"], cache="hit", latency_us=hit["latency_us"]
    )
    expected.pop("request_id", None)
    if rid:
        expected["request_id"] = rid
    expected["worker"] = 3
    assert hit == json.loads(encode_body(expected))
    assert line == encode_body(expected)  # byte for byte, member order included
    if case == "long values, capped":
        assert hit["request"]["path"].endswith("…") and hit["request_id"].endswith("…")
        assert len(hit["input"]["path"]) == MAX_FIELD_CHARS + 1
    if not rid:
        assert "request_id" not in hit


def test_template_of_a_decision_is_hit_record_encoded() -> None:
    inp = {"v": 1, "source": {"principal": "a", "address": "1.2.3.4"},
           "destination": {"principal": None}, "method": "GET", "host": "h", "path": "/x/ü",
           "context_extensions": {"k": "v"}, "headers": {}, "identity": None}
    decision = Decision(True, 200, "allowed", "id1", policy="ns/p", rule=0, cache="hit",
                        audit_policies=("ns/a",), dry_run=(("ns/d", "deny"),), input=inp)
    template = hit_template(decision)
    assert template is not None
    for rid in ("", "r1", "é" * 2000):
        record = HitRecord(template, "id1", "/x/ü", rid, 17)
        expected = hit_record(decision, rid, 17)
        assert expected is not None
        expected["time"] = record.time
        assert record.body() == encode_body(expected)
        assert record.as_dict() == json.loads(encode_body(expected))
    assert template.input("/x/ü") == inp
    assert hit_template(Decision(False, 403, "malformed", "id2")) is None  # no input: no template


def test_entries_share_what_is_equal_and_only_that(tmp_path: Path) -> None:
    engine = compile_policies(load_text(POLICY))
    cache = DecisionCache(100, 60.0)
    core = CheckCore(lambda: engine, cache=cache)
    frontend = "spiffe://example.org/ns/shop/sa/frontend"
    for path in ("/api/a", "/api/b"):
        core.check(check_request(path=path).SerializeToString())
    core.check(check_request(path="/api/a", principal=frontend + "x").SerializeToString())
    entries = cache._entries
    (ka, a), (kb, b), (kc, c) = entries.items()
    # Two paths, one caller: one decision, response and record template between them.
    assert a.value is b.value and ka[0] is kb[0] and ka[1] != kb[1]
    # Another caller: nothing of the decision shared; each hit answers with its own.
    assert c.value is not a.value and kc[0] != ka[0]
    assert c.value.decision.reason == "no_matching_policy" and a.value.decision.allowed
    for principal, allowed in ((frontend, True), (frontend + "x", False)):
        _, record, decision = core.check(
            check_request(path="/api/a", principal=principal).SerializeToString()
        )
        assert record["cache"] == "hit" and decision.allowed is allowed
        assert record["source"]["principal"] == principal == record["input"]["source"]["principal"]
    # The record comes from the template: the kept decision has no input (and no id).
    assert a.value.decision.input is None and a.value.decision.decision_id == ""
