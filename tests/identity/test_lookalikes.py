"""Malformed and look-alike SPIFFE IDs never match a rule, whatever the pattern."""

from __future__ import annotations

import pytest

from extauthz.identity.resolver import IdentityContext
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: istio-system}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend", "example.org/ns/edge/*", "*"]}}]
    to: [{operation: {paths: ["/api/*"]}}]
"""

MALFORMED = [
    "spiffe://example.org/ns/shop/sa/frontend/",
    "spiffe://example.org/ns/shop/sa/../sa/frontend",
    "spiffe://example.org/ns/shop/sa/./frontend",
    "spiffe://example.org//ns/shop/sa/frontend",
    "spiffe://example.org/ns/shop/sa/front%65nd",
    "spiffe://EXAMPLE.org/ns/shop/sa/frontend",
    "spiffe://example.org:443/ns/shop/sa/frontend",
    "spiffe://evil@example.org/ns/shop/sa/frontend",
    "spiffe://example.org/ns/shop/sa/frontend?x=1",
    "spiffe://example.org/ns/shop/sa/frontend#x",
    "spiffe://example.org/ns/edge/sa/x\u200b",
    "spiffe://example.org/ns/shop/sa/fr\u043entend",  # Cyrillic o
    "https://example.org/ns/shop/sa/frontend",
    "example.org/ns/shop/sa/frontend",
    "spiffe://example.org/ns/shop/sa/frontend\x00",
    "spiffe://" + "a" * 300 + "/ns/edge/sa/x",
]


@pytest.fixture(scope="module")
def core() -> CheckCore:
    engine = compile_policies(load_text(POLICY))
    return CheckCore(lambda: engine, IdentityContext())


@pytest.mark.parametrize("principal", MALFORMED)
def test_malformed_principal_denied_even_against_wildcards(core: CheckCore, principal: str) -> None:
    _, record, decision = core.check(check_request(principal=principal).SerializeToString())
    assert not decision.allowed and decision.status == 403
    assert record["reason"] == "invalid_peer_identity"


def test_valid_principals_still_match(core: CheckCore) -> None:
    for p in ("spiffe://example.org/ns/shop/sa/frontend", "spiffe://example.org/ns/edge/sa/gw"):
        _, _, decision = core.check(check_request(principal=p).SerializeToString())
        assert decision.allowed, p
