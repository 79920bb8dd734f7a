"""The dev PKI mints certificates that follow the X509-SVID rules (unless asked not to)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from helpers import FRONTEND_ID, DevPki, EchoServer

from extauthz.devenv.ca import (
    issue_server_cert,
    issue_svid,
    make_ca,
    write_bundle,
    write_pem_files,
)

SPIFFE_ID = "spiffe://example.org/ns/shop/sa/frontend"


def test_ca_is_a_ca() -> None:
    ca = make_ca("example.org")
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign
    assert ca.uris == ["spiffe://example.org"]
    assert ca.cert.issuer == ca.cert.subject
    assert isinstance(ca.key.curve, ec.SECP256R1)
    ca.cert.verify_directly_issued_by(ca.cert)


def test_svid_follows_the_rules() -> None:
    ca = make_ca("example.org")
    svid = issue_svid(ca, SPIFFE_ID)
    cert = svid.cert
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE_ID]
    assert svid.uris == [SPIFFE_ID]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.value.ca is False
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not ku.value.key_cert_sign
    assert not ku.value.crl_sign
    eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    cert.verify_directly_issued_by(ca.cert)
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    assert svid.root == ca.cert
    assert svid.chain == ()


def test_svid_odd_knobs() -> None:
    ca = make_ca("example.org")
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    expired = issue_svid(ca, SPIFFE_ID, not_before=past, not_after=past + datetime.timedelta(days=1))
    assert expired.cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC)
    two = issue_svid(ca, SPIFFE_ID, extra_uris=["spiffe://example.org/ns/x/sa/y"])
    assert len(two.uris) == 2
    leaf_ca = issue_svid(ca, SPIFFE_ID, is_ca=True, key_cert_sign=True)
    assert leaf_ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    no_uri = issue_svid(ca, None, dns_names=["frontend.shop"])
    assert no_uri.uris == []
    no_eku = issue_svid(ca, SPIFFE_ID, eku=None)
    with pytest.raises(x509.ExtensionNotFound):
        no_eku.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_intermediate_chain() -> None:
    root = make_ca("example.org")
    inter = make_ca("example.org", issuer=root, common_name="intermediate")
    leaf = issue_svid(inter, SPIFFE_ID)
    assert leaf.chain == (inter.cert,)
    assert leaf.root == root.cert
    leaf.cert.verify_directly_issued_by(inter.cert)
    inter.cert.verify_directly_issued_by(root.cert)
    assert leaf.chain_pem.count(b"BEGIN CERTIFICATE") == 2


def test_server_cert_sans() -> None:
    ca = make_ca("example.org")
    srv = issue_server_cert(ca, spiffe_id="spiffe://example.org/ns/shop/sa/envoy")
    san = srv.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert srv.uris == ["spiffe://example.org/ns/shop/sa/envoy"]


def test_written_files_load_in_ssl(tmp_path: Path) -> None:
    ca = make_ca("example.org")
    files = write_pem_files(issue_svid(ca, SPIFFE_ID), tmp_path, "frontend")
    assert files.key.stat().st_mode & 0o077 == 0
    ctx = ssl.create_default_context(cafile=str(files.ca))
    ctx.load_cert_chain(str(files.chain), str(files.key))
    bundle = write_bundle([ca, make_ca("other.org")], tmp_path / "bundle.pem")
    assert bundle.read_bytes().count(b"BEGIN CERTIFICATE") == 2


def test_harness_pki(pki: DevPki) -> None:
    assert pki.svids["frontend"].uris == [FRONTEND_ID]
    assert set(pki.files) >= {"frontend", "api", "intruder"}
    assert pki.ca_file.exists() and pki.server_files.chain.exists()


def test_echo_server_echoes() -> None:
    with EchoServer() as echo:
        req = urllib.request.Request(
            f"http://{echo.address}/a/b?c=d",
            data=b"hello",
            method="POST",
            headers={"X-Test": "1"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            doc = json.loads(resp.read())
        assert resp.status == 200
        assert doc["method"] == "POST"
        assert doc["path"] == "/a/b?c=d"
        assert doc["headers"]["x-test"] == "1"
        assert doc["body"] == "hello"
        assert echo.last is not None and echo.last.header("x-test") == "1"
        echo.clear()
        assert echo.requests == []
