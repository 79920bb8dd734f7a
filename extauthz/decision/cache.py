"""The decision cache: a decision is reused only for a request that is the same in every input
the decision could depend on.

The key is a tuple (compared element by element, never a joined string): ``(inputs, path,
query)``, where ``inputs`` is a tuple of everything but the path and the query (entries that
differ only in those share one ``inputs`` object, ``DecisionCache.share``):

* the policy set's generation and the trust generation (``bundle_generation``, below);
* the scope labels (``context_extensions``, all of them);
* everything identity is established from: Envoy's source principal, the peer certificate Envoy
  forwarded, the source address (trusted-proxy decisions and ``ipBlocks`` read it), the
  ``authorization`` and ``x-forwarded-client-cert`` headers and every header a
  RequestAuthentication takes tokens from (the token fingerprint: a token's claims are a
  function of its bytes and the key set, which the bundle generation covers);
* the destination: principal (namespace scoping), address, port, SNI;
* the request line: method, host, canonical path;
* the value of every header the compiled rules read (``Engine.reads.headers``), absent (``None``)
  distinct from empty; the whole query string when a rule reads a query parameter or a
  RequestAuthentication may take its token from one (``access_token``).

Values longer than ``DIGEST_OVER`` characters (certificates, tokens) are replaced by
``(DIGEST, sha256)``: a tuple, so never equal to a plain string value.

An entry expires at the earliest of: ``ttl`` after it was stored, the token's ``exp``, the peer
certificate's ``notAfter``. Only allows, policy denies and the 401 of a missing token
(``reasons.CACHEABLE``) are stored; errors, malformed and non-canonical requests, invalid
credentials are decided again every time.

A cache hit does not need the request view: ``message_key`` computes the same key from the decoded
CheckRequest's fields (and refuses, returning None, wherever ``from_check_request`` would build
the view differently or mark the request non-canonical), and CheckCore answers the hit from the
stored response bytes and the cached decision's ``input`` (issue 14).

``bundle_generation`` is the hook for trust material: a callable returning a number that grows
with every change of trust bundles or JWKS (``IdentityContext.trust_generation``); every entry
stored before a change stops matching.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from extauthz.envoy.request import (
    AUTHORITY,
    METHOD_TOKEN,
    RequestView,
    path_problem,
    split_host,
)
from extauthz.policy.engine import Engine

DIGEST = "sha256"
DIGEST_OVER = 128
# Headers identity may be established from, whatever the policies say.
IDENTITY_HEADERS = frozenset({"authorization", "x-forwarded-client-cert"})


Key = tuple[Hashable, ...]
KEY_PATH = 1  # where a key holds the canonical path (make_key, message_key)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class KeyPlan:
    """Which variable inputs one compiled policy set makes a key read (computed once per set)."""

    generation: int
    headers: tuple[str, ...]  # sorted, lower case
    query: bool


def token_headers(engine: Engine) -> frozenset[str]:
    """Headers a RequestAuthentication of ``engine`` takes tokens from (``fromHeaders``, and
    ``cookie`` with ``fromCookies``), lower case; ``authorization`` is in IDENTITY_HEADERS."""
    headers: set[str] = set()
    for ra in engine.policies.request_authentication:
        for rule in ra.jwt_rules:
            for h in rule.from_headers:
                headers.add(h.name.strip().lower())  # as identity reads it
            if rule.from_cookies:
                headers.add("cookie")
    return frozenset(headers)


def plan_for(engine: Engine) -> KeyPlan:
    headers = set(engine.reads.headers) | IDENTITY_HEADERS | token_headers(engine)
    # Istio's default token locations include the access_token parameter.
    query = bool(engine.reads.query_params) or bool(engine.policies.request_authentication)
    return KeyPlan(engine.generation, tuple(sorted(headers)), query)


def _v(value: str | None) -> Hashable:
    if value is None or len(value) <= DIGEST_OVER:
        return value
    return (DIGEST, hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest())


def make_key(plan: KeyPlan, bundle_generation: int, req: RequestView) -> Key:
    """The structured key of ``req`` under ``plan``."""
    h = req.headers
    inputs = (
        plan.generation,
        bundle_generation,
        tuple(sorted(req.context_extensions.items())),
        req.source.principal,
        _v(req.source.certificate),
        req.source.address,
        req.destination.principal,
        req.destination.address,
        req.port,
        req.sni,
        req.method,
        req.host,
        tuple(_v(h.get(name)) for name in plan.headers),
    )
    return (inputs, req.path, _v(req.query) if plan.query else None)  # path: KEY_PATH


def message_key(plan: KeyPlan, bundle_generation: int, msg: Any) -> Key | None:
    """``make_key(plan, bundle_generation, from_check_request(msg))`` read straight from the
    decoded CheckRequest, without building the view: what a cache hit needs.

    None whenever the view would differ from these raw fields or mark the request as not
    canonical (then the caller builds the view and decides as usual): a header name that is not
    lower case, headers only in ``header_map``, a path, method or host ``from_check_request``
    would refuse. tests/decision/test_cache_message_key.py holds it equal to ``make_key``.
    """
    attrs = msg.attributes
    http = attrs.request.http
    h = http.headers
    if not h:
        return None  # maybe header_map: the view joins it
    if not "".join(h).islower():  # one pass over the map (slow to iterate); no letters: False
        return None  # the view lowers names (and refuses clashes)
    raw_path = http.path or h.get(":path", "")
    path, sep, query = raw_path.partition("?")
    method = http.method or h.get(":method", "")
    host = http.host or h.get(":authority", "") or h.get("host", "")
    if (
        path_problem(path) is not None
        or not METHOD_TOKEN.fullmatch(method)
        or (host and not AUTHORITY.fullmatch(host))
    ):
        return None
    src, dst = attrs.source, attrs.destination
    dst_sock = dst.address.socket_address
    ext = attrs.context_extensions
    inputs = (
        plan.generation,
        bundle_generation,
        tuple(sorted(ext.items())) if ext else (),
        src.principal,
        _v(src.certificate),
        src.address.socket_address.address,
        dst.principal,
        dst_sock.address,
        int(dst_sock.port_value),
        attrs.tls_session.sni,
        method,  # as sent, as the view keeps it (get and GET decide differently)
        split_host(host),
        tuple([_v(h.get(name)) for name in plan.headers]),
    )
    return (inputs, path, _v(query if sep else "") if plan.query else None)  # path: KEY_PATH


@dataclass(frozen=True, slots=True)
class Entry:
    value: Any
    expires_at: float  # epoch seconds


class DecisionCache:
    """A bounded map from request keys to decisions, each with its own expiry. Thread-safe.

    When full, the least recently used entry goes. An expired entry is dropped when next looked
    up (or evicted when unused); it is never returned. (An OrderedDict in LRU order plus an
    expiry per entry: one table per entry where cachetools' LRUCache kept three, and cheaper per
    lookup than its TLRUCache, bench/cache_cost.py.)

    Memory (issue 14): entries share what is equal between them. ``put`` replaces the key's
    ``inputs`` by an equal tuple already kept, and ``share`` does the same for the parts of a
    value (the prepared response, the record template, the decision): an entry then costs its
    own path and little more. The table of shared objects is emptied when it reaches
    ``share_limit`` objects (entries keep theirs; sharing starts again from the next ones).
    """

    def __init__(
        self,
        maxsize: int = 10000,
        ttl: float = 30.0,
        *,
        clock: Callable[[], float] = time.time,
        bundle_generation: Callable[[], int] = lambda: 0,
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self.bundle_generation = bundle_generation
        self._maxsize = maxsize
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.share_limit = max(1024, maxsize)
        self._shared: dict[Any, Any] = {}
        self._plan: tuple[Engine, KeyPlan] | None = None
        self.hits = 0
        self.misses = 0

    def key(self, engine: Engine, req: RequestView) -> Key:
        return make_key(self.plan(engine), self.bundle_generation(), req)

    def message_key(self, engine: Engine, msg: Any) -> Key | None:
        """``key(engine, from_check_request(msg))`` without the view, or None (see
        ``message_key``)."""
        return message_key(self.plan(engine), self.bundle_generation(), msg)

    def plan(self, engine: Engine) -> KeyPlan:
        """The key plan of ``engine`` (computed once per policy set)."""
        p = self._plan
        if p is None or p[0] is not engine:
            plan = plan_for(engine)
            with self._lock:
                if p is not None and p[0] is not engine and p[1].generation == plan.generation:
                    # A different set under the same generation number: keys would collide.
                    self._entries.clear()
                    self._shared.clear()
                self._plan = (engine, plan)
        else:
            plan = p[1]
        return plan

    def get(self, key: Key) -> Any | None:
        now = self.clock()
        with self._lock:
            entries = self._entries
            entry = entries.get(key)
            if entry is not None:
                if now < entry.expires_at:
                    self.hits += 1
                    entries.move_to_end(key)
                    return entry.value
                del entries[key]
            self.misses += 1
            return None

    def put(self, key: Key, value: Any, *not_after: float | None) -> None:
        """Store ``value`` until ``ttl`` from now or the earliest of ``not_after`` (epoch s)."""
        now = self.clock()
        expires = now + self.ttl
        for t in not_after:
            if t:  # None or 0: no bound
                expires = min(expires, t)
        if expires <= now or self._maxsize <= 0:
            return  # already expired (a token past exp): nothing to keep
        if key:  # a key's inputs (make_key): shared with the entries that have equal ones
            key = (self.share(key[0]), *key[1:])
        with self._lock:
            entries = self._entries
            entries[key] = Entry(value, expires)
            entries.move_to_end(key)
            while len(entries) > self._maxsize:
                entries.popitem(last=False)

    def share(self, value: T, key: Hashable = None) -> T:
        """An object equal to ``value`` (or filed under ``key``, which must determine it), the
        same one for every equal value shared so far (``value`` itself when it is not
        hashable): what entries keep, kept once."""
        shared = self._shared
        try:
            found: T = shared.setdefault(value if key is None else key, value)
        except TypeError:
            return value
        if len(shared) > self.share_limit:
            shared.clear()
        return found

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._shared.clear()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def maxsize(self) -> float:
        return self._maxsize
