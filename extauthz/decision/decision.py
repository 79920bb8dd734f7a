"""The decision: what one request's identity and the policy set say about it.

``decide`` is pure but for the clock (token expiry): request view + identity step + compiled
policy set in, ``Decision`` out. ``CheckCore`` (extauthz.pipeline) adds the quarantine, the
cache, the response and the audit record around it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from extauthz import reasons
from extauthz.decision.inputs import InputPlan, input_of, missing_inputs, record_input
from extauthz.envoy.request import RequestView
from extauthz.identity.model import Identity
from extauthz.identity.resolver import MISSING_TOKEN_CHALLENGE, IdentityContext, IdentityResolver
from extauthz.identity.witness import some_token_allows, wants_of
from extauthz.policy.engine import Engine, ReadSet


@dataclass(slots=True)
class Decision:
    allowed: bool
    status: int  # HTTP status Envoy will answer (200 when allowed)
    reason: str
    decision_id: str
    policy: str | None = None
    rule: int | None = None
    identity: Identity = field(default_factory=Identity)
    error: str | None = None  # for the audit record: what was wrong with the input
    audit_policies: tuple[str, ...] = ()
    dry_run: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()  # identity and token-output headers set on allow
    cache: str = "miss"
    remove_headers: tuple[str, ...] = ()  # request headers stripped on allow (XFCC, the token)
    challenge: str | None = None  # WWW-Authenticate of a 401
    remove_query_params: tuple[str, ...] = ()  # query parameters removed on allow (the token)
    input: dict[str, Any] | None = None  # what the policies read (decision/inputs.py); shared


DECISION_FIELDS = tuple(f.name for f in dataclasses.fields(Decision))


def cache_hit(cached: Decision, decision_id: str) -> Decision:
    """A copy of a cached decision for this request (half the cost of dataclasses.replace)."""
    decision = Decision(*[getattr(cached, name) for name in DECISION_FIELDS])
    decision.decision_id = decision_id
    decision.cache = "hit"
    return decision


# For callers of decide() without a resolver: no bundles, no trusted proxies; remote key sets
# shared across calls (never a fetch per call).
_DEFAULT_IDENTITY = IdentityContext()


# Decision ids drawn from the OS's random source 256 at a time: one getrandom() call where
# there were 256. list.pop() is atomic, so threads never share an id; a forked child starts
# with an empty pool (it must not hand out its parent's ids).
_ID_BATCH = 256
_id_pool: list[str] = []
os.register_at_fork(after_in_child=_id_pool.clear)


def new_decision_id() -> str:
    """128 random bits as 32 hex digits (the shape of uuid4().hex, without its cost)."""
    try:
        return _id_pool.pop()
    except IndexError:
        block = os.urandom(16 * _ID_BATCH).hex()
        _id_pool.extend(block[i : i + 32] for i in range(32, len(block), 32))
        return block[:32]


def decide(
    engine: Engine | None,
    req: RequestView,
    resolver: IdentityResolver | None = None,
    inputs: InputPlan | None = None,
) -> Decision:
    """Decide one request. No I/O of its own; token expiry reads the clock.

    ``resolver`` is the identity step for ``engine``'s policy generation (built from its
    RequestAuthentication / PeerAuthentication and the trust bundles); without one, a resolver
    with no bundles and no trusted proxies is used (cached per policy set). ``headers`` of the
    decision are the token outputs; the configured identity headers are added by CheckCore.
    With ``inputs`` (the plan for ``engine``), the decision carries its ``input`` for the record.
    """
    decision_id = new_decision_id()  # the service's, never the client's x-request-id
    if engine is None or req.problem is not None:
        if engine is None:
            decision = Decision(False, 403, reasons.NO_POLICY, decision_id)
        else:
            decision = Decision(False, 400, reasons.INVALID_PATH, decision_id, error=req.problem)
        if inputs is not None:
            decision.input = record_input(inputs, req, None)
        return decision
    if resolver is None:
        resolver = _DEFAULT_IDENTITY.resolver(engine.policies)
    who = resolver.resolve(req)
    if who.denied:
        return Decision(
            False,
            who.status,
            who.reason,
            decision_id,
            identity=who.identity,
            error=who.error,
            challenge=who.challenge,
            input=record_input(inputs, req, None) if inputs is not None else None,
        )
    identity = who.identity
    verdict = engine.evaluate(req, identity)
    recorded = (
        record_input(inputs, req, identity, who.token_missing) if inputs is not None else None
    )
    if (
        not verdict.allowed
        and who.token_missing
        and resolver.token_could_allow(engine, req, identity)
    ):
        # Denied, and the request brought no token where a RequestAuthentication applies, but
        # some valid token would turn this into an allow (an ALLOW that reads it, or a DENY
        # that spares token holders): ask for credentials (401) rather than refuse (403).
        return Decision(
            False,
            401,
            reasons.AUTHN_REQUIRED,
            decision_id,
            policy=verdict.policy,
            rule=verdict.rule,
            identity=identity,
            audit_policies=verdict.audit,
            dry_run=verdict.dry_run,
            challenge=MISSING_TOKEN_CHALLENGE,
            input=recorded,
        )
    return Decision(
        allowed=verdict.allowed,
        status=200 if verdict.allowed else 403,
        reason=verdict.reason,
        decision_id=decision_id,
        policy=verdict.policy,
        rule=verdict.rule,
        identity=identity,
        audit_policies=verdict.audit,
        dry_run=verdict.dry_run,
        headers=who.headers if verdict.allowed else (),
        remove_headers=who.remove,
        remove_query_params=who.remove_params,
        input=recorded,
    )


def decide_input(
    engine: Engine, inp: Mapping[str, Any], reads: ReadSet | None = None
) -> Decision | None:
    """Decide again from a record's ``input`` (what ``extauthz replay`` needs): the same policy
    evaluation as ``decide``, with the identity as recorded (tokens and certificates are not
    verified again). None when the record holds no identity (the decision never reached the
    policies: an identity or request error) or misses an input ``engine`` reads
    (``inputs.missing_inputs``). ``reads``: what the policies applying to this request read
    (a part of ``engine.reads``; policies out of scope are not evaluated), default all of it."""
    if missing_inputs(inp, engine.reads if reads is None else reads):
        return None
    req, identity, token_missing = input_of(inp)
    if identity is None:
        return None
    verdict = engine.evaluate(req, identity)
    if (
        not verdict.allowed
        and token_missing
        and some_token_allows(engine, wants_of(engine.policies), req, identity)
    ):
        return Decision(False, 401, reasons.AUTHN_REQUIRED, "", verdict.policy, verdict.rule,
                        identity=identity, audit_policies=verdict.audit,
                        dry_run=verdict.dry_run, challenge=MISSING_TOKEN_CHALLENGE)
    return Decision(
        allowed=verdict.allowed,
        status=200 if verdict.allowed else 403,
        reason=verdict.reason,
        decision_id="",
        policy=verdict.policy,
        rule=verdict.rule,
        identity=identity,
        audit_policies=verdict.audit,
        dry_run=verdict.dry_run,
    )
