"""Compile a PolicySet once per load; evaluate it per check.

Order (Istio's, with zero trust): any matching DENY denies; else any matching ALLOW allows; else
deny, also when no ALLOW policy exists. AUDIT policies and dry-run policies are evaluated and
reported, never enforced.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from extauthz.identity import Identity
from extauthz.policy.matchers import Matcher, compile_matcher
from extauthz.policy.model import (
    ALLOW,
    AUDIT,
    DENY,
    AuthorizationPolicy,
    Condition,
    Operation,
    PolicySet,
    Rule,
    Source,
)
from extauthz.request import RequestView, namespace_of

# Decision reasons: a small closed set, used as the metrics label ``reason``.
REASON_ALLOWED = "allowed"
REASON_DENIED_BY_POLICY = "denied_by_policy"
REASON_NO_MATCH = "no_matching_policy"


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
    """

    headers: frozenset[str] = frozenset()  # lower-case header names
    query_params: frozenset[str] = frozenset()
    claims: frozenset[tuple[str, ...]] = frozenset()  # claim paths, e.g. ("groups",) or ("a", "b")


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str
    policy: str | None = None  # namespace/name that decided
    rule: int | None = None  # index of the rule that matched
    audit: tuple[str, ...] = ()  # AUDIT policies that matched
    dry_run: tuple[tuple[str, str], ...] = ()  # (policy, "match"/"no_match") of dry-run policies


# ----------------------------------------------------------------------------- compilation


def _ip_matcher(blocks: Iterable[str]) -> Callable[[str], bool]:
    networks = [ipaddress.ip_network(b, strict=False) for b in blocks]

    def match(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in n for n in networks)

    return match


def _field(
    values: Sequence[str],
    negated: Sequence[str],
    read: Callable[[Context], str],
    compile_values: Callable[[Sequence[str]], Callable[[str], bool]],
    out: list[Predicate],
) -> None:
    """Add predicates for one field and its ``not`` form."""
    if values:
        m = compile_values(values)
        out.append(lambda ctx: m(read(ctx)))
    if negated:
        n = compile_values(negated)
        out.append(lambda ctx: not n(read(ctx)))


def _strings(values: Sequence[str]) -> Matcher:
    return compile_matcher(values)


def _compile_source(src: Source) -> list[Predicate]:
    preds: list[Predicate] = []
    _field(src.principals, src.not_principals, _principal, _strings, preds)
    _field(
        src.request_principals, src.not_request_principals, _request_principal, _strings, preds
    )
    _field(src.namespaces, src.not_namespaces, _source_namespace, _strings, preds)
    _field(src.ip_blocks, src.not_ip_blocks, _source_ip, _ip_matcher, preds)
    _field(src.remote_ip_blocks, src.not_remote_ip_blocks, _remote_ip, _ip_matcher, preds)
    return preds


def _compile_operation(op: Operation) -> list[Predicate]:
    preds: list[Predicate] = []
    _field(op.hosts, op.not_hosts, _host, lambda v: compile_matcher(v, fold_case=True), preds)
    _field(op.ports, op.not_ports, _port, _strings, preds)
    _field(
        op.methods, op.not_methods, _method, lambda v: compile_matcher(x.upper() for x in v), preds
    )
    _field(op.paths, op.not_paths, _path, lambda v: compile_matcher(v, paths=True), preds)
    return preds


def _principal(ctx: Context) -> str:
    return ctx.identity.principal


def _request_principal(ctx: Context) -> str:
    return ctx.identity.request_principal


def _source_namespace(ctx: Context) -> str:
    peer = ctx.identity.peer
    return namespace_of(peer.path) if peer is not None else ""


def _source_ip(ctx: Context) -> str:
    return ctx.request.source.address


def _remote_ip(ctx: Context) -> str:
    # Without a trusted-proxy configuration the original client is the direct peer.
    return ctx.request.source.address


def _host(ctx: Context) -> str:
    return ctx.request.host


def _port(ctx: Context) -> str:
    return str(ctx.request.port) if ctx.request.port else ""


def _method(ctx: Context) -> str:
    return ctx.request.method


def _path(ctx: Context) -> str:
    return ctx.request.path


def _all(preds: Sequence[Predicate]) -> Predicate:
    if not preds:
        return lambda ctx: True
    if len(preds) == 1:
        return preds[0]
    t = tuple(preds)
    return lambda ctx: all(p(ctx) for p in t)


def _any(preds: Sequence[Predicate]) -> Predicate:
    if not preds:  # an absent from/to matches anything
        return lambda ctx: True
    if len(preds) == 1:
        return preds[0]
    t = tuple(preds)
    return lambda ctx: any(p(ctx) for p in t)


# ``when`` keys whose attribute is single-valued string, read from the request or identity.
_WHEN_READERS: dict[str, Callable[[Context], str]] = {
    "source.ip": _source_ip,
    "remote.ip": _remote_ip,
    "source.namespace": _source_namespace,
    "source.principal": _principal,
    "request.auth.principal": _request_principal,
    "destination.ip": lambda ctx: ctx.request.destination.address,
    "destination.port": _port,
    "connection.sni": lambda ctx: ctx.request.sni,
}
_IP_KEYS = frozenset({"source.ip", "remote.ip", "destination.ip"})


def _compile_condition(cond: Condition) -> Predicate:
    key = cond.key
    read_many: Callable[[Context], Sequence[str]]
    if key.startswith("request.headers["):
        name = key[len("request.headers[") : -1].lower()

        def read_header(ctx: Context) -> Sequence[str]:
            v = ctx.request.headers.get(name)
            return (v,) if v is not None else ()

        read_many = read_header
    elif key.startswith("request.auth."):
        # Token claims arrive with RequestAuthentication support; until a token is validated
        # there are no claims, audiences or presenter.
        def read_none(ctx: Context) -> Sequence[str]:
            if key == "request.auth.principal" and ctx.identity.request_principal:
                return (ctx.identity.request_principal,)
            return ()

        read_many = read_none
    else:
        reader = _WHEN_READERS[key]

        def read_one(ctx: Context) -> Sequence[str]:
            v = reader(ctx)
            return (v,) if v else ()

        read_many = read_one
    matcher: Callable[[str], bool]
    preds: list[Predicate] = []
    if cond.values:
        matcher = _ip_matcher(cond.values) if key in _IP_KEYS else compile_matcher(cond.values)
        m = matcher
        preds.append(lambda ctx: any(m(v) for v in read_many(ctx)))
    if cond.not_values:
        n = _ip_matcher(cond.not_values) if key in _IP_KEYS else compile_matcher(cond.not_values)
        preds.append(lambda ctx: not any(n(v) for v in read_many(ctx)))
    return _all(preds)


def _compile_rule(rule: Rule) -> Predicate:
    sources = [_all(_compile_source(s)) for s in rule.sources]
    operations = [_all(_compile_operation(o)) for o in rule.operations]
    conditions = [_compile_condition(c) for c in rule.conditions]
    return _all([_any(sources), _any(operations), *conditions])


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    policy: AuthorizationPolicy
    ref: str
    rules: tuple[Predicate, ...]
    applies_everywhere: bool

    def applies_to(self, req: RequestView) -> bool:
        p = self.policy
        if not self.applies_everywhere and p.namespace != req.namespace:
            return False
        if p.selector is not None:
            ext = req.context_extensions
            return all(ext.get(k) == v for k, v in p.selector.items())
        return True

    def first_match(self, ctx: Context) -> int | None:
        for i, rule in enumerate(self.rules):
            if rule(ctx):
                return i
        return None


@dataclass(frozen=True, slots=True)
class Engine:
    """A compiled policy set. Immutable: a reload builds a new one and swaps the reference."""

    policies: PolicySet
    generation: int
    deny: tuple[CompiledPolicy, ...] = ()
    allow: tuple[CompiledPolicy, ...] = ()
    audit: tuple[CompiledPolicy, ...] = ()
    dry_run: tuple[CompiledPolicy, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    reads: ReadSet = field(default_factory=ReadSet)

    def evaluate(self, request: RequestView, identity: Identity) -> Verdict:
        ctx = Context(request, identity)
        dry = tuple(
            (cp.ref, f"{cp.policy.action.lower()}_" + ("match" if m is not None else "no_match"))
            for cp in self.dry_run
            if cp.applies_to(request)
            for m in (cp.first_match(ctx),)
        )
        audit = tuple(
            cp.ref for cp in self.audit if cp.applies_to(request) and cp.first_match(ctx) is not None
        )
        for cp in self.deny:
            if cp.applies_to(request):
                i = cp.first_match(ctx)
                if i is not None:
                    return Verdict(False, REASON_DENIED_BY_POLICY, cp.ref, i, audit, dry)
        for cp in self.allow:
            if cp.applies_to(request):
                i = cp.first_match(ctx)
                if i is not None:
                    return Verdict(True, REASON_ALLOWED, cp.ref, i, audit, dry)
        return Verdict(False, REASON_NO_MATCH, None, None, audit, dry)


def compile_policies(policies: PolicySet, generation: int = 1) -> Engine:
    buckets: dict[str, list[CompiledPolicy]] = {ALLOW: [], DENY: [], AUDIT: [], "dry": []}
    for p in policies.authorization:
        cp = CompiledPolicy(
            policy=p,
            ref=p.ref,
            rules=tuple(_compile_rule(r) for r in p.rules),
            applies_everywhere=p.namespace in ("", policies.root_namespace),
        )
        buckets["dry" if p.dry_run else p.action].append(cp)
    headers = frozenset(
        c.key[len("request.headers[") : -1].lower()
        for p in policies.authorization
        for r in p.rules
        for c in r.conditions
        if c.key.startswith("request.headers[")
    )
    claims = frozenset(
        tuple(c.key[len("request.auth.claims[") : -1].split("]["))
        for p in policies.authorization
        for r in p.rules
        for c in r.conditions
        if c.key.startswith("request.auth.claims[")
    )
    return Engine(
        reads=ReadSet(headers=headers, claims=claims),
        policies=policies,
        generation=generation,
        deny=tuple(buckets[DENY]),
        allow=tuple(buckets[ALLOW]),
        audit=tuple(buckets[AUDIT]),
        dry_run=tuple(buckets["dry"]),
        counts={k: len(v) for k, v in buckets.items()},
    )
