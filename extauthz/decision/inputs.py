"""The audit record's ``input``: what the policy engine read to decide, enough to decide again.

Schema (version 1; docs/decisions.md, "The record's input"):

    "input": {
      "v": 1,
      "source":      {"principal": Envoy's source principal, "address": "10.0.0.5"},
      "destination": {"principal": ..., "address": ..., "port": 8443},
      "sni": "...", "method": "GET", "host": "api.shop.svc", "path": "/api/items",
      "context_extensions": {...},
      "headers": {"x-tenant": "acme", "x-role": null},   # only headers policies read; null: absent
      "identity": null | {                               # null: no identity was established
        "principal": "example.org/ns/shop/sa/frontend" | null,   # what source.principals match
        "peer_verified": false,
        "request_principal": "iss/sub" | null,
        "token": null | {"iss": ..., "sub": ..., "claims": {pruned claims tree}},
        "token_missing": true                            # only when set: no token where a
                                                         # RequestAuthentication applied
      },
      "unrecorded": {"request.headers[authorization]": "secret", ...},  # only when not empty
      "authn": "sha256:..."       # the RequestAuthentication set in force (``authn_digest``)
    }

The claims tree holds the claim paths policies read, as the token had them: a string, a list (its
strings), another JSON scalar, ``{}`` for an object whose members were not read, ``null`` where
the token had no such claim. A key missing from the tree was not recorded (excluded, or not read
by the policies of the day). Never recorded: tokens (``authorization``, ``cookie``, every
``fromHeaders`` header), ``x-forwarded-client-cert``, the query, the peer certificate; a value the
audit writer would cap (a string over ``MAX_FIELD_CHARS``, a list over ``MAX_LIST_ITEMS``); what
``audit_input_exclude`` names. Each such input a policy reads is listed in ``unrecorded``.

``InputPlan`` is computed once per policy set; ``record`` runs on a decision-cache miss only (a
hit reuses the cached decision's input: the cache key covers every recorded value).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from types import MappingProxyType
from typing import Any

from extauthz.decision.audit import MAX_FIELD_CHARS, MAX_LIST_ITEMS
from extauthz.decision.cache import IDENTITY_HEADERS, token_headers
from extauthz.envoy.request import Peer, RequestView
from extauthz.identity.model import Identity, Token, try_parse_spiffe_id
from extauthz.policy.engine import Engine, ReadSet
from extauthz.policy.model import PolicySet

VERSION = 1
# Never recorded, whatever a policy reads: credentials and certificates.
SECRET_HEADERS = IDENTITY_HEADERS | {"proxy-authorization", "cookie"}
SECRET = "secret: a credential or certificate"
EXCLUDED = "excluded by audit_input_exclude"
TOO_LONG = "longer than the audit log keeps"
TOKEN = "the token itself: its validated claims only (signature and expiry not re-checkable)"
CERTIFICATE = "the peer certificate: the verified principal only"

_HEADER_KEY = "request.headers["
_CLAIM_KEY = "request.auth.claims["


def header_key(name: str) -> str:
    return f"{_HEADER_KEY}{name}]"


def claim_key(path: tuple[str, ...]) -> str:
    return _CLAIM_KEY + "][".join(path) + "]"


@dataclass(frozen=True, slots=True)
class Exclusions:
    """``audit_input_exclude``: a plain name excludes the header and the top-level claim of that
    name; ``request.headers[NAME]`` and ``request.auth.claims[A][B]`` exclude exactly that."""

    headers: frozenset[str] = frozenset()
    claims: frozenset[tuple[str, ...]] = frozenset()

    @classmethod
    def parse(cls, names: Iterable[str]) -> Exclusions:
        headers: set[str] = set()
        claims: set[tuple[str, ...]] = set()
        for raw in names:
            name = raw.strip()
            if name.startswith(_HEADER_KEY) and name.endswith("]"):
                headers.add(name[len(_HEADER_KEY) : -1].lower())
            elif name.startswith(_CLAIM_KEY) and name.endswith("]"):
                claims.add(tuple(name[len(_CLAIM_KEY) : -1].split("][")))
            elif name:
                headers.add(name.lower())
                claims.add((name,))
        return cls(frozenset(headers), frozenset(claims))

    def claim(self, path: tuple[str, ...]) -> bool:
        return any(path[: len(c)] == c for c in self.claims)


@dataclass(frozen=True, slots=True)
class InputPlan:
    """Which inputs of one compiled policy set a record holds (computed once per set)."""

    headers: tuple[str, ...]  # recorded, sorted
    claims: tuple[tuple[str, ...], ...]  # recorded claim paths, sorted
    unrecorded: Mapping[str, str]  # read by the policies, never recorded: Istio key -> why
    authn: str = ""  # authn_digest of the set ("" without one: nothing recorded)


EMPTY_PLAN = InputPlan((), (), MappingProxyType({}))


def authn_digest(policies: PolicySet) -> str:
    """A fingerprint of the RequestAuthentication resources (and the root namespace that scopes
    them): which tokens the set accepts, from where. Equal digests: a token the set accepted then,
    it accepts now (keys aside: JWKS and bundles are not policies). Where a resource was written
    (file, line) and the order of the resources do not count."""
    resources = sorted(
        (_plain(r) for r in policies.request_authentication),
        key=lambda r: (r["namespace"], r["name"]),
    )
    doc = {"root": policies.root_namespace, "request_authentication": resources}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def _plain(value: Any) -> Any:
    """``value`` as JSON types: dataclasses as objects (without ``where``), mappings, tuples."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value) if f.name != "where"}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _fold(header: str) -> str:
    return header.replace("_", "-")


def plan_for(engine: Engine | None, exclude: Exclusions = Exclusions()) -> InputPlan:
    if engine is None:
        return EMPTY_PLAN
    reads = engine.reads
    # A DENY reads every `_`/`-` spelling of a header name (upstreams fold them): a spelling of a
    # secret or excluded header is as secret or excluded as the name itself.
    secret = {_fold(n) for n in SECRET_HEADERS | token_headers(engine)}
    excluded = {_fold(n) for n in exclude.headers}
    unrecorded: dict[str, str] = {}
    headers = []
    for name in sorted(reads.headers):
        if _fold(name) in secret:
            unrecorded[header_key(name)] = SECRET
        elif _fold(name) in excluded:
            unrecorded[header_key(name)] = EXCLUDED
        else:
            headers.append(name)
    claims = []
    for path in sorted(reads.claims):
        if exclude.claim(path):
            unrecorded[claim_key(path)] = EXCLUDED
        else:
            claims.append(path)
    for param in sorted(reads.query_params):
        unrecorded[f"request.query[{param}]"] = SECRET  # the query may carry tokens
    return InputPlan(
        tuple(headers), tuple(claims), MappingProxyType(unrecorded), authn_digest(engine.policies)
    )


def _leaf(value: Any) -> tuple[Any, bool]:
    """(what the tree keeps of a claim value, whether it fits the audit log uncapped)."""
    if isinstance(value, Mapping):
        return {}, True
    if isinstance(value, list | tuple):
        items = [v for v in value if isinstance(v, str)]
        return items, len(items) <= MAX_LIST_ITEMS and all(len(v) <= MAX_FIELD_CHARS for v in items)
    if isinstance(value, str):
        return value, len(value) <= MAX_FIELD_CHARS
    if value is None or isinstance(value, bool | int | float):
        return value, True
    return None, False


def _claims_tree(
    claims: Mapping[str, Any], paths: tuple[tuple[str, ...], ...], unrecorded: dict[str, str]
) -> dict[str, Any]:
    """The part of ``claims`` that ``paths`` lead to (see the module docstring)."""
    tree: dict[str, Any] = {}
    for path in paths:
        node: Mapping[str, Any] = claims
        dst = tree
        for i, step in enumerate(path):
            if step not in node:
                dst.setdefault(step, None)  # the token has no such claim
                break
            value = node[step]
            if i < len(path) - 1 and isinstance(value, Mapping):
                child = dst.get(step)
                if not isinstance(child, dict):
                    child = dst[step] = {}
                dst, node = child, value
                continue
            kept, fits = _leaf(value)  # the end of the path, or a scalar on the way
            if not fits:
                unrecorded[claim_key(path[: i + 1])] = TOO_LONG
            elif isinstance(kept, dict):
                dst.setdefault(step, kept)  # keep what a longer path put there
            else:
                dst[step] = kept
            break
    return tree


def record_input(
    plan: InputPlan, req: RequestView, identity: Identity | None, token_missing: bool = False
) -> dict[str, Any]:
    """The ``input`` of a decision about ``req``; ``identity`` None when none was established."""
    unrecorded = dict(plan.unrecorded)
    h = req.headers
    headers: dict[str, str | None] = {}
    for name in plan.headers:
        value = h.get(name)
        if value is not None and len(value) > MAX_FIELD_CHARS:
            unrecorded[header_key(name)] = TOO_LONG
        else:
            headers[name] = value
    src, dst = req.source, req.destination
    inp: dict[str, Any] = {
        "v": VERSION,
        "source": {"principal": src.principal or None, "address": src.address or None},
        "destination": {
            "principal": dst.principal or None,
            "address": dst.address or None,
            "port": req.port or None,
        },
        "sni": req.sni or None,
        "method": req.method,
        "host": req.host,
        "path": req.path,
        "context_extensions": dict(req.context_extensions),
        "headers": headers,
        "identity": None,
    }
    if identity is not None:
        token = identity.token
        ident: dict[str, Any] = {
            "principal": identity.principal or None,
            "peer_verified": identity.peer_verified,
            "request_principal": identity.request_principal or None,
            "token": None,
        }
        if token is not None:
            ident["token"] = {
                "iss": token.issuer,
                "sub": token.subject,
                "claims": _claims_tree(token.claims, plan.claims, unrecorded),
            }
            unrecorded["token"] = TOKEN
        if token_missing:
            ident["token_missing"] = True
        if identity.peer_verified:
            unrecorded["source.certificate"] = CERTIFICATE
        inp["identity"] = ident
    if unrecorded:
        inp["unrecorded"] = unrecorded
    if plan.authn:
        inp["authn"] = plan.authn
    return inp


# ----------------------------------------------------------------------------- reading it back


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def input_of(inp: Mapping[str, Any]) -> tuple[RequestView, Identity | None, bool]:
    """Rebuild (request view, identity, token_missing) from a record's ``input``: what
    ``Engine.evaluate`` needs to decide the request again. The identity is None when the record
    has none (the original decision never reached the policies)."""
    src = inp.get("source") or {}
    dst = inp.get("destination") or {}
    port = dst.get("port") or 0
    headers = {k: v for k, v in (inp.get("headers") or {}).items() if isinstance(v, str)}
    path = _str(inp.get("path"))
    req = RequestView(
        source=Peer(principal=_str(src.get("principal")), address=_str(src.get("address"))),
        destination=Peer(
            principal=_str(dst.get("principal")), address=_str(dst.get("address")), port=port
        ),
        method=_str(inp.get("method")),
        host=_str(inp.get("host")),
        port=port,
        raw_path=path,
        path=path,
        headers=MappingProxyType(headers),
        context_extensions=MappingProxyType(dict(inp.get("context_extensions") or {})),
        sni=_str(inp.get("sni")),
    )
    ident = inp.get("identity")
    if not isinstance(ident, Mapping):
        return req, None, False
    principal = _str(ident.get("principal"))
    token = None
    tok = ident.get("token")
    if isinstance(tok, Mapping):
        claims = tok.get("claims") or {}
        aud = claims.get("aud")  # as extauthz.identity.jwt reads aud and azp
        audiences = (aud,) if isinstance(aud, str) else tuple(
            a for a in (aud if isinstance(aud, list) else ()) if isinstance(a, str)
        )
        token = Token(
            issuer=_str(tok.get("iss")),
            subject=_str(tok.get("sub")),
            audiences=audiences,
            presenter=_str(claims.get("azp")),
            claims=MappingProxyType(dict(claims)),
        )
    identity = Identity(
        peer=try_parse_spiffe_id(f"spiffe://{principal}") if principal else None,
        peer_verified=bool(ident.get("peer_verified")),
        token=token,
    )
    return req, identity, bool(ident.get("token_missing"))


def missing_inputs(inp: Mapping[str, Any], reads: ReadSet) -> list[str]:
    """What a policy set with ``reads`` would read that ``inp`` did not record (Istio keys):
    a decision needing any of these cannot be decided again from the record."""
    out = []
    recorded = inp.get("headers") or {}
    for name in sorted(reads.headers):
        if name not in recorded:
            out.append(header_key(name))
    ident = inp.get("identity")
    tok = ident.get("token") if isinstance(ident, Mapping) else None
    if isinstance(tok, Mapping):  # without a token every claim is absent: nothing is missing
        for path in sorted(reads.claims):
            node: Any = tok.get("claims") or {}
            for step in path:
                if not isinstance(node, Mapping):
                    break
                if step not in node:
                    out.append(claim_key(path))
                    break
                node = node[step]
    out.extend(f"request.query[{p}]" for p in sorted(reads.query_params))
    return out
