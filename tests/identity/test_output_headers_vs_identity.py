"""Token outputs never overwrite a configured identity header (review finding): a claim copied
to a header named like an identity header would otherwise reach the upstream as the identity,
since Envoy applies the OVERWRITE options in order and the token outputs came last."""

from __future__ import annotations

import json

import pytest
from helpers.identity import ISSUER, RSA_KEY, bearer, claims, jwk, mint

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.identity.headers import IdentityHeaders
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request

FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"
FORGED = "spiffe://example.org/ns/shop/sa/admin"


def _core() -> CheckCore:
    jwks = json.dumps({"keys": [jwk(RSA_KEY, "k1")]})
    text = f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: tokens, namespace: shop}}
spec:
  jwtRules:
  - issuer: "{ISSUER}"
    jwks: '{jwks}'
    outputClaimToHeaders: [{{header: x-peer, claim: who}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: users, namespace: shop}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/user-1"]}}}}]
"""
    engine = compile_policies(load_text(text), 1)
    return CheckCore(lambda: engine, identity_headers=IdentityHeaders.from_mapping({"x-peer": "peer"}))


@pytest.mark.parametrize("principal", [FRONTEND, ""])
def test_claim_output_cannot_overwrite_or_stand_in_for_an_identity_header(principal: str) -> None:
    token = mint(claims(who=FORGED))
    body = _core().answer(check_request(principal=principal, headers=bearer(token)).SerializeToString())
    resp = ext.CheckResponse.FromString(body)
    assert resp.status.code == 0
    values = [o.header.value for o in resp.ok_response.headers if o.header.key == "x-peer"]
    assert FORGED not in values
    assert values == ([FRONTEND] if principal else [])
    if not principal:  # no peer: the client's or the token's copy must not reach the upstream
        assert "x-peer" in resp.ok_response.headers_to_remove
