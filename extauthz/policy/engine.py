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

from dataclasses import dataclass, field

from extauthz import reasons
from extauthz.envoy.request import RequestView
from extauthz.identity.model import Identity
from extauthz.policy.attributes import Context, ReadSet, read_set, remote_ip_reader
from extauthz.policy.compile import CompiledPolicy, Readers, compile_rule
from extauthz.policy.index import ScopeIndex, request_segments
from extauthz.policy.model import ALLOW, AUDIT, DENY, PolicySet
from extauthz.policy.scope import Scope

__all__ = ["Context", "Engine", "ReadSet", "Verdict", "compile_policies"]


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str
    policy: str | None = None  # namespace/name that decided
    rule: int | None = None  # index of the rule that matched
    audit: tuple[str, ...] = ()  # AUDIT policies that matched
    dry_run: tuple[tuple[str, str], ...] = ()  # (policy, "allow_match"/"deny_no_match"/...)


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
    _deny_index: ScopeIndex = field(default_factory=ScopeIndex, repr=False)
    _allow_index: ScopeIndex = field(default_factory=ScopeIndex, repr=False)
    _audit_index: ScopeIndex = field(default_factory=ScopeIndex, repr=False)

    def evaluate(self, request: RequestView, identity: Identity) -> Verdict:
        ctx = Context(request, identity)
        segments = request_segments(request.path)
        dry: tuple[tuple[str, str], ...] = ()
        if self.dry_run:
            dry = tuple(
                (cp.ref, f"{cp.policy.action.lower()}_" + ("match" if m is not None else "no_match"))
                for cp in self.dry_run
                if cp.scope.applies_to(request)
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
        return sorted((cp for cp in every if cp.scope.applies_to(request)), key=lambda cp: cp.order)


def compile_policies(
    policies: PolicySet, generation: int = 1, *, xff_num_trusted_hops: int = 0
) -> Engine:
    """Compile ``policies``. ``xff_num_trusted_hops``: see ``client_ip`` (``remote.ip``)."""
    rd = Readers(remote_ip=remote_ip_reader(xff_num_trusted_hops))
    buckets: dict[str, list[CompiledPolicy]] = {ALLOW: [], DENY: [], AUDIT: [], "dry": []}
    indexes = {ALLOW: ScopeIndex(), DENY: ScopeIndex(), AUDIT: ScopeIndex()}
    order = 0
    for n, p in enumerate(policies.authorization):
        scope = Scope.of(p, policies.root_namespace)
        cp = CompiledPolicy(
            policy=p,
            ref=p.ref,
            order=n,
            scope=scope,
            selector_test=scope.selector_test(),
        )
        rules = []
        for i, r in enumerate(p.rules):
            rules.append(compile_rule(r, i, order, cp, rd))
            order += 1
        cp.rules = tuple(rules)
        buckets["dry" if p.dry_run else p.action].append(cp)
        if not p.dry_run:
            for cr in cp.rules:
                indexes[p.action].add(cr)
    return Engine(
        reads=read_set(policies.authorization, xff_num_trusted_hops),
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
