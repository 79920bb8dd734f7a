"""``extauthz lint``: policy-as-code checks beyond what fails to load.

Errors are what the loader refuses (every file is tried, so one run lists them all). Warnings:

- ``open-allow``: an ALLOW rule any caller can satisfy (no principal, no request principal, or
  only ``*``);
- ``no-spiffe-principal``: an ALLOW rule satisfiable without a SPIFFE peer principal (e.g. by a
  token or an IP block alone);
- ``shadowed``: a rule every request of which an earlier rule of the same action already matches
  (in a scope at least as wide);
- ``unreachable``: an ALLOW rule that a DENY rule always overrides, or a rule that can never
  match (its values are all excluded by its own ``not`` values, or its path is not canonical and
  such requests are refused with 400 before any policy);
- ``deny-path-not-canonical``: a DENY path that is not canonical: it can never match, the
  canonical twin is what needs denying; ``deny-path-exact``: a DENY on an exact path whose subtree
  twin (``/p/*``) is not denied; ``deny-host-port``: a DENY on an exact host without its ``:*``
  twin (the authority may carry a port);
- ``selector-unsettable``: a selector no route can set (a ``namespace`` label other than the
  policy's namespace; with ``--envoy-config``, labels no route's ``context_extensions`` hold);
- ``method-case``: a lower-case method (Istio compares methods exactly);
- values Istio loads that never match, or not as written: ``principal-scheme`` (a principal
  written with ``spiffe://``), ``path-no-slash`` (a path without a leading '/'),
  ``service-account-form`` (a service account not ``namespace/name``, or with a ``*``),
  ``literal-star`` (a ``*`` inside a value: matched literally).

The subsumption used for ``shadowed``/``unreachable`` is conservative: a warning is only given
when the covering is certain from the patterns themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from extauthz.policy.index import path_segments_key, principal_keys
from extauthz.policy.loader import PolicyError, build_policy_set, load_directory, policy_files, read_documents
from extauthz.policy.model import ALLOW, DENY, AuthorizationPolicy, Condition, PolicySet, Rule, Source
from extauthz.policy.scope import Scope
from extauthz.tools.lint_rules import (
    canonical_pattern,
    never_matches,
    odd_values,
    pattern_problem,
    rule_covers,
)

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Finding:
    severity: str
    code: str
    message: str
    file: str = ""
    line: int = 0
    policy: str | None = None
    rule: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "code": self.code,
            "file": self.file,
            "line": self.line,
            "policy": self.policy,
            "rule": self.rule,
            "message": self.message,
        }

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.file else ""
        what = f"{self.policy}" + (f" rules[{self.rule}]" if self.rule is not None else "")
        return f"{where}{self.severity}: [{self.code}] {what + ': ' if self.policy else ''}{self.message}"


def lint_directory(
    directory: str | Path, *, root_namespace: str = "istio-system", envoy_config: str | None = None
) -> list[Finding]:
    """Load (reporting every file's error) and, when everything loads, warn."""
    try:
        files = policy_files(Path(directory))
    except PolicyError as exc:
        return [_error(exc)]
    errors: list[Finding] = []
    docs: list[tuple[str, Any]] = []
    for path in files:
        try:
            file_docs = [(str(path), d) for d in read_documents(path)]
            build_policy_set(file_docs, root_namespace=root_namespace, files=[str(path)])
        except PolicyError as exc:
            errors.append(_error(exc))
            continue
        docs.extend(file_docs)
    if errors:
        return errors
    try:
        policies = load_directory(directory, root_namespace=root_namespace)  # cross-file checks
    except PolicyError as exc:
        return [_error(exc)]
    routes = None
    if envoy_config is not None:
        try:
            routes = route_extensions(yaml.safe_load(Path(envoy_config).read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError) as exc:
            return [Finding(ERROR, "envoy-config", f"cannot read {envoy_config}: {exc}", envoy_config)]
    return lint_policies(policies, routes=routes)


def _error(exc: PolicyError) -> Finding:
    return Finding(ERROR, "load", f"{exc.resource + ': ' if exc.resource else ''}{exc.reason}",
                   exc.where.file, exc.where.line)


def route_extensions(config: Any) -> list[dict[str, str]]:
    """Every ``context_extensions`` map an Envoy configuration sets (per route, vhost, ...)."""
    found: list[dict[str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                if k == "context_extensions" and isinstance(v, Mapping):
                    found.append({str(a): str(b) for a, b in v.items()})
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return found


# ----------------------------------------------------------------------------- rules, flattened


@dataclass(frozen=True, slots=True)
class _R:
    policy: AuthorizationPolicy
    index: int
    rule: Rule
    order: int
    scope: Scope

    def finding(self, severity: str, code: str, message: str) -> Finding:
        where = self.rule.where or self.policy.where
        return Finding(severity, code, message, where.file if where else "", where.line if where else 0,
                       self.policy.ref, self.index)


def _rules(policies: PolicySet) -> list[_R]:
    out: list[_R] = []
    for p in policies.authorization:
        if p.dry_run:
            continue
        scope = Scope.of(p, policies.root_namespace)
        for i, r in enumerate(p.rules):
            out.append(_R(p, i, r, len(out), scope))
    return out


def lint_policies(policies: PolicySet, *, routes: list[dict[str, str]] | None = None) -> list[Finding]:
    rules = _rules(policies)
    out: list[Finding] = []
    for p in policies.authorization:
        out.extend(_selector_findings(p, policies.root_namespace, routes))
    for r in rules:
        out.extend(_rule_findings(r))
    out.extend(_coverage_findings(rules))
    return sorted(out, key=lambda f: (f.file, f.line, f.code))


def _selector_findings(
    p: AuthorizationPolicy, root: str, routes: list[dict[str, str]] | None
) -> Iterator[Finding]:
    scope = Scope.of(p, root)
    sel = p.selector or {}
    where = p.where
    file, line = (where.file, where.line) if where else ("", 0)
    ns_label = sel.get("namespace")
    if ns_label is not None and not scope.everywhere and ns_label != p.namespace:
        yield Finding(WARNING, "selector-unsettable",
                      f"selector namespace={ns_label!r} can never hold for a policy in namespace "
                      f"{p.namespace!r}: the policy never applies", file, line, p.ref)
    elif sel and routes is not None and not any(scope.labels_match(ext) for ext in routes):
        yield Finding(WARNING, "selector-unsettable",
                      f"no route of the Envoy configuration sets context_extensions {dict(sel)}: "
                      "the policy never applies", file, line, p.ref)


def _source_fields(s: Source) -> dict[str, tuple[str, ...]]:
    return {k: getattr(s, k) for k in s.__dataclass_fields__ if getattr(s, k)}


_IDENTITY_KEYS = ("source.principal", "source.namespace", "request.auth.principal")


def _identity_condition(conds: Iterable[Condition]) -> tuple[bool, bool]:
    """(restricts the caller at all, requires a SPIFFE peer) from ``when`` conditions."""
    restricts = spiffe = False
    for c in conds:
        if not c.values or list(c.values) == ["*"]:
            continue
        if c.key in _IDENTITY_KEYS or c.key.startswith("request.auth.claims["):
            restricts = True
        if c.key in ("source.principal", "source.namespace"):
            spiffe = True
    return restricts, spiffe


def _rule_findings(r: _R) -> Iterator[Finding]:
    rule = r.rule
    for code, message in odd_values(rule):
        yield r.finding(WARNING, code, message)
    for op in rule.operations:
        for m in (*op.methods, *op.not_methods):
            if m != m.upper():
                yield r.finding(WARNING, "method-case",
                                f"method {m!r} is not upper case: Istio compares methods exactly, "
                                f"write {m.upper()!r}")
    if never_matches(rule):
        yield r.finding(WARNING, "unreachable", "the rule can never match: every value it accepts "
                        "is excluded by its own not-values")
    for op in rule.operations:
        for p in op.paths:
            problem = pattern_problem(p) if p.startswith(("/", "*")) else None  # else path-no-slash
            if problem is None:
                continue
            if r.policy.action == DENY:
                yield r.finding(WARNING, "deny-path-not-canonical",
                                f"DENY path {p!r} is not canonical ({problem}): such requests are "
                                f"refused with 400 before any policy, so this never matches; deny "
                                f"the canonical twin {canonical_pattern(p)!r} instead")
            else:
                yield r.finding(WARNING, "unreachable",
                                f"path {p!r} is not canonical ({problem}): it never matches a "
                                f"request (use {canonical_pattern(p)!r})")
    if r.policy.action == DENY:
        yield from _deny_twins(r)
    if r.policy.action == ALLOW:
        yield from _open_allow(r)


def _open_allow(r: _R) -> Iterator[Finding]:
    rule = r.rule
    restricts, spiffe_when = _identity_condition(rule.conditions)
    if restricts and spiffe_when:
        return
    sources = rule.sources or (Source(),)
    any_caller = no_spiffe = False
    for s in sources:
        principals = [v for v in s.principals if v != "*"]
        request_principals = [v for v in s.request_principals if v != "*"]
        namespaces = [v for v in s.namespaces if v != "*"]
        if not (principals or request_principals or namespaces) and not restricts:
            any_caller = True
        elif not (s.principals or s.namespaces) and not spiffe_when:
            no_spiffe = True
    if any_caller:
        yield r.finding(WARNING, "open-allow", "any caller can satisfy this ALLOW rule (no principal, "
                        "no request principal, or only '*'): is that intended?")
    elif no_spiffe:
        yield r.finding(WARNING, "no-spiffe-principal", "this ALLOW rule does not require a SPIFFE "
                        "peer principal (principals or namespaces)")


def _deny_twins(r: _R) -> Iterator[Finding]:
    for op in r.rule.operations:
        paths = set(op.paths)
        for p in op.paths:
            if "*" in p or "{" in p or p == "/" or pattern_problem(p) is not None:
                continue
            base = p.rstrip("/")
            twins = {base + "/*", base + "*", base + "/{**}"}
            if not paths & twins:
                yield r.finding(WARNING, "deny-path-exact",
                                f"DENY path {p!r} is exact: {base + '/'!r} and {base + '/...'!r} are "
                                f"not denied; add {base + '/*'!r} if the subtree is meant too")
        hosts = {h.lower() for h in op.hosts}
        for h in op.hosts:
            if "*" in h or ":" in h:
                continue
            if h.lower() + ":*" not in hosts:
                yield r.finding(WARNING, "deny-host-port",
                                f"DENY host {h!r} is exact: an authority with a port ({h}:443) is not "
                                f"denied; add {h + ':*'!r}")


def _coverage_findings(rules: list[_R]) -> Iterator[Finding]:
    # Only a rule whose path key is a prefix of B's can cover B, and a rule naming exact
    # principals only covers B if it names B's too: bucket by both, so a large set stays fast.
    generic: dict[tuple[str, ...], list[_R]] = {}
    by_principal: dict[tuple[tuple[str, ...], str], list[_R]] = {}
    keys: dict[int, list[tuple[str, ...]]] = {}
    principals: dict[int, tuple[str, ...]] = {}
    for r in rules:
        keys[r.order] = path_segments_key(r.rule)
        principals[r.order] = principal_keys(r.rule)
        for k in keys[r.order]:
            if principals[r.order]:
                for p in principals[r.order]:
                    by_principal.setdefault((k, p), []).append(r)
            else:
                generic.setdefault(k, []).append(r)
    for b in rules:
        first = keys[b.order][0]
        b_principal = principals[b.order][0] if principals[b.order] else None
        candidates: list[_R] = []
        for n in range(len(first) + 1):
            candidates.extend(generic.get(first[:n], ()))
            if b_principal is not None:
                candidates.extend(by_principal.get((first[:n], b_principal), ()))
        seen: set[int] = set()
        shadow: _R | None = None
        denied: _R | None = None
        for a in sorted(candidates, key=lambda x: x.order):
            if a.order == b.order or a.order in seen:
                continue
            seen.add(a.order)
            if not a.scope.covers(b.scope) or not rule_covers(a.rule, b.rule):
                continue
            if a.policy.action == b.policy.action and a.order < b.order and shadow is None:
                shadow = a
            if b.policy.action == ALLOW and a.policy.action == DENY and denied is None:
                denied = a
        if denied is not None:
            yield b.finding(WARNING, "unreachable", f"never allows: DENY {denied.policy.ref} "
                            f"rules[{denied.index}] matches every request this rule matches")
        elif shadow is not None:
            yield b.finding(WARNING, "shadowed", f"shadowed by the broader {shadow.policy.ref} "
                            f"rules[{shadow.index}] earlier: it matches every request this one does")
