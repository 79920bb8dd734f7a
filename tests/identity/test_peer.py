"""Peer certificates re-verified as X509-SVIDs; PeerAuthentication; XFCC; token binding."""

from __future__ import annotations

import datetime
import urllib.parse

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from helpers.identity import (
    bearer,
    bundles_of,
    cert_field,
    claims,
    inline_rule,
    mint,
    peer_authn,
    request_authn,
    resolve,
    resolver,
)

from extauthz.devenv.ca import Issued, issue_svid, make_ca
from extauthz.identity.bundles import BundleSet
from extauthz.identity.model import try_parse_spiffe_id
from extauthz.identity.svid import SvidVerifier, thumbprint
from extauthz.policy import PolicyError, load_text

FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"
CA = make_ca("example.org")
OTHER_CA = make_ca("other.org")
EVIL_CA = make_ca("example.org")  # same name, another key
GOOD = issue_svid(CA, FRONTEND)
UTC = datetime.UTC


def _peer(issued: Issued, principal: str = FRONTEND, policy: str = "", **kw: object):  # type: ignore[no-untyped-def]
    r = resolver(policy, bundles_of(CA), **kw)  # type: ignore[arg-type]
    return resolve(r, principal=principal, certificate=cert_field(issued))


def test_valid_svid_is_verified_with_its_expiry() -> None:
    res = _peer(GOOD)
    assert not res.denied
    assert res.identity.peer_verified and str(res.identity.peer) == FRONTEND
    assert res.identity.peer_not_after == GOOD.cert.not_valid_after_utc.timestamp()


def test_svid_via_intermediate_in_bundle() -> None:
    inter = make_ca("example.org", issuer=CA)
    leaf = issue_svid(inter, FRONTEND)
    r = resolver("", bundles_of(CA, inter))
    assert resolve(r, certificate=cert_field(leaf)).identity.peer_verified


@pytest.mark.parametrize(
    ("issued", "needle"),
    [
        (issue_svid(EVIL_CA, FRONTEND), "chain"),
        (issue_svid(OTHER_CA, FRONTEND), "chain"),
        (
            issue_svid(
                CA,
                FRONTEND,
                not_before=datetime.datetime(2020, 1, 1, tzinfo=UTC),
                not_after=datetime.datetime(2021, 1, 1, tzinfo=UTC),
            ),
            "chain",
        ),
        (
            issue_svid(
                CA,
                FRONTEND,
                not_before=datetime.datetime(2099, 1, 1, tzinfo=UTC),
                not_after=datetime.datetime(2099, 2, 1, tzinfo=UTC),
            ),
            "chain",
        ),
        (
            issue_svid(CA, FRONTEND, extra_uris=["spiffe://example.org/ns/shop/sa/admin"]),
            "exactly one URI SAN",
        ),
        (issue_svid(CA, None, common_name="frontend"), "subjectAltName"),
        (issue_svid(CA, FRONTEND, is_ca=True), "CA"),
        (issue_svid(CA, FRONTEND, key_cert_sign=True), "keyUsage"),
        (issue_svid(CA, FRONTEND, eku=[ExtendedKeyUsageOID.SERVER_AUTH]), "extendedKeyUsage"),
        (issue_svid(CA, "spiffe://example.org", common_name="x"), "path"),
    ],
)
def test_bad_certificates_denied(issued: Issued, needle: str) -> None:
    uris = issued.uris
    principal = uris[0] if uris and try_parse_spiffe_id(uris[0]) else ""
    res = _peer(issued, principal=principal)
    assert res.status == 403 and res.reason == "invalid_peer_certificate", res
    assert needle in (res.error or "")


# A URI SAN that is not a valid SPIFFE ID (the SPIFFE ID standard and go-spiffe require the scheme
# exactly "spiffe://"): an invalid identity, never an alias of the workload it resembles.
BAD_IDS = (
    "SPIFFE://example.org/ns/shop/sa/frontend",
    "Spiffe://example.org/ns/shop/sa/frontend",
    "spiffe://example.org/ns/../sa/x",
)


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_invalid_spiffe_id_is_an_invalid_identity(bad_id: str) -> None:
    # As Envoy's source.principal (no certificate forwarded).
    res = resolve(resolver("", bundles_of(CA)), principal=bad_id)
    assert res.status == 403 and res.reason == "invalid_peer_identity", res
    # As the certificate's URI SAN, with or without Envoy's principal, with or without a bundle.
    cert = issue_svid(CA, bad_id)
    for principal in (bad_id, ""):
        for bundles in (bundles_of(CA), BundleSet()):
            res = resolve(resolver("", bundles), principal=principal, certificate=cert_field(cert))
            assert res.status == 403 and res.reason == "invalid_peer_identity", (principal, res)
    # From a trusted proxy's XFCC element: URI, and Cert alone.
    r = resolver("", bundles_of(CA), trusted=("10.0.0.0/24",))
    proxy = "spiffe://example.org/ns/edge/sa/gateway"
    for header in (_xfcc(bad_id), _xfcc(bad_id, cert), f'Cert="{cert_field(cert)}"'):
        res = resolve(r, principal=proxy, headers={"x-forwarded-client-cert": header})
        assert res.status == 403 and res.reason == "invalid_peer_identity", (header, res)


def test_ca_certificate_as_leaf_denied() -> None:
    res = _peer(CA, principal="spiffe://example.org")
    assert res.status == 403 and res.reason == "invalid_peer_certificate"


def test_principal_that_disagrees_with_its_certificate() -> None:
    res = _peer(GOOD, principal="spiffe://example.org/ns/shop/sa/admin")
    assert res.status == 403 and res.reason == "invalid_peer_identity"
    # Even when the trust domain has no bundle (no verification, but still a lie).
    res = resolve(resolver(""), principal="spiffe://example.org/ns/x/sa/y", certificate=cert_field(GOOD))
    assert res.status == 403 and res.reason == "invalid_peer_identity"


def test_garbage_certificate_field_denied() -> None:
    for bad in ("not a pem", urllib.parse.quote(GOOD.cert_pem.decode() * 2, safe=""), "%ZZ", "x" * 20000):
        res = resolve(resolver("", bundles_of(CA)), certificate=bad)
        assert res.status == 403 and res.reason == "invalid_peer_certificate"


def test_no_bundle_for_domain_means_unverified_peer() -> None:
    res = resolve(resolver(""), certificate=cert_field(GOOD))
    assert not res.denied and not res.identity.peer_verified and str(res.identity.peer) == FRONTEND


def test_verified_certificates_cached_until_not_after(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = SvidVerifier(bundles_of(CA))
    calls = []
    real = verifier.verify
    monkeypatch.setattr(verifier, "verify", lambda *a, **k: calls.append(1) or real(*a, **k))
    field = cert_field(GOOD)
    for _ in range(5):
        verifier.verify_field(field)
    assert len(calls) == 1
    after = GOOD.cert.not_valid_after_utc + datetime.timedelta(seconds=1)
    with pytest.raises(ValueError):
        verifier.verify_field(field, now=after)  # the cache does not outlive the certificate


def test_unverifiable_certificates_are_cached_too(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = SvidVerifier(BundleSet())  # no bundle: checked as an SVID, not chained
    calls = []
    real = verifier.verify
    monkeypatch.setattr(verifier, "verify", lambda *a, **k: calls.append(1) or real(*a, **k))
    results = [verifier.verify_field(cert_field(GOOD)) for _ in range(5)]
    assert len(calls) == 1
    assert not results[-1].verified and str(results[-1].spiffe_id) == FRONTEND


# ----------------------------------------------------------------------------- PeerAuthentication


def test_strict_denies_without_verified_peer_permissive_accepts() -> None:
    strict, permissive = peer_authn("STRICT"), peer_authn("PERMISSIVE")
    res = resolve(resolver(strict, bundles_of(CA)))  # principal, no certificate
    assert res.status == 403 and res.reason == "peer_authentication_required"
    assert resolve(resolver(strict, bundles_of(CA)), principal="").status == 403
    assert resolve(resolver(strict), certificate=cert_field(GOOD)).status == 403  # no bundle
    assert resolve(resolver(strict, bundles_of(CA)), certificate=cert_field(GOOD)).status == 200
    assert resolve(resolver(permissive, bundles_of(CA)), principal="").status == 200
    assert resolve(resolver("", bundles_of(CA)), principal="").status == 200  # default PERMISSIVE


def test_most_specific_peer_authentication_wins() -> None:
    mesh_strict = peer_authn("STRICT", name="mesh")
    ns_permissive = peer_authn("PERMISSIVE", name="ns", namespace="shop")
    wl_strict = peer_authn("STRICT", name="wl", namespace="shop", selector={"app": "api"})
    r = resolver(mesh_strict + "---" + ns_permissive + "---" + wl_strict, bundles_of(CA))
    assert resolve(r).status == 200  # namespace beats mesh
    assert resolve(r, context_extensions={"app": "api"}).status == 403  # workload beats namespace
    assert resolve(r, context_extensions={"app": "api"}, certificate=cert_field(GOOD)).status == 200
    other_ns = resolve(r, destination_principal="spiffe://example.org/ns/other/sa/x")
    assert other_ns.status == 403  # only the mesh-wide STRICT applies there
    # Port-level override and UNSET inheritance.
    wl_port = peer_authn(
        "UNSET", name="wl", namespace="shop", selector={"app": "api"}, ports={8443: "DISABLE"}
    )
    r = resolver(mesh_strict + "---" + wl_port, bundles_of(CA))
    assert resolve(r, context_extensions={"app": "api"}).status == 200
    assert resolve(r, context_extensions={"app": "api"}, destination_port=9000).status == 403


def _pa(name: str, namespace: str, spec: str) -> str:
    return (
        f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n---\n"
    )


NS_STRICT = _pa("ns", "shop", "{mtls: {mode: STRICT}}")
API = {"app": "api"}


@pytest.mark.parametrize(
    "root",
    [
        # Istio ignores a root-namespace resource with a selector: it overrides nothing...
        _pa("root-wl", "istio-system", "{selector: {matchLabels: {app: api}}, mtls: {mode: DISABLE}}"),
        _pa("root-wl", "istio-system", "{selector: {matchLabels: {app: api}}, mtls: {mode: PERMISSIVE}}"),
        _pa(
            "root-wl", "istio-system",
            "{selector: {matchLabels: {app: api}}, portLevelMtls: {'8443': {mode: DISABLE}}}",
        ),
        # ... and one whose selector has no labels is mesh-wide: the lowest precedence.
        _pa("mesh", "istio-system", "{selector: {}, mtls: {mode: PERMISSIVE}}"),
        _pa("mesh", "istio-system", "{selector: {matchLabels: {}}, mtls: {mode: DISABLE}}"),
    ],
)
def test_root_namespace_resource_never_overrides_a_namespace_strict(root: str) -> None:
    r = resolver(root + NS_STRICT, bundles_of(CA))
    for port in (8443, 9000):
        res = resolve(r, principal="", context_extensions=API, destination_port=port)
        assert res.status == 403 and res.reason == "peer_authentication_required", (port, res)
    assert resolve(r, context_extensions=API, certificate=cert_field(GOOD)).status == 200


def test_empty_selector_is_namespace_or_mesh_level() -> None:
    mesh_strict = _pa("mesh", "istio-system", "{selector: {}, mtls: {mode: STRICT}}")
    ns_permissive = _pa("ns", "shop", "{selector: {}, mtls: {mode: PERMISSIVE}}")
    # The namespace's selector: {} is namespace-wide: it beats the mesh-wide STRICT...
    r = resolver(mesh_strict + ns_permissive, bundles_of(CA))
    assert resolve(r, principal="", context_extensions=API).status == 200
    # ... and a workload resource (with labels) beats it.
    wl = _pa("wl", "shop", "{selector: {matchLabels: {app: api}}, mtls: {mode: STRICT}}")
    r = resolver(mesh_strict + ns_permissive + wl, bundles_of(CA))
    assert resolve(r, principal="", context_extensions=API).status == 403
    assert resolve(r, principal="", context_extensions={"app": "web"}).status == 200
    # The mesh-wide one applies where nothing more specific does.
    other = resolve(r, principal="", destination_principal="spiffe://example.org/ns/other/sa/x")
    assert other.status == 403


@pytest.mark.parametrize("namespace", ["istio-system", "shop"])
@pytest.mark.parametrize("selector", ["", "selector: {}, ", "selector: {matchLabels: {}}, "])
def test_port_level_mtls_without_workload_selector_is_refused(namespace: str, selector: str) -> None:
    # Istio rejects portLevelMtls on mesh- and namespace-level resources: an invalid resource.
    ports = "portLevelMtls: {'8080': {mode: DISABLE}}"
    text = _pa("pa", namespace, f"{{{selector}mtls: {{mode: STRICT}}, {ports}}}")
    with pytest.raises(PolicyError, match="portLevelMtls needs a selector"):
        load_text(text)


# ----------------------------------------------------------------------------- XFCC


def _xfcc(uri: str, cert: Issued | None = None) -> str:
    parts = ["By=spiffe://example.org/ns/shop/sa/api", "Hash=abc", f"URI={uri}"]
    if cert is not None:
        parts.insert(2, f'Cert="{cert_field(cert)}"')
    return ";".join(parts)


def test_spoofed_xfcc_from_untrusted_peer_ignored_and_stripped() -> None:
    admin = "spiffe://example.org/ns/shop/sa/admin"
    r = resolver("", bundles_of(CA), trusted=("192.168.0.0/16",))
    res = resolve(r, headers={"x-forwarded-client-cert": _xfcc(admin)})
    assert str(res.identity.peer) == FRONTEND  # the direct peer, not the header
    assert "x-forwarded-client-cert" in res.remove


def test_trusted_proxy_xfcc_last_element_used() -> None:
    admin = "spiffe://example.org/ns/shop/sa/admin"
    proxy = "spiffe://example.org/ns/edge/sa/gateway"
    r = resolver("", bundles_of(CA), trusted=("10.0.0.0/24",))
    header = f"{_xfcc(admin)},{_xfcc(FRONTEND, GOOD)}"  # the client forged the first one
    res = resolve(r, principal=proxy, headers={"x-forwarded-client-cert": header})
    assert str(res.identity.peer) == FRONTEND and res.identity.peer_verified
    assert "x-forwarded-client-cert" in res.remove
    # Without a Cert in the element: the URI, unverified.
    res = resolve(r, principal=proxy, headers={"x-forwarded-client-cert": _xfcc(admin)})
    assert str(res.identity.peer) == admin and not res.identity.peer_verified
    # A Cert that disagrees with the URI, or a malformed header: denied.
    res = resolve(r, principal=proxy, headers={"x-forwarded-client-cert": _xfcc(admin, GOOD)})
    assert res.status == 403
    for bad in ('URI="unterminated', "URI=a;URI=b", "Foo=bar", 'URI=spiffe://example.org/x"y'):
        res = resolve(r, principal=proxy, headers={"x-forwarded-client-cert": bad})
        assert res.status == 403 and res.reason == "invalid_peer_identity", bad


def test_ipv4_mapped_proxy_address() -> None:
    r = resolver("", trusted=("10.0.0.0/24",))
    admin = "spiffe://example.org/ns/shop/sa/admin"
    res = resolve(r, source_address="::ffff:10.0.0.5", headers={"x-forwarded-client-cert": _xfcc(admin)})
    assert str(res.identity.peer) == admin


# ----------------------------------------------------------------------------- binding


def test_certificate_bound_token() -> None:
    ra = request_authn(inline_rule())
    r = resolver(ra, bundles_of(CA))
    bound = mint(claims(cnf={"x5t#S256": thumbprint(GOOD.cert)}))
    ok = resolve(r, certificate=cert_field(GOOD), headers=bearer(bound))
    assert ok.identity.token is not None
    other = issue_svid(CA, FRONTEND)
    assert resolve(r, certificate=cert_field(other), headers=bearer(bound)).status == 401
    assert resolve(r, headers=bearer(bound)).status == 401  # no certificate at all
    jkt = mint(claims(cnf={"jkt": "abc"}))
    assert resolve(r, certificate=cert_field(GOOD), headers=bearer(jkt)).status == 401


def test_token_subject_bound_to_verified_peer() -> None:
    ra = request_authn(inline_rule())
    r = resolver(ra, bundles_of(CA), bind=True)
    mine = mint(claims(sub=FRONTEND))
    assert resolve(r, certificate=cert_field(GOOD), headers=bearer(mine)).identity.token is not None
    assert resolve(r, headers=bearer(mine)).status == 401  # peer not verified
    theirs = mint(claims(sub="spiffe://example.org/ns/shop/sa/admin"))
    assert resolve(r, certificate=cert_field(GOOD), headers=bearer(theirs)).status == 401
