"""Rules and conditions to predicates: every field of a rule becomes a precompiled check.

A ``CompiledRule``'s ``match`` is one predicate over a ``Context``: the policy's selector test,
any operation, any source, every condition; its named checks explain which part failed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from extauthz.envoy.request import RequestView
from extauthz.policy.attributes import (
    Context,
    Predicate,
    Reader,
    claim_path,
    claims_reader,
    header_name,
    header_reader,
    header_spellings_reader,
    header_unreadable,
    read_audiences,
    read_destination_ip,
    read_host,
    read_host_spellings,
    read_method,
    read_path,
    read_port,
    read_presenter,
    read_principal,
    read_request_principal,
    read_sni,
    read_source_ip,
)
from extauthz.policy.matchers import field_matcher
from extauthz.policy.model import DENY, AuthorizationPolicy, Condition, Operation, Rule, Source
from extauthz.policy.scope import Scope

# ----------------------------------------------------------------------------- field checks


@dataclass(frozen=True, slots=True)
class Check:
    """One precompiled field test, named as the policy wrote it (``from[0].source.principals``)."""

    name: str
    test: Predicate


def _values_check(
    name: str, read: Reader, match: Callable[[str], bool], *, negate: bool,
    unreadable: Predicate | None = None,
) -> Check:
    """Any value read matches (or, ``negate``, none does). ``unreadable``: the attribute holds
    something an upstream may read as any value (a header with a control character); it then
    counts as matching."""
    if unreadable is not None:
        u = unreadable
        if negate:
            return Check(name, lambda ctx: not (u(ctx) or any(match(v) for v in read(ctx))))
        return Check(name, lambda ctx: u(ctx) or any(match(v) for v in read(ctx)))
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
    *,
    wide: Reader | None = None,
    deny: bool = False,
) -> None:
    """Checks for one field and its ``not`` form, its values compiled by
    ``matchers.FIELD_MATCHERS[yaml_name]``.

    The wide reading (``wide``: every equivalent spelling of the attribute, a host with and
    without its port, each trimmed element of a header under every ``_``/``-`` spelling of its
    name; and the factory's ``wide`` form, a method in any case) is used wherever matching more
    can only deny more: the positive form in a DENY policy, the ``not`` form in an ALLOW policy.
    Elsewhere Istio's exact reading keeps an ALLOW as narrow as Istio's.
    """
    factory = field_matcher(yaml_name)
    wide = wide or read
    if values:
        out.append(_values_check(
            f"{prefix}.{yaml_name}", wide if deny else read, factory(values, deny), negate=False
        ))
    if negated:
        not_name = "not" + yaml_name[0].upper() + yaml_name[1:]
        out.append(_values_check(
            f"{prefix}.{not_name}", read if deny else wide, factory(negated, not deny), negate=True
        ))


@dataclass(frozen=True, slots=True)
class Readers:
    remote_ip: Reader


def _compile_source(src: Source, prefix: str, rd: Readers, deny: bool = False) -> tuple[Check, ...]:
    out: list[Check] = []
    _field(out, prefix, "principals", src.principals, src.not_principals, read_principal, deny=deny)
    _field(
        out, prefix, "requestPrincipals", src.request_principals, src.not_request_principals,
        read_request_principal, deny=deny,
    )
    _field(out, prefix, "namespaces", src.namespaces, src.not_namespaces, read_principal, deny=deny)
    _field(out, prefix, "ipBlocks", src.ip_blocks, src.not_ip_blocks, read_source_ip, deny=deny)
    _field(
        out, prefix, "remoteIpBlocks", src.remote_ip_blocks, src.not_remote_ip_blocks,
        rd.remote_ip, deny=deny,
    )
    _field(
        out, prefix, "serviceAccounts", src.service_accounts, src.not_service_accounts,
        read_principal, deny=deny,
    )
    _field(
        out, prefix, "trustDomains", src.trust_domains, src.not_trust_domains, read_principal,
        deny=deny,
    )
    return tuple(out)


def _compile_operation(op: Operation, prefix: str, deny: bool = False) -> tuple[Check, ...]:
    out: list[Check] = []
    # Cheapest and most selective first: a rule usually fails on its method or path.
    _field(out, prefix, "methods", op.methods, op.not_methods, read_method, deny=deny)
    _field(out, prefix, "paths", op.paths, op.not_paths, read_path, deny=deny)
    _field(out, prefix, "hosts", op.hosts, op.not_hosts, read_host, wide=read_host_spellings,
           deny=deny)
    _field(out, prefix, "ports", op.ports, op.not_ports, read_port, deny=deny)
    return tuple(out)


def _condition_reader(key: str, rd: Readers) -> Reader:
    if key.startswith("request.headers["):
        return header_reader(header_name(key))
    if key.startswith("request.auth.claims["):
        return claims_reader(claim_path(key))
    readers: dict[str, Reader] = {
        "source.ip": read_source_ip,
        "remote.ip": rd.remote_ip,
        "source.namespace": read_principal,
        "source.principal": read_principal,
        "request.auth.principal": read_request_principal,
        "request.auth.audiences": read_audiences,
        "request.auth.presenter": read_presenter,
        "destination.ip": read_destination_ip,
        "destination.port": read_port,
        "connection.sni": read_sni,
    }
    return readers[key]


def _compile_condition(
    cond: Condition, prefix: str, rd: Readers, deny: bool = False
) -> tuple[Check, ...]:
    read = _condition_reader(cond.key, rd)
    wide, unreadable = read, None
    if cond.key.startswith("request.headers["):
        wide = header_spellings_reader(header_name(cond.key))
        unreadable = header_unreadable(header_name(cond.key))
    factory = field_matcher(cond.key)
    out: list[Check] = []
    # As in _field: every spelling where matching more can only deny more.
    if cond.values:
        out.append(_values_check(
            f"{prefix}.values", wide if deny else read, factory(cond.values, deny), negate=False,
            unreadable=unreadable if deny else None,
        ))
    if cond.not_values:
        out.append(_values_check(
            f"{prefix}.notValues", read if deny else wide, factory(cond.not_values, not deny),
            negate=True, unreadable=None if deny else unreadable,
        ))
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


def compile_rule(
    rule: Rule, index: int, order: int, policy: CompiledPolicy, rd: Readers
) -> CompiledRule:
    base = f"rules[{index}]"
    deny = policy.policy.action == DENY
    sources = tuple(
        _compile_source(s, f"{base}.from[{i}].source", rd, deny) for i, s in enumerate(rule.sources)
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


# ----------------------------------------------------------------------------- policies


@dataclass(eq=False, slots=True)
class CompiledPolicy:
    policy: AuthorizationPolicy
    ref: str
    order: int  # place in load order
    scope: Scope
    selector_test: Predicate | None  # scope.selector_test(), compiled once
    rules: tuple[CompiledRule, ...] = ()

    def applies_to(self, req: RequestView) -> bool:
        """Scope: namespace and selector (``policy/scope.py``)."""
        return self.scope.applies_to(req)

    def first_match(self, ctx: Context) -> int | None:
        for r in self.rules:
            if r.match(ctx):
                return r.index
        return None
