"""SPIFFE look-alikes: peer identities that read like an allowed principal but are not it.

Attacked policies (namespace ``shop``): ``exact`` (``principals: [example.org/ns/shop/sa/frontend]``
on ``/exact/*``), ``prefix`` (``principals: [example.org/ns/shop/*]`` on ``/prefix/*``) and
``by-namespace`` (``namespaces: [shop]`` on ``/ns/*``). The secure outcome is a deny: a principal
that is not a valid SPIFFE ID is refused outright (403 ``invalid_peer_identity``), a valid one
that differs matches nothing (403).

Sources: the SPIFFE ID standard (/work/shared/docs/spiffe-rules.md: scheme and trust domain
lower-case, no percent-encoding, no empty/dot segments, no trailing '/', no port/userinfo/query/
fragment); Envoy CVE-2022-21656 (SAN type confusion: a name of one type accepted as another);
Envoy's principal fallback (URI SAN, else DNS SAN, else Subject) documented in the Envoy contract.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
from helpers import DevPki
from helpers.attacks import ALLOW, DENY, EnvoyStack, assert_outcome, needs_envoy, run_core

from extauthz.devenv.ca import issue_svid

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: exact, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]
    to: [{operation: {paths: ["/exact/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: prefix, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/*"]}}]
    to: [{operation: {paths: ["/prefix/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-namespace, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {namespaces: ["shop"]}}]
    to: [{operation: {paths: ["/ns/*"]}}]
"""

FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"


@pytest.mark.parametrize("path", ["/exact/x", "/prefix/x", "/ns/x"])
def test_controls(path: str) -> None:
    assert_outcome(run_core(POLICY, principal=FRONTEND, path=path), ALLOW)
    assert_outcome(run_core(POLICY, principal="spiffe://example.org/ns/other/sa/x", path=path), DENY)


INVALID_LOOKALIKES = [
    # The scheme is exactly "spiffe" (the standard, go-spiffe): not an alias of the frontend.
    "SPIFFE://example.org/ns/shop/sa/frontend",
    "Spiffe://example.org/ns/shop/sa/frontend",
    FRONTEND + "/",  # trailing slash
    "spiffe://EXAMPLE.org/ns/shop/sa/frontend",  # upper-case trust domain (strict reading)
    "spiffe://example.org/ns/shop/sa/fr\u043entend",  # Cyrillic o
    "spiffe://example.org/ns/shop/sa/\uff46rontend",  # fullwidth f
    "spiffe://example.org/ns/shop/sa/fr%6Fntend",  # percent-encoding
    "spiffe://example.org/ns/shop/sa/frontend%00",
    "spiffe://example.org/ns/shop/sa/frontend\x00",
    "spiffe://example.org/ns/shop/sa/frontend\n",
    " " + FRONTEND,
    FRONTEND + " ",
    "spiffe://example.org:443/ns/shop/sa/frontend",
    "spiffe://user@example.org/ns/shop/sa/frontend",
    FRONTEND + "?x=1",
    FRONTEND + "#x",
    "spiffe://example.org/ns/shop/sa//frontend",
    "spiffe://example.org/ns/shop/sa/./frontend",
    "spiffe://example.org/ns/shop/sa/x/../frontend",
    "spiffe:/example.org/ns/shop/sa/frontend",
    "spiffe:example.org/ns/shop/sa/frontend",
    "example.org/ns/shop/sa/frontend",  # what Envoy sends for a DNS SAN without URI SAN
    "CN=spiffe://example.org/ns/shop/sa/frontend",  # Envoy's Subject fallback
    "https://example.org/ns/shop/sa/frontend",
    "spiffe://example.org\\ns\\shop\\sa\\frontend",
    "spiffe://example.org/ns/shop/sa/frontend/" + "a" * 2100,
]


@pytest.mark.parametrize("principal", INVALID_LOOKALIKES, ids=repr)
@pytest.mark.parametrize("path", ["/exact/x", "/prefix/x", "/ns/x"])
def test_invalid_spiffe_lookalikes_are_refused(principal: str, path: str) -> None:
    """Not a SPIFFE ID at all: refused before any policy is read (sources in module docstring)."""
    out = run_core(POLICY, principal=principal, path=path)
    assert_outcome(out, DENY, 403)
    assert out.reason == "invalid_peer_identity"


VALID_LOOKALIKES = [
    ("spiffe://example.org/ns/shop/sa/Frontend", "/exact/x"),  # path is case-sensitive
    ("spiffe://example.org/ns/shop/sa/frontend/x", "/exact/x"),  # extra segment
    ("spiffe://example.org/ns/shop/sa/frontend-evil", "/exact/x"),
    ("spiffe://example.org./ns/shop/sa/frontend", "/exact/x"),  # trailing-dot trust domain
    ("spiffe://example.org.evil/ns/shop/sa/frontend", "/exact/x"),
    ("spiffe://evil.org/ns/shop/sa/frontend", "/exact/x"),
    ("spiffe://example.org/ns/shop", "/prefix/x"),
    ("spiffe://example.org/ns/shop-evil/sa/frontend", "/prefix/x"),
    ("spiffe://example.org/ns/shopx/sa/frontend", "/prefix/x"),
    ("spiffe://example.org/ns/SHOP/sa/frontend", "/prefix/x"),
    ("spiffe://example.org.evil/ns/shop/sa/frontend", "/prefix/x"),
    ("spiffe://example.org/x/example.org/ns/shop/sa/frontend", "/prefix/x"),
    ("spiffe://example.org/ns/shop-evil/sa/frontend", "/ns/x"),
    ("spiffe://example.org/ns/Shop/sa/frontend", "/ns/x"),
    ("spiffe://example.org/ns/other/sa/ns/shop", "/ns/x"),  # the first /ns/ names the namespace
    ("spiffe://example.org/nsx/shop/sa/frontend", "/ns/x"),
    ("spiffe://ns/shop/sa/frontend", "/ns/x"),  # trust domain 'ns' is not a namespace
]


@pytest.mark.parametrize(("principal", "path"), VALID_LOOKALIKES, ids=repr)
def test_valid_lookalikes_match_nothing(principal: str, path: str) -> None:
    """Valid IDs that differ by case, a segment, a suffix or a trust domain: other workloads."""
    out = run_core(POLICY, principal=principal, path=path)
    assert_outcome(out, DENY, 403)
    assert out.reason == "no_matching_policy"


# --------------------------------------------------------------------------- through Envoy

# Certificates signed by the trusted CA whose identity only looks like the frontend's.
ODD_CERTS: dict[str, dict[str, object]] = {
    "trailing-slash": {"spiffe_id": FRONTEND + "/"},
    "upper-td": {"spiffe_id": "spiffe://EXAMPLE.org/ns/shop/sa/frontend"},
    "extra-segment": {"spiffe_id": FRONTEND + "/x"},
    "case": {"spiffe_id": "spiffe://example.org/ns/shop/sa/Frontend"},
    "dns-san-only": {"spiffe_id": None, "dns_names": ["example.org"]},
    "cn-only": {"spiffe_id": None, "common_name": FRONTEND},
    "first-uri-other": {"spiffe_id": "spiffe://example.org/ns/other/sa/x", "extra_uris": [FRONTEND]},
}


@pytest.fixture(scope="module")
def stack(envoy_stack_factory: Callable[[Mapping[str, str]], EnvoyStack], pki: DevPki) -> EnvoyStack:
    for name, kwargs in ODD_CERTS.items():
        if f"odd-{name}" not in pki.files:
            pki.add(f"odd-{name}", issue_svid(pki.ca, **kwargs))  # type: ignore[arg-type]
    if "odd-two-uris" not in pki.files:
        pki.add("odd-two-uris", issue_svid(pki.ca, FRONTEND, extra_uris=["spiffe://example.org/x"]))
    return envoy_stack_factory({"policy.yaml": POLICY})


@needs_envoy
@pytest.mark.e2e
def test_envoy_control(stack: EnvoyStack) -> None:
    assert stack.request("frontend", "GET", "/exact/x").status == 200


# Valid IDs of other shop workloads (case, extra segment) are rightly admitted by the prefix and
# namespace policies: they attack the exact policy only.
ODD_CERT_CASES = [
    (name, path)
    for name in sorted(ODD_CERTS)
    for path in (["/exact/x"] if name in ("case", "extra-segment") else ["/exact/x", "/prefix/x", "/ns/x"])
]


@needs_envoy
@pytest.mark.e2e
@pytest.mark.parametrize(("name", "path"), ODD_CERT_CASES)
def test_envoy_lookalike_certificates(stack: EnvoyStack, name: str, path: str) -> None:
    """A trusted CA's certificate with a look-alike identity (sources in module docstring)."""
    stack.assert_blocked(stack.request(f"odd-{name}", "GET", path))


@needs_envoy
@pytest.mark.e2e
def test_envoy_certificate_with_two_uri_sans(stack: EnvoyStack) -> None:
    """Source: X509-SVID standard (exactly one URI SAN); CVE-2022-21656 (SAN confusion)."""
    stack.assert_blocked(stack.request("odd-two-uris", "GET", "/exact/x"))

