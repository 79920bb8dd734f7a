"""Who the peer is: its principal (Envoy's, or a trusted proxy's XFCC element), its certificate
re-verified as an X509-SVID, and the PeerAuthentication mTLS mode in force for a request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from extauthz import reasons
from extauthz.envoy.request import RequestView
from extauthz.identity.model import Identity, try_parse_spiffe_id
from extauthz.identity.svid import InvalidSanId, SvidError, SvidVerifier, VerifiedSvid
from extauthz.identity.xfcc import HEADER as XFCC_HEADER
from extauthz.identity.xfcc import TrustedProxies, XfccError, last_element
from extauthz.policy.model import UNSET, PeerAuthentication
from extauthz.policy.scope import Scope

_MODE_RANK = {"DISABLE": 0, "PERMISSIVE": 1, "STRICT": 2}


class PeerError(Exception):
    """The peer cannot be established (a 403 with ``reason``)."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error


@dataclass(frozen=True, slots=True)
class Peer:
    """The established peer: ``identity`` (no token yet), the certificate and, if verified, it."""

    identity: Identity
    cert: VerifiedSvid | None
    verified: VerifiedSvid | None


def establish_peer(req: RequestView, trusted: TrustedProxies, verifier: SvidVerifier) -> Peer:
    """Envoy's ``source.principal``/``source.certificate`` or, when the direct peer is a trusted
    proxy, the last ``x-forwarded-client-cert`` element; the certificate is re-verified as an
    X509-SVID when its trust domain has a bundle, and its SAN must equal the principal.
    """
    principal, certificate, via = req.source.principal, req.source.certificate, "source principal"
    xfcc = req.headers.get(XFCC_HEADER)
    if xfcc is not None and trusted.trusts(req.source.address):
        try:
            element = last_element(xfcc)
        except XfccError as exc:
            raise PeerError(reasons.INVALID_PEER, f"x-forwarded-client-cert: {exc}") from exc
        principal, certificate, via = element.uri, element.cert, "x-forwarded-client-cert URI"
    peer = None
    if principal:
        peer = try_parse_spiffe_id(principal)
        if peer is None:
            raise PeerError(reasons.INVALID_PEER, f"{via} is not a valid SPIFFE ID")
    verified: VerifiedSvid | None = None
    cert: VerifiedSvid | None = None
    if certificate:
        try:
            cert = verifier.verify_field(certificate)
        except InvalidSanId as exc:  # SPIFFE://..., spiffe://Td/...: an invalid identity
            raise PeerError(reasons.INVALID_PEER, str(exc)) from exc
        except SvidError as exc:
            raise PeerError(reasons.INVALID_CERT, str(exc)) from exc
        verified = cert if cert.verified else None
        if peer is not None and cert.spiffe_id != peer:
            raise PeerError(reasons.INVALID_PEER, f"{via} differs from the certificate's URI SAN")
        if peer is None and verified is not None:
            peer = verified.spiffe_id
    identity = Identity(
        peer=peer,
        peer_verified=verified is not None,
        peer_not_after=verified.not_after if verified is not None else None,
    )
    return Peer(identity, cert, verified)


def _tier(scope: Scope) -> int | None:
    """PeerAuthentication specificity, as Istio composes it: workload (3) > namespace (2) > mesh (1).

    A resource whose selector has no labels (absent, ``selector: {}``, ``matchLabels: {}``) is
    namespace-wide, or mesh-wide in the root namespace. A root-namespace resource *with* labels
    is ignored by Istio (None): it neither overrides a namespace's mode nor applies mesh-wide.
    """
    if scope.selector:
        return None if scope.everywhere else 3
    return 1 if scope.everywhere else 2


class PeerModes:
    """The PeerAuthentication resources of one policy generation."""

    def __init__(self, resources: Sequence[PeerAuthentication], root_namespace: str) -> None:
        self._peer_authn = tuple(
            (scope, tier, r)
            for r in resources
            for scope in (Scope.of(r, root_namespace),)
            for tier in (_tier(scope),)
            if tier is not None
        )

    def mode(self, req: RequestView) -> str:
        """The mTLS mode in force: the most specific applicable PeerAuthentication that sets one
        (``UNSET`` inherits from the next level; the default is PERMISSIVE). ``portLevelMtls``
        is read on workload resources only (the loader refuses it elsewhere, as Istio does).

        Within one tier, the strictest mode wins (a deterministic, fail-closed tie-break; Istio
        takes the oldest resource).
        """
        by_tier: dict[int, list[str]] = {}
        for scope, tier, resource in self._peer_authn:
            if not scope.applies_to(req):
                continue
            mode = resource.mtls_mode
            if tier == 3:
                port_mode = resource.port_level_mtls.get(str(req.port), UNSET)
                if port_mode != UNSET:
                    mode = port_mode
            if mode != UNSET:
                by_tier.setdefault(tier, []).append(mode)
        for tier in (3, 2, 1):
            if tier in by_tier:
                return max(by_tier[tier], key=lambda m: _MODE_RANK[m])
        return "PERMISSIVE"
