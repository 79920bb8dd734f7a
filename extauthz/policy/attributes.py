"""What a request attribute is read as: the readers compiled rules call, and the read set.

Every reader returns the attribute's values as a tuple: () when the attribute is absent. A reader
takes a ``Context`` (the request view and the caller's established identity).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extauthz.envoy.request import RequestView
from extauthz.identity.model import Identity
from extauthz.policy.model import AuthorizationPolicy

XFF_HEADER = "x-forwarded-for"


@dataclass(frozen=True, slots=True)
class Context:
    """What a predicate may read: the request and the caller's established identity."""

    request: RequestView
    identity: Identity


Predicate = Callable[[Context], bool]


@dataclass(frozen=True, slots=True)
class ReadSet:
    """Which request inputs the compiled rules read, beyond the fixed attributes.

    The decision cache keys on exactly these (plus the identity and the request line), so the
    engine must report every header, query parameter and claim path a rule can look at.

    ``attributes`` names the other request attributes some rule reads, from this closed set:
    ``source.ip`` (the direct peer address), ``remote.ip`` (the original client: the direct peer,
    or with ``xff_num_trusted_hops`` > 0 also the ``x-forwarded-for`` header, which is then in
    ``headers`` too), ``destination.ip``, ``destination.port``, ``connection.sni``,
    ``request.authority`` (the ``:authority`` as sent, with its port, for ``hosts``),
    ``context_extensions`` (selectors). Method, path, peer identity and token are always read.
    """

    headers: frozenset[str] = frozenset()  # lower-case header names
    query_params: frozenset[str] = frozenset()
    claims: frozenset[tuple[str, ...]] = frozenset()  # claim paths, e.g. ("groups",) or ("a", "b")
    attributes: frozenset[str] = frozenset()


def client_ip(req: RequestView, trusted_hops: int) -> str:
    """The original client address (``remote.ip``).

    ``trusted_hops`` = 0: the direct peer, ``x-forwarded-for`` is ignored. N > 0: N trusted
    proxies stand in front of Envoy, each appending the address it saw to ``x-forwarded-for``;
    the client is the Nth address from the right. An entry Envoy itself appended for the direct
    peer (``use_remote_address: true``) is dropped first, so both Envoy modes agree. With fewer
    entries than N, the direct peer (what Envoy does too).
    """
    peer = req.source.address
    if trusted_hops <= 0:
        return peer
    xff = req.headers.get(XFF_HEADER)
    if not xff:
        return peer
    hops = [h.strip() for h in xff.split(",")]
    if hops and hops[-1] == peer:
        hops.pop()
    if len(hops) < trusted_hops:
        return peer
    return hops[-trusted_hops]


def _one(value: str) -> tuple[str, ...]:
    return (value,) if value else ()


def _authority(req: RequestView) -> str:
    """The host as the request wrote it (port included), lower case: what Istio's hosts match."""
    h = req.headers
    raw = h.get(":authority") or h.get("host")
    return raw.strip().lower() if raw else req.host


Reader = Callable[[Context], tuple[str, ...]]


def read_principal(ctx: Context) -> tuple[str, ...]:
    return _one(ctx.identity.principal)


def read_request_principal(ctx: Context) -> tuple[str, ...]:
    return _one(ctx.identity.request_principal)


def read_source_ip(ctx: Context) -> tuple[str, ...]:
    return _one(ctx.request.source.address)


def remote_ip_reader(trusted_hops: int) -> Reader:
    if trusted_hops <= 0:
        return read_source_ip
    return lambda ctx: _one(client_ip(ctx.request, trusted_hops))


def read_host(ctx: Context) -> tuple[str, ...]:
    """Istio's reading: the authority as sent, port included (``hosts: [h]`` is not ``h:80``)."""
    return _one(_authority(ctx.request))


def read_host_spellings(ctx: Context) -> tuple[str, ...]:
    """Every spelling of the destination host: as sent, and without port and trailing dot.

    Used where matching more can only deny more (see ``_field``): a DENY on ``h`` then also
    catches ``h:8443`` and ``h.``, which Envoy routes to the same place.
    """
    authority = _authority(ctx.request)
    bare = ctx.request.host
    if not authority or authority == bare:
        return _one(bare)
    if not bare:
        return (authority,)
    _, colon, port = authority.rpartition(":")
    if colon and port.isdigit() and f"{bare}:{port}" != authority:
        return (authority, bare, f"{bare}:{port}")  # h.:8443 is also h:8443
    return (authority, bare)


def read_port(ctx: Context) -> tuple[str, ...]:
    return (str(ctx.request.port),) if ctx.request.port else ()


def read_method(ctx: Context) -> tuple[str, ...]:
    return _one(ctx.request.method)


def read_path(ctx: Context) -> tuple[str, ...]:
    return _one(ctx.request.path)


def read_destination_ip(ctx: Context) -> tuple[str, ...]:
    return _one(ctx.request.destination.address)


def read_sni(ctx: Context) -> tuple[str, ...]:
    return _one(ctx.request.sni)


def read_audiences(ctx: Context) -> tuple[str, ...]:
    token = ctx.identity.token
    return tuple(a for a in token.audiences if a) if token is not None else ()


def read_presenter(ctx: Context) -> tuple[str, ...]:
    token = ctx.identity.token
    return _one(token.presenter) if token is not None else ()


def claim_values(claims: Mapping[str, Any], path: Sequence[str]) -> tuple[str, ...]:
    """The string values at ``path`` in a token's claims; a list claim yields its string items.

    Anything else (a number, a mapping, a missing step) yields nothing: it cannot match a value.
    """
    node: Any = claims
    for step in path:
        if not isinstance(node, Mapping) or step not in node:
            return ()
        node = node[step]
    if isinstance(node, str):
        return _one(node)
    if isinstance(node, list | tuple):
        return tuple(v for v in node if isinstance(v, str) and v)
    return ()


def claims_reader(path: tuple[str, ...]) -> Reader:
    def read(ctx: Context) -> tuple[str, ...]:
        token = ctx.identity.token
        return claim_values(token.claims, path) if token is not None else ()

    return read


MAX_NAME_SEPARATORS = 8  # '-'/'_' in a header name a condition reads: 2**8 spellings at most
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_reader(name: str) -> Reader:
    """Istio's reading: the value as Envoy joined it. A value with a control character (Envoy's
    codecs refuse those) reads as absent here, so an ALLOW never matches on it; the DENY reading
    (``header_spellings_reader``) reads what an upstream may make of it."""

    def read(ctx: Context) -> tuple[str, ...]:
        v = ctx.request.headers.get(name)
        return (v,) if v is not None and not _CONTROL.search(v) else ()

    return read


def header_name_spellings(name: str) -> tuple[str, ...]:
    """``name`` with each '-' or '_' written either way: the names an upstream that folds '_'
    into '-' (or back) reads as ``name`` (``x-user`` and ``x_user``). ``name`` first."""
    spellings = [""]
    for ch in name:
        options = "-_" if ch in "-_" else ch
        spellings = [s + o for s in spellings for o in options]
    return (name, *(s for s in spellings if s != name))


def value_spellings(value: str) -> tuple[str, ...]:
    """What an upstream may read in one header value: as sent, and each comma-separated element
    with its whitespace trimmed."""
    if "," not in value and value == value.strip():
        return (value,)
    return tuple(dict.fromkeys((value, *(e.strip() for e in value.split(",")))))


def header_unreadable(name: str) -> Predicate:
    """Whether some spelling of header ``name`` holds a control character (NUL, CR, ...): an
    upstream may read such a value as anything (truncate, drop, replace), so the DENY reading
    counts it as matching every value (Envoy's codecs refuse such values before they arrive)."""
    names = header_name_spellings(name)

    def test(ctx: Context) -> bool:
        h = ctx.request.headers
        return any((v := h.get(n)) is not None and _CONTROL.search(v) is not None for n in names)

    return test


def header_spellings_reader(name: str) -> Reader:
    """Every spelling of header ``name``: under each of its name spellings, each spelling of the
    value (``value_spellings``).

    Used where matching more can only deny more (see ``_field``): ``x-role: user, admin`` and
    ``x_role: admin`` must not slip past a DENY on ``admin`` (nor a value with a NUL:
    ``header_unreadable``).
    """
    names = header_name_spellings(name)

    def read(ctx: Context) -> tuple[str, ...]:
        h = ctx.request.headers
        found = [v for n in names if (v := h.get(n)) is not None]
        if not found:
            return ()
        if len(found) == 1:
            return value_spellings(found[0])
        return tuple(dict.fromkeys(s for v in found for s in value_spellings(v)))

    return read


def header_name(key: str) -> str:
    return key[len("request.headers[") : -1].lower()


def claim_path(key: str) -> tuple[str, ...]:
    return tuple(key[len("request.auth.claims[") : -1].split("]["))


def read_set(policies: Sequence[AuthorizationPolicy], trusted_hops: int) -> ReadSet:
    headers: set[str] = set()
    claims: set[tuple[str, ...]] = set()
    attrs: set[str] = set()
    for p in policies:
        if p.selector:
            attrs.add("context_extensions")
        for r in p.rules:
            for s in r.sources:
                if s.ip_blocks or s.not_ip_blocks:
                    attrs.add("source.ip")
                if s.remote_ip_blocks or s.not_remote_ip_blocks:
                    attrs.add("remote.ip")
                if s.request_principals or s.not_request_principals:
                    claims.update({("iss",), ("sub",)})
            for o in r.operations:
                if o.hosts or o.not_hosts:
                    attrs.add("request.authority")
                if o.ports or o.not_ports:
                    attrs.add("destination.port")
            for c in r.conditions:
                k = c.key
                if k.startswith("request.headers["):
                    headers.update(header_name_spellings(header_name(k)))
                elif k.startswith("request.auth.claims["):
                    claims.add(claim_path(k))
                elif k == "request.auth.principal":
                    claims.update({("iss",), ("sub",)})
                elif k == "request.auth.audiences":
                    claims.add(("aud",))
                elif k == "request.auth.presenter":
                    claims.add(("azp",))
                elif k in ("source.ip", "remote.ip", "destination.ip", "destination.port",
                           "connection.sni"):
                    attrs.add(k)
    if "remote.ip" in attrs:
        attrs.add("source.ip")  # remote.ip falls back to the direct peer
        if trusted_hops > 0:
            headers.add(XFF_HEADER)
    if "request.authority" in attrs:
        headers.update({":authority", "host"})
    return ReadSet(
        headers=frozenset(headers), claims=frozenset(claims), attributes=frozenset(attrs)
    )
