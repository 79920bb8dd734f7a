"""Decision ids are the service's; the client's x-request-id is recorded as request_id (#13)."""

from __future__ import annotations

import io
import json
import re
from typing import Any

from helpers.decisions import POLICY, Clock, ExplodingResolver, resolver_patch

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.decision.audit import AuditLog, StreamSink
from extauthz.decision.cache import DecisionCache
from extauthz.decision.quarantine import Quarantine
from extauthz.identity.resolver import IdentityContext
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request

ENGINE = compile_policies(load_text(POLICY))
OK = {"headers": {"x-tenant": "acme"}}
ID = re.compile(r"[0-9a-f]{32}")


class Rig:
    def __init__(self, **kw: Any) -> None:
        self.sink = StreamSink(io.StringIO())
        self.audit = AuditLog(self.sink)
        self.core = CheckCore(lambda: ENGINE, audit=self.audit, **kw)

    def answer(self, data: bytes) -> ext.CheckResponse:
        return ext.CheckResponse.FromString(self.core.answer(data))

    def records(self) -> list[dict[str, Any]]:
        self.audit.close()
        out = self.sink.stream.getvalue()  # type: ignore[attr-defined]
        return [r for r in map(json.loads, out.splitlines()) if "decision_id" in r]


def _decision_id(resp: ext.CheckResponse) -> str:
    md = resp.dynamic_metadata.fields["decision_id"].string_value
    if resp.status.code != 0:
        assert json.loads(resp.denied_response.body)["decision_id"] == md
    return md


def test_the_same_x_request_id_twice_gets_two_decision_ids_and_is_recorded_as_request_id() -> None:
    rig = Rig(cache=DecisionCache(clock=Clock()))
    kinds = [OK, OK, {"path": "/api/admin", **OK}, {"path": "/api/admin", **OK}, {"path": "/a/%2e"}]
    ids = []
    for kw in kinds:  # an allow (miss, hit), a policy deny (miss, hit), a 400
        ids.append(_decision_id(rig.answer(check_request(request_id="same", **kw).SerializeToString())))
    records = rig.records()
    assert [r["decision_id"] for r in records] == ids
    assert [r["cache"] for r in records] == ["miss", "hit", "miss", "hit", "miss"]
    assert len(set(ids)) == len(ids) and all(ID.fullmatch(i) for i in ids)
    assert all(r["request_id"] == "same" for r in records)


def test_without_x_request_id_the_record_has_no_request_id() -> None:
    rig = Rig()
    resp = rig.answer(check_request(**OK).SerializeToString())
    [record] = rig.records()
    assert "request_id" not in record
    assert ID.fullmatch(record["decision_id"]) and record["decision_id"] == _decision_id(resp)


def test_quarantine_malformed_and_internal_denies_get_service_ids_too() -> None:
    rig = Rig(quarantine=Quarantine(max_denies=1, window=10, duration=60, clock=Clock()))
    bad = check_request(request_id="mine", path="/api/admin", **OK).SerializeToString()
    rig.answer(bad)
    rig.answer(bad)  # the deny over the limit starts the quarantine
    quarantined = rig.answer(bad)
    malformed = rig.answer(b"\xff\xff not a CheckRequest")
    records = rig.records()
    assert [r["reason"] for r in records[2:]] == ["quarantined", "malformed_check_request"]
    assert records[2]["decision_id"] == _decision_id(quarantined) != "mine"
    assert records[2]["request_id"] == "mine"
    assert records[3]["decision_id"] == _decision_id(malformed) and "request_id" not in records[3]
    assert all(ID.fullmatch(r["decision_id"]) for r in records)


def test_an_internal_error_keeps_the_request_id_apart(monkeypatch: Any) -> None:
    monkeypatch.setattr(IdentityContext, "resolver", resolver_patch(ExplodingResolver(RuntimeError("boom"))))
    rig = Rig()
    resp = rig.answer(check_request(request_id="mine", **OK).SerializeToString())
    [record] = rig.records()
    assert record["reason"] == "internal_error"
    assert record["decision_id"] == _decision_id(resp) != "mine"
    assert record["request_id"] == "mine"
