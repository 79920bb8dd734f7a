"""Identity: who is calling. SPIFFE IDs are parsed strictly, in one place, here.

A principal that fails the parser never matches any rule (see ``Identity.peer``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from extauthz.envoy.request import RequestView

MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class SpiffeIdError(ValueError):
    """A string that is not a valid SPIFFE ID."""


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    path: str  # "" or "/seg/seg"

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"

    @property
    def principal(self) -> str:
        """Istio's principal form: the ID without the ``spiffe://`` scheme."""
        return f"{self.trust_domain}{self.path}"


def parse_spiffe_id(value: str) -> SpiffeId:
    """Parse ``value`` following the SPIFFE ID standard, strictly.

    The scheme is exactly ``spiffe`` in lower case, as the standard and go-spiffe require
    (``SPIFFE://`` and ``Spiffe://`` are rejected, never read as an alias of ``spiffe://``); the
    trust domain must already be lower case (the strict reading: an upper-case trust domain is
    rejected rather than folded); the path is case-sensitive.
    """
    if len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise SpiffeIdError("SPIFFE ID longer than 2048 bytes")
    scheme, sep, rest = value.partition("://")
    if not sep or scheme != "spiffe":
        raise SpiffeIdError("scheme is not spiffe:// (in lower case)")
    td, slash, path = rest.partition("/")
    if not td:
        raise SpiffeIdError("empty trust domain")
    if len(td) > MAX_TRUST_DOMAIN_BYTES:
        raise SpiffeIdError("trust domain longer than 255 bytes")
    if not _TRUST_DOMAIN.fullmatch(td):
        raise SpiffeIdError("trust domain has characters other than a-z 0-9 . - _")
    if not slash:
        return SpiffeId(td, "")
    for segment in path.split("/"):
        if not segment:
            raise SpiffeIdError("empty path segment or trailing '/'")
        if segment in (".", ".."):
            raise SpiffeIdError("dot segment in path")
        if not _SEGMENT.fullmatch(segment):
            raise SpiffeIdError("path has characters other than A-Z a-z 0-9 . - _")
    return SpiffeId(td, "/" + path)


def try_parse_spiffe_id(value: str) -> SpiffeId | None:
    try:
        return parse_spiffe_id(value)
    except SpiffeIdError:
        return None


@dataclass(frozen=True, slots=True)
class Token:
    """A validated token: what policies and audit records may read of it (never the token)."""

    issuer: str
    subject: str
    audiences: tuple[str, ...] = ()
    presenter: str = ""  # azp
    claims: Mapping[str, Any] = field(default_factory=dict)
    expires_at: float = 0.0  # exp, seconds since the epoch
    fingerprint: str = ""  # sha256 of the raw token: a cache key part, safe to log

    @property
    def principal(self) -> str:
        """Istio's request principal: ``iss/sub``."""
        return f"{self.issuer}/{self.subject}"


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller as established for this request.

    ``peer`` is the SPIFFE ID of the mTLS peer (None without one, or when Envoy's principal is
    not a valid SPIFFE ID); ``peer_verified`` says the service itself verified the peer
    certificate against a trust bundle; ``token`` is the validated request token, if any.
    """

    peer: SpiffeId | None = None
    peer_verified: bool = False
    peer_not_after: float | None = None  # the verified certificate's notAfter (epoch seconds)
    token: Token | None = None

    @property
    def principal(self) -> str:
        """The peer in Istio's principal form ("" when there is no valid peer identity)."""
        return self.peer.principal if self.peer is not None else ""

    @property
    def request_principal(self) -> str:
        """``iss/sub`` of the validated token ("" without one)."""
        return self.token.principal if self.token is not None else ""


def establish(req: RequestView) -> Identity:
    """Envoy's view only: the peer from ``source.principal``, nothing verified, no token.

    For tools and tests. The Check path uses ``extauthz.identity.resolver.IdentityResolver``, which also
    re-verifies the certificate, applies PeerAuthentication, XFCC and RequestAuthentication.
    """
    principal = req.source.principal
    return Identity(peer=try_parse_spiffe_id(principal) if principal else None)
