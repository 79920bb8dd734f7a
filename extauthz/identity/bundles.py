"""SPIFFE trust bundles: per trust domain, the X.509 authorities and the JWT-SVID keys.

Sources: files given with ``--trust-bundle TD=PATH`` (PEM certificates, or the SPIFFE bundle
format: a JWKS whose keys have ``use: x509-svid`` or ``use: jwt-svid``), reloaded when they
change; and the SPIFFE Workload API (see ``extauthz.identity.workload_api``). A file bundle wins over the
Workload API for the same trust domain. The set in force is swapped atomically; a file that no
longer parses keeps its last good bundle.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.x509.verification import Store

from extauthz import metrics
from extauthz.identity.generation import Generation
from extauthz.identity.keys import Key, KeySet, next_version, parse_key
from extauthz.identity.model import SpiffeIdError, parse_spiffe_id

log = logging.getLogger("extauthz.identity.bundles")

MAX_BUNDLE_BYTES = 1024 * 1024


class BundleError(ValueError):
    """A trust bundle that cannot be used."""


@dataclass(frozen=True, slots=True)
class TrustBundle:
    trust_domain: str
    x509_authorities: tuple[x509.Certificate, ...] = ()
    jwt_keys: KeySet = field(default_factory=KeySet)
    sequence: int | None = None
    refresh_hint: int | None = None
    store: Store | None = None  # cryptography's verification store of x509_authorities

    @staticmethod
    def make(
        trust_domain: str,
        authorities: tuple[x509.Certificate, ...],
        jwt_keys: KeySet | None = None,
        sequence: int | None = None,
        refresh_hint: int | None = None,
    ) -> TrustBundle:
        return TrustBundle(
            trust_domain,
            authorities,
            jwt_keys if jwt_keys is not None else KeySet(version=next_version()),
            sequence,
            refresh_hint,
            Store(list(authorities)) if authorities else None,
        )


def check_trust_domain(td: str) -> str:
    try:
        sid = parse_spiffe_id(f"spiffe://{td}")
    except SpiffeIdError as exc:
        raise BundleError(f"trust domain {td!r}: {exc}") from None
    if sid.path:
        raise BundleError(f"trust domain {td!r} has a path")
    return sid.trust_domain


def parse_bundle(trust_domain: str, data: bytes) -> TrustBundle:
    """PEM certificates or a SPIFFE bundle (JWKS) -> TrustBundle."""
    td = check_trust_domain(trust_domain)
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError("bundle larger than 1 MiB")
    if data.lstrip()[:1] == b"{":
        return _parse_spiffe_bundle(td, data)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise BundleError(f"not PEM certificates or a SPIFFE bundle: {exc}") from None
    return TrustBundle.make(td, tuple(certs))


def _parse_spiffe_bundle(td: str, data: bytes) -> TrustBundle:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeError) as exc:
        raise BundleError(f"SPIFFE bundle is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise BundleError("SPIFFE bundle has no 'keys' list")
    certs: list[x509.Certificate] = []
    jwt_keys: list[Key] = []
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict):
            continue
        use = jwk.get("use")
        if use == "x509-svid":
            x5c = jwk.get("x5c")
            if not isinstance(x5c, list) or not x5c or not isinstance(x5c[0], str):
                raise BundleError("x509-svid key without x5c")
            try:
                certs.append(x509.load_der_x509_certificate(base64.b64decode(x5c[0], validate=True)))
            except (binascii.Error, ValueError) as exc:
                raise BundleError(f"x509-svid key with a bad certificate: {exc}") from None
        elif use == "jwt-svid":
            if not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
                raise BundleError("jwt-svid key without kid")
            key = parse_key(jwk, use="jwt-svid")
            if key is not None:
                jwt_keys.append(key)
        # unknown or missing use: ignored, as the SPIFFE bundle format says
    seq = doc.get("spiffe_sequence")
    hint = doc.get("spiffe_refresh_hint")
    return TrustBundle.make(
        td,
        tuple(certs),
        KeySet.of(jwt_keys, next_version()),
        seq if isinstance(seq, int) else None,
        hint if isinstance(hint, int) else None,
    )


def parse_jwt_bundle(trust_domain: str, data: bytes) -> KeySet:
    """A Workload API JWT bundle (JWKS of jwt-svid keys) -> KeySet."""
    return _parse_spiffe_bundle(check_trust_domain(trust_domain), data).jwt_keys


@dataclass(frozen=True, slots=True)
class BundleSet:
    """The bundles in force, by trust domain. Immutable; ``generation`` changes on every swap."""

    bundles: Mapping[str, TrustBundle] = field(default_factory=lambda: MappingProxyType({}))
    generation: int = 0

    def get(self, trust_domain: str) -> TrustBundle | None:
        return self.bundles.get(trust_domain)


def parse_bundle_flags(values: list[str]) -> dict[str, Path]:
    """``TD=PATH`` flags -> {trust domain: path}."""
    out: dict[str, Path] = {}
    for v in values:
        td, sep, path = v.partition("=")
        if not sep or not td or not path:
            raise BundleError(f"--trust-bundle {v!r}: expected TD=PATH")
        td = check_trust_domain(td)
        if td in out:
            raise BundleError(f"--trust-bundle: trust domain {td} given twice")
        out[td] = Path(path)
    return out


class BundleStore:
    """Holds the current BundleSet; rebuilt from files and Workload API updates."""

    def __init__(self, files: Mapping[str, Path] | None = None) -> None:
        self.files = dict(files or {})
        self.current = BundleSet()
        self._from_files: dict[str, TrustBundle] = {}
        self._from_api: dict[str, TrustBundle] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self.changes = Generation()  # bumped after every swap (IdentityContext.trust_generation)
        self.listeners: list[Callable[[BundleSet], None]] = []

    @staticmethod
    def from_flags(values: list[str]) -> BundleStore:
        return BundleStore(parse_bundle_flags(values))

    def load(self) -> None:
        """Read every file; raise BundleError on the first that fails (used at startup)."""
        loaded = {td: parse_bundle(td, _read(path)) for td, path in self.files.items()}
        with self._lock:
            self._from_files = loaded
            self._swap()

    def reload(self) -> bool:
        """Re-read the files; a file that fails keeps its last good bundle. True if all loaded."""
        ok = True
        loaded = dict(self._from_files)
        for td, path in self.files.items():
            try:
                bundle = parse_bundle(td, _read(path))
                old = loaded.get(td)
                if old is not None and old.sequence is not None and (bundle.sequence or 0) < old.sequence:
                    raise BundleError(f"spiffe_sequence went back from {old.sequence} to {bundle.sequence}")
                loaded[td] = bundle
            except (BundleError, OSError) as exc:
                ok = False
                log.error("trust bundle %s (%s) not reloaded, keeping the last good one: %s", td, path, exc)
        with self._lock:
            self._from_files = loaded
            self._swap()
            current = self.current
        log.info("trust bundles reloaded: generation %d, %s", current.generation, describe(current))
        return ok

    def update_from_api(
        self,
        x509_bundles: Mapping[str, tuple[x509.Certificate, ...]] | None,
        jwt_bundles: Mapping[str, KeySet] | None,
    ) -> None:
        """Apply a Workload API update (None: that half did not change)."""
        with self._lock:
            tds = set(self._from_api)
            if x509_bundles is not None:
                tds |= set(x509_bundles)
            if jwt_bundles is not None:
                tds |= set(jwt_bundles)
            new: dict[str, TrustBundle] = {}
            for td in tds:
                old = self._from_api.get(td)
                certs = (
                    x509_bundles.get(td, ())
                    if x509_bundles is not None
                    else (old.x509_authorities if old else ())
                )
                keys = jwt_bundles.get(td) if jwt_bundles is not None else (old.jwt_keys if old else None)
                if certs or keys is not None:
                    new[td] = TrustBundle.make(td, tuple(certs), keys)
            self._from_api = new
            self._swap()

    def _swap(self) -> None:
        merged = {**self._from_api, **self._from_files}
        self._generation += 1
        self.current = BundleSet(MappingProxyType(merged), self._generation)
        # Cached decisions were made with the previous bundles: none may be reused.
        self.changes.bump()
        for td, bundle in merged.items():
            not_after = min(
                (c.not_valid_after_utc.timestamp() for c in bundle.x509_authorities), default=None
            )
            metrics.bundle_expiry(td, not_after)
        for listener in self.listeners:
            try:
                listener(self.current)
            except Exception:
                log.exception("bundle listener failed")

    def watch_paths(self) -> list[Path]:
        return sorted({p.resolve().parent for p in self.files.values()})


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_BUNDLE_BYTES + 1)
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"{path}: bundle larger than 1 MiB")
    return data


class BundleWatcher:
    """Reloads the store when a bundle file's directory changes (watchfiles)."""

    def __init__(self, store: BundleStore, *, debounce_ms: int = 200) -> None:
        self._store = store
        self._stop = threading.Event()
        self._debounce_ms = debounce_ms
        self._thread = threading.Thread(target=self._run, name="bundle-watcher", daemon=True)

    def start(self) -> None:
        if self._store.files:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        from watchfiles import watch

        try:
            for changes in watch(
                *self._store.watch_paths(),
                stop_event=self._stop,
                debounce=self._debounce_ms,
                recursive=False,
                raise_interrupt=False,
            ):
                if changes:
                    self._store.reload()
        except Exception:
            log.exception("trust bundle watcher stopped; reload with SIGHUP")


def describe(bundles: BundleSet) -> dict[str, Any]:
    """A summary for logs: trust domain -> counts (never key material)."""
    return {
        td: {"x509_authorities": len(b.x509_authorities), "jwt_keys": len(b.jwt_keys.keys)}
        for td, b in bundles.bundles.items()
    }
