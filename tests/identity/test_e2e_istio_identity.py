"""Istio's identity semantics through the real Envoy: PeerAuthentication precedence (a plaintext
request where Istio requires mTLS), 401 only when a token could help, and a token read from a
query parameter removed from the upstream URL.

Envoy's listener asks for a client certificate but does not require one, so a request without
one is the "plaintext" peer of Istio's PERMISSIVE mode: no verified peer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    DevPki,
    EchoServer,
    EnvoyProcess,
    ExtauthzProcess,
    HttpResult,
    envoy_binary,
    https_request,
    write_policies,
)
from helpers.identity import ISSUER, RSA_KEY, claims, jwk, jwks_json, mint

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(envoy_binary() is None, reason="envoy binary not installed"),
]

ISSUER_2 = "https://forwarding.example"
JWKS = json.dumps(jwks_json(jwk(RSA_KEY, "k1")))

POLICIES = f"""
# Namespace shop requires mTLS. Istio ignores the root-namespace resource with a selector and
# treats the one with an empty selector as mesh-wide (the lowest precedence): neither may
# weaken the namespace's STRICT.
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: shop, namespace: shop}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: api-plaintext, namespace: istio-system}}
spec: {{selector: {{matchLabels: {{app: api}}}}, mtls: {{mode: DISABLE}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: mesh, namespace: istio-system}}
spec: {{selector: {{}}, mtls: {{mode: PERMISSIVE}}}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    audiences: [api.shop]
    jwks: {JWKS}
    fromHeaders: [{{name: authorization, prefix: "Bearer "}}]
    fromParams: [token]
  - issuer: {ISSUER_2}
    jwks: {JWKS}
    fromParams: [keep]
    forwardOriginalToken: true
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow, namespace: shop}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
    to: [{{operation: {{paths: ["/jwt/*"]}}}}]
  - from: [{{source: {{principals: ["example.org/ns/shop/sa/frontend"]}}}}]
    to: [{{operation: {{paths: ["/api/*", "/secure/*"]}}}}]
---
# Istio's "require a JWT" pattern.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: shop}}
spec:
  action: DENY
  rules:
  - from: [{{source: {{notRequestPrincipals: ["*"]}}}}]
    to: [{{operation: {{paths: ["/secure/*"]}}}}]
"""


@dataclass
class Stack:
    pki: DevPki
    echo: EchoServer
    authz: ExtauthzProcess
    envoy: EnvoyProcess

    def request(self, who: str | None, path: str, headers: list[tuple[str, str]] | None = None) -> HttpResult:
        return https_request(
            self.envoy.listen_port,
            "GET",
            path,
            ca_file=self.pki.ca_file,
            client=self.pki.files[who] if who else None,
            headers=headers or [],
        )

    def audit(self, result: HttpResult, timeout: float = 10.0) -> dict[str, object]:
        decision_id = result.json()["decision_id"]
        deadline = time.monotonic() + timeout
        while True:
            for record in reversed(self.authz.audit_records()):
                if record.get("decision_id") == decision_id:
                    return record
            assert time.monotonic() < deadline, f"no audit record for {decision_id}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pki: DevPki, echo_server: EchoServer) -> Iterator[Stack]:
    base: Path = tmp_path_factory.mktemp("e2e-istio-identity")
    policies = write_policies(base / "policies", {"istio.yaml": POLICIES})
    authz = ExtauthzProcess(
        policies, base / "extauthz", extra_args=["--trust-bundle", f"example.org={pki.ca_file}"]
    ).start()
    try:
        envoy = EnvoyProcess(
            base / "envoy",
            upstream=echo_server.address,
            authz_endpoints=[authz.endpoint],
            tls=pki.envoy_tls(require_client_certificate=False),
            context_extensions={"namespace": "shop", "app": "api"},
            timeout_s=2.0,
        ).start()
    except BaseException:
        authz.stop()
        raise
    try:
        yield Stack(pki, echo_server, authz, envoy)
    finally:
        envoy.stop()
        authz.stop()


@pytest.fixture
def s(stack: Stack) -> Stack:
    stack.echo.clear()
    return stack


# ----------------------------------------------------------------------------- PeerAuthentication


def test_plaintext_request_denied_where_the_namespace_requires_mtls(s: Stack) -> None:
    # A valid token and a path its ALLOW covers: only the missing client certificate is wrong.
    r = s.request(None, "/jwt/x", [("authorization", f"Bearer {mint()}")])
    assert r.status == 403, r
    assert s.echo.requests == []
    assert s.audit(r)["reason"] == "peer_authentication_required"


def test_mtls_request_allowed(s: Stack) -> None:
    r = s.request("frontend", "/api/items")
    assert r.status == 200, r


# ----------------------------------------------------------------------------- 401 or 403


def test_no_token_where_no_token_helps_is_403(s: Stack) -> None:
    # The api workload: no ALLOW covers it on /api, and the token rule is on /jwt/*.
    r = s.request("api", "/api/items")
    assert r.status == 403, r
    assert "www-authenticate" not in r.headers
    assert s.audit(r)["reason"] == "no_matching_policy"


def test_no_token_where_a_token_would_allow_is_401(s: Stack) -> None:
    r = s.request("api", "/jwt/x")
    assert r.status == 401, r
    assert r.headers["www-authenticate"] == 'Bearer realm="extauthz"'
    assert s.audit(r)["reason"] == "authentication_required"


def test_require_jwt_deny_without_token_is_401(s: Stack) -> None:
    r = s.request("frontend", "/secure/x")
    assert r.status == 401, r
    assert r.headers["www-authenticate"] == 'Bearer realm="extauthz"'
    record = s.audit(r)
    assert record["reason"] == "authentication_required" and record["policy"] == "shop/require-jwt"
    assert s.echo.requests == []
    r = s.request("frontend", "/secure/x", [("authorization", f"Bearer {mint()}")])
    assert r.status == 200, r


# ----------------------------------------------------------------------------- query tokens


def test_query_token_is_removed_from_the_upstream_url(s: Stack) -> None:
    token = mint()
    r = s.request("api", f"/jwt/x?a=1&token={token}&b=2")
    assert r.status == 200, r
    [seen] = s.echo.requests
    assert token not in seen.path and "token=" not in seen.path
    assert seen.path.startswith("/jwt/x?") and "a=1" in seen.path and "b=2" in seen.path


def test_query_token_kept_with_forward_original_token(s: Stack) -> None:
    token = mint(claims(iss=ISSUER_2, aud=None))
    r = s.request("api", f"/jwt/x?keep={token}")
    assert r.status == 200, r
    [seen] = s.echo.requests
    assert f"keep={token}" in seen.path
