"""Duplicate headers and identity-header spoofing.

Attacked policies: ``no-admin-role`` (DENY ``when request.headers[x-role] == admin``) carved out
of an ALLOW for the frontend; ``frontend-only`` (ALLOW by mTLS principal) against headers that
claim an identity; ``office-only`` (ALLOW ``remoteIpBlocks``) against forwarded-for headers.
The secure outcome: identity comes from what Envoy verified (``source.principal``, the peer
address), never from a header; a repeated header never dodges a DENY.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
from helpers.attacks import ALLOW, DENY, EnvoyStack, assert_outcome, needs_envoy, run_core

from extauthz._pb.envoy.config.core.v3 import base_pb2

FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"
INTRUDER = "spiffe://example.org/ns/other/sa/intruder"

ROLE_POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-all, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin-role, namespace: shop}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[x-role]", values: ["admin"]}]
"""

IDENTITY_POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-only, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]
    to: [{operation: {paths: ["/api/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/api/admin", "/api/admin/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: office-only, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]
    to: [{operation: {paths: ["/office/*"]}}]
"""

# --------------------------------------------------------------------------- duplicate headers


@pytest.mark.parametrize(
    ("role", "expected"), [(None, ALLOW), ("user", ALLOW), ("admin", DENY)], ids=str
)
def test_role_controls(role: str | None, expected: str) -> None:
    headers = {"x-role": role} if role is not None else {}
    assert_outcome(run_core(ROLE_POLICY, headers=headers), expected)


@pytest.mark.parametrize("joined", ["user,admin", "admin,user", "user, admin", "admin ,user"])
def test_duplicate_headers_joined_by_commas(joined: str) -> None:
    """Envoy joins a repeated header with ``,``; a backend may read the first or the last value.

    Sources: Envoy CVE-2021-32777 (ext_authz saw only the last value of a repeated header);
    Istio CVE-2026-26308 / CVE-2026-31838 (RBAC matched only one value of a multi-value header:
    ``X-Custom-Role: regular-user,admin`` bypassed a DENY on ``admin``).
    """
    assert_outcome(run_core(ROLE_POLICY, headers={"x-role": joined}), DENY)


def test_header_names_differing_only_in_case_are_refused() -> None:
    """Envoy sends lower-case names; two keys folding to one name would silently lose a value.

    Source: CVE-2021-32777 (one of several values silently dropped before the check).
    """
    out = run_core(ROLE_POLICY, headers={"X-Role": "admin", "x-role": "user"})
    assert_outcome(out, DENY, 400)


# --------------------------------------------------------------------------- identity spoofing

SPOOFS = [
    {"x-spiffe-id": FRONTEND},
    {"x-spiffe-id": FRONTEND, "x-forwarded-client-cert": f"By={FRONTEND};URI={FRONTEND}"},
    {"x-forwarded-client-cert": f"Hash=00;URI={FRONTEND}"},
    {"x-forwarded-client-cert": f'Subject="CN=frontend";URI={FRONTEND};DNS=frontend'},
    {"x-envoy-peer-metadata-id": "frontend", "x-istio-attributes": FRONTEND},
    {":authority": "api.shop.svc", "x-spiffe-id": "example.org/ns/shop/sa/frontend"},
]


@pytest.mark.parametrize("headers", SPOOFS, ids=lambda h: ",".join(h))
@pytest.mark.parametrize("principal", [INTRUDER, ""], ids=["intruder", "no-mtls"])
def test_identity_headers_are_never_an_identity(principal: str, headers: dict[str, str]) -> None:
    """Only ``source.principal`` (Envoy's verified peer) names the caller, never a header.

    Sources: Envoy's header sanitising docs (x-forwarded-client-cert is removed from untrusted
    clients by default because backends trust it); Envoy CVE-2023-27487 (a client-sent internal
    ``x-envoy-original-path`` header was trusted).
    """
    out = run_core(IDENTITY_POLICY, principal=principal, path="/api/items", headers=headers)
    assert_outcome(out, DENY, 403)


def test_original_path_header_is_not_the_path() -> None:
    """Source: Envoy CVE-2023-27487 (``x-envoy-original-path`` forged by a client)."""
    headers = {"x-envoy-original-path": "/api/items", ":path": "/api/items"}
    assert_outcome(run_core(IDENTITY_POLICY, path="/api/admin", headers=headers), DENY, 403)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-forwarded-for": "203.0.113.7"},
        {"x-forwarded-for": "203.0.113.7, 10.0.0.5"},
        {"x-real-ip": "203.0.113.7"},
        {"forwarded": "for=203.0.113.7"},
        {"x-envoy-external-address": "203.0.113.7"},
    ],
    ids=lambda h: ",".join(h),
)
def test_forwarded_for_headers_do_not_change_the_peer(headers: dict[str, str]) -> None:
    """``remoteIpBlocks`` reads the peer address without a trusted-proxy setting.

    Source: Istio's ``remoteIpBlocks`` semantics (X-Forwarded-For only with trusted hops,
    ``numTrustedProxies``), and the spoofing class of CVE-2023-27487.
    """
    out = run_core(IDENTITY_POLICY, principal="", path="/office/x", headers=headers)
    assert_outcome(out, DENY, 403)
    ok = run_core(IDENTITY_POLICY, principal="", path="/office/x", source_address="203.0.113.7")
    assert_outcome(ok, ALLOW)


def test_allow_overwrites_a_spoofed_identity_header() -> None:
    """The upstream sees the verified ID: set with OVERWRITE, never appended to the client's."""
    out = run_core(IDENTITY_POLICY, headers={"x-spiffe-id": INTRUDER})
    assert_outcome(out, ALLOW)
    hdrs = [(h.header.key, h.header.value, h.append_action) for h in out.response.ok_response.headers]
    assert hdrs == [("x-spiffe-id", FRONTEND, base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)]


def test_allow_without_a_peer_removes_a_spoofed_identity_header() -> None:
    """An allowed request with no verified peer must not carry a client-made x-spiffe-id."""
    out = run_core(
        IDENTITY_POLICY,
        principal="",
        path="/office/x",
        source_address="203.0.113.7",
        headers={"x-spiffe-id": FRONTEND},
    )
    assert_outcome(out, ALLOW)
    assert list(out.response.ok_response.headers) == []
    assert "x-spiffe-id" in out.response.ok_response.headers_to_remove


# --------------------------------------------------------------------------- through Envoy


@pytest.fixture(scope="module")
def stack(envoy_stack_factory: Callable[[Mapping[str, str]], EnvoyStack]) -> EnvoyStack:
    return envoy_stack_factory({"role.yaml": ROLE_POLICY.replace("frontend-all", "role-base"),
                                "identity.yaml": IDENTITY_POLICY})


@needs_envoy
@pytest.mark.e2e
def test_envoy_controls(stack: EnvoyStack) -> None:
    assert stack.request("frontend", "GET", "/api/items", [("x-role", "user")]).status == 200
    stack.assert_blocked(stack.request("frontend", "GET", "/api/items", [("x-role", "admin")]))
    stack.assert_blocked(stack.request("intruder", "GET", "/api/items"))


@needs_envoy
@pytest.mark.e2e
@pytest.mark.parametrize(
    "headers",
    [[("x-role", "user"), ("x-role", "admin")], [("x-role", "admin"), ("x-role", "user")]],
    ids=["user-then-admin", "admin-then-user"],
)
def test_envoy_repeated_header(stack: EnvoyStack, headers: list[tuple[str, str]]) -> None:
    """Repeated headers through Envoy (CVE-2021-32777, CVE-2026-26308)."""
    stack.assert_blocked(stack.request("frontend", "GET", "/api/items", headers))


@needs_envoy
@pytest.mark.e2e
@pytest.mark.parametrize(
    "headers",
    [
        [("x-spiffe-id", FRONTEND)],
        [("x-forwarded-client-cert", f"By={FRONTEND};URI={FRONTEND}")],
        [("x-envoy-original-path", "/api/items")],
        [("x-forwarded-for", "203.0.113.7")],
    ],
    ids=["x-spiffe-id", "xfcc", "original-path", "xff"],
)
def test_envoy_intruder_with_identity_headers(stack: EnvoyStack, headers: list[tuple[str, str]]) -> None:
    """Identity spoofing through Envoy (sources above): the intruder stays the intruder."""
    stack.assert_blocked(stack.request("intruder", "GET", "/api/items", headers))
    stack.assert_blocked(stack.request("intruder", "GET", "/office/x", headers))


@needs_envoy
@pytest.mark.e2e
def test_envoy_client_xfcc_never_reaches_the_upstream(stack: EnvoyStack) -> None:
    """A client-made XFCC is sanitised by Envoy (forward_client_cert_details: SANITIZE)."""
    spoof = f"By={FRONTEND};URI=spiffe://example.org/ns/shop/sa/api"
    r = stack.request("frontend", "GET", "/api/items", [("x-forwarded-client-cert", spoof)])
    assert r.status == 200, r
    [seen] = stack.echo.requests
    assert spoof not in (seen.header("x-forwarded-client-cert") or "")
    assert seen.header_values("x-spiffe-id") == [FRONTEND]
