"""Host and method tricks: spellings of a denied host or method that name the same thing upstream.

The attacked policies: ``no-admin-host`` (DENY ``hosts: [admin.shop.svc, *.internal]``) and
``no-delete`` (DENY ``methods: [DELETE]``), each carved out of an ALLOW for the frontend. Secure
outcome: deny (403 by the DENY, or 400 when the value is malformed), never allow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
from helpers.attacks import ALLOW, DENY, EnvoyStack, assert_outcome, needs_envoy, run_core

POLICY = """\
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
metadata: {name: no-admin-host, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {hosts: ["admin.shop.svc", "*.internal"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {methods: ["DELETE"]}}]
"""


@pytest.mark.parametrize(
    ("host", "method", "expected"),
    [
        ("api.shop.svc", "GET", ALLOW),
        ("api.shop.svc:8443", "POST", ALLOW),
        ("[::1]:8443", "GET", ALLOW),
        ("admin.shop.svc", "GET", DENY),
        ("db.internal", "GET", DENY),
        ("api.shop.svc", "DELETE", DENY),
    ],
)
def test_controls(host: str, method: str, expected: str) -> None:
    assert_outcome(run_core(POLICY, host=host, method=method), expected)


HOST_ATTACKS = [
    "ADMIN.shop.svc",
    "Admin.Shop.Svc",
    "admin.shop.svc.",
    "ADMIN.SHOP.SVC.:443",
    "admin.shop.svc:8443",
    "admin.shop.svc:",
    "DB.Internal",
    "db.internal.",
    "db.internal:5432",
    # Malformed authorities that a lenient backend reads as admin.shop.svc:
    "admin.shop.svc:1:2",
    "admin.shop.svc:abc",
    "x@admin.shop.svc",
    "admin.shop.svc..",
    " admin.shop.svc",
    "admin.shop.svc\t",
    "admin.shop.svc\x00",
    "admin.shop.svc/x",
    "admin.shop.svc%2E",
    "admin.shop.svc,api.shop.svc",
    "[admin.shop.svc]",
]


@pytest.mark.parametrize("host", HOST_ATTACKS, ids=repr)
def test_host_tricks(host: str) -> None:
    """Case, trailing dot, port, userinfo, junk after the name: still the denied host.

    Sources: Istio CVE-2021-39155 (hosts compared case-sensitively, routed case-insensitively:
    ``Httpbin.Foo`` bypassed a DENY on ``httpbin.foo``); Istio CVE-2022-21679 (hosts/notHosts
    ignored, ALLOW bypassed); RFC 3986 section 3.2 (userinfo, port syntax) for the malformed ones.
    """
    assert_outcome(run_core(POLICY, host=host, method="GET"), DENY)


METHOD_ATTACKS = ["delete", "Delete", "DELETE ", " DELETE", "DEL ETE", "DELETE\x00", "DELETE\r\n", ""]


@pytest.mark.parametrize("method", METHOD_ATTACKS, ids=repr)
def test_method_tricks(method: str) -> None:
    """Lower-case or padded methods never escape a DENY on the upper-case method.

    Methods are case-sensitive (RFC 9110 section 9.1) but some backends fold case, so the view
    upper-cases the method before matching (a DENY on DELETE catches ``delete``) and refuses one
    that is not an HTTP token (400). Source: the case class of Istio CVE-2021-39155 applied to
    methods; NUL as in Envoy CVE-2019-9900.
    """
    assert_outcome(run_core(POLICY, host="api.shop.svc", method=method), DENY)


def test_method_header_cannot_override_the_method_field() -> None:
    """Envoy fills ``request.http.method``; a conflicting ``:method`` header is not read."""
    out = run_core(POLICY, host="api.shop.svc", method="DELETE", headers={":method": "GET"})
    assert_outcome(out, DENY, 403)


# --------------------------------------------------------------------------- through Envoy


@pytest.fixture(scope="module")
def stack(envoy_stack_factory: Callable[[Mapping[str, str]], EnvoyStack]) -> EnvoyStack:
    return envoy_stack_factory({"policy.yaml": POLICY})


ENVOY_HOSTS = [h for h in HOST_ATTACKS if not any(c in h for c in "\x00\t ")]


@needs_envoy
@pytest.mark.e2e
def test_envoy_controls(stack: EnvoyStack) -> None:
    assert stack.request("frontend", "GET", "/x", [("Host", "api.shop.svc")]).status == 200
    stack.assert_blocked(stack.request("frontend", "GET", "/x", [("Host", "admin.shop.svc")]))
    stack.assert_blocked(stack.request("frontend", "DELETE", "/x", [("Host", "api.shop.svc")]))


@needs_envoy
@pytest.mark.e2e
@pytest.mark.parametrize("host", ENVOY_HOSTS, ids=repr)
def test_envoy_host_tricks(stack: EnvoyStack, host: str) -> None:
    """The host class through Envoy (sources above)."""
    stack.assert_blocked(stack.request("frontend", "GET", "/x", [("Host", host)]))


@needs_envoy
@pytest.mark.e2e
@pytest.mark.parametrize(
    "request_line",
    [b"delete /x HTTP/1.1", b"Delete /x HTTP/1.1", b"DELETE  /x HTTP/1.1", b"DEL\x00ETE /x HTTP/1.1"],
    ids=repr,
)
def test_envoy_method_tricks(stack: EnvoyStack, request_line: bytes) -> None:
    """The method class through Envoy's HTTP/1 codec (sources above)."""
    req = request_line + b"\r\nHost: api.shop.svc\r\nConnection: close\r\n\r\n"
    stack.assert_blocked(stack.raw("frontend", req))


@needs_envoy
@pytest.mark.e2e
def test_envoy_absolute_form_cannot_smuggle_the_host(stack: EnvoyStack) -> None:
    """``GET http://admin.shop.svc/x`` with ``Host: api.shop.svc``: the request-target wins in
    Envoy, and the check must see the same host (RFC 9112 section 3.2.2)."""
    req = b"GET http://admin.shop.svc/x HTTP/1.1\r\nHost: api.shop.svc\r\nConnection: close\r\n\r\n"
    stack.assert_blocked(stack.raw("frontend", req))
