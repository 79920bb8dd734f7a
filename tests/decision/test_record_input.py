"""The audit record's ``input`` (issue 15 item 2): what the policies read, enough to decide the
request again (``decide_input``), never a token, a secret or an excluded value."""

from __future__ import annotations

import io
import itertools
import json
from typing import Any

import pytest
from helpers.identity import ISSUER, claims, inline_rule, mint, request_authn

from extauthz.decision.audit import AuditLog, StreamSink
from extauthz.decision.cache import DecisionCache
from extauthz.decision.decision import decide_input
from extauthz.decision.inputs import input_of, missing_inputs
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request

FROM_HEADERS = '[{name: authorization, prefix: "Bearer "}, {name: x-jwt, prefix: "Token "}]'
RA = request_authn(inline_rule(extra=f", fromHeaders: {FROM_HEADERS}"))
AUTHZ = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from: [{source: {requestPrincipals: ["https://issuer.example/user-1"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/api/*"], hosts: ["api.shop.svc"], ports: ["8443"]}}]
    when:
    - {key: "request.auth.claims[groups]", values: ["readers"]}
    - {key: "request.headers[x-tenant]", values: ["acme"]}
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"], ipBlocks: ["10.0.0.0/8"]}}]
    to: [{operation: {paths: ["/team/*"]}}]
    when:
    - {key: "request.auth.claims[org][team]", values: ["blue"]}
    - {key: connection.sni, values: ["api.shop.svc"]}
    - {key: destination.ip, values: ["10.0.0.9"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-debug, namespace: istio-system}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[x-debug]", values: ["on"]}]
  - when: [{key: "request.auth.claims[role]", values: ["banned"]}]
"""
POLICIES = RA + "---\n" + AUTHZ


class Rig:
    def __init__(self, text: str = POLICIES, exclude: tuple[str, ...] = (), cache: bool = True) -> None:
        self.engine = compile_policies(load_text(text))
        self.sink = StreamSink(io.StringIO())
        self.audit = AuditLog(self.sink)
        self.core = CheckCore(
            lambda: self.engine,
            cache=DecisionCache() if cache else None,
            audit=self.audit,
            input_exclude=exclude,
        )

    def run(self, **kw: Any) -> None:
        self.core.answer(check_request(**kw).SerializeToString())

    def records(self) -> list[dict[str, Any]]:
        self.audit.close()
        lines = self.sink.stream.getvalue().splitlines()  # type: ignore[attr-defined]
        return [r for r in map(json.loads, lines) if "decision_id" in r]


def token(**over: Any) -> str:
    return mint(claims(**over))


def requests() -> list[dict[str, Any]]:
    """Requests over every input the policies read: allowed, denied by each rule, no match,
    no token (401), a bad token (identity deny), a non-canonical path (400)."""
    good = {"groups": ["readers", "x"], "org": {"team": "blue", "secret": "org-secret-value"}}
    tokens = {
        "none": None,
        "good": token(**good),
        "other-groups": token(groups="writers", org={"team": "red"}),
        "banned": token(role="banned", **good),
        "no-claims": token(),
        "other-user": token(sub="user-2", **good),
    }
    out = []
    for (tok_name, tok), path, tenant, debug, sni, ctx, via in itertools.product(
        tokens.items(),
        ["/api/items", "/team/x", "/other"],
        [None, "acme", "evil"],
        [None, "off", "on"],
        ["", "api.shop.svc"],
        [{"app": "api"}, {"app": "web"}],
        ["authorization", "x-jwt"],
    ):
        headers = {}
        if tok is not None:
            if via == "authorization":
                headers["authorization"] = f"Bearer {tok}"
            else:
                headers["x-jwt"] = f"Token {tok}"
        elif via == "x-jwt":
            continue
        if tenant is not None:
            headers["x-tenant"] = tenant
        if debug is not None:
            headers["x-debug"] = debug
        out.append(
            {"path": path, "headers": headers, "sni": sni, "context_extensions": ctx, "name": tok_name}
        )
    out.append({"path": "/api/items", "headers": {"authorization": "Bearer not.a.token"}})
    out.append({"path": "/api//items", "headers": {}})
    out.append({"path": "/team/x", "principal": "spiffe://example.org/ns/shop/sa/frontend",
                "source_address": "192.168.0.1", "headers": {}})
    return out


def test_deciding_again_from_the_recorded_input_gives_the_same_decision() -> None:
    rig = Rig()
    sent = requests()
    for kw in sent:
        kw = {k: v for k, v in kw.items() if k != "name"}
        rig.run(**kw)
        rig.run(**kw)  # and once more: a cache hit records the cached decision's input
    records = rig.records()
    assert len(records) == 2 * len(sent)
    assert "org-secret-value" not in json.dumps(records)  # a claim no policy reads
    assert all(r["input"]["headers"].get("authorization", "-") == "-" for r in records)
    outcomes: dict[str, int] = {}
    for record in records:
        again = decide_input(rig.engine, record["input"])
        if record["reason"] in ("invalid_token", "invalid_request"):
            assert again is None and record["input"]["identity"] is None, record
            continue
        assert again is not None, record
        got = (again.allowed, again.status, again.reason, again.policy, again.rule)
        assert got == (
            record["allowed"], record["status"], record["reason"], record["policy"], record["rule"]
        ), record
        outcomes[record["reason"]] = outcomes.get(record["reason"], 0) + 1
    # The set covers every outcome the policies can give.
    assert set(outcomes) == {"allowed", "denied_by_policy", "no_matching_policy", "authentication_required"}
    assert {r["policy"] for r in records if r["allowed"]} == {"shop/readers"}
    assert {r["rule"] for r in records if r["allowed"]} == {0, 1}


def test_the_input_holds_what_the_policies_read_and_absent_is_not_empty() -> None:
    rig = Rig()
    rig.run(path="/api/items", headers={"authorization": f"Bearer {token(groups=['readers'])}",
                                        "x-tenant": "acme", "x-other": "unread"},
            context_extensions={"app": "api"}, sni="api.shop.svc", request_id="r1")
    [record] = rig.records()
    inp = record["input"]
    assert record["allowed"] is True
    # The headers a policy reads (hosts read the authority as sent); null: absent, not empty.
    # Every `_`/`-` spelling of a header name a policy reads is read (and recorded) too.
    assert inp["headers"] == {":authority": "api.shop.svc", "host": None, "x-tenant": "acme", "x-debug": None,
                              "x_tenant": None, "x_debug": None}
    assert inp["source"] == {"principal": "spiffe://example.org/ns/shop/sa/frontend", "address": "10.0.0.5"}
    assert inp["destination"] == {
        "principal": "spiffe://example.org/ns/shop/sa/api", "address": "10.0.0.9", "port": 8443
    }
    assert (inp["method"], inp["host"], inp["path"]) == ("GET", "api.shop.svc", "/api/items")
    assert inp["sni"] == "api.shop.svc"
    assert inp["context_extensions"] == {"app": "api"}
    ident = inp["identity"]
    assert ident["principal"] == "example.org/ns/shop/sa/frontend"
    assert ident["request_principal"] == f"{ISSUER}/user-1"
    # Only the claim paths policies read (requestPrincipals read iss and sub; groups, org.team,
    # role: absent in this token, null), never another claim.
    assert ident["token"] == {
        "iss": ISSUER, "sub": "user-1",
        "claims": {"iss": ISSUER, "sub": "user-1", "groups": ["readers"], "org": None, "role": None},
    }
    assert "token" in inp["unrecorded"]  # the token itself: validated claims only


def test_never_a_token_even_when_a_policy_reads_its_header() -> None:
    reads_tokens = POLICIES + """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-basic, namespace: istio-system}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[authorization]", values: ["Basic *"]}]
  - when: [{key: "request.headers[x-jwt]", values: ["Basic *"]}]
  - when: [{key: "request.headers[cookie]", values: ["s=admin*"]}]
"""
    rig = Rig(reads_tokens)
    tok = token(groups=["readers"])
    rig.run(headers={"authorization": f"Bearer {tok}", "x-jwt": f"Token {tok}", "cookie": "s=secret-cookie",
                     "x-tenant": "acme"}, context_extensions={"app": "api"})
    [record] = rig.records()
    text = json.dumps(record)
    assert tok not in text and tok.split(".")[2] not in text and "secret-cookie" not in text
    unrecorded = record["input"]["unrecorded"]
    for name in ("authorization", "x-jwt", "cookie"):
        assert unrecorded[f"request.headers[{name}]"].startswith("secret")
    # A policy set that reads a token header cannot be decided again from the record.
    assert decide_input(rig.engine, record["input"]) is None
    assert "request.headers[authorization]" in missing_inputs(record["input"], rig.engine.reads)


def test_audit_input_exclude_removes_headers_and_claims() -> None:
    rig = Rig(exclude=("x-tenant", "request.auth.claims[org][team]", "groups"))
    good = token(groups=["readers"], org={"team": "blue"}, role="user")
    rig.run(headers={"authorization": f"Bearer {good}", "x-tenant": "acme"},
            context_extensions={"app": "api"})
    [record] = rig.records()
    inp = record["input"]
    assert record["allowed"] is True
    assert "x-tenant" not in inp["headers"] and "acme" not in json.dumps(inp)
    assert "x_tenant" not in inp["headers"]  # the other spelling is excluded with the name
    # org.team and groups excluded; org.secret never read
    assert inp["identity"]["token"]["claims"] == {"iss": ISSUER, "sub": "user-1", "role": "user"}
    assert {k: v for k, v in inp["unrecorded"].items() if v.startswith("excluded")} == {
        "request.headers[x-tenant]": "excluded by audit_input_exclude",
        "request.headers[x_tenant]": "excluded by audit_input_exclude",
        "request.auth.claims[groups]": "excluded by audit_input_exclude",
        "request.auth.claims[org][team]": "excluded by audit_input_exclude",
    }
    assert decide_input(rig.engine, inp) is None  # unknown inputs are never guessed
    assert set(missing_inputs(inp, rig.engine.reads)) == {
        "request.headers[x-tenant]", "request.headers[x_tenant]", "request.auth.claims[groups]",
        "request.auth.claims[org][team]",
    }


def test_a_policy_reading_an_unrecorded_input_cannot_be_decided_again() -> None:
    rig = Rig()
    rig.run(headers={"x-tenant": "acme"}, context_extensions={"app": "api"})
    [record] = rig.records()
    edited = compile_policies(load_text(POLICIES.replace("x-tenant", "x-customer")))
    assert sorted(missing_inputs(record["input"], edited.reads)) == [
        "request.headers[x-customer]", "request.headers[x_customer]"
    ]
    assert decide_input(edited, record["input"]) is None
    req, identity, token_missing = input_of(record["input"])
    assert req.headers == {"x-tenant": "acme", ":authority": "api.shop.svc"}
    assert identity is not None and token_missing  # no token where a RequestAuthentication applied


@pytest.mark.parametrize("cache", [True, False])
def test_records_without_a_policy_decision_have_no_identity(cache: bool) -> None:
    rig = Rig(cache=cache)
    rig.run(path="/a/./b")
    rig.core.answer(b"\xff not a CheckRequest")
    bad_path, malformed = rig.records()
    assert bad_path["reason"] == "invalid_request" and bad_path["input"]["identity"] is None
    assert bad_path["input"]["path"] == "/a/./b"
    assert malformed["input"] is None


def test_claim_paths_share_a_tree_and_overlong_values_are_marked_not_cut() -> None:
    from extauthz.decision.inputs import InputPlan, record_input
    from extauthz.envoy.request import RequestView
    from extauthz.identity.model import Identity, Token

    plan = InputPlan((), (("a",), ("a", "b"), ("a", "c", "d"), ("big",), ("n",), ("s", "x")), {})
    tok = Token("iss", "sub", claims={
        "a": {"b": ["1", 2, "3"], "c": "scalar", "hidden": "h"}, "big": "x" * 5000, "n": 7, "s": "str",
    })
    inp = record_input(plan, RequestView(), Identity(token=tok))
    tree = inp["identity"]["token"]["claims"]
    assert tree == {"a": {"b": ["1", "3"], "c": "scalar"}, "n": 7, "s": "str"}
    assert inp["unrecorded"]["request.auth.claims[big]"] == "longer than the audit log keeps"
    _, identity, _ = input_of(inp)
    from extauthz.policy.attributes import claim_values

    assert identity is not None and identity.token is not None
    for path in plan.claims:
        if path != ("big",):
            assert claim_values(identity.token.claims, path) == claim_values(tok.claims, path), path


def test_audit_input_exclude_is_a_setting_of_the_service(tmp_path: Any) -> None:
    from helpers import write_policies

    from extauthz.policy.store import PolicyStore
    from extauthz.serving.service import Service
    from extauthz.settings import SettingsError, build_settings

    config = tmp_path / "extauthz.yaml"
    config.write_text("audit-input-exclude: 12\n")
    with pytest.raises(SettingsError, match="audit_input_exclude"):
        build_settings(str(config), {})
    policies = write_policies(tmp_path / "policies", {"p.yaml": AUTHZ})
    config.write_text(f"policies: {policies}\naudit_input_exclude: [X-Tenant]\n")
    settings = build_settings(str(config), {})
    store = PolicyStore(policies)
    store.load()
    audit = AuditLog.open(str(tmp_path / "audit.log"))
    service = Service(settings, store, audit)
    service.handle_check(check_request(headers={"x-tenant": "acme"}).SerializeToString(), None)
    audit.close()
    [record] = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert "x-tenant" not in record["input"]["headers"]
    assert record["input"]["unrecorded"]["request.headers[x-tenant]"].startswith("excluded")


def test_the_input_names_the_request_authentication_in_force() -> None:
    """``authn``: a fingerprint of the RequestAuthentication set (what replay compares to know
    whether a recorded token would still be accepted); AuthorizationPolicy edits leave it alone."""
    from extauthz.decision.inputs import authn_digest

    rig = Rig()
    rig.run(headers={"authorization": f"Bearer {token(groups=['readers'])}", "x-tenant": "acme"},
            context_extensions={"app": "api"})
    [record] = rig.records()
    digest = record["input"]["authn"]
    assert digest == authn_digest(rig.engine.policies) and digest.startswith("sha256:")
    same = load_text("\n# moved\n" + AUTHZ.replace("acme", "other") + "---\n" + RA)
    assert authn_digest(same) == digest
    for edit in ("api.shop", "user-1"):  # an audience, and (unrelated) the ALLOW text
        changed = load_text(POLICIES.replace(edit, edit + "x"))
        assert (authn_digest(changed) != digest) == (edit == "api.shop"), edit
    no_authn = load_text(AUTHZ)
    assert authn_digest(no_authn) != digest
