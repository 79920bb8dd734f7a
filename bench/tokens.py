"""RS256 tokens and a policy directory that verifies them (the token rows of ``grpc``).

``token_policies(dest)`` copies ``policies/`` to ``dest`` and adds a RequestAuthentication with an
inline JWKS (one RS256 key, 2048 bits) for namespace ``shop`` and an AuthorizationPolicy that
allows ``GET /tok/*`` to a token of ``ISSUER``: the service verifies every token it is sent (its
verified-token cache skips the signature check for a token seen before).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

ISSUER = "https://issuer.example"
TOKEN_PATH = "/tok/items"

_POLICY = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: bench-jwt, namespace: shop}}
spec:
  jwtRules:
  - issuer: {issuer}
    jwks: '{jwks}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: bench-tokens, namespace: shop}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{issuer}/*"]}}}}]
    to: [{{operation: {{methods: ["GET"], paths: ["/tok/*"]}}}}]
"""


class Signer:
    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.now = int(time.time())

    def jwks(self) -> str:
        from jwt.algorithms import RSAAlgorithm

        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]})

    def token(self, i: int) -> str:
        """The ``i``-th token: every one of the same length, valid for an hour."""
        import jwt

        claims = {"iss": ISSUER, "sub": f"user-{i % 1000:04d}", "aud": "api.shop.svc",
                  "iat": self.now, "exp": self.now + 3600, "jti": f"t{i:010d}"}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})

    def tokens(self, n: int, start: int = 0) -> list[str]:
        return [self.token(start + i) for i in range(n)]


def token_policies(dest: Path, signer: Signer, source: Path = Path("policies")) -> Path:
    shutil.copytree(source, dest, dirs_exist_ok=True)
    (dest / "90-bench-tokens.yaml").write_text(_POLICY.format(issuer=ISSUER, jwks=signer.jwks()))
    return dest
