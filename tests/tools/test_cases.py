# ruff: noqa: E501
"""``extauthz test DIR CASES.yaml``: fixtures with expected decisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.policy import HEADER

from extauthz.cli import main

POLICIES = f"""{HEADER}metadata: {{name: deny-admin, namespace: istio-system}}
spec: {{action: DENY, rules: [{{to: [{{operation: {{paths: ['/admin/*']}}}}]}}]}}
---
{HEADER}metadata: {{name: api, namespace: shop}}
spec:
  rules:
  - from: [{{source: {{principals: [example.org/ns/shop/sa/frontend]}}}}]
    to: [{{operation: {{methods: [GET], paths: ['/api/*']}}}}]
  - from: [{{source: {{requestPrincipals: [https://idp.example/*]}}}}]
    to: [{{operation: {{paths: [/me]}}}}]
    when: [{{key: 'request.auth.claims[groups]', values: [staff]}}]
"""

CASES = """
defaults:
  context_extensions: {namespace: shop}
  source: {principal: spiffe://example.org/ns/shop/sa/frontend}
cases:
- name: frontend reads
  request: {method: GET, path: '/api/items?page=2'}
  expect: allow
- name: admin denied
  request: {path: /admin/x}
  expect: {allowed: false, status: 403, policy: istio-system/deny-admin, reason: denied_by_policy}
- name: staff token
  request: {path: /me, source: {principal: ''}, token: {iss: 'https://idp.example', sub: bob, groups: [staff]}}
  expect: {allowed: true, policy: shop/api, rule: 1}
- name: non-staff token
  request: {path: /me, token: {iss: 'https://idp.example', sub: eve, groups: [guest]}}
  expect: deny
- name: non-canonical path
  request: {path: /api/../admin/x}
  expect: {allowed: false, status: 400}
"""


def setup(tmp_path: Path, cases: str = CASES) -> tuple[str, str]:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "p.yaml").write_text(POLICIES)
    (tmp_path / "cases.yaml").write_text(cases)
    return str(tmp_path / "p"), str(tmp_path / "cases.yaml")


def test_all_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d, c = setup(tmp_path)
    assert main(["test", d, c]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 5 and "5 passed, 0 failed" in out


def test_failure_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d, c = setup(tmp_path, CASES.replace("expect: {allowed: true, policy: shop/api, rule: 1}", "expect: {allowed: true, rule: 0}"))
    assert main(["test", "--format", "json", d, c]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["failed"] == 1
    [bad] = [r for r in out["results"] if not r["passed"]]
    assert bad["name"] == "staff token" and bad["mismatches"] == ["rule: expected 0, got 1"]


@pytest.mark.parametrize(
    "cases",
    [
        "cases: [{name: x, request: {pth: /}, expect: allow}]",
        "cases: [{name: x, expect: maybe}]",
        "cases: [{name: x, expect: allow, extra: 1}]",
        "tests: []",
        "cases: [{request: {source: {principal: a, ip: b}}, expect: deny}]",
    ],
)
def test_bad_cases_file_is_usage_error(tmp_path: Path, cases: str, capsys: pytest.CaptureFixture[str]) -> None:
    d, c = setup(tmp_path, cases)
    assert main(["test", d, c]) == 2
    assert "extauthz test:" in capsys.readouterr().err


def test_shipped_example_cases_pass(capsys: pytest.CaptureFixture[str]) -> None:
    repo = Path(__file__).resolve().parents[2]
    rc = main(["test", str(repo / "policies"), str(repo / "examples" / "policy-cases.yaml")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "8 passed, 0 failed" in out
