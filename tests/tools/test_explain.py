"""``extauthz check`` explains: the deciding policy and rule, the first failed condition, the trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from helpers.policy import HEADER, engine, identity, request

from extauthz.cli import main
from extauthz.tools.explain import explain
from extauthz.tools.samples import check_request

POLICIES = f"""{HEADER}metadata: {{name: deny-admin, namespace: istio-system}}
spec: {{action: DENY, rules: [{{to: [{{operation: {{paths: ['/admin/*']}}}}]}}]}}
---
{HEADER}metadata: {{name: health, namespace: istio-system}}
spec: {{rules: [{{to: [{{operation: {{methods: [GET], paths: [/healthz]}}}}]}}]}}
---
{HEADER}metadata: {{name: api, namespace: shop}}
spec:
  rules:
  - from: [{{source: {{principals: [example.org/ns/shop/sa/frontend]}}}}]
    to: [{{operation: {{methods: [GET], paths: ['/api/*']}}}}]
    when: [{{key: 'request.headers[x-tenant]', values: [acme]}}]
"""
SHOP = {"context_extensions": {"namespace": "shop"}}


def _explain(**kw: object) -> object:
    req = request(**{**SHOP, **kw})  # type: ignore[arg-type]
    return explain(engine(POLICIES), req, identity(req.source.principal))


def test_allowed_names_policy_and_rule() -> None:
    e = _explain(headers={"x-tenant": "acme"})
    assert e.verdict.allowed and "allowed by shop/api rules[0]" in e.summary  # type: ignore[attr-defined]


def test_deny_policy_named() -> None:
    e = _explain(path="/admin/x")
    assert e.summary == "denied by DENY policy istio-system/deny-admin rules[0]"  # type: ignore[attr-defined]
    first = e.trace[0]  # type: ignore[attr-defined]
    assert (first.policy, first.matched, first.failed) == ("istio-system/deny-admin", True, None)


@pytest.mark.parametrize(
    ("kw", "failed"),
    [
        ({"principal": "spiffe://example.org/ns/shop/sa/other", "headers": {"x-tenant": "acme"}},
         "shop/api rules[0].from[0].source.principals"),
        ({"method": "POST", "headers": {"x-tenant": "acme"}}, "shop/api rules[0].to[0].operation.methods"),
        ({"path": "/web", "headers": {"x-tenant": "acme"}}, "shop/api rules[0].to[0].operation.paths"),
        ({"path": "/web"}, "istio-system/health rules[0].to[0].operation.paths"),  # a tie: load order
        ({}, "shop/api rules[0].when[0](request.headers[x-tenant]).values"),
    ],
)
def test_no_match_reports_first_failed_condition_of_closest_rule(kw: dict[str, object], failed: str) -> None:
    e = _explain(**kw)
    assert not e.verdict.allowed and e.verdict.policy is None  # type: ignore[attr-defined]
    assert e.failed == failed  # type: ignore[attr-defined]


def test_no_allow_policy_in_scope() -> None:
    eng = engine(f"{HEADER}metadata: {{name: a, namespace: bank}}\nspec: {{rules: [{{}}]}}\n")
    req = request(**SHOP)
    e = explain(eng, req, identity(req.source.principal))
    assert "no ALLOW policy applies" in e.summary and e.failed is None


def test_explain_agrees_with_engine_on_many_requests() -> None:
    eng = engine(POLICIES)
    for path in ("/admin/x", "/healthz", "/api/a", "/web"):
        for method in ("GET", "POST"):
            for tenant in ("acme", "other"):
                req = request(path=path, method=method, headers={"x-tenant": tenant}, **SHOP)
                ident = identity(req.source.principal)
                e = explain(eng, req, ident)
                matched = [t for t in e.trace if t.matched and not t.dry_run and t.action != "AUDIT"]
                if e.verdict.policy is None:
                    assert not matched
                else:
                    assert (matched[0].policy, matched[0].rule) == (e.verdict.policy, e.verdict.rule)


def _write(tmp_path: Path, **kw: object) -> Path:
    pdir = tmp_path / "p"
    pdir.mkdir(exist_ok=True)
    (pdir / "p.yaml").write_text(POLICIES)
    req = tmp_path / "req.json"
    req.write_text(json_format.MessageToJson(check_request(**{**SHOP, **kw})))  # type: ignore[arg-type]
    return req


def test_cli_check_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    req = _write(tmp_path, method="POST", headers={"x-tenant": "acme"})
    assert main(["check", "--policies", str(tmp_path / "p"), "--explain", str(req)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["allowed"] is False and out["status"] == 403 and out["policy"] is None
    assert out["failed"] == "shop/api rules[0].to[0].operation.methods"
    assert [(t["policy"], t["matched"]) for t in out["trace"]] == [
        ("istio-system/deny-admin", False), ("istio-system/health", False), ("shop/api", False)
    ]
    assert out["trace"][2]["where"].endswith("p.yaml:16")


def test_cli_check_allowed_without_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    req = _write(tmp_path, headers={"x-tenant": "acme"})
    assert main(["check", "--policies", str(tmp_path / "p"), str(req)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["allowed"] and out["policy"] == "shop/api" and out["rule"] == 0 and "trace" not in out


def test_cli_check_non_canonical_path_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    req = _write(tmp_path, path="/api/../admin/x")
    assert main(["check", "--policies", str(tmp_path / "p"), "--explain", str(req)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == 400 and "before policy evaluation" in out["explanation"]
