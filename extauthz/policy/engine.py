"""Compile a PolicySet once per load; evaluate it per check.

Order (Istio's, with zero trust): any matching DENY denies; else any matching ALLOW allows; else
deny, also when no ALLOW policy exists. AUDIT policies and dry-run policies are evaluated and
reported, never enforced.

Compilation turns every rule into a chain of precompiled field checks and files it in an index:
first by scope (the policy's namespace, or "everywhere" for the root namespace and namespace-less
policies; then one selector label), then by the literal leading path segments every path the rule
can match must start with. A check walks only the buckets its destination namespace, its
``context_extensions`` and its path segments lead to, so policies that cannot apply cost nothing.
Inside those buckets rules keep their global load order; the first match in load order decides
(and is the policy a verdict reports), exactly as a linear scan would.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extauthz import reasons
from extauthz.envoy.request import RequestView
from extauthz.identity.model import Identity
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


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str
    policy: str | None = None  # namespace/name that decided
    rule: int | None = None  # index of the rule that matched
    audit: tuple[str, ...] = ()  # AUDIT policies that matched
    dry_run: tuple[tuple[str, str], ...] = ()  # (policy, "allow_match"/"deny_no_match"/...)


# ----------------------------------------------------------------------------- attribute readers
# Every reader returns the attribute's values as a tuple: () when the attribute is absent.


def peer_namespaces(principal: str) -> tuple[str, ...]:
    """The namespaces Istio's ``/ns/<ns>/`` principal pattern finds in ``principal``."""
    if "/ns/" not in principal:
        return ()
    parts = principal.split("/")
    return tuple(parts[i + 1] for i in range(1, len(parts) - 2) if parts[i] == "ns")


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


def _reader_principal(ctx: Context) -> tuple[str, ...]:
    return _one(ctx.identity.principal)


def _reader_request_principal(ctx: Context) -> tuple[str, ...]:
    return _one(ctx.identity.request_principal)


def _reader_namespaces(ctx: Context) -> tuple[str, ...]:
    return peer_namespaces(ctx.identity.principal)


def _reader_source_ip(ctx: Context) -> tuple[str, ...]:
    return _one(ctx.request.source.address)


def _remote_ip_reader(trusted_hops: int) -> Reader:
    if trusted_hops <= 0:
        return _reader_source_ip
    return lambda ctx: _one(client_ip(ctx.request, trusted_hops))


def _reader_host(ctx: Context) -> tuple[str, ...]:
    """Istio's reading: the authority as sent, port included (``hosts: [h]`` is not ``h:80``)."""
    return _one(_authority(ctx.request))


def _reader_host_spellings(ctx: Context) -> tuple[str, ...]:
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


def _reader_port(ctx: Context) -> tuple[str, ...]:
    return (str(ctx.request.port),) if ctx.request.port else ()


def _reader_method(ctx: Context) -> tuple[str, ...]:
    return _one(ctx.request.method)


def _reader_path(ctx: Context) -> tuple[str, ...]:
    return _one(ctx.request.path)


def _reader_destination_ip(ctx: Context) -> tuple[str, ...]:
    return _one(ctx.request.destination.address)


def _reader_sni(ctx: Context) -> tuple[str, ...]:
    return _one(ctx.request.sni)


def _reader_audiences(ctx: Context) -> tuple[str, ...]:
    token = ctx.identity.token
    return tuple(a for a in token.audiences if a) if token is not None else ()


def _reader_presenter(ctx: Context) -> tuple[str, ...]:
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


def _claims_reader(path: tuple[str, ...]) -> Reader:
    def read(ctx: Context) -> tuple[str, ...]:
        token = ctx.identity.token
        return claim_values(token.claims, path) if token is not None else ()

    return read


def _header_reader(name: str) -> Reader:
    def read(ctx: Context) -> tuple[str, ...]:
        v = ctx.request.headers.get(name)
        return (v,) if v is not None else ()

    return read


def _header_elements_reader(name: str) -> Reader:
    """The header as Envoy joined its repeats (``a,b``), and each element on its own.

    Used where matching more can only deny more (see ``_field``): ``x-role: user`` sent next
    to ``x-role: admin`` arrives as ``user,admin`` and must not slip past a DENY on ``admin``.
    """

    def read(ctx: Context) -> tuple[str, ...]:
        v = ctx.request.headers.get(name)
        if v is None:
            return ()
        if "," not in v:
            return (v,)
        return (v, *(e.strip() for e in v.split(",")))

    return read


def header_name(key: str) -> str:
    return key[len("request.headers[") : -1].lower()


def claim_path(key: str) -> tuple[str, ...]:
    return tuple(key[len("request.auth.claims[") : -1].split("]["))


# ----------------------------------------------------------------------------- field checks


@dataclass(frozen=True, slots=True)
class Check:
    """One precompiled field test, named as the policy wrote it (``from[0].source.principals``)."""

    name: str
    test: Predicate


def _ip_matcher(blocks: Iterable[str]) -> Callable[[str], bool]:
    networks = tuple(ipaddress.ip_network(b, strict=False) for b in blocks)

    def match(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            v4 = ip.ipv4_mapped  # ::ffff:1.2.3.4 is the IPv4 client 1.2.3.4: either spelling
            if any(n.version == 4 and v4 in n for n in networks):
                return True
        return any(ip.version == n.version and ip in n for n in networks)

    return match


def _values_check(
    name: str, read: Reader, match: Callable[[str], bool], *, negate: bool
) -> Check:
    if negate:
        return Check(name, lambda ctx: not any(match(v) for v in read(ctx)))
    return Check(name, lambda ctx: any(match(v) for v in read(ctx)))


def _field(
    out: list[Check],
    prefix: str,
    yaml_name: str,
    values: Sequence[str],
    negated: Sequence[str],
    read: Reader,
    compile_values: Callable[[Sequence[str]], Callable[[str], bool]],
    *,
    wide: Reader | None = None,
    deny: bool = False,
) -> None:
    """Checks for one field and its ``not`` form.

    ``wide`` reads every equivalent spelling of the attribute (a host with and without its
    port, each element of a joined header). It is used wherever matching more can only deny
    more: the positive form in a DENY policy, the ``not`` form in an ALLOW policy. Elsewhere
    ``read`` (Istio's exact reading) keeps an ALLOW as narrow as Istio's.
    """
    wide = wide or read
    if values:
        out.append(_values_check(
            f"{prefix}.{yaml_name}", wide if deny else read, compile_values(values), negate=False
        ))
    if negated:
        not_name = "not" + yaml_name[0].upper() + yaml_name[1:]
        out.append(_values_check(
            f"{prefix}.{not_name}", read if deny else wide, compile_values(negated), negate=True
        ))


def _strings(values: Sequence[str]) -> Matcher:
    return compile_matcher(values)


def _hosts(values: Sequence[str]) -> Matcher:
    return compile_matcher(values, fold_case=True)


def _methods(values: Sequence[str]) -> Matcher:
    return compile_matcher(v.upper() for v in values)


def _paths(values: Sequence[str]) -> Matcher:
    return compile_matcher(values, paths=True)


@dataclass(frozen=True, slots=True)
class _Readers:
    remote_ip: Reader


def _compile_source(src: Source, prefix: str, rd: _Readers) -> tuple[Check, ...]:
    out: list[Check] = []
    _field(out, prefix, "principals", src.principals, src.not_principals, _reader_principal, _strings)
    _field(
        out, prefix, "requestPrincipals", src.request_principals, src.not_request_principals,
        _reader_request_principal, _strings,
    )
    _field(out, prefix, "namespaces", src.namespaces, src.not_namespaces, _reader_namespaces, _strings)
    _field(out, prefix, "ipBlocks", src.ip_blocks, src.not_ip_blocks, _reader_source_ip, _ip_matcher)
    _field(
        out, prefix, "remoteIpBlocks", src.remote_ip_blocks, src.not_remote_ip_blocks,
        rd.remote_ip, _ip_matcher,
    )
    return tuple(out)


def _compile_operation(op: Operation, prefix: str, deny: bool = False) -> tuple[Check, ...]:
    out: list[Check] = []
    # Cheapest and most selective first: a rule usually fails on its method or path.
    _field(out, prefix, "methods", op.methods, op.not_methods, _reader_method, _methods)
    _field(out, prefix, "paths", op.paths, op.not_paths, _reader_path, _paths)
    _field(out, prefix, "hosts", op.hosts, op.not_hosts, _reader_host, _hosts,
           wide=_reader_host_spellings, deny=deny)
    _field(out, prefix, "ports", op.ports, op.not_ports, _reader_port, _strings)
    return tuple(out)


_IP_KEYS = frozenset({"source.ip", "remote.ip", "destination.ip"})


def _condition_reader(key: str, rd: _Readers) -> Reader:
    if key.startswith("request.headers["):
        return _header_reader(header_name(key))
    if key.startswith("request.auth.claims["):
        return _claims_reader(claim_path(key))
    readers: dict[str, Reader] = {
        "source.ip": _reader_source_ip,
        "remote.ip": rd.remote_ip,
        "source.namespace": _reader_namespaces,
        "source.principal": _reader_principal,
        "request.auth.principal": _reader_request_principal,
        "request.auth.audiences": _reader_audiences,
        "request.auth.presenter": _reader_presenter,
        "destination.ip": _reader_destination_ip,
        "destination.port": _reader_port,
        "connection.sni": _reader_sni,
    }
    return readers[key]


def _condition_matcher(key: str, values: Sequence[str]) -> Callable[[str], bool]:
    if key in _IP_KEYS:
        return _ip_matcher(values)
    m = compile_matcher(values)
    if key.startswith("request.headers[") and "*" in values:
        # Istio's "*" on a header means "present", even with an empty value.
        return lambda v: True
    return m


def _compile_condition(
    cond: Condition, prefix: str, rd: _Readers, deny: bool = False
) -> tuple[Check, ...]:
    read = _condition_reader(cond.key, rd)
    wide = (
        _header_elements_reader(header_name(cond.key))
        if cond.key.startswith("request.headers[")
        else read
    )
    out: list[Check] = []
    # As in _field: every spelling where matching more can only deny more.
    if cond.values:
        out.append(
            _values_check(f"{prefix}.values", wide if deny else read,
                          _condition_matcher(cond.key, cond.values), negate=False)
        )
    if cond.not_values:
        out.append(
            _values_check(f"{prefix}.notValues", read if deny else wide,
                          _condition_matcher(cond.key, cond.not_values), negate=True)
        )
    return tuple(out)


def _all(checks: Sequence[Check]) -> Predicate:
    tests = tuple(c.test for c in checks)
    if not tests:
        return lambda ctx: True
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        a, b = tests
        return lambda ctx: a(ctx) and b(ctx)
    return lambda ctx: all(t(ctx) for t in tests)


def _any(groups: Sequence[Predicate]) -> Predicate | None:
    """None when there are no alternatives (an absent from/to matches anything)."""
    if not groups:
        return None
    if len(groups) == 1:
        return groups[0]
    t = tuple(groups)
    return lambda ctx: any(p(ctx) for p in t)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One rule, precompiled. ``order`` is its place in load order across the whole set."""

    order: int
    policy: CompiledPolicy
    index: int
    rule: Rule
    sources: tuple[tuple[Check, ...], ...]  # alternatives (OR) of conjunctions (AND)
    operations: tuple[tuple[Check, ...], ...]
    conditions: tuple[Check, ...]
    match: Predicate

    def first_failure(self, ctx: Context) -> str | None:
        """Which condition failed first (None when the rule matches). For the explanation."""
        if self.policy.selector_test is not None and not self.policy.selector_test(ctx):
            return "selector"
        for groups in (self.operations, self.sources):
            if not groups:
                continue
            failures = []
            for group in groups:
                failed = next((c.name for c in group if not c.test(ctx)), None)
                if failed is None:
                    break
                failures.append(failed)
            else:
                return failures[0] if len(failures) == 1 else " and ".join(failures)
        return next((c.name for c in self.conditions if not c.test(ctx)), None)


def _compile_rule(
    rule: Rule, index: int, order: int, policy: CompiledPolicy, rd: _Readers
) -> CompiledRule:
    base = f"rules[{index}]"
    deny = policy.policy.action == DENY
    sources = tuple(
        _compile_source(s, f"{base}.from[{i}].source", rd) for i, s in enumerate(rule.sources)
    )
    operations = tuple(
        _compile_operation(o, f"{base}.to[{i}].operation", deny)
        for i, o in enumerate(rule.operations)
    )
    conditions = tuple(
        c
        for i, cond in enumerate(rule.conditions)
        for c in _compile_condition(cond, f"{base}.when[{i}]({cond.key})", rd, deny)
    )
    parts: list[Predicate] = []
    if policy.selector_test is not None:
        parts.append(policy.selector_test)
    op = _any([_all(g) for g in operations])
    if op is not None:
        parts.append(op)
    src = _any([_all(g) for g in sources])
    if src is not None:
        parts.append(src)
    parts.extend(c.test for c in conditions)
    match = _all([Check("", p) for p in parts])
    return CompiledRule(order, policy, index, rule, sources, operations, conditions, match)


# ----------------------------------------------------------------------------- policies and index


def _selector_test(selector: Mapping[str, str] | None) -> Predicate | None:
    if not selector:  # no selector, or an empty matchLabels: applies to every route
        return None
    items = tuple(selector.items())
    return lambda ctx: all(ctx.request.context_extensions.get(k) == v for k, v in items)


@dataclass(eq=False, slots=True)
class CompiledPolicy:
    policy: AuthorizationPolicy
    ref: str
    order: int  # place in load order
    applies_everywhere: bool
    selector_test: Predicate | None
    rules: tuple[CompiledRule, ...] = ()

    def applies_to(self, req: RequestView) -> bool:
        """Scope: namespace and selector (see the interface spec)."""
        p = self.policy
        if not self.applies_everywhere and p.namespace != req.namespace:
            return False
        if p.selector:
            ext = req.context_extensions
            return all(ext.get(k) == v for k, v in p.selector.items())
        return True

    def first_match(self, ctx: Context) -> int | None:
        for r in self.rules:
            if r.match(ctx):
                return r.index
        return None


class _Node:
    """A path-segment trie node: rules whose every path starts with the segments leading here.

    Inside a node, rules whose every source names exact principals are filed by principal too.
    """

    __slots__ = ("by_principal", "children", "rules")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.rules: list[CompiledRule] = []
        self.by_principal: dict[str, list[CompiledRule]] = {}

    def add(self, segments: Sequence[str], rule: CompiledRule, principals: Sequence[str]) -> None:
        node = self
        for s in segments:
            nxt = node.children.get(s)
            if nxt is None:
                nxt = node.children[s] = _Node()
            node = nxt
        targets = [node.by_principal.setdefault(p, []) for p in principals] if principals else [node.rules]
        for lst in targets:
            if not lst or lst[-1] is not rule:
                lst.append(rule)

    def lists(self, segments: Sequence[str], principal: str) -> Iterator[list[CompiledRule]]:
        node = self
        for i in range(len(segments) + 1):
            if node.rules:
                yield node.rules
            if node.by_principal:
                lst = node.by_principal.get(principal)
                if lst:
                    yield lst
            if i == len(segments):
                return
            nxt = node.children.get(segments[i])
            if nxt is None:
                return
            node = nxt


def principal_keys(rule: Rule) -> tuple[str, ...]:
    """The exact principals one of which every request the rule matches has; () if not so."""
    if not rule.sources:
        return ()
    keys: list[str] = []
    for s in rule.sources:
        if not s.principals or any("*" in p for p in s.principals):
            return ()
        keys.extend(s.principals)
    return tuple(dict.fromkeys(keys))


def _literal_prefix(pattern: str) -> tuple[str, bool]:
    """The literal text every path matching ``pattern`` starts with, and whether it is exact."""
    if "{" in pattern:
        return pattern[: pattern.index("{")], False
    if pattern == "*" or pattern.startswith("*"):
        return "", False
    if pattern.endswith("*"):
        return pattern[:-1], False
    return pattern, True


def path_segments_key(rule: Rule) -> list[tuple[str, ...]]:
    """Trie keys for a rule: whole leading segments every path it matches must have.

    A rule that can match a path outside any such key (no ``to``, an operation without positive
    ``paths``, a suffix or ``*`` path) goes to the root: ``[()]``.
    """
    if not rule.operations:
        return [()]
    keys: list[tuple[str, ...]] = []
    for op in rule.operations:
        if not op.paths:
            return [()]
        for p in op.paths:
            literal, exact = _literal_prefix(p)
            if not literal.startswith("/"):
                return [()]
            pieces = literal[1:].split("/")
            keys.append(tuple(pieces if exact else pieces[:-1]))
    return keys


class _Bucket:
    """The rules of one action in one scope group, in a path trie."""

    __slots__ = ("trie",)

    def __init__(self) -> None:
        self.trie = _Node()


class _ScopeIndex:
    """Buckets by scope: ``None`` = everywhere, else a namespace; inside, plain or by one label."""

    def __init__(self) -> None:
        self.scopes: dict[str | None, tuple[_Bucket, dict[tuple[str, str], _Bucket]]] = {}

    def add(self, rule: CompiledRule) -> None:
        cp = rule.policy
        scope = None if cp.applies_everywhere else cp.policy.namespace
        entry = self.scopes.get(scope)
        if entry is None:
            entry = self.scopes[scope] = (_Bucket(), {})
        plain, by_label = entry
        sel = cp.policy.selector
        if sel:
            label = min(sel.items())
            bucket = by_label.get(label)
            if bucket is None:
                bucket = by_label[label] = _Bucket()
        else:
            bucket = plain
        principals = principal_keys(rule.rule)
        for key in path_segments_key(rule.rule):
            bucket.trie.add(key, rule, principals)

    def tries(self, req: RequestView) -> list[_Node]:
        out: list[_Node] = []
        ns = req.namespace
        for scope in (None, ns) if ns else (None,):
            entry = self.scopes.get(scope)
            if entry is None:
                continue
            plain, by_label = entry
            out.append(plain.trie)
            if by_label:
                for item in req.context_extensions.items():
                    b = by_label.get(item)
                    if b is not None:
                        out.append(b.trie)
        return out

    def first_match(self, ctx: Context, segments: Sequence[str]) -> CompiledRule | None:
        """The matching rule first in load order, or None."""
        best: CompiledRule | None = None
        best_order = 1 << 62
        principal = ctx.identity.principal
        for trie in self.tries(ctx.request):
            for rules in trie.lists(segments, principal):
                for r in rules:
                    if r.order >= best_order:
                        break
                    if r.match(ctx):
                        best, best_order = r, r.order
                        break
        return best

    def all_matches(self, ctx: Context, segments: Sequence[str]) -> list[CompiledPolicy]:
        """Every policy with a matching rule, in load order."""
        found: dict[int, CompiledPolicy] = {}
        principal = ctx.identity.principal
        for trie in self.tries(ctx.request):
            for rules in trie.lists(segments, principal):
                for r in rules:
                    if r.policy.order not in found and r.match(ctx):
                        found[r.policy.order] = r.policy
        return [found[k] for k in sorted(found)]


def request_segments(path: str) -> list[str]:
    return path[1:].split("/") if path.startswith("/") else []


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
    xff_num_trusted_hops: int = 0
    _deny_index: _ScopeIndex = field(default_factory=_ScopeIndex, repr=False)
    _allow_index: _ScopeIndex = field(default_factory=_ScopeIndex, repr=False)
    _audit_index: _ScopeIndex = field(default_factory=_ScopeIndex, repr=False)

    def evaluate(self, request: RequestView, identity: Identity) -> Verdict:
        ctx = Context(request, identity)
        segments = request_segments(request.path)
        dry: tuple[tuple[str, str], ...] = ()
        if self.dry_run:
            dry = tuple(
                (cp.ref, f"{cp.policy.action.lower()}_" + ("match" if m is not None else "no_match"))
                for cp in self.dry_run
                if cp.applies_to(request)
                for m in (cp.first_match(ctx),)
            )
        audit: tuple[str, ...] = ()
        if self.audit:
            audit = tuple(cp.ref for cp in self._audit_index.all_matches(ctx, segments))
        r = self._deny_index.first_match(ctx, segments)
        if r is not None:
            return Verdict(False, reasons.DENIED_BY_POLICY, r.policy.ref, r.index, audit, dry)
        r = self._allow_index.first_match(ctx, segments)
        if r is not None:
            return Verdict(True, reasons.ALLOWED, r.policy.ref, r.index, audit, dry)
        return Verdict(False, reasons.NO_MATCH, None, None, audit, dry)

    def applicable(self, request: RequestView) -> list[CompiledPolicy]:
        """Every policy whose scope covers ``request``, in load order (for explanations)."""
        every = (*self.deny, *self.allow, *self.audit, *self.dry_run)
        return sorted((cp for cp in every if cp.applies_to(request)), key=lambda cp: cp.order)


def _read_set(policies: Sequence[AuthorizationPolicy], trusted_hops: int) -> ReadSet:
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
                    headers.add(header_name(k))
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


def compile_policies(
    policies: PolicySet, generation: int = 1, *, xff_num_trusted_hops: int = 0
) -> Engine:
    """Compile ``policies``. ``xff_num_trusted_hops``: see ``client_ip`` (``remote.ip``)."""
    rd = _Readers(remote_ip=_remote_ip_reader(xff_num_trusted_hops))
    buckets: dict[str, list[CompiledPolicy]] = {ALLOW: [], DENY: [], AUDIT: [], "dry": []}
    indexes = {ALLOW: _ScopeIndex(), DENY: _ScopeIndex(), AUDIT: _ScopeIndex()}
    order = 0
    for n, p in enumerate(policies.authorization):
        cp = CompiledPolicy(
            policy=p,
            ref=p.ref,
            order=n,
            applies_everywhere=p.namespace in ("", policies.root_namespace),
            selector_test=_selector_test(p.selector),
        )
        rules = []
        for i, r in enumerate(p.rules):
            rules.append(_compile_rule(r, i, order, cp, rd))
            order += 1
        cp.rules = tuple(rules)
        buckets["dry" if p.dry_run else p.action].append(cp)
        if not p.dry_run:
            for cr in cp.rules:
                indexes[p.action].add(cr)
    return Engine(
        reads=_read_set(policies.authorization, xff_num_trusted_hops),
        policies=policies,
        generation=generation,
        deny=tuple(buckets[DENY]),
        allow=tuple(buckets[ALLOW]),
        audit=tuple(buckets[AUDIT]),
        dry_run=tuple(buckets["dry"]),
        counts={k: len(v) for k, v in buckets.items()},
        xff_num_trusted_hops=xff_num_trusted_hops,
        _deny_index=indexes[DENY],
        _allow_index=indexes[ALLOW],
        _audit_index=indexes[AUDIT],
    )
