"""The cache key reads every place the identity resolver takes a token from, as the resolver
spells it (review findings: a cached allow must never answer a request with another token)."""

from __future__ import annotations

import json

from helpers.identity import ISSUER, RSA_KEY, jwk, mint

from extauthz.decision.cache import DecisionCache
from extauthz.identity.generation import Generation
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request


def _policy(header_name: str) -> str:
    jwks = json.dumps({"keys": [jwk(RSA_KEY, "k1")]})
    return f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: tokens, namespace: shop}}
spec:
  jwtRules:
  - issuer: "{ISSUER}"
    jwks: '{jwks}'
    fromHeaders: [{{name: "{header_name}"}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: users, namespace: shop}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/user-1"]}}}}]
"""


def _core(header_name: str) -> CheckCore:
    engine = compile_policies(load_text(_policy(header_name)), 1)
    cache = DecisionCache(100, 60.0, bundle_generation=Generation())
    return CheckCore(lambda: engine, cache=cache)


def test_token_header_named_with_spaces_and_capitals_is_in_the_key() -> None:
    # The resolver trims and lower-cases fromHeaders names (" X-Token " reads x-token); the key
    # must read the same header, or the allow cached for one token answers the next request.
    core = _core(" X-Token ")
    token = mint()
    first = core.check(check_request(headers={"x-token": token}).SerializeToString())[2]
    assert first.allowed and first.cache == "miss"
    for headers in ({}, {"x-token": "not-a-token"}):
        d = core.check(check_request(headers=headers).SerializeToString())[2]
        assert not d.allowed, (headers, d.cache)
        assert d.cache == "miss"
