"""401 or 403: could some valid token turn a denied request without a token into an allow?

Istio answers a request without a token as unauthenticated (no request principal) and lets the
authorization policies decide. extauthz answers such a deny with 401 and ``WWW-Authenticate``
(ask for credentials) only when presenting a token could change the outcome; otherwise 403.

The question is answered by search, off the hot path (only for a deny of a request that carried
no token where a RequestAuthentication applies): candidate tokens are built from the in-scope
``jwtRules`` (issuer, audiences, the JWT-SVID trust domain, the subject binding) and from the
token values the applicable policies name (``requestPrincipals`` and ``notRequestPrincipals``,
``request.auth.*`` conditions), and the compiled engine is evaluated again with each as the
request's token. 401 when one of them is allowed.

Sound by construction: every candidate is a token some in-scope rule would accept (its issuer,
one of its audiences, a SPIFFE ``sub`` for JWT-SVIDs, the peer as ``sub`` when tokens are bound to
the peer), and the engine itself, DENY policies included, says that it is allowed. So 401 is
never answered where no token could help. The search is bounded (``MAX_TRIED`` candidates, of
which at most ``MAX_CANDIDATES`` are decided by the whole engine: a candidate made for one ALLOW
rule is first tried on that rule alone): a contrived policy set may make it miss a token that
would help, and the answer is then 403.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from extauthz.envoy.request import RequestView
from extauthz.identity.model import Identity, Token, try_parse_spiffe_id
from extauthz.policy.attributes import Context
from extauthz.policy.compile import CompiledRule
from extauthz.policy.engine import Engine
from extauthz.policy.model import ALLOW, DENY, JwtRuleSpec, PolicySet, Rule
from extauthz.policy.scope import Scope

MAX_CANDIDATES = 8  # whole-engine evaluations per search
MAX_TRIED = 64  # candidate tokens per search (most fail one rule's check: microseconds)
FILLER = "x"  # a value for an attribute no policy constrains


@dataclass(frozen=True, slots=True)
class Issuer:
    """What a valid token of one ``jwtRules`` entry looks like (no keys: the search mints none)."""

    issuer: str
    audiences: tuple[str, ...]
    svid_trust_domain: str | None  # a JWT-SVID rule: sub is a SPIFFE ID of this trust domain

    @staticmethod
    def of(spec: JwtRuleSpec) -> Issuer:
        td = None
        if not spec.jwks and not spec.jwks_uri and spec.issuer.startswith("spiffe://"):
            sid = try_parse_spiffe_id(spec.issuer)
            td = sid.trust_domain if sid is not None and not sid.path else None
        return Issuer(spec.issuer, spec.audiences, td)


@dataclass(slots=True)
class _Target:
    """What one ALLOW rule (one ``from`` alternative) asks of a token; empty: nothing."""

    principals: tuple[str, ...] = ()  # patterns, as written (iss/sub)
    rule: tuple[int, int] | None = None  # (policy load order, rule index) of the ALLOW rule
    audiences: list[str] = field(default_factory=list)
    presenters: list[str] = field(default_factory=list)
    claims: dict[tuple[str, ...], list[str]] = field(default_factory=dict)


def _example(pattern: str) -> str:
    """A value Istio's string match accepts for ``pattern`` (exact, ``p*``, ``*s``, ``*``)."""
    if pattern == "*":
        return FILLER
    if pattern.endswith("*"):
        return pattern[:-1] or FILLER
    if pattern.startswith("*"):
        return pattern[1:] or FILLER
    return pattern


def _subject_for(pattern: str, issuer: str) -> str | None:
    """A ``sub`` that makes ``issuer/sub`` match the principal ``pattern``, if one obviously does."""
    head = issuer + "/"
    if pattern == "*":
        return FILLER
    if pattern.endswith("*"):
        p = pattern[:-1]
        if p.startswith(head):
            return p[len(head) :] + FILLER
        return FILLER if head.startswith(p) else None
    if pattern.startswith("*"):
        return pattern[1:] or FILLER
    if pattern.startswith(head) and len(pattern) > len(head):
        return pattern[len(head) :]
    return None


def _claim_path(key: str) -> tuple[str, ...]:
    return tuple(key[len("request.auth.claims[") : -1].split("]["))


def _targets(rule: Rule, key: tuple[int, int]) -> Iterator[_Target]:
    base = _Target()
    for c in rule.conditions:
        examples = [_example(v) for v in c.values]
        if c.key == "request.auth.principal":
            base.principals = (*base.principals, *c.values)
        elif c.key == "request.auth.audiences":
            base.audiences += examples
        elif c.key == "request.auth.presenter":
            base.presenters += examples
        elif c.key.startswith("request.auth.claims[") and examples:
            base.claims.setdefault(_claim_path(c.key), []).extend(examples)
    for src in rule.sources or (None,):
        wanted = src.request_principals if src is not None else ()
        yield _Target(
            rule=key,
            principals=wanted or base.principals,
            audiences=base.audiences,
            presenters=base.presenters,
            claims=base.claims,
        )


def _escapes(rule: Rule) -> Iterator[str]:
    """Principal patterns that keep a DENY rule from matching (its ``not`` lists)."""
    for src in rule.sources:
        yield from src.not_request_principals
    for c in rule.conditions:
        if c.key == "request.auth.principal":
            yield from c.not_values


def _nested(claims: dict[str, Any], path: tuple[str, ...], values: list[str]) -> None:
    node = claims
    for step in path[:-1]:
        child = node.setdefault(step, {})
        if not isinstance(child, dict):
            return  # a shorter path holds a value here: leave it
        node = child
    node.setdefault(path[-1], values[0] if len(values) == 1 else list(values))


def _token(rule: Issuer, subject: str, target: _Target) -> Token | None:
    if rule.svid_trust_domain is not None:
        sid = try_parse_spiffe_id(subject)
        if sid is None or sid.trust_domain != rule.svid_trust_domain or not rule.audiences:
            return None
    audiences = tuple(dict.fromkeys((*rule.audiences[:1], *target.audiences)))
    presenter = target.presenters[0] if target.presenters else ""
    claims: dict[str, Any] = {"iss": rule.issuer, "sub": subject, "aud": list(audiences)}
    if presenter:
        claims["azp"] = presenter
    for path, values in target.claims.items():
        _nested(claims, path, values)
    return Token(
        issuer=rule.issuer,
        subject=subject,
        audiences=audiences,
        presenter=presenter,
        claims=MappingProxyType(claims),
    )


def _subjects(
    rule: Issuer, target: _Target, escapes: Sequence[str], bound: str | None
) -> Iterator[str]:
    if bound is not None:
        yield bound
        return
    patterns = target.principals or ("*", *escapes)
    for p in patterns:
        sub = _subject_for(p, rule.issuer)
        if sub is None:
            continue
        if rule.svid_trust_domain is not None and try_parse_spiffe_id(sub) is None:
            sub = f"spiffe://{rule.svid_trust_domain}/{FILLER}"
        yield sub


def _reads_token(rule: Rule) -> bool:
    return any(src.request_principals for src in rule.sources) or any(
        c.key.startswith("request.auth.") and c.values for c in rule.conditions
    )


class TokenWants:
    """What the policies of one generation ask of a token, filed by scope (built once per set).

    Only ALLOW rules that read the token get candidates of their own; every other rule is
    covered by the candidate that satisfies nothing in particular.
    """

    def __init__(self, policies: PolicySet) -> None:
        root = policies.root_namespace
        self._issuers = tuple(
            (Scope.of(ra, root), tuple(Issuer.of(spec) for spec in ra.jwt_rules))
            for ra in policies.request_authentication
            if ra.jwt_rules
        )
        live = [
            (n, Scope.of(p, root), p) for n, p in enumerate(policies.authorization) if not p.dry_run
        ]
        self._allow = tuple(
            (scope, targets)
            for n, scope, p in live
            if p.action == ALLOW
            for targets in (
                tuple(t for i, r in enumerate(p.rules) if _reads_token(r) for t in _targets(r, (n, i))),
            )
            if targets
        )
        self._compiled: tuple[Engine, dict[tuple[int, int], CompiledRule]] | None = None
        self._escapes = tuple(
            (scope, escapes)
            for _, scope, p in live
            if p.action == DENY
            for escapes in (tuple(dict.fromkeys(e for r in p.rules for e in _escapes(r))),)
            if escapes
        )

    def issuers(self, req: RequestView) -> tuple[Issuer, ...]:
        """The ``jwtRules`` of the RequestAuthentications applicable to ``req``."""
        return tuple(i for scope, issuers in self._issuers if scope.applies_to(req) for i in issuers)

    def allow_rules(self, engine: Engine) -> dict[tuple[int, int], CompiledRule]:
        """``engine``'s compiled ALLOW rules by (policy load order, rule index)."""
        compiled = self._compiled
        if compiled is None or compiled[0] is not engine:
            rules = {(cp.order, cr.index): cr for cp in engine.allow for cr in cp.rules}
            self._compiled = compiled = (engine, rules)
        return compiled[1]

    def candidates(
        self,
        req: RequestView,
        *,
        bound_subject: str | None = None,
        keep: Callable[[tuple[int, int]], bool] = lambda rule: True,
    ) -> Iterator[tuple[Token, tuple[int, int] | None]]:
        """Tokens valid for an applicable ``jwtRules`` entry that the policies applicable to
        ``req`` care about: first one that satisfies nothing in particular (and, for each DENY
        that lets some principals through, one with such a principal), then one per ALLOW rule
        that reads the token (with that rule's key), if ``keep(rule key)``."""
        rules = self.issuers(req)
        escapes = tuple(
            dict.fromkeys(e for scope, es in self._escapes if scope.applies_to(req) for e in es)
        )
        targets = itertools.chain(
            (_Target(),),
            (
                t
                for scope, ts in self._allow
                if scope.applies_to(req)
                for t in ts
                if t.rule is not None and keep(t.rule)
            ),
        )
        seen: set[tuple[str, str, tuple[int, int] | None]] = set()
        for target in targets:
            for rule in rules:
                for subject in _subjects(rule, target, escapes, bound_subject):
                    token = _token(rule, subject, target)
                    if token is None:
                        continue
                    key = (rule.issuer, subject, target.rule)
                    if key not in seen:
                        seen.add(key)
                        yield token, target.rule


_last: tuple[PolicySet, TokenWants] | None = None


def wants_of(policies: PolicySet) -> TokenWants:
    """``TokenWants(policies)``, kept for the last policy set asked about (replay asks per record)."""
    global _last
    last = _last
    if last is not None and last[0] is policies:
        return last[1]
    wants = TokenWants(policies)
    _last = (policies, wants)
    return wants


def some_token_allows(
    engine: Engine,
    wants: TokenWants,
    req: RequestView,
    identity: Identity,
    *,
    bound_subject: str | None = None,
) -> bool:
    """Whether some token valid for a RequestAuthentication applicable to ``req`` would make
    ``engine`` allow it. ``wants`` is built from ``engine``'s policy set; ``bound_subject``:
    tokens must carry this ``sub`` (``bind_token_to_peer``).
    """
    allow_rules = wants.allow_rules(engine)
    here = Context(req, identity)

    def may_match(key: tuple[int, int]) -> bool:
        """The rule's parts that read no token (selector, ``to``) hold for this request."""
        rule = allow_rules.get(key)
        if rule is None:
            return False
        sel = rule.policy.selector_test
        if sel is not None and not sel(here):
            return False
        return not rule.operations or any(all(c.test(here) for c in g) for g in rule.operations)

    evaluated = 0
    tokens = wants.candidates(req, bound_subject=bound_subject, keep=may_match)
    for token, rule_key in itertools.islice(tokens, MAX_TRIED):
        who = Identity(identity.peer, identity.peer_verified, identity.peer_not_after, token)
        if rule_key is not None:
            # A token made for one ALLOW rule: try that rule alone first (cheap), the whole
            # engine (DENY policies first) only when it matches.
            rule = allow_rules.get(rule_key)
            if rule is None or not rule.match(Context(req, who)):
                continue
        if engine.evaluate(req, who).allowed:
            return True
        evaluated += 1
        if evaluated >= MAX_CANDIDATES:
            return False
    return False
