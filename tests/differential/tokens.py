"""The differential test's JWTs: one RS256 key (generated per run) for the test issuer, its JWKS
(inline on both sides: Envoy's ``local_jwks``, the RequestAuthentication's ``jwks``), and the
tokens the requests carry, by name (a request names its token; the token is minted once).

Tokens: matching and non-matching principals, string and list ``aud``, ``azp``, list-valued and
string-valued claims, nested claims (``org.team``, a string or a list), a ``sub`` with a ``/`` in
it, and tokens that fail verification (a foreign signature, expired, an unknown issuer).
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ISS = "https://auth.example"
OTHER_ISS = "https://other.example"
KID = "diff-1"


@functools.cache
def _key(which: str) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def jwks() -> str:
    """The issuer's JWKS (the public half of the test key) as a JSON string."""
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(_key("issuer").public_key()))
    public.update(kid=KID, alg="RS256", use="sig")
    return json.dumps({"keys": [public]})


_CLAIMS: dict[str, dict[str, Any]] = {
    "alice": {"sub": "alice", "aud": "api.shop", "azp": "frontend-app",
              "groups": ["admin", "dev"], "org": {"team": "payments"}, "role": "admin"},
    "bob": {"sub": "bob", "aud": ["web.shop", "api.other"], "azp": "backend",
            "groups": ["dev"], "org": {"team": "search"}, "role": "user"},
    "literal": {"sub": "al*ce", "aud": ["api.shop"], "groups": "admin",
                "org": {"team": ["ops", "payments"]}},
    "bare": {"sub": "dave"},
    "slashed": {"sub": "svc/worker", "azp": "backend", "groups": ["admin"]},
}
# verification fails: both sides deny (Envoy's jwt_authn 401 before RBAC, extauthz 401)
INVALID = ("badsig", "expired", "other_iss")
NAMES = (*_CLAIMS, *INVALID)


@functools.cache
def token(name: str) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISS, "iat": now, "exp": now + 3600}
    key = _key("issuer")
    if name in _CLAIMS:
        claims.update(_CLAIMS[name])
    elif name == "badsig":
        claims.update(_CLAIMS["alice"])
        key = _key("someone else")
    elif name == "expired":
        claims.update(_CLAIMS["alice"], iat=now - 7200, exp=now - 3600)
    elif name == "other_iss":
        claims.update(_CLAIMS["alice"], iss=OTHER_ISS)
    else:
        raise KeyError(name)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})


def request_authentication() -> dict[str, Any]:
    """The RequestAuthentication extauthz gets beside a policy that reads tokens."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "diff-jwt", "namespace": "istio-system"},
        "spec": {"jwtRules": [{"issuer": ISS, "jwks": jwks()}]},
    }
