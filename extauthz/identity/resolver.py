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

import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extauthz import reasons
from extauthz.envoy.request import RequestView
from extauthz.identity.bundles import BundleSet, BundleStore
from extauthz.identity.jwt import (
    DEFAULT_LOCATIONS,
    ClaimHeader,
    JwtRule,
    Location,
    StaticKeys,
    TokenError,
    TokenValidator,
)
from extauthz.identity.keys import JwksError, JwksRegistry, KeySet, next_version, parse_jwks
from extauthz.identity.model import Identity, SpiffeIdError, Token, parse_spiffe_id, try_parse_spiffe_id
from extauthz.identity.svid import SvidError, SvidVerifier, VerifiedSvid
from extauthz.identity.xfcc import HEADER as XFCC_HEADER
from extauthz.identity.xfcc import TrustedProxies, XfccError, last_element
from extauthz.policy.model import ALLOW, AuthorizationPolicy, PolicySet
from extauthz.policy.scope import Scope

log = logging.getLogger("extauthz.identity.resolver")


MAX_HEADER_VALUE = 4096
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade", "x-spiffe-id", XFCC_HEADER}
)
_MODE_RANK = {"DISABLE": 0, "PERMISSIVE": 1, "STRICT": 2}


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
    # No token, though a RequestAuthentication applies and an applicable ALLOW policy reads the
    # token: if no policy matches, the answer is 401 (ask for credentials) rather than 403.
    token_missing: bool = False

    @property
    def denied(self) -> bool:
        return self.status != 200


# RFC 6750 section 3.1: a request without credentials gets a challenge without an error code.
MISSING_TOKEN_CHALLENGE = 'Bearer realm="extauthz"'


def _challenge(error: str) -> str:
    # The description is a fixed phrase: never details of the token.
    return f'Bearer realm="extauthz", error="{error}", error_description="the access token is not valid"'


# ----------------------------------------------------------------------------- compiling rules


def _duration(value: Any, default: float) -> float:
    if not isinstance(value, str):
        return default
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", value.strip())
    if not m:
        return default
    n = float(m.group(1))
    return n / 1000 if m.group(2) == "ms" else n * 60 if m.group(2) == "m" else n


def _strings(value: Any) -> tuple[str, ...] | None:
    """A list of strings (absent: empty); None when it is anything else."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        return None
    return tuple(value)


def _header_name(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    name = value.strip().lower()
    if not _HEADER_NAME.fullmatch(name) or name in _RESERVED_HEADERS:
        return None
    return name


@dataclass(frozen=True, slots=True)
class BundleKeys:
    """JWT-SVID keys: the ``jwt-svid`` keys of a trust domain's bundle."""

    bundles: BundleSet
    trust_domain: str

    def keys(self, kid: str | None) -> KeySet | None:
        b = self.bundles.get(self.trust_domain)
        return b.jwt_keys if b is not None else None


def compile_rule(spec: Mapping[str, Any], where: str, bundles: BundleSet, jwks: JwksRegistry) -> JwtRule:
    issuer = str(spec.get("issuer", ""))
    svid_td: str | None = None
    if issuer.lower().startswith("spiffe://"):
        try:
            sid = parse_spiffe_id(issuer)
            svid_td = sid.trust_domain if not sid.path else None
        except SpiffeIdError:
            svid_td = None
    audiences = _strings(spec.get("audiences"))
    keys: Any
    if audiences is None:  # e.g. a bare string: never guess, reject the rule's tokens
        log.error(
            "%s: jwtRules issuer %s: audiences is not a list of strings: its tokens are rejected",
            where,
            issuer,
        )
        audiences, keys = (), StaticKeys(KeySet(version=next_version()))
    elif spec.get("jwks"):
        raw = spec["jwks"]
        try:
            keys = StaticKeys(
                parse_jwks(raw if isinstance(raw, Mapping) else str(raw), version=next_version())
            )
        except JwksError as exc:
            log.error(
                "%s: jwtRules issuer %s: unusable jwks (%s): its tokens are rejected", where, issuer, exc
            )
            keys = StaticKeys(KeySet(version=next_version()))
    elif spec.get("jwksUri"):
        try:
            keys = jwks.get(str(spec["jwksUri"]), _duration(spec.get("timeout"), 5.0))
        except JwksError as exc:
            log.error("%s: jwtRules issuer %s: %s: its tokens are rejected", where, issuer, exc)
            keys = StaticKeys(KeySet(version=next_version()))
    elif svid_td is not None:
        keys = BundleKeys(bundles, svid_td)
    else:
        log.error(
            "%s: jwtRules issuer %s has neither jwks nor jwksUri: its tokens are rejected", where, issuer
        )
        keys = StaticKeys(KeySet(version=next_version()))
    locations: list[Location] = []
    from_headers = spec.get("fromHeaders") or ()
    if not isinstance(from_headers, list | tuple):
        log.error("%s: fromHeaders is not a list: ignored", where)
        from_headers = ()
    for h in from_headers:
        name = _header_name(h.get("name")) if isinstance(h, Mapping) else None
        if name is not None:
            locations.append(Location("header", name, str(h.get("prefix") or "")))
        else:
            log.error("%s: fromHeaders entry %r ignored: not a usable header name", where, h)
    for kind, field_name in (("param", "fromParams"), ("cookie", "fromCookies")):
        names = _strings(spec.get(field_name))
        if names is None:
            log.error("%s: %s is not a list of strings: ignored", where, field_name)
        locations += [Location(kind, n) for n in names or ()]
    claim_headers = []
    outputs = spec.get("outputClaimToHeaders") or ()
    for ch in outputs if isinstance(outputs, list | tuple) else ():
        name = _header_name(ch.get("header")) if isinstance(ch, Mapping) else None
        if name is None or not isinstance(ch.get("claim"), str):
            log.error("%s: outputClaimToHeaders entry %r ignored", where, ch)
            continue
        claim_headers.append(ClaimHeader(name, ch["claim"]))
    payload_header = spec.get("outputPayloadToHeader")
    return JwtRule(
        issuer=issuer,
        audiences=audiences,
        keys=keys,
        locations=tuple(locations) or DEFAULT_LOCATIONS,
        payload_header=_header_name(payload_header) if payload_header else None,
        claim_headers=tuple(claim_headers),
        forward_original_token=bool(spec.get("forwardOriginalToken", False)),
        svid_trust_domain=svid_td,
    )


def _tier(scope: Scope) -> int:
    """PeerAuthentication specificity: workload selector > namespace > root."""
    if scope.selector is not None:
        return 3
    return 1 if scope.everywhere else 2


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
                    for spec in r.spec.get("jwtRules") or ()
                ),
            )
            for r in policies.request_authentication
        )
        self._peer_authn = tuple((Scope.of(r, root), r) for r in policies.peer_authentication)
        self._token_allow = tuple(
            Scope.of(p, root)
            for p in policies.authorization
            if p.action == ALLOW and not p.dry_run and _reads_token(p)
        )
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
        principal, certificate, via = req.source.principal, req.source.certificate, "source principal"
        xfcc = req.headers.get(XFCC_HEADER)
        if xfcc is not None and self.trusted.trusts(req.source.address):
            try:
                element = last_element(xfcc)
            except XfccError as exc:
                return Resolution(
                    status=403, reason=reasons.INVALID_PEER, error=f"x-forwarded-client-cert: {exc}"
                )
            principal, certificate, via = element.uri, element.cert, "x-forwarded-client-cert URI"
        peer = None
        if principal:
            peer = try_parse_spiffe_id(principal)
            if peer is None:
                return Resolution(
                    status=403, reason=reasons.INVALID_PEER, error=f"{via} is not a valid SPIFFE ID"
                )
        verified: VerifiedSvid | None = None
        cert: VerifiedSvid | None = None
        if certificate:
            try:
                cert = self.verifier.verify_field(certificate)
            except SvidError as exc:
                return Resolution(status=403, reason=reasons.INVALID_CERT, error=str(exc))
            verified = cert if cert.verified else None
            if peer is not None and cert.spiffe_id != peer:
                return Resolution(
                    status=403,
                    reason=reasons.INVALID_PEER,
                    error=f"{via} differs from the certificate's URI SAN",
                )
            if peer is None and verified is not None:
                peer = verified.spiffe_id
        identity = Identity(
            peer=peer,
            peer_verified=verified is not None,
            peer_not_after=verified.not_after if verified is not None else None,
        )
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
        """The mTLS mode in force: the most specific applicable PeerAuthentication that sets one.

        Within one tier, the strictest mode wins (a deterministic, fail-closed tie-break).
        """
        by_tier: dict[int, list[str]] = {}
        for scope, resource in self._peer_authn:
            if not scope.applies_to(req):
                continue
            spec = resource.spec
            mode = (spec.get("mtls") or {}).get("mode", "UNSET")
            port_level = spec.get("portLevelMtls") or {}
            port_mtls = port_level.get(str(req.port)) or port_level.get(req.port)
            if port_mtls and port_mtls.get("mode", "UNSET") != "UNSET":
                mode = port_mtls["mode"]
            if mode != "UNSET":
                by_tier.setdefault(_tier(scope), []).append(mode)
        for tier in (3, 2, 1):
            if tier in by_tier:
                return max(by_tier[tier], key=lambda m: _MODE_RANK[m])
        return "PERMISSIVE"

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
            wanted = any(scope.applies_to(req) for scope in self._token_allow)
            return Resolution(identity, remove=remove, token_missing=wanted)
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
        if not rule.forward_original_token and location.kind == "header":
            remove = (*remove, location.name)
        return Resolution(identity, headers=tuple(headers), remove=remove)

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


def _reads_token(policy: AuthorizationPolicy) -> bool:
    """Whether any rule of the policy looks at the request token."""
    return any(
        src.request_principals or src.not_request_principals for rule in policy.rules for src in rule.sources
    ) or any(c.key.startswith("request.auth.") for rule in policy.rules for c in rule.conditions)


# ----------------------------------------------------------------------------- extraction


def extract_tokens(req: RequestView, rules: Sequence[JwtRule]) -> list[tuple[Location, str]]:
    """Every token occurrence in the locations the rules read (each location read once)."""
    locations = list(dict.fromkeys(loc for rule in rules for loc in rule.locations))
    found: list[tuple[Location, str]] = []
    params: list[tuple[str, str]] | None = None
    cookies: list[tuple[str, str]] | None = None
    for loc in locations:
        if loc.kind == "header":
            value = req.headers.get(loc.name)
            if value is None:
                continue
            if loc.prefix:
                if value[: len(loc.prefix)].lower() != loc.prefix.lower():
                    continue  # another scheme (Basic ...): not a token for this location
                value = value[len(loc.prefix) :]
            value = value.strip()
            if "," in value:  # Envoy joins repeated headers with ","
                raise TokenError("more than one token in the request")
            if value:
                found.append((loc, value))
        elif loc.kind == "param":
            if params is None:
                params = urllib.parse.parse_qsl(req.query, keep_blank_values=True)
            found += [(loc, v) for k, v in params if k == loc.name and v]
        else:
            if cookies is None:
                cookies = _cookies(req.headers.get("cookie", ""))
            found += [(loc, v) for k, v in cookies if k == loc.name and v]
    return found


def _cookies(header: str) -> list[tuple[str, str]]:
    out = []
    for part in header.replace(",", ";").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            out.append((name.strip(), value.strip().strip('"')))
    return out


def claim_header_value(claims: Mapping[str, Any], path: str) -> str | None:
    """A claim as a header value, or None when absent, not a scalar, or unsafe in a header."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    elif isinstance(value, int | float):
        text = str(value)
    else:
        return None
    if len(text) > MAX_HEADER_VALUE or any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in text):
        return None
    return text


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
