"""Authentication: from a request view to an ``Identity`` (or a 401/403), per policy generation.

``IdentityContext`` lives as long as the process: trust bundles, trusted proxies, remote JWKS.
``IdentityContext.resolver(engine)`` returns the ``IdentityResolver`` compiled from that policy
generation's RequestAuthentication / PeerAuthentication resources and the bundles in force; it is
rebuilt when either changes.

``IdentityResolver.resolve(req)``, in order:
1. who is the peer: Envoy's ``source.principal``/``source.certificate``, or, when the direct peer
   is a trusted proxy, the last ``x-forwarded-client-cert`` element;
2. re-verify the peer certificate as an X509-SVID when its trust domain has a bundle; its SAN must
   equal the principal;
3. PeerAuthentication: STRICT needs a verified peer;
4. RequestAuthentication: at most one token; if present it must be valid (else 401);
5. binding: ``cnf.x5t#S256`` against the peer certificate; optionally ``sub`` == the peer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from extauthz import reasons
from extauthz.envoy.request import RequestView
from extauthz.identity.bundles import BundleSet, BundleStore
from extauthz.identity.jwt import JwtRule, TokenError, TokenValidator
from extauthz.identity.jwt_rules import claim_header_value, compile_rule, extract_tokens
from extauthz.identity.keys import JwksRegistry
from extauthz.identity.model import Identity, Token
from extauthz.identity.peer import PeerError, PeerModes, establish_peer
from extauthz.identity.svid import SvidVerifier, VerifiedSvid
from extauthz.identity.witness import TokenWants, some_token_allows
from extauthz.identity.xfcc import HEADER as XFCC_HEADER
from extauthz.identity.xfcc import TrustedProxies
from extauthz.policy.engine import Engine
from extauthz.policy.model import PolicySet
from extauthz.policy.scope import Scope


@dataclass(frozen=True, slots=True)
class Resolution:
    """The identity step's answer: an identity, or a deny (status != 200)."""

    identity: Identity = field(default_factory=Identity)
    status: int = 200
    reason: str = ""
    error: str | None = None
    challenge: str | None = None  # WWW-Authenticate value of a 401
    headers: tuple[tuple[str, str], ...] = ()  # set upstream on allow
    remove: tuple[str, ...] = ()  # removed upstream on allow (unless set)
    remove_params: tuple[str, ...] = ()  # query parameters removed upstream on allow (a token)
    # No token, though a RequestAuthentication applies: when the policies deny, the answer is 401
    # (ask for credentials) if some valid token could make them allow (``token_could_allow``).
    token_missing: bool = False

    @property
    def denied(self) -> bool:
        return self.status != 200


# RFC 6750 section 3.1: a request without credentials gets a challenge without an error code.
MISSING_TOKEN_CHALLENGE = 'Bearer realm="extauthz"'


def _challenge(error: str) -> str:
    # The description is a fixed phrase: never details of the token.
    return f'Bearer realm="extauthz", error="{error}", error_description="the access token is not valid"'


# ----------------------------------------------------------------------------- the resolver


class IdentityResolver:
    def __init__(
        self,
        policies: PolicySet,
        bundles: BundleSet,
        trusted: TrustedProxies,
        jwks: JwksRegistry,
        *,
        bind_token_to_peer: bool = False,
    ) -> None:
        root = policies.root_namespace
        self.bundles = bundles
        self.trusted = trusted
        self.bind_token_to_peer = bind_token_to_peer
        self.verifier = SvidVerifier(bundles)
        self._request_authn = tuple(
            (
                Scope.of(r, root),
                tuple(
                    compile_rule(
                        spec, f"{r.where} RequestAuthentication {r.namespace}/{r.name}", bundles, jwks
                    )
                    for spec in r.jwt_rules
                ),
            )
            for r in policies.request_authentication
        )
        self._peer_modes = PeerModes(policies.peer_authentication, root)
        self._wants = TokenWants(policies)
        rules = [rule for _, rs in self._request_authn for rule in rs]
        self.validator = TokenValidator(rules)
        # Headers a client must never smuggle through: whatever any rule outputs.
        self._output_headers = tuple(
            sorted(
                {r.payload_header for r in rules if r.payload_header}
                | {c.header for r in rules for c in r.claim_headers}
            )
        )

    # -- the entry point ---------------------------------------------------------------------

    def resolve(self, req: RequestView, now: float | None = None) -> Resolution:
        now = time.time() if now is None else now
        remove: tuple[str, ...] = (XFCC_HEADER, *self._output_headers)
        try:
            peer = establish_peer(req, self.trusted, self.verifier)
        except PeerError as exc:
            return Resolution(status=403, reason=exc.reason, error=exc.error)
        identity, cert, verified = peer.identity, peer.cert, peer.verified
        if self.peer_mode(req) == "STRICT" and verified is None:
            return Resolution(
                identity,
                403,
                reasons.MTLS_REQUIRED,
                "PeerAuthentication STRICT: no verified peer certificate",
            )
        return self._tokens(req, identity, cert, verified, remove, now)

    # -- PeerAuthentication ------------------------------------------------------------------

    def peer_mode(self, req: RequestView) -> str:
        """The mTLS mode in force (``PeerModes.mode``)."""
        return self._peer_modes.mode(req)

    # -- RequestAuthentication ---------------------------------------------------------------

    def rules_for(self, req: RequestView) -> tuple[JwtRule, ...]:
        return tuple(
            rule for scope, rules in self._request_authn if scope.applies_to(req) for rule in rules
        )

    def _tokens(
        self,
        req: RequestView,
        identity: Identity,
        cert: VerifiedSvid | None,
        verified: VerifiedSvid | None,
        remove: tuple[str, ...],
        now: float,
    ) -> Resolution:
        rules = self.rules_for(req)
        if not rules:
            return Resolution(identity, remove=remove)
        try:
            found = extract_tokens(req, rules)
        except TokenError as exc:
            return self._invalid(identity, str(exc))
        if not found:  # no token: no request principal (Istio); policy decides
            return Resolution(identity, remove=remove, token_missing=True)
        if len(found) > 1:
            return self._invalid(identity, "more than one token in the request")
        location, raw = found[0]
        try:
            token, rule = self.validator.validate(raw, rules, now)
            self._check_binding(token, cert, verified)
        except TokenError as exc:
            return self._invalid(identity, str(exc))
        identity = Identity(identity.peer, identity.peer_verified, identity.peer_not_after, token)
        headers: list[tuple[str, str]] = []
        if rule.payload_header:
            headers.append((rule.payload_header, raw.split(".")[1]))
        for ch in rule.claim_headers:
            value = claim_header_value(token.claims, ch.claim)
            if value is not None:
                headers.append((ch.header, value))
        params: tuple[str, ...] = ()
        if not rule.forward_original_token:
            # Istio removes a header token; Envoy's jwt_authn leaves a query token in the URL,
            # where access logs keep it: extauthz removes that too (query_parameters_to_remove).
            if location.kind == "header":
                remove = (*remove, location.name)
            elif location.kind == "param":
                params = (location.name,)
        return Resolution(identity, headers=tuple(headers), remove=remove, remove_params=params)

    def token_could_allow(self, engine: Engine, req: RequestView, identity: Identity) -> bool:
        """Whether some token valid for a RequestAuthentication applicable to ``req`` would make
        ``engine`` (this resolver's policy generation) allow it: the 401-or-403 question for a
        denied request without a token (``witness.py``). Off the hot path: only for such denies.
        """
        bound: str | None = None
        if self.bind_token_to_peer:
            if identity.peer is None or not identity.peer_verified:
                return False  # no token can name a verified peer that is not there
            bound = str(identity.peer)
        return some_token_allows(engine, self._wants, req, identity, bound_subject=bound)

    def _check_binding(self, token: Token, cert: VerifiedSvid | None, verified: VerifiedSvid | None) -> None:
        cnf = token.claims.get("cnf")
        if cnf is not None:
            if not isinstance(cnf, Mapping) or not isinstance(cnf.get("x5t#S256"), str):
                raise TokenError("unsupported cnf confirmation method")
            if cert is None:
                raise TokenError("certificate-bound token without a peer certificate")
            if cert.x5t_s256 != cnf["x5t#S256"]:
                raise TokenError("certificate-bound token presented with another certificate")
        if self.bind_token_to_peer and (verified is None or token.subject != str(verified.spiffe_id)):
            raise TokenError("token subject is not the verified peer")

    @staticmethod
    def _invalid(identity: Identity, error: str) -> Resolution:
        return Resolution(
            identity,
            401,
            reasons.INVALID_TOKEN,
            f"token: {error}",
            challenge=_challenge(reasons.INVALID_TOKEN),
        )


# ----------------------------------------------------------------------------- the long-lived part


class IdentityContext:
    """What outlives a policy generation: bundles, trusted proxies, remote key sets."""

    def __init__(
        self,
        bundles: BundleStore | None = None,
        trusted_proxies: Sequence[str] = (),
        jwks: JwksRegistry | None = None,
        *,
        bind_token_to_peer: bool = False,
    ) -> None:
        self.bundles = bundles or BundleStore()
        self.trusted = TrustedProxies(trusted_proxies)
        self.jwks = jwks or JwksRegistry()
        self.bind_token_to_peer = bind_token_to_peer
        self._lock = threading.Lock()
        self._cached: tuple[PolicySet, int, IdentityResolver] | None = None

    def trust_generation(self) -> int:
        """Grows with every change of trust bundles or fetched JWKS (a decision cache key part)."""
        return self.bundles.changes.value + self.jwks.changes.value

    def resolver(self, policies: PolicySet) -> IdentityResolver:
        bundles = self.bundles.current
        cached = self._cached
        if cached is not None and cached[0] is policies and cached[1] == bundles.generation:
            return cached[2]
        with self._lock:
            cached = self._cached
            if cached is not None and cached[0] is policies and cached[1] == bundles.generation:
                return cached[2]
            resolver = IdentityResolver(
                policies, bundles, self.trusted, self.jwks, bind_token_to_peer=self.bind_token_to_peer
            )
            self._cached = (policies, bundles.generation, resolver)
            return resolver
