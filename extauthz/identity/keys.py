"""JSON Web Key sets: parsing with a per-key algorithm allow-list, and remote sets fetched safely.

A key is usable only with the algorithms its own type allows (or the one its ``alg`` names):
RSA -> RS*/PS*, EC -> the ES* of its curve, OKP Ed25519 -> EdDSA. Symmetric (``oct``) keys are
never loaded, so HMAC can never be verified with anything, least of all a public key.

``RemoteJwks`` fetches a ``jwksUri`` with a bounded timeout on a background thread, keeps the last
good set, refreshes it when it grows old, and refreshes on an unknown ``kid`` at most once per
interval, whatever the number of requests asking. With ``discover=True`` its URI is an issuer's
OpenID discovery document (``{issuer}/.well-known/openid-configuration``, as Istio reads an
issuer without ``jwks``/``jwksUri``): each fetch reads the document's ``jwks_uri`` first, then
the key set, under the same timeout, caching and rate limits; a document that is missing,
invalid or slow leaves the last good set (none at first: tokens are rejected).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from extauthz import metrics
from extauthz.identity.generation import Generation

log = logging.getLogger("extauthz.identity.keys")

RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALG_FOR_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
ASYMMETRIC_ALGS = RSA_ALGS | frozenset(EC_ALG_FOR_CURVE.values()) | {"EdDSA"}
MIN_RSA_BITS = 2048
MAX_JWKS_BYTES = 512 * 1024
MAX_DISCOVERY_BYTES = 64 * 1024
DISCOVERY_PATH = "/.well-known/openid-configuration"
MAX_KEYS = 256
MAX_CANDIDATES = 8


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s) URLs."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if not newurl.startswith(("https://", "http://")):
            raise urllib.error.URLError(f"refusing a redirect to {newurl[:60]!r}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def discovery_uri(issuer: str) -> str:
    """Where an issuer's OpenID configuration lives (OpenID Connect Discovery 1.0, section 4)."""
    return issuer.rstrip("/") + DISCOVERY_PATH


def _get(uri: str, timeout: float, limit: int) -> bytes:
    req = urllib.request.Request(uri, headers={"accept": "application/json"})
    with _OPENER.open(req, timeout=timeout) as resp:
        body: bytes = resp.read(limit + 1)
    if len(body) > limit:
        raise JwksError(f"document from {uri[:80]} larger than {limit} bytes")
    return body


def jwks_uri_of(document: bytes) -> str:
    """The ``jwks_uri`` of an OpenID configuration document (an http(s) URL), or JwksError."""
    try:
        doc = json.loads(document)
    except (ValueError, UnicodeError):
        raise JwksError("OpenID configuration is not JSON") from None
    uri = doc.get("jwks_uri") if isinstance(doc, dict) else None
    if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
        raise JwksError("OpenID configuration has no http(s) jwks_uri")
    return uri


class JwksError(ValueError):
    """A key set that cannot be used at all."""


@dataclass(frozen=True, slots=True)
class Key:
    """One verification key and the algorithms it may verify."""

    kid: str | None
    key: Any  # a cryptography public key object
    algorithms: frozenset[str]


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[Key, ...] = ()
    version: int = 0  # changes whenever the set is replaced (a cache of verified tokens checks it)
    by_kid: Mapping[str, tuple[Key, ...]] = field(default_factory=dict)

    @staticmethod
    def of(keys: Iterable[Key], version: int = 0) -> KeySet:
        ks = tuple(keys)
        by_kid: dict[str, list[Key]] = {}
        for k in ks:
            if k.kid is not None:
                by_kid.setdefault(k.kid, []).append(k)
        return KeySet(ks, version, {kid: tuple(v) for kid, v in by_kid.items()})

    def candidates(self, kid: str | None, alg: str) -> list[Key]:
        """Keys that may verify a token with this ``kid`` and ``alg`` (by kid when it has one).

        At most ``MAX_CANDIDATES``: a token without ``kid`` cannot make us try every key.
        """
        pool = self.by_kid.get(kid, ()) if kid is not None else self.keys
        return [k for k in pool if alg in k.algorithms][:MAX_CANDIDATES]

    def has_kid(self, kid: str) -> bool:
        return kid in self.by_kid


def _key_algorithms(jwk: Mapping[str, Any], key: Any) -> frozenset[str]:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return frozenset()
        allowed = RSA_ALGS
    elif isinstance(key, ec.EllipticCurvePublicKey):
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(key.curve.name)
        allowed = frozenset({EC_ALG_FOR_CURVE[crv]}) if crv else frozenset()
    elif isinstance(key, ed25519.Ed25519PublicKey):
        allowed = frozenset({"EdDSA"})
    else:
        return frozenset()
    alg = jwk.get("alg")
    if alg is None:
        return allowed
    return frozenset({alg}) & allowed if isinstance(alg, str) else frozenset()


def parse_key(jwk: Mapping[str, Any], *, use: str | None = "sig") -> Key | None:
    """One JWK -> Key, or None when it is unusable (wrong use, symmetric, weak, malformed)."""
    if not isinstance(jwk, Mapping) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
        return None
    key_use = jwk.get("use")
    if key_use is not None and key_use != use:
        return None
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None
    public = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth")}
    try:
        key = jwt.PyJWK(dict(public)).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        return None
    algorithms = _key_algorithms(jwk, key)
    if not algorithms:
        return None
    return Key(kid, key, algorithms)


def parse_jwks(data: Any, *, use: str | None = "sig", version: int = 0) -> KeySet:
    """A JWKS document (a JSON string or an already-decoded mapping) -> KeySet.

    Unusable keys are skipped (logged), a document that is not a JWKS raises ``JwksError``.
    """
    if isinstance(data, str | bytes):
        if len(data) > MAX_JWKS_BYTES:
            raise JwksError("JWKS document too large")
        try:
            data = json.loads(data)
        except (ValueError, UnicodeError) as exc:
            raise JwksError(f"JWKS is not JSON: {exc}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise JwksError("JWKS has no 'keys' list")
    raw = data["keys"]
    if len(raw) > MAX_KEYS:
        raise JwksError(f"JWKS has more than {MAX_KEYS} keys")
    keys = []
    for jwk in raw:
        k = parse_key(jwk, use=use)
        if k is None:
            log.debug("skipping an unusable JWK (kid %r)", jwk.get("kid") if isinstance(jwk, dict) else None)
        else:
            keys.append(k)
    return KeySet.of(keys, version)


_versions = iter(range(1, 1 << 62))
_versions_lock = threading.Lock()


def next_version() -> int:
    with _versions_lock:
        return next(_versions)


class RemoteJwks:
    """A ``jwksUri`` key set: fetched in the background, cached, refreshed at bounded rates.

    ``keys(kid)`` never blocks longer than ``wait`` seconds after a fetch began (a fetch that hangs
    does not hold up every later check: they answer at once) and never starts more than one fetch
    at a time; an unknown ``kid`` starts a fetch only when the last one began at least
    ``min_refresh_interval`` seconds ago.
    """

    def __init__(
        self,
        uri: str,
        *,
        timeout: float = 5.0,
        wait: float = 0.1,  # well under Envoy's ext_authz deadline (0.25 s by default)
        ttl: float = 300.0,
        min_refresh_interval: float = 30.0,
        clock: Any = time.monotonic,
        changes: Generation | None = None,
        discover: bool = False,
    ) -> None:
        if not uri.startswith(("https://", "http://")):
            what = "issuer" if discover else "jwksUri"
            raise JwksError(f"{what} {uri[:80]!r}: only http(s) URIs are fetched")
        self.uri = discovery_uri(uri) if discover else uri
        self.discover = discover
        self.jwks_uri = "" if discover else uri  # with discover: the last one the document named
        self.timeout = timeout
        self.wait = wait
        self.ttl = ttl
        self.min_refresh_interval = min_refresh_interval
        self._clock = clock
        self.changes = changes or Generation()  # bumped after every fetched key set
        self._lock = threading.Lock()
        self._keyset: KeySet | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._inflight: threading.Event | None = None
        self._inflight_since = 0.0
        self.fetches = 0  # fetches started (for tests and metrics)

    def start(self) -> None:
        """Begin the first fetch now, so keys are ready before the first token arrives."""
        self._maybe_fetch(force=True)

    def keys(self, kid: str | None) -> KeySet | None:
        ks = self._keyset
        now = self._clock()
        if ks is not None and (kid is None or ks.has_kid(kid)):
            if now - self._fetched_at > self.ttl:
                self._maybe_fetch(force=False)  # stale: refresh in the background, use what we have
            return ks
        # No keys yet, or an unknown kid: a fetch, rate limited; wait for it (bounded).
        event = self._maybe_fetch(force=False)
        if event is not None:
            remaining = self._inflight_since + self.wait - self._clock()
            if remaining > 0:
                event.wait(remaining)
        return self._keyset

    def _maybe_fetch(self, *, force: bool) -> threading.Event | None:
        with self._lock:
            if self._inflight is not None:
                return self._inflight
            now = self._clock()
            if (
                not force
                and self._attempted_at is not None
                and now - self._attempted_at < self.min_refresh_interval
            ):
                return None
            self._attempted_at = now
            self.fetches += 1
            event = self._inflight = threading.Event()
            self._inflight_since = now
        threading.Thread(target=self._fetch, args=(event,), name="jwks-fetch", daemon=True).start()
        return event

    def _fetch(self, event: threading.Event) -> None:
        try:
            uri = self.uri
            if self.discover:
                uri = jwks_uri_of(_get(self.uri, self.timeout, MAX_DISCOVERY_BYTES))
            keyset = parse_jwks(_get(uri, self.timeout, MAX_JWKS_BYTES), version=next_version())
            with self._lock:
                self._keyset = keyset
                self._fetched_at = self._clock()
                self.jwks_uri = uri
            # Decisions cached with the previous keys must not outlive them.
            self.changes.bump()
            metrics.jwks_fetch(self.uri, True)
            log.info("fetched %d keys from %s", len(keyset.keys), self.uri)
        except Exception as exc:  # keep the last good set
            metrics.jwks_fetch(self.uri, False)
            log.warning("cannot fetch JWKS from %s: %s", self.uri, exc)
        finally:
            with self._lock:
                self._inflight = None
            event.set()


class JwksRegistry:
    """Remote key sets by URI, shared across policy generations (a reload does not refetch)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self.changes = Generation()  # shared by every key set of this registry
        self._lock = threading.Lock()
        self._remotes: dict[str, RemoteJwks] = {}

    def get(self, uri: str, timeout: float | None = None) -> RemoteJwks:
        """The key set at ``uri`` (a ``jwksUri``)."""
        return self._get(uri, timeout, discover=False)

    def discover(self, issuer: str, timeout: float | None = None) -> RemoteJwks:
        """The key set an ``issuer`` names in its OpenID configuration (OIDC discovery)."""
        return self._get(issuer, timeout, discover=True)

    def _get(self, uri: str, timeout: float | None, *, discover: bool) -> RemoteJwks:
        key = discovery_uri(uri) if discover else uri
        with self._lock:
            remote = self._remotes.get(key)
            if remote is None or remote.discover != discover:
                opts = dict(self._options)
                if timeout is not None:
                    opts["timeout"] = timeout
                remote = RemoteJwks(uri, changes=self.changes, discover=discover, **opts)
                self._remotes[key] = remote
                remote.start()
            return remote
