"""JWT-SVIDs: a jwtRule whose issuer is a trust domain ID takes its keys from that bundle."""

from __future__ import annotations

import json
import time
from typing import Any

from helpers.identity import EC_KEY, RSA_KEY, bearer, jwk, mint, resign, resolve, resolver

from extauthz.identity.bundles import BundleSet, TrustBundle
from extauthz.identity.keys import KeySet, parse_key

RULE = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: svid, namespace: istio-system}
spec:
  jwtRules:
  - issuer: spiffe://example.org
    audiences: [api.shop]
"""
SUB = "spiffe://example.org/ns/shop/sa/frontend"


def _bundles(*keys: dict[str, Any]) -> BundleSet:
    ks = KeySet.of([k for k in (parse_key({**j, "use": "jwt-svid"}, use="jwt-svid") for j in keys) if k], 7)
    return BundleSet({"example.org": TrustBundle.make("example.org", (), ks)}, 1)


def _svid(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {"sub": SUB, "aud": ["api.shop"], "exp": now + 300, "iat": now}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


BUNDLES = _bundles(jwk(EC_KEY, "e1"), jwk(RSA_KEY, "r1"))


def test_valid_jwt_svid() -> None:
    for key, alg, kid in ((EC_KEY, "ES256", "e1"), (RSA_KEY, "RS256", "r1"), (RSA_KEY, "PS256", "r1")):
        res = resolve(resolver(RULE, BUNDLES), headers=bearer(mint(_svid(), key=key, alg=alg, kid=kid)))
        assert res.identity.token is not None, (alg, res)
        assert res.identity.token.subject == SUB
        assert res.identity.request_principal == f"spiffe://example.org/{SUB}"


def test_jwt_svid_rules() -> None:
    r = resolver(RULE, BUNDLES)
    cases = {
        "no aud": mint(_svid(aud=None), key=EC_KEY, alg="ES256", kid="e1"),
        "wrong aud": mint(_svid(aud="other"), key=EC_KEY, alg="ES256", kid="e1"),
        "no exp": mint(_svid(exp=None), key=EC_KEY, alg="ES256", kid="e1"),
        "no kid": mint(_svid(), key=EC_KEY, alg="ES256", kid=None),
        "extra header": mint(_svid(), key=EC_KEY, alg="ES256", kid="e1", headers={"cty": "x"}),
        "typ": mint(_svid(), key=EC_KEY, alg="ES256", kid="e1", headers={"typ": "at+jwt"}),
        "other domain": mint(_svid(sub="spiffe://other.org/x"), key=EC_KEY, alg="ES256", kid="e1"),
        "bad sub": mint(_svid(sub="spiffe://example.org/../x"), key=EC_KEY, alg="ES256", kid="e1"),
        "unknown kid": mint(_svid(), key=EC_KEY, alg="ES256", kid="zz"),
    }
    for name, token in cases.items():
        res = resolve(r, headers=bearer(token))
        assert res.status == 401, name


def test_jwt_svid_without_bundle_rejected() -> None:
    token = mint(_svid(), key=EC_KEY, alg="ES256", kid="e1")
    assert resolve(resolver(RULE, BundleSet()), headers=bearer(token)).status == 401


def test_jwt_svid_header_must_be_minimal() -> None:
    header = json.dumps({"alg": "RS256", "kid": "r1", "typ": "JWT", "x5t": "abc"})
    res = resolve(resolver(RULE, BUNDLES), headers=bearer(resign(header, json.dumps(_svid()))))
    assert res.status == 401 and "header" in (res.error or "")
