"""Development PKI: a throw-away CA, X509-SVIDs and a server certificate.

Meant for local demos and tests, never for production.  Everything is EC P-256
and SHA-256.  The issuing functions take a few knobs (extra URI SANs, a CA flag
on a leaf, an arbitrary validity window, no EKU, ...) so adversarial tests can
mint certificates that break the X509-SVID rules on purpose.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_EKU",
    "Issued",
    "PemFiles",
    "issue_server_cert",
    "issue_svid",
    "make_ca",
    "new_key",
    "write_bundle",
    "write_pem_files",
]

DEFAULT_EKU: tuple[x509.ObjectIdentifier, ...] = (
    ExtendedKeyUsageOID.SERVER_AUTH,
    ExtendedKeyUsageOID.CLIENT_AUTH,
)

_BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Issued:
    """A certificate, its private key and the issuing chain above it (leaf first order)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...] = ()
    """Intermediates between ``cert`` and the root, nearest first; excludes the root."""
    root: x509.Certificate | None = None
    """The self-signed root above ``cert`` (``None`` when ``cert`` is itself a root)."""

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """PKCS#8, unencrypted."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def chain_pem(self) -> bytes:
        """The certificate followed by its intermediates (what a TLS peer presents)."""
        return self.cert_pem + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    @property
    def root_pem(self) -> bytes:
        """PEM of the trust anchor: the root above this certificate, or itself if a root."""
        anchor = self.root if self.root is not None else self.cert
        return anchor.public_bytes(serialization.Encoding.PEM)

    @property
    def uris(self) -> list[str]:
        """The URI SANs of the certificate (empty without a SAN extension)."""
        try:
            san = self.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return []
        return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


@dataclass(frozen=True)
class PemFiles:
    """Paths of the PEM files written for one :class:`Issued`."""

    cert: Path
    """The certificate alone."""
    key: Path
    """The private key (mode 0600)."""
    chain: Path
    """The certificate followed by its intermediates."""
    ca: Path
    """The trust anchor (root) of the certificate."""
    extra: dict[str, Path] = field(default_factory=dict)


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def _window(
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
    valid_for: datetime.timedelta,
) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    start = not_before if not_before is not None else now - _BACKDATE
    end = not_after if not_after is not None else now + valid_for
    return start, end


def _name(common_name: str | None, organization: str | None = None) -> x509.Name:
    attrs: list[x509.NameAttribute[str]] = []
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if common_name:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _san(
    uris: Iterable[str], dns_names: Iterable[str], ips: Iterable[str]
) -> x509.SubjectAlternativeName | None:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    return x509.SubjectAlternativeName(names) if names else None


def _key_usage(*, digital_signature: bool, key_encipherment: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(
    trust_domain: str = "example.org",
    *,
    issuer: Issued | None = None,
    common_name: str | None = None,
    include_spiffe_uri: bool = True,
    path_length: int | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    valid_for: datetime.timedelta = datetime.timedelta(days=1),
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Issued:
    """Mint a CA for ``trust_domain``: a self-signed root, or an intermediate under ``issuer``.

    The CA carries basicConstraints cA=true (critical), keyUsage keyCertSign+cRLSign
    (critical) and, unless ``include_spiffe_uri`` is false, the URI SAN ``spiffe://TD``.
    """
    key = key or new_key()
    start, end = _window(not_before, not_after, valid_for)
    subject = _name(common_name or f"{trust_domain} dev CA", "extauthz-devpki")
    if issuer is None:
        issuer_name, signing_key = subject, key
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    else:
        issuer_name, signing_key = issuer.cert.subject, issuer.key
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_encipherment=False, cert_sign=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
    )
    if include_spiffe_uri:
        san = _san([f"spiffe://{trust_domain}"], [], [])
        assert san is not None
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(signing_key, hashes.SHA256())
    if issuer is None:
        return Issued(cert=cert, key=key)
    chain = (issuer.cert, *issuer.chain) if issuer.root is not None else ()
    return Issued(cert=cert, key=key, chain=chain, root=issuer.root or issuer.cert)


def issue_svid(
    ca: Issued,
    spiffe_id: str | None,
    *,
    extra_uris: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    common_name: str | None = None,
    is_ca: bool = False,
    key_cert_sign: bool = False,
    key_encipherment: bool = True,
    eku: Sequence[x509.ObjectIdentifier] | None = DEFAULT_EKU,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    valid_for: datetime.timedelta = datetime.timedelta(hours=1),
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Issued:
    """Issue an X509-SVID for ``spiffe_id`` signed by ``ca``.

    A conforming SVID (the defaults) has exactly one URI SAN (the SPIFFE ID),
    basicConstraints cA=false, keyUsage critical digitalSignature+keyEncipherment and
    EKU serverAuth+clientAuth.  Knobs for non-conforming ones:

    * ``spiffe_id=None``: no URI SAN at all; ``extra_uris``: more URI SANs after it;
    * ``dns_names`` / ``ip_addresses``: more SANs;
    * ``is_ca`` / ``key_cert_sign``: a leaf that claims to be a CA / may sign certificates;
    * ``eku=None``: no extendedKeyUsage extension; ``eku=[...]``: exactly those purposes;
    * ``not_before`` / ``not_after``: any validity window (e.g. already expired).
    """
    key = key or new_key()
    start, end = _window(not_before, not_after, valid_for)
    uris = ([spiffe_id] if spiffe_id is not None else []) + list(extra_uris)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, "extauthz-devpki"))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            _key_usage(
                digital_signature=True,
                key_encipherment=key_encipherment,
                cert_sign=key_cert_sign,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    san = _san(uris, dns_names, ip_addresses)
    if san is not None:
        # RFC 5280: the SAN must be critical when the subject is empty.
        builder = builder.add_extension(san, critical=common_name is None)
    cert = builder.sign(ca.key, hashes.SHA256())
    chain = (ca.cert, *ca.chain) if ca.root is not None else ()
    return Issued(cert=cert, key=key, chain=chain, root=ca.root or ca.cert)


def issue_server_cert(
    ca: Issued,
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    spiffe_id: str | None = None,
    common_name: str | None = "localhost",
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    valid_for: datetime.timedelta = datetime.timedelta(hours=1),
) -> Issued:
    """Issue a TLS server certificate (for Envoy's listener).

    SANs: ``spiffe_id`` first if given (Envoy reports it as ``destination.principal``),
    then ``dns_names`` (default ``localhost``) and ``ip_addresses`` (default 127.0.0.1).
    """
    return issue_svid(
        ca,
        spiffe_id,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        common_name=common_name,
        not_before=not_before,
        not_after=not_after,
        valid_for=valid_for,
    )


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def write_pem_files(issued: Issued, directory: Path | str, name: str) -> PemFiles:
    """Write ``NAME.crt``, ``NAME.key``, ``NAME-chain.crt`` and ``NAME-ca.crt`` to ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    return PemFiles(
        cert=_write(d / f"{name}.crt", issued.cert_pem),
        key=_write(d / f"{name}.key", issued.key_pem, 0o600),
        chain=_write(d / f"{name}-chain.crt", issued.chain_pem),
        ca=_write(d / f"{name}-ca.crt", issued.root_pem),
    )


def write_bundle(cas: Iterable[Issued], path: Path | str) -> Path:
    """Write the certificates of ``cas`` concatenated as one PEM trust bundle."""
    return _write(Path(path), b"".join(ca.cert_pem for ca in cas))
