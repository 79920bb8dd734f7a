# ruff: noqa: E501  (table-driven: one case per line reads best)
"""Every field and value form Istio's current API accepts loads, and matches as Istio + Envoy do
(issue 12): serviceAccounts / trustDomains (and their ``not`` forms), ``{**}`` followed by
literal segments, a path without a leading '/', a ``*`` in the middle of a value, a principal
written with ``spiffe://``.
"""

from __future__ import annotations

import pytest
from helpers.policy import HEADER, engine, evaluate

from extauthz.policy import load_text


def policy(rule: str, *, namespace: str = "shop", action: str = "ALLOW") -> str:
    return (
        f"{HEADER}metadata: {{name: p, namespace: {namespace}}}\n"
        f"spec:\n  action: {action}\n  rules:\n  - {rule}\n"
    )


def allowed(rule: str, namespace: str = "shop", **req: object) -> bool:
    req.setdefault("context_extensions", {"namespace": "shop"})
    return evaluate(engine(policy(rule, namespace=namespace)), **req).allowed


FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"


@pytest.mark.parametrize(
    ("rule", "principal", "expected"),
    [
        ("from: [{source: {serviceAccounts: [frontend]}}]", FRONTEND, True),
        ("from: [{source: {serviceAccounts: [shop/frontend]}}]", FRONTEND, True),
        ("from: [{source: {serviceAccounts: [shop/frontend]}}]", "spiffe://other.td/ns/shop/sa/frontend", True),
        ("from: [{source: {serviceAccounts: [frontend]}}]", "spiffe://example.org/ns/bank/sa/frontend", False),
        ("from: [{source: {serviceAccounts: [shop/front]}}]", FRONTEND, False),
        ("from: [{source: {serviceAccounts: [shop/frontend]}}]", "spiffe://example.org/x/ns/shop/sa/frontend", False),
        ("from: [{source: {serviceAccounts: [shop/frontend]}}]", "", False),
        ("from: [{source: {notServiceAccounts: [frontend]}}]", FRONTEND, False),
        ("from: [{source: {notServiceAccounts: [frontend]}}]", "spiffe://example.org/ns/shop/sa/api", True),
        ("from: [{source: {trustDomains: [example.org]}}]", FRONTEND, True),
        ("from: [{source: {trustDomains: [other.org]}}]", FRONTEND, False),
        ("from: [{source: {trustDomains: ['*.org']}}]", FRONTEND, True),
        ("from: [{source: {trustDomains: ['example.*']}}]", FRONTEND, True),
        ("from: [{source: {trustDomains: ['ex*.org']}}]", FRONTEND, True),
        ("from: [{source: {trustDomains: ['*']}}]", FRONTEND, True),
        ("from: [{source: {trustDomains: ['*']}}]", "", False),
        # a '*' never crosses '/': '*shop' must not reach into the path
        ("from: [{source: {trustDomains: ['*shop']}}]", "spiffe://example.org/ns/shop", False),
        ("from: [{source: {notTrustDomains: [example.org]}}]", FRONTEND, False),
        ("from: [{source: {notTrustDomains: [other.org]}}]", FRONTEND, True),
        # written with the scheme: loads, never matches (Istio prefixes spiffe:// again)
        ("from: [{source: {principals: ['spiffe://example.org/ns/shop/sa/frontend']}}]", FRONTEND, False),
        ("from: [{source: {principals: ['spiffe://*']}}]", FRONTEND, False),
        # a '*' in the middle is literal
        ("from: [{source: {principals: ['example.org/ns/*/sa/frontend']}}]", FRONTEND, False),
    ],
)
def test_source_forms(rule: str, principal: str, expected: bool) -> None:
    assert allowed(rule, principal=principal) is expected


def test_bare_service_account_needs_a_namespace() -> None:
    with pytest.raises(Exception, match="names no namespace"):
        load_text(policy("from: [{source: {serviceAccounts: [frontend]}}]", namespace="''"))


def test_service_account_resolved_at_load() -> None:
    ps = load_text(policy("from: [{source: {serviceAccounts: [frontend, bank/teller]}}]"))
    assert ps.authorization[0].rules[0].sources[0].service_accounts == ("shop/frontend", "bank/teller")


@pytest.mark.parametrize(
    ("paths", "path", "expected"),
    [
        # Envoy's '**' is zero or more characters, '/' included; literal segments may follow it
        ("['/{**}/path/template']", "/a/b/path/template", True),
        ("['/{**}/path/template']", "/a/path/template", True),
        ("['/{**}/path/template']", "/path/template", False),
        ("['/{**}/path/template']", "/a/path/template/x", False),
        ("['/admin/{**}']", "/admin/", True),
        ("['/admin/{**}']", "/admin/a/b", True),
        ("['/admin/{**}']", "/admin", False),
        ("['/{**}']", "/", True),
        ("['/a/{*}/c']", "/a/b/c", True),
        ("['/a/{*}/c']", "/a/b/x/c", False),
        ("['/a/{*}']", "/a/", False),
        # a '*' in the path is a pchar like any other to Envoy 1.40's globs (tests/differential)
        ("['/a/{*}']", "/a/*", True),
        ("['/a/{**}']", "/a/x*", True),
        # without a leading '/': loads, never matches
        ("['rule-path']", "/rule-path", False),
        # a '*' in the middle: literal
        ("['/a*b']", "/a*b", True),
        ("['/a*b']", "/axb", False),
        ("['*/a*']", "/x/a*", True),
        ("['*/a*']", "/x/ab", False),
    ],
)
def test_path_forms(paths: str, path: str, expected: bool) -> None:
    assert allowed(f"to: [{{operation: {{paths: {paths}}}}}]", path=path) is expected


@pytest.mark.parametrize(
    ("namespaces", "principal", "expected"),
    [
        # Istio's regex on the principal: '.*/ns/NS/.*', each '*' of a value as '.*'
        ("[shop]", FRONTEND, True),
        ("[sho]", FRONTEND, False),
        ("['sh*']", FRONTEND, True),
        ("['*op']", FRONTEND, True),
        ("['s*p']", FRONTEND, True),
        ("['*']", FRONTEND, True),
        ("['*']", "spiffe://example.org/sa/frontend", False),
        # Istio's '.*' crosses '/': '*op' also finds 'ns/x/sa/shop/...'
        ("['*op']", "spiffe://example.org/ns/x/sa/shop/y", True),
    ],
)
def test_namespace_forms(namespaces: str, principal: str, expected: bool) -> None:
    assert allowed(f"from: [{{source: {{namespaces: {namespaces}}}}}]", principal=principal) is expected
    cond = f"when: [{{key: source.namespace, values: {namespaces}}}]"
    assert allowed(cond, principal=principal) is expected
