# ruff: noqa: E501  (table-driven: one case per line reads best)
"""Strict loading: anything unknown or unsupported names file, line, policy and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.policy import HEADER

from extauthz.policy import PolicyError, load_directory, load_text

META = "metadata: {name: p, namespace: shop}\n"


def ap(spec: str) -> str:
    return f"{HEADER}{META}spec:\n{spec}"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("  action: CUSTOM\n  provider: {name: x}\n", "CUSTOM is refused"),
        ("  action: LOG\n", "action 'LOG'"),
        ("  rules:\n  - from: [{source: {principal: [a]}}]\n", "unknown field 'principal'"),
        ("  rules:\n  - to: [{operation: {path: [/a]}}]\n", "unknown field 'path'"),
        ("  rules:\n  - when: [{key: request.time, values: [a]}]\n", "unknown key 'request.time'"),
        ("  rules:\n  - when: [{key: 'request.headers[]', values: [a]}]\n", "unknown key"),
        ("  rules:\n  - when: [{key: source.ip}]\n", "needs values or notValues"),
        ("  rules:\n  - when: [{key: source.ip, values: [not-an-ip]}]\n", "not an IP address"),
        ("  rules:\n  - when: [{key: destination.port, values: ['http']}]\n", "not a port"),
        ("  rules:\n  - from: []\n", "from must not be empty"),
        ("  rules:\n  - to: []\n", "to must not be empty"),
        ("  rules:\n  - from: [{}]\n", "from[].source must be set"),
        ("  rules:\n  - from: [{source: {}}]\n", "from[].source must not be empty"),
        ("  rules:\n  - to: [{operation: {}}]\n", "to[].operation must not be empty"),
        ("  rules:\n  - from: [{source: {ipBlocks: [10.0.0.0/33]}}]\n", "not an IP address or CIDR"),
        ("  rules:\n  - to: [{operation: {ports: ['0']}}]\n", "not a port number"),
        ("  rules:\n  - to: [{operation: {paths: ['/a/{**}/{*}']}}]\n", "last operator"),
        ("  rules:\n  - to: [{operation: {paths: ['/a/{**}/b*']}}]\n", "not a literal"),
        ("  rules:\n  - to: [{operation: {paths: ['/a/{b}']}}]\n", "only allowed in"),
        ("  rules:\n  - from: [{source: {serviceAccount: [a]}}]\n", "unknown field 'serviceAccount'"),
        ("  rules:\n  - from: [{source: {trustDomain: [a]}}]\n", "unknown field 'trustDomain'"),
        ("  rules:\n  - to: [{operation: {paths: ['/a/b{*}']}}]\n", "whole segment"),
        ("  rules:\n  - to: [{operation: {methods: [GET, '']}}]\n", "non-empty string"),
        ("  targetRefs: [{kind: Gateway, name: g}]\n", "targetRef"),
        ("  selector: {labels: {a: b}}\n", "unknown field 'labels'"),
        ("  rules: {}\n", "expected a list"),
    ],
)
def test_refused(spec: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_text(ap(spec), "f.yaml")
    text = str(info.value)
    assert message in text, text
    assert text.startswith("f.yaml:"), text
    assert "AuthorizationPolicy shop/p" in text


def test_error_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(ap("  rules:\n  - to:\n    - operation:\n        methodz: [GET]\n"))
    with pytest.raises(PolicyError) as info:
        load_directory(tmp_path)
    assert f"{tmp_path / 'a.yaml'}:8:" in str(info.value)
    assert "methodz" in str(info.value)


@pytest.mark.parametrize(
    "doc",
    [
        "apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\n" + META,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n" + META,
        HEADER + "metadata: {name: p, annotations: {istio.io/dry-run: maybe}}\n",
        HEADER + META + "spec: {}\nextra: 1\n",
        HEADER + META + "spec: {}\n---\n" + HEADER + META + "spec: {}\n",  # duplicate
        HEADER + "metadata: {name: p, name: q}\n",  # duplicate key
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n" + META
        + "spec: {jwtRules: [{issuer: a, jwksURI: b}]}\n",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n" + META + "spec: {jwtRules: [{issuer: ''}]}\n",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n" + META
        + "spec: {jwtRules: [{issuer: a, jwksUri: u, jwks: k}]}\n",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n" + META
        + "spec: {jwtRules: [{issuer: a, fromHeaders: [{name: x, prefx: b}]}]}\n",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n" + META
        + "spec: {jwtRules: [{issuer: a, audiences: api}]}\n",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n" + META
        + "spec: {jwtRules: [{issuer: a, forwardOriginalToken: 'yes'}]}\n",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n" + META
        + "spec: {jwtRules: [{issuer: a, outputClaimToHeaders: [{header: x}]}]}\n",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n" + META
        + "spec: {selector: {matchLabels: {a: b}}, portLevelMtls: {http: {mode: STRICT}}}\n",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n" + META
        + "spec: {portLevelMtls: {'8080': {mode: STRICT}}}\n",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n" + META
        + "spec: {selector: {matchLabels: {}}, portLevelMtls: {'8080': {mode: STRICT}}}\n",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n" + META
        + "spec: {selector: {matchLabels: {a: b}}, portLevelMtls: {}}\n",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n" + META + "spec: {mtls: {mode: LAX}}\n",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n" + META + "spec: {mtls: {mod: STRICT}}\n",
    ],
)
def test_refused_documents(doc: str) -> None:
    with pytest.raises(PolicyError):
        load_text(doc)


def test_accepts_v1beta1_rules_null_and_list_kind() -> None:
    text = (
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n" + META + "spec:\n  rules:\n  -\n"
        "---\napiVersion: v1\nkind: List\nitems:\n- " + HEADER.replace("\n", "\n  ").rstrip()
        + "\n  metadata: {name: q, namespace: shop}\n  spec: {action: DENY}\n"
    )
    ps = load_text(text)
    assert [p.name for p in ps.authorization] == ["p", "q"]
    assert len(ps.authorization[0].rules) == 1


def test_unsupported_field_of_request_authentication_is_refused_and_known_ones_load() -> None:
    ok = (
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n" + META
        + "spec:\n  selector: {matchLabels: {app: api}}\n  jwtRules:\n  - issuer: https://i\n"
        "    jwksUri: https://i/jwks\n    audiences: [api]\n    fromHeaders: [{name: x-jwt, prefix: 'Bearer '}]\n"
    )
    assert load_text(ok).request_authentication[0].name == "p"


def test_port_level_mtls_with_numeric_port_keys() -> None:
    text = (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n" + META
        + "spec:\n  selector: {matchLabels: {app: api}}\n  mtls: {mode: STRICT}\n"
        "  portLevelMtls:\n    8080:\n      mode: DISABLE\n"
    )
    [pa] = load_text(text).peer_authentication
    assert pa.spec["portLevelMtls"]["8080"]["mode"] == "DISABLE"
