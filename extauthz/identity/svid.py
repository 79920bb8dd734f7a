"""X509-SVID verification of the peer certificate Envoy forwards (defence in depth).

``source.certificate`` is the leaf only, PEM, URL-encoded. It is verified as an X509-SVID: exactly
one URI SAN holding a SPIFFE ID with a path; basicConstraints cA=false; keyUsage critical with
digitalSignature and without keyCertSign/cRLSign; extendedKeyUsage, if present, with serverAuth
and clientAuth; then RFC 5280 path validation (cryptography's verifier) against the bundle of the
trust domain named in its own SAN, at the current time. Verified certificates are cached until
their notAfter, per bundle generation.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import threading
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    VerificationError,
)

from extauthz.identity.bundles import BundleSet
from extauthz.identity.model import SpiffeId, SpiffeIdError, parse_spiffe_id

MAX_CERT_BYTES = 16 * 1024
MAX_CHAIN_DEPTH = 8

# webpki's end-entity rules, except that the SAN may be critical whatever the subject: SVIDs are
# often issued with a critical SAN next to a non-empty subject.
_EE_POLICY = ExtensionPolicy.webpki_defaults_ee().require_present(
    x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
)
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca()


class SvidError(ValueError):
    """A certificate that is not a valid X509-SVID for this service."""


class InvalidSanId(SvidError):
    """The certificate's URI SAN is not a valid SPIFFE ID: an invalid identity, not an alias."""


class NoBundle(SvidError):
    """No bundle is configured for the certificate's trust domain: it cannot be verified."""

    def __init__(self, spiffe_id: SpiffeId) -> None:
        super().__init__(f"no trust bundle for {spiffe_id.trust_domain}")
        self.spiffe_id = spiffe_id


@dataclass(frozen=True, slots=True)
class VerifiedSvid:
    """A peer certificate that passed the SVID checks; ``verified`` when it also chained to the
    bundle of its trust domain (False: no bundle is configured for that trust domain)."""

    spiffe_id: SpiffeId
    not_after: float  # epoch seconds
    x5t_s256: str  # base64url SHA-256 of the DER (RFC 8705 certificate thumbprint)
    verified: bool = True


def decode_certificate_field(value: str) -> x509.Certificate:
    """Envoy's URL-encoded PEM leaf -> certificate (exactly one PEM block)."""
    if len(value) > MAX_CERT_BYTES:
        raise SvidError("peer certificate larger than 16 KiB")
    try:
        pem = urllib.parse.unquote(value, errors="strict").encode("ascii", "strict")
    except UnicodeError:
        raise SvidError("peer certificate field is not URL-encoded ASCII PEM") from None
    if pem.count(b"-----BEGIN ") != 1:
        raise SvidError("peer certificate field must hold exactly one PEM block")
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise SvidError("peer certificate is not a PEM certificate") from None


def svid_id(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of a leaf X509-SVID, after the SVID-specific extension checks."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise SvidError("no subjectAltName") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise SvidError(f"an X509-SVID has exactly one URI SAN, this one has {len(uris)}")
    try:
        sid = parse_spiffe_id(uris[0])
    except SpiffeIdError as exc:
        raise InvalidSanId(f"URI SAN is not a SPIFFE ID: {exc}") from None
    if not sid.path:
        raise SvidError("a leaf SVID's SPIFFE ID has a path")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            raise SvidError("leaf certificate is a CA (cA=true)")
    except x509.ExtensionNotFound:
        pass
    try:
        ku_ext = cert.extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        raise SvidError("no keyUsage") from None
    ku = ku_ext.value
    if not ku_ext.critical or not ku.digital_signature or ku.key_cert_sign or ku.crl_sign:
        raise SvidError("keyUsage must be critical, with digitalSignature, without keyCertSign/cRLSign")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku):
            raise SvidError("extendedKeyUsage without serverAuth and clientAuth")
    except x509.ExtensionNotFound:
        pass
    return sid


def thumbprint(cert: x509.Certificate) -> str:
    der = cert.public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


class SvidVerifier:
    """Verifies peer certificates against one BundleSet; caches successes until notAfter."""

    def __init__(self, bundles: BundleSet, *, cache_size: int = 4096) -> None:
        self.bundles = bundles
        self._cache: OrderedDict[str, VerifiedSvid] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def verify_field(self, value: str, now: datetime.datetime | None = None) -> VerifiedSvid:
        """Check Envoy's ``source.certificate`` value. Raises SvidError when it is not a valid
        SVID or does not chain to its bundle; without a bundle the result has verified=False.
        Results (both kinds) are cached until the certificate's notAfter."""
        now = now or datetime.datetime.now(datetime.UTC)
        with self._lock:
            hit = self._cache.get(value)
        if hit is not None and now.timestamp() < hit.not_after:
            return hit
        cert = decode_certificate_field(value)
        try:
            result = self.verify(cert, now)
        except NoBundle as exc:
            not_after = cert.not_valid_after_utc.timestamp()
            result = VerifiedSvid(exc.spiffe_id, not_after, thumbprint(cert), verified=False)
        with self._lock:
            self._cache[value] = result
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    def verify(
        self,
        cert: x509.Certificate,
        now: datetime.datetime | None = None,
        intermediates: list[x509.Certificate] | None = None,
    ) -> VerifiedSvid:
        now = now or datetime.datetime.now(datetime.UTC)
        sid = svid_id(cert)
        bundle = self.bundles.get(sid.trust_domain)
        if bundle is None:
            raise NoBundle(sid)
        if bundle.store is None:
            raise SvidError(f"the bundle of {sid.trust_domain} has no X.509 authorities")
        verifier = (
            PolicyBuilder()
            .store(bundle.store)
            .time(now)
            .max_chain_depth(MAX_CHAIN_DEPTH)
            .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
            .build_client_verifier()
        )
        try:
            verifier.verify(cert, intermediates or [])
        except VerificationError as exc:
            raise SvidError(f"certificate does not chain to the {sid.trust_domain} bundle: {exc}") from None
        return VerifiedSvid(sid, cert.not_valid_after_utc.timestamp(), thumbprint(cert))
