"""RequestAuthentication ``jwtRules``: compiled to ``JwtRule`` (keys, token locations, output
headers), tokens extracted from a request, claims written as header values.

A rule that cannot be used (unusable keys, audiences that are not a list) is kept with an empty
key set, so its tokens are rejected (fail closed), and the problem is logged.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extauthz.envoy.request import RequestView
from extauthz.identity.bundles import BundleSet
from extauthz.identity.jwt import DEFAULT_LOCATIONS, ClaimHeader, JwtRule, Location, StaticKeys, TokenError
from extauthz.identity.keys import JwksError, JwksRegistry, KeySet, next_version, parse_jwks
from extauthz.identity.model import SpiffeIdError, parse_spiffe_id
from extauthz.identity.xfcc import HEADER as XFCC_HEADER
from extauthz.policy.model import JwtRuleSpec

# The resolver's logger, as before the split: operators filter on its name.
log = logging.getLogger("extauthz.identity.resolver")

# A JWT (JWS compact serialization): three base64url parts, the last one possibly empty.
_BARE_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

MAX_HEADER_VALUE = 4096
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade", "x-spiffe-id", XFCC_HEADER}
)


def _duration(value: Any, default: float) -> float:
    if not isinstance(value, str):
        return default
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", value.strip())
    if not m:
        return default
    n = float(m.group(1))
    return n / 1000 if m.group(2) == "ms" else n * 60 if m.group(2) == "m" else n


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


def compile_rule(spec: JwtRuleSpec, where: str, bundles: BundleSet, jwks: JwksRegistry) -> JwtRule:
    """One ``jwtRules[]`` entry (as the loader typed it) -> the rule tokens are validated against."""
    issuer = spec.issuer
    svid_td: str | None = None
    if issuer.startswith("spiffe://"):
        try:
            sid = parse_spiffe_id(issuer)
            svid_td = sid.trust_domain if not sid.path else None
        except SpiffeIdError:
            svid_td = None
    keys: Any
    if spec.jwks:
        raw = spec.jwks
        try:
            keys = StaticKeys(
                parse_jwks(raw if isinstance(raw, Mapping) else str(raw), version=next_version())
            )
        except JwksError as exc:
            log.error(
                "%s: jwtRules issuer %s: unusable jwks (%s): its tokens are rejected", where, issuer, exc
            )
            keys = StaticKeys(KeySet(version=next_version()))
    elif spec.jwks_uri:
        try:
            keys = jwks.get(spec.jwks_uri, _duration(spec.timeout, 5.0))
        except JwksError as exc:
            log.error("%s: jwtRules issuer %s: %s: its tokens are rejected", where, issuer, exc)
            keys = StaticKeys(KeySet(version=next_version()))
    elif svid_td is not None:
        keys = BundleKeys(bundles, svid_td)
    else:
        # Neither jwks nor jwksUri: Istio discovers the keys from the issuer (OpenID discovery).
        try:
            keys = jwks.discover(issuer, _duration(spec.timeout, 5.0))
        except JwksError as exc:
            log.error(
                "%s: jwtRules issuer %s has neither jwks nor jwksUri and cannot be discovered (%s): "
                "its tokens are rejected", where, issuer, exc,
            )
            keys = StaticKeys(KeySet(version=next_version()))
    locations: list[Location] = []
    for h in spec.from_headers:
        name = _header_name(h.name)
        if name is not None:
            locations.append(Location("header", name, h.prefix))
        else:
            log.error("%s: fromHeaders entry %r ignored: not a usable header name", where, h.name)
    locations += [Location("param", n) for n in spec.from_params]
    locations += [Location("cookie", n) for n in spec.from_cookies]
    claim_headers = []
    for ch in spec.output_claim_to_headers:
        name = _header_name(ch.header)
        if name is None:
            log.error("%s: outputClaimToHeaders entry %r ignored", where, ch.header)
            continue
        claim_headers.append(ClaimHeader(name, ch.claim))
    payload_header = spec.output_payload_to_header
    return JwtRule(
        issuer=issuer,
        audiences=spec.audiences,
        keys=keys,
        locations=tuple(locations) or DEFAULT_LOCATIONS,
        payload_header=_header_name(payload_header) if payload_header else None,
        claim_headers=tuple(claim_headers),
        forward_original_token=spec.forward_original_token,
        svid_trust_domain=svid_td,
    )


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
                head = value[: len(loc.prefix)]
                if head != loc.prefix:
                    # Envoy's jwt_authn reads the prefix exactly ("Bearer "), so Istio would see
                    # no token in "bearer <jwt>" or a bare "<jwt>"; an upstream may still take it.
                    # An ALLOW must not gain from such a token and a DENY must not miss it:
                    # refuse the request (401 invalid_token). Other schemes (Basic) pass.
                    if head.lower() == loc.prefix.lower():
                        raise TokenError(f"the token's prefix must be written {loc.prefix.strip()!r}")
                    if _BARE_JWT.fullmatch(value.strip()):
                        raise TokenError(f"a token without its {loc.prefix.strip()!r} prefix")
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
