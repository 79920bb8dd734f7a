"""End to end through the real Envoy with real mTLS: peer re-verification, PeerAuthentication,
RequestAuthentication with a jwksUri on a loopback JWKS server, XFCC stripping."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    FRONTEND_ID,
    DevPki,
    EchoServer,
    EnvoyProcess,
    ExtauthzProcess,
    HttpResult,
    envoy_binary,
    https_request,
    write_policies,
)
from helpers.identity import ISSUER, RSA_KEY_2, JwksServer, claims, mint

from extauthz.devenv.ca import issue_svid, make_ca

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(envoy_binary() is None, reason="envoy binary not installed"),
]


def _policies(jwks_uri: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: frontend, namespace: shop}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["example.org/ns/shop/sa/frontend"]}}}}]
    to: [{{operation: {{paths: ["/api/*"]}}}}]
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/user-1"]}}}}]
    to: [{{operation: {{paths: ["/jwt/*"]}}}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    audiences: [api.shop]
    jwksUri: {jwks_uri}
    outputClaimToHeaders: [{{header: x-user, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: strict, namespace: istio-system}}
spec:
  mtls: {{mode: STRICT}}
"""


@dataclass
class Stack:
    pki: DevPki
    echo: EchoServer
    authz: ExtauthzProcess
    envoy: EnvoyProcess
    jwks: JwksServer
    last: HttpResult | None = None

    def audit(self, timeout: float = 5.0) -> dict[str, object]:
        """The audit record of the last request, found by its decision id (the deny body names
        it) or, for an allowed request, by Envoy's x-request-id (recorded as request_id). Records
        are written in batches, so "the newest line" could still be the previous request's."""
        assert self.last is not None
        if self.last.status == 200:
            key, value = "request_id", self.echo.requests[-1].header("x-request-id")
        else:
            key, value = "decision_id", self.last.json()["decision_id"]
        deadline = time.monotonic() + timeout
        while True:
            for record in reversed(self.authz.audit_records()):
                if record.get(key) == value:
                    return record
            assert time.monotonic() < deadline, f"no audit record with {key} {value}"
            time.sleep(0.05)

    def request(self, who: str, path: str, headers: list[tuple[str, str]] | None = None) -> HttpResult:
        self.last = https_request(
            self.envoy.listen_port,
            "GET",
            path,
            ca_file=self.pki.ca_file,
            client=self.pki.files[who],
            headers=headers or [],
        )
        return self.last


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pki: DevPki, echo_server: EchoServer) -> Iterator[Stack]:
    base: Path = tmp_path_factory.mktemp("e2e-identity")
    # Certificates Envoy accepts (they chain to its CA) but that are not valid SVIDs for extauthz.
    pki.add("two-uris", issue_svid(pki.ca, FRONTEND_ID, extra_uris=["spiffe://example.org/ns/shop/sa/admin"]))
    pki.add("other-domain", issue_svid(pki.ca, "spiffe://other.org/ns/shop/sa/frontend"))
    pki.add("third-domain", issue_svid(pki.ca, "spiffe://third.org/ns/shop/sa/frontend"))
    # The frontend's ID with the scheme in another case: Envoy accepts the certificate (it chains).
    for name, scheme in (("upper-scheme", "SPIFFE"), ("mixed-scheme", "Spiffe")):
        pki.add(name, issue_svid(pki.ca, f"{scheme}://example.org/ns/shop/sa/frontend"))
    # extauthz trusts the example.org CA and, for other.org, a CA that did not issue that cert.
    other_bundle = base / "other-org.pem"
    other_bundle.write_bytes(make_ca("other.org").cert_pem)
    jwks = JwksServer().start()
    policies = write_policies(base / "policies", {"identity.yaml": _policies(jwks.uri)})
    authz = ExtauthzProcess(
        policies,
        base / "extauthz",
        extra_args=[
            "--trust-bundle",
            f"example.org={pki.ca_file}",
            "--trust-bundle",
            f"other.org={other_bundle}",
        ],
    ).start()
    try:
        envoy = EnvoyProcess(
            base / "envoy",
            upstream=echo_server.address,
            authz_endpoints=[authz.endpoint],
            tls=pki.envoy_tls(),
            context_extensions={"namespace": "shop"},
            timeout_s=2.0,
        ).start()
    except BaseException:
        authz.stop()
        jwks.stop()
        raise
    try:
        yield Stack(pki, echo_server, authz, envoy, jwks)
    finally:
        envoy.stop()
        authz.stop()
        jwks.stop()


@pytest.fixture
def s(stack: Stack) -> Stack:
    stack.echo.clear()
    return stack


def test_verified_peer_allowed_under_strict(s: Stack) -> None:
    r = s.request("frontend", "/api/items")
    assert r.status == 200, r
    assert r.json()["headers"]["x-spiffe-id"] == FRONTEND_ID


def test_certificate_with_two_uri_sans_denied(s: Stack) -> None:
    r = s.request("two-uris", "/api/items")
    assert r.status == 403, r
    assert s.echo.requests == []
    record = s.audit()
    assert record["reason"] == "invalid_peer_certificate"


def test_certificate_not_chaining_to_its_domain_bundle_denied(s: Stack) -> None:
    r = s.request("other-domain", "/api/items")
    assert r.status == 403, r
    assert s.audit()["reason"] == "invalid_peer_certificate"


def test_unverifiable_trust_domain_denied_by_strict(s: Stack) -> None:
    r = s.request("third-domain", "/api/items")
    assert r.status == 403, r
    assert s.audit()["reason"] == "peer_authentication_required"


@pytest.mark.parametrize("who", ["upper-scheme", "mixed-scheme"])
def test_spiffe_scheme_in_another_case_is_an_invalid_identity(s: Stack, who: str) -> None:
    # SPIFFE://example.org/ns/shop/sa/frontend is not the frontend (the SPIFFE ID standard and
    # go-spiffe require exactly "spiffe://"): denied outright, whatever a policy says.
    r = s.request(who, "/api/items")
    assert r.status == 403, r
    assert s.echo.requests == []
    record = s.audit()
    assert record["reason"] == "invalid_peer_identity"
    assert record["source"]["principal"].lower() == FRONTEND_ID.lower()  # type: ignore[index]


def test_token_from_jwks_uri(s: Stack) -> None:
    token = mint()
    r = s.request("api", "/jwt/x", [("authorization", f"Bearer {token}"), ("x-user", "spoofed")])
    assert r.status == 200, r
    [seen] = s.echo.requests
    assert seen.header_values("x-user") == ["user-1"]
    assert seen.header_values("authorization") == []  # forwardOriginalToken: false
    assert s.jwks.requests == 1
    record = s.audit()
    assert record["token"] == {"iss": ISSUER, "sub": "user-1"}
    assert token not in (s.authz.audit_log.read_text())


def test_invalid_tokens_get_401_with_challenge(s: Stack) -> None:
    for headers in (
        [("authorization", f"Bearer {mint(key=RSA_KEY_2)}")],
        [("authorization", f"Bearer {mint(claims(aud='other'))}")],
        [("authorization", f"Bearer {mint()}"), ("authorization", f"Bearer {mint()}")],
    ):
        r = s.request("api", "/jwt/x", headers)
        assert r.status == 401, r
        assert r.headers["www-authenticate"].startswith('Bearer realm="extauthz", error="invalid_token"')
    assert s.echo.requests == []


def test_missing_token_gets_a_challenge(s: Stack) -> None:
    r = s.request("api", "/jwt/x")
    assert r.status == 401, r
    assert r.headers["www-authenticate"] == 'Bearer realm="extauthz"'
    assert s.echo.requests == []


def test_spoofed_xfcc_never_reaches_upstream_nor_grants(s: Stack) -> None:
    xfcc = "By=spiffe://example.org/ns/shop/sa/api;URI=spiffe://example.org/ns/shop/sa/frontend"
    r = s.request("intruder", "/api/items", [("x-forwarded-client-cert", xfcc)])
    # Not allowed; a 403: the only rule that reads a token is on /jwt/*, no token would help here.
    assert r.status == 403, r
    assert s.echo.requests == []
    r = s.request("frontend", "/api/items", [("x-forwarded-client-cert", xfcc)])
    assert r.status == 200, r
    [seen] = s.echo.requests
    assert seen.header_values("x-forwarded-client-cert") == []
