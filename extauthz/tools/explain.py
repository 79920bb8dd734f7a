"""Explain a decision: which policy and rule decided, and for a deny which condition failed first.

Walks every policy whose scope covers the request, without the index, using the same compiled
field checks the engine uses; the engine's verdict is reported alongside (tests hold the two in
agreement). For humans and ``extauthz check --explain``: never on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from extauthz.envoy.request import RequestView
from extauthz.identity.model import Identity
from extauthz.policy.attributes import Context
from extauthz.policy.engine import Engine, Verdict
from extauthz.policy.model import ALLOW, AUDIT, DENY


@dataclass(frozen=True, slots=True)
class RuleTrace:
    policy: str
    action: str  # ALLOW / DENY / AUDIT
    dry_run: bool
    rule: int | None  # None: the policy has no rules (it matches nothing)
    matched: bool
    failed: str | None  # the first condition that failed, as the policy names it
    where: str | None  # file:line of the rule (or the policy)

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "action": self.action,
            "dry_run": self.dry_run,
            "rule": self.rule,
            "matched": self.matched,
            "failed": self.failed,
            "where": self.where,
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    verdict: Verdict
    summary: str
    failed: str | None  # for a deny without a matching DENY: the first ALLOW condition that failed
    trace: tuple[RuleTrace, ...]


_PHASE = {DENY: 0, ALLOW: 1, AUDIT: 2}


def explain(engine: Engine, request: RequestView, identity: Identity) -> Explanation:
    verdict = engine.evaluate(request, identity)
    ctx = Context(request, identity)
    policies = sorted(
        engine.applicable(request), key=lambda cp: (cp.policy.dry_run, _PHASE[cp.policy.action], cp.order)
    )
    trace: list[RuleTrace] = []
    for cp in policies:
        p = cp.policy
        if not cp.rules:
            trace.append(RuleTrace(cp.ref, p.action, p.dry_run, None, False, "no rules: matches nothing",
                                   str(p.where) if p.where else None))
            continue
        for r in cp.rules:
            failed = r.first_failure(ctx)
            where = r.rule.where or p.where
            trace.append(RuleTrace(cp.ref, p.action, p.dry_run, r.index, failed is None, failed,
                                   str(where) if where else None))
    failed_first: str | None = None
    if verdict.allowed:
        summary = f"allowed by {verdict.policy} rules[{verdict.rule}] (no DENY policy matched)"
    elif verdict.policy is not None:
        summary = f"denied by DENY policy {verdict.policy} rules[{verdict.rule}]"
    else:
        allow_traces = [t for t in trace if t.action == ALLOW and not t.dry_run]
        if not allow_traces:
            ns = request.namespace or "(none)"
            summary = (
                f"denied: no ALLOW policy applies to this request (destination namespace {ns}, "
                f"context_extensions {dict(request.context_extensions)}); zero trust denies"
            )
        else:
            # The ALLOW rule that came closest (most of its checks hold; first in load order on
            # a tie) is the one the caller most likely meant: report its first failed condition.
            best: float | None = None
            for cp in policies:
                if cp.policy.action != ALLOW or cp.policy.dry_run:
                    continue
                for r in cp.rules:
                    checks = [c for g in (*r.sources, *r.operations) for c in g] + list(r.conditions)
                    score = sum(c.test(ctx) for c in checks) / len(checks) if checks else 1.0
                    if best is None or score > best:
                        best = score
                        failed_first = f"{cp.ref} {r.first_failure(ctx)}"
            summary = "denied: no ALLOW rule matched" + (
                f"; closest rule failed first on {failed_first}" if failed_first else ""
            )
    return Explanation(verdict, summary, failed_first, tuple(trace))
