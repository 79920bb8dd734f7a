"""The Check core: request bytes in, response bytes and an audit record out.

Transport-independent (grpcio today, any HTTP/2 server tomorrow) and fail-closed: every failure
in here ends as a deny CheckResponse, never as an exception.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from extauthz import response
from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.audit import rfc3339_now
from extauthz.authn import (
    MISSING_TOKEN_CHALLENGE,
    REASON_AUTHN_REQUIRED,
    IdentityContext,
    IdentityResolver,
)
from extauthz.identity import Identity
from extauthz.policy.engine import REASON_NO_MATCH, Engine
from extauthz.request import RequestView, from_check_request

log = logging.getLogger("extauthz.check")

# Deny reasons produced here (the policy engine adds allowed / denied_by_policy /
# no_matching_policy). A closed set: they are a metrics label.
REASON_INVALID_PATH = "invalid_request"
REASON_MALFORMED = "malformed_check_request"
REASON_INVALID_PEER = "invalid_peer_identity"
REASON_NO_POLICY = "no_policy_loaded"
REASON_INTERNAL = "internal_error"


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
    headers: tuple[tuple[str, str], ...] = ()  # identity headers set on allow
    cache: str = "miss"
    remove_headers: tuple[str, ...] = ()  # request headers stripped on allow (XFCC, the token)
    challenge: str | None = None  # WWW-Authenticate of a 401


# For callers of decide() without a resolver: no bundles, no trusted proxies; remote key sets
# shared across calls (never a fetch per call).
_DEFAULT_IDENTITY = IdentityContext()


def new_decision_id() -> str:
    return uuid.uuid4().hex


def decide(
    engine: Engine | None, req: RequestView, resolver: IdentityResolver | None = None
) -> Decision:
    """Decide one request. No I/O of its own; token expiry reads the clock.

    ``resolver`` is the identity step for ``engine``'s policy generation (built from its
    RequestAuthentication / PeerAuthentication and the trust bundles); without one, a resolver
    with no bundles and no trusted proxies is used (cached per policy set).
    """
    decision_id = req.request_id or new_decision_id()
    if engine is None:
        return Decision(False, 403, REASON_NO_POLICY, decision_id)
    if req.problem is not None:
        return Decision(False, 400, REASON_INVALID_PATH, decision_id, error=req.problem)
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
        )
    identity = who.identity
    verdict = engine.evaluate(req, identity)
    if who.token_missing and verdict.reason == REASON_NO_MATCH:
        # No ALLOW matched, no DENY either, and the request brought no token where a
        # RequestAuthentication applies: ask for credentials (401) rather than refuse (403).
        return Decision(
            False,
            401,
            REASON_AUTHN_REQUIRED,
            decision_id,
            identity=identity,
            audit_policies=verdict.audit,
            dry_run=verdict.dry_run,
            challenge=MISSING_TOKEN_CHALLENGE,
        )
    headers = who.headers
    if verdict.allowed and identity.peer is not None:
        headers = (("x-spiffe-id", str(identity.peer)), *headers)
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
        headers=headers,
        remove_headers=who.remove,
    )


def render(decision: Decision) -> bytes:
    if decision.allowed:
        return response.allow(decision.headers, decision.remove_headers)
    extra = (("www-authenticate", decision.challenge),) if decision.challenge else ()
    return response.deny(decision.status, decision.decision_id, decision.reason, extra_headers=extra)


def audit_record(decision: Decision, req: RequestView | None, latency_us: int) -> dict[str, Any]:
    """The audit record of one decision (see the interface spec for the field list)."""
    r = req or RequestView()
    return {
        "time": rfc3339_now(),
        "decision_id": decision.decision_id,
        "allowed": decision.allowed,
        "status": decision.status,
        "reason": decision.reason,
        "policy": decision.policy,
        "rule": decision.rule,
        "error": decision.error,
        "source": {
            "principal": r.source.principal or None,
            "address": r.source.address or None,
        },
        "destination": {"principal": r.destination.principal or None},
        "request": {"method": r.method, "host": r.host, "path": r.path},
        "token": {
            "iss": decision.identity.token.issuer if decision.identity.token else None,
            "sub": decision.identity.token.subject if decision.identity.token else None,
        },
        "cache": decision.cache,
        "latency_us": latency_us,
        "audit_policies": list(decision.audit_policies),
        "dry_run": [{"policy": p, "result": res} for p, res in decision.dry_run],
    }


class CheckCore:
    """Answers Check calls against whatever policy set ``current_engine`` returns right now."""

    def __init__(
        self, current_engine: Callable[[], Engine | None], identity: IdentityContext | None = None
    ) -> None:
        self._current_engine = current_engine
        self.identity = identity or IdentityContext()

    def check_message(self, msg: ext.CheckRequest) -> tuple[bytes, dict[str, Any], Decision]:
        return self._check(lambda: msg)

    def check(self, data: bytes) -> tuple[bytes, dict[str, Any], Decision]:
        """Answer one serialized CheckRequest: (CheckResponse bytes, audit record, decision)."""
        return self._check(lambda: ext.CheckRequest.FromString(data))

    def _check(
        self, parse: Callable[[], ext.CheckRequest]
    ) -> tuple[bytes, dict[str, Any], Decision]:
        start = time.perf_counter_ns()
        req: RequestView | None = None
        engine = self._current_engine()  # read once: the whole check sees one policy set
        try:
            try:
                req = from_check_request(parse())
            except (DecodeError, ValueError, UnicodeError) as exc:
                decision = Decision(
                    False, 403, REASON_MALFORMED, new_decision_id(), error=f"undecodable: {exc}"
                )
            else:
                resolver = self.identity.resolver(engine.policies) if engine is not None else None
                decision = decide(engine, req, resolver)
            body = render(decision)
        except Exception:  # fail closed, whatever happened
            log.exception("internal error while checking a request")
            decision = Decision(
                False,
                403,
                REASON_INTERNAL,
                (req.request_id if req else "") or new_decision_id(),
                error="internal error",
            )
            body = response.STATIC_DENY
            try:
                body = render(decision)
            except Exception:
                log.exception("cannot render a deny response; using the static one")
        latency_us = (time.perf_counter_ns() - start) // 1000
        try:
            record = audit_record(decision, req, latency_us)
        except Exception:
            log.exception("cannot build the audit record")
            record = {"time": rfc3339_now(), "decision_id": decision.decision_id,
                      "allowed": decision.allowed, "status": decision.status,
                      "reason": decision.reason, "error": "audit record incomplete"}
        return body, record, decision
