"""JWT validation for RequestAuthentication ``jwtRules`` (and JWT-SVIDs).

Order of checks for one token: size and shape; a strict decode of header and payload (no
duplicate keys, no NaN); the header (no ``crit``, no key sources such as ``jku``/``x5u``/``jwk``/
``x5c``); the rule chosen by ``iss`` (or, for a JWT-SVID rule, by the trust domain of ``sub``); a
key chosen by ``kid`` whose own algorithm list holds the header's ``alg``; then the signature and
the claims with pyjwt: ``exp`` required, ``nbf``/``iat`` with a bounded skew, issuer, audience.

Errors are ``TokenError``: they end as 401 with ``WWW-Authenticate``. Their messages never carry
the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import jwt

from extauthz.identity.keys import ASYMMETRIC_ALGS, RSA_ALGS, KeySet
from extauthz.identity.model import Token, try_parse_spiffe_id

MAX_TOKEN_BYTES = 8 * 1024
# JSON nesting allowed in a token's header or payload (claims nest a few levels at most);
# deeper is a bad token, found by a linear scan before json.loads could recurse.
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
CLOCK_SKEW_S = 60
# The JWT-SVID algorithm list (no EdDSA, no HMAC, no none).
JWT_SVID_ALGS = RSA_ALGS | frozenset({"ES256", "ES384", "ES512"})
JWT_SVID_HEADER = frozenset({"alg", "kid", "typ"})
# Header parameters that name a key (or change how the token is read): never honoured.
FORBIDDEN_HEADER = frozenset({"crit", "jku", "x5u", "jwk", "x5c", "b64", "zip", "enc"})
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class TokenError(ValueError):
    """A token that must be rejected (401)."""


class KeySource(Protocol):
    def keys(self, kid: str | None) -> KeySet | None: ...


@dataclass(frozen=True, slots=True)
class StaticKeys:
    keyset: KeySet

    def keys(self, kid: str | None) -> KeySet | None:
        return self.keyset


# ----------------------------------------------------------------------------- strict decoding


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise TokenError(f"duplicate JSON member {k[:40]!r}")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise TokenError(f"JSON constant {name} is not allowed")


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` nests arrays/objects more than ``limit`` deep. Linear; brackets inside
    strings do not count. Text with fewer than ``limit`` opening brackets is not scanned."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for ch in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        if ch in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _b64_json(part: str, what: str) -> dict[str, Any]:
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise TokenError(f"{what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        text = raw.decode("utf-8")
        if json_too_deep(text):
            raise TokenError(f"{what} JSON nested deeper than {MAX_JSON_DEPTH}")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (binascii.Error, UnicodeError, ValueError) as exc:
        if isinstance(exc, TokenError):
            raise
        raise TokenError(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError(f"{what} is not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class Unverified:
    """A token split and decoded, nothing verified yet."""

    raw: str
    header: Mapping[str, Any]
    payload: Mapping[str, Any]


def decode_unverified(raw: str) -> Unverified:
    if len(raw) > MAX_TOKEN_BYTES:
        raise TokenError("token larger than 8 KiB")
    parts = raw.split(".")
    if len(parts) != 3:
        raise TokenError("token is not a JWS in compact form")
    header = _b64_json(parts[0], "header")
    payload = _b64_json(parts[1], "payload")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGS:
        raise TokenError("algorithm not allowed")
    if not parts[2] or not _B64URL.fullmatch(parts[2]):
        raise TokenError("signature is not base64url")
    bad = FORBIDDEN_HEADER.intersection(header)
    if bad:
        raise TokenError(f"header parameter {sorted(bad)[0]!r} is not allowed")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenError("kid is not a string")
    return Unverified(raw, header, payload)


# ----------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class Location:
    """Where a token may be: a header (with prefix), a query parameter or a cookie."""

    kind: str  # "header" | "param" | "cookie"
    name: str  # lower-case for headers
    prefix: str = ""


DEFAULT_LOCATIONS = (Location("header", "authorization", "Bearer "), Location("param", "access_token"))


@dataclass(frozen=True, slots=True)
class ClaimHeader:
    header: str
    claim: str


@dataclass(frozen=True, slots=True)
class JwtRule:
    issuer: str
    audiences: tuple[str, ...]
    keys: KeySource
    locations: tuple[Location, ...] = DEFAULT_LOCATIONS
    payload_header: str | None = None
    claim_headers: tuple[ClaimHeader, ...] = ()
    forward_original_token: bool = False
    svid_trust_domain: str | None = None  # a JWT-SVID rule: issuer is spiffe://TD, keys from its bundle

    def selects(self, token: Unverified) -> bool:
        if self.svid_trust_domain is not None:
            sub = token.payload.get("sub")
            sid = try_parse_spiffe_id(sub) if isinstance(sub, str) else None
            return sid is not None and sid.trust_domain == self.svid_trust_domain
        return token.payload.get("iss") == self.issuer


# ----------------------------------------------------------------------------- validation


def _audiences(payload: Mapping[str, Any]) -> tuple[str, ...]:
    aud = payload.get("aud")
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list):
        return tuple(a for a in aud if isinstance(a, str))
    return ()


def fingerprint(raw: str) -> str:
    return hashlib.sha256(raw.encode("ascii", "replace")).hexdigest()


def _verify_with(rule: JwtRule, token: Unverified, now: float) -> tuple[Token, int]:
    header, payload = token.header, token.payload
    alg = str(header["alg"])
    kid = header.get("kid")
    if rule.svid_trust_domain is not None:
        if alg not in JWT_SVID_ALGS:
            raise TokenError("algorithm not allowed for a JWT-SVID")
        if not JWT_SVID_HEADER.issuperset(header) or header.get("typ", "JWT") not in ("JWT", "JOSE"):
            raise TokenError("JWT-SVID header has fields other than alg, kid, typ")
        if not isinstance(kid, str) or not kid:
            raise TokenError("JWT-SVID without kid")
        if not rule.audiences:
            raise TokenError("JWT-SVID rule has no audiences to check")
    keyset = rule.keys.keys(kid if isinstance(kid, str) else None)
    if keyset is None:
        raise TokenError("no keys available for the issuer")
    candidates = keyset.candidates(kid if isinstance(kid, str) else None, alg)
    if not candidates:
        raise TokenError("no key for this kid and algorithm")
    options: dict[str, Any] = {
        "require": ["exp"],
        "verify_aud": bool(rule.audiences),
        "verify_iss": rule.svid_trust_domain is None,
    }
    last: Exception | None = None
    for key in candidates:
        try:
            jwt.decode(
                token.raw,
                key=key.key,
                algorithms=[alg],
                audience=list(rule.audiences) or None,
                issuer=rule.issuer if rule.svid_trust_domain is None else None,
                leeway=CLOCK_SKEW_S,
                options=options,  # type: ignore[arg-type]
            )
            break
        except jwt.InvalidSignatureError as exc:
            last = exc
            continue
        except jwt.PyJWTError as exc:
            raise TokenError(_describe(exc)) from None
    else:
        raise TokenError(_describe(last) if last else "signature verification failed")
    # pyjwt read its own clock; check the time claims again against ``now`` (one clock for all).
    exp = payload.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise TokenError("exp is not a number")
    if exp + CLOCK_SKEW_S <= now:
        raise TokenError("token expired")
    nbf = payload.get("nbf")
    if isinstance(nbf, int | float) and nbf > now + CLOCK_SKEW_S:
        raise TokenError("token not yet valid")
    iat = payload.get("iat")
    if iat is not None and (not isinstance(iat, int | float) or iat > now + CLOCK_SKEW_S):
        raise TokenError("iat is in the future")
    sub = payload.get("sub", "")
    if not isinstance(sub, str):
        raise TokenError("sub is not a string")
    if rule.svid_trust_domain is not None and try_parse_spiffe_id(sub) is None:
        raise TokenError("JWT-SVID sub is not a SPIFFE ID")
    azp = payload.get("azp", "")
    result = Token(
        issuer=rule.issuer,
        subject=sub,
        audiences=_audiences(payload),
        presenter=azp if isinstance(azp, str) else "",
        claims=MappingProxyType(dict(payload)),
        expires_at=float(exp),
        fingerprint=fingerprint(token.raw),
    )
    return result, keyset.version


def _describe(exc: Exception) -> str:
    """A short, token-free reason for the audit record."""
    names = {
        jwt.ExpiredSignatureError: "token expired",
        jwt.ImmatureSignatureError: "token not yet valid",
        jwt.InvalidAudienceError: "audience not accepted",
        jwt.InvalidIssuerError: "issuer not accepted",
        jwt.MissingRequiredClaimError: "required claim missing",
        jwt.InvalidSignatureError: "signature verification failed",
    }
    for cls, text in names.items():
        if isinstance(exc, cls):
            if isinstance(exc, jwt.MissingRequiredClaimError):
                return f"required claim {exc.claim!r} missing"
            return text
    return "token rejected"


class TokenValidator:
    """Validates tokens against a fixed list of rules; caches verified tokens until ``exp``."""

    def __init__(self, rules: Sequence[JwtRule], *, cache_size: int = 10_000) -> None:
        self.rules = tuple(rules)
        self._cache: OrderedDict[str, tuple[Token, JwtRule, int]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def validate(self, raw: str, rules: Sequence[JwtRule], now: float | None = None) -> tuple[Token, JwtRule]:
        """Validate ``raw`` against whichever of ``rules`` (a subset of ours) selects it."""
        now = time.time() if now is None else now
        key = raw
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        if hit is not None:
            token, rule, version = hit
            current = rule.keys.keys(None)
            if (
                now < token.expires_at + CLOCK_SKEW_S
                and any(r is rule for r in rules)
                and current is not None
                and current.version == version
            ):
                return token, rule
        unverified = decode_unverified(raw)
        selected = [r for r in rules if r.selects(unverified)]
        if not selected:
            raise TokenError("issuer not configured")
        error: TokenError | None = None
        for rule in selected:
            try:
                token, version = _verify_with(rule, unverified, now)
            except TokenError as exc:
                error = exc
                continue
            with self._lock:
                self._cache[key] = (token, rule, version)
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            return token, rule
        assert error is not None
        raise error
