"""Trust bundles from PEM and SPIFFE bundle (JWKS) files; reload keeps the last good bundle."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from helpers.identity import EC_KEY, RSA_KEY, cert_field, jwk, resolve, resolver

from extauthz.devenv.ca import issue_svid, make_ca
from extauthz.identity.bundles import (
    BundleError,
    BundleStore,
    BundleWatcher,
    parse_bundle,
    parse_bundle_flags,
)

CA = make_ca("example.org")
CA2 = make_ca("example.org")
FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"


def spiffe_bundle(*cas: object, jwt_keys: tuple[dict[str, object], ...] = (), seq: int = 1) -> bytes:
    keys: list[dict[str, object]] = []
    for ca in cas:
        der = ca.cert.public_bytes(serialization.Encoding.DER)  # type: ignore[attr-defined]
        keys.append(
            {
                "use": "x509-svid",
                "kty": "EC",
                "crv": "P-256",
                "x": "",
                "y": "",
                "x5c": [base64.b64encode(der).decode()],
            }
        )
    keys += [{**k, "use": "jwt-svid"} for k in jwt_keys]
    keys.append({"use": "something-else", "kty": "EC"})  # ignored
    return json.dumps({"keys": keys, "spiffe_sequence": seq, "spiffe_refresh_hint": 300}).encode()


def test_pem_bundle() -> None:
    b = parse_bundle("example.org", CA.cert_pem + CA2.cert_pem)
    assert len(b.x509_authorities) == 2 and b.store is not None and not b.jwt_keys.keys


def test_spiffe_bundle() -> None:
    b = parse_bundle("example.org", spiffe_bundle(CA, jwt_keys=(jwk(RSA_KEY, "r1"), jwk(EC_KEY, "e1"))))
    assert len(b.x509_authorities) == 1
    assert {k.kid for k in b.jwt_keys.keys} == {"r1", "e1"}
    assert b.sequence == 1 and b.refresh_hint == 300


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b'{"nokeys": []}',
        b'{"keys": [{"use": "x509-svid"}]}',
        b'{"keys": [{"use": "jwt-svid", "kty": "EC"}]}',
        b"{not json",
    ],
)
def test_bad_bundles(data: bytes) -> None:
    with pytest.raises(BundleError):
        parse_bundle("example.org", data)


def test_bad_trust_domain_flags() -> None:
    for flags in (["Example.org=/x"], ["example.org/path=/x"], ["example.org"], ["a=/x", "a=/y"]):
        with pytest.raises(BundleError):
            parse_bundle_flags(flags)


def test_reload_swaps_and_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "bundle.pem"
    path.write_bytes(CA.cert_pem)
    store = BundleStore.from_flags([f"example.org={path}"])
    store.load()
    leaf2 = issue_svid(CA2, FRONTEND)
    g1 = store.current.generation
    assert resolve(resolver("", store.current), certificate=cert_field(leaf2)).status == 403
    path.write_bytes(CA2.cert_pem)
    assert store.reload()
    assert store.current.generation > g1
    assert resolve(resolver("", store.current), certificate=cert_field(leaf2)).identity.peer_verified
    path.write_bytes(b"broken")
    assert not store.reload()
    assert resolve(resolver("", store.current), certificate=cert_field(leaf2)).identity.peer_verified


def test_watcher_reloads_on_change(tmp_path: Path) -> None:
    path = tmp_path / "bundle.pem"
    path.write_bytes(CA.cert_pem)
    store = BundleStore.from_flags([f"example.org={path}"])
    store.load()
    watcher = BundleWatcher(store, debounce_ms=50)
    watcher.start()
    try:
        time.sleep(0.3)
        path.write_bytes(CA2.cert_pem)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            b = store.current.get("example.org")
            if b is not None and b.x509_authorities[0] == CA2.cert:
                break
            time.sleep(0.05)
        else:
            pytest.fail("bundle file change not picked up")
    finally:
        watcher.stop()


def test_startup_with_missing_file_fails(tmp_path: Path) -> None:
    store = BundleStore.from_flags([f"example.org={tmp_path / 'nope.pem'}"])
    with pytest.raises(OSError):
        store.load()


def test_sequence_never_goes_back(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    path.write_bytes(spiffe_bundle(CA, seq=5))
    store = BundleStore.from_flags([f"example.org={path}"])
    store.load()
    path.write_bytes(spiffe_bundle(CA2, seq=4))  # a rollback: refused, the last good one stays
    assert not store.reload()
    assert store.current.get("example.org").x509_authorities == (CA.cert,)  # type: ignore[union-attr]
    path.write_bytes(spiffe_bundle(CA2, seq=6))
    assert store.reload()
    assert store.current.get("example.org").x509_authorities == (CA2.cert,)  # type: ignore[union-attr]
