"""The Check core: request bytes in, response bytes and an audit record out.

Transport-independent (grpcio today, any HTTP/2 server tomorrow) and fail-closed: every failure
in here ends as a deny CheckResponse, never as an exception.

One check, top to bottom (``CheckCore.answer``): parse -> quarantine? -> cache hit, or
``decide`` (identity, policy) and maybe store -> identity headers -> response bytes -> audit
(fail closed when the audit log cannot take the record and ``audit_overflow`` is ``deny``) ->
metrics -> deny-rate accounting.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from extauthz import reasons
from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.decision.audit import OVERFLOW_DENY, AuditLog, rfc3339, rfc3339_now
from extauthz.decision.cache import DecisionCache
from extauthz.decision.quarantine import Quarantine, QuarantineEvent, caller_of
from extauthz.envoy import response
from extauthz.envoy.request import RequestView, from_check_request
from extauthz.identity.headers import IdentityHeaders
from extauthz.identity.model import Identity
from extauthz.identity.resolver import MISSING_TOKEN_CHALLENGE, IdentityContext, IdentityResolver
from extauthz.metrics import Metrics
from extauthz.policy.engine import Engine

log = logging.getLogger("extauthz.pipeline")

# Denials that say nothing about the caller: they never count towards a quarantine.
_NOT_THE_CALLERS_FAULT = frozenset(
    {reasons.QUARANTINED, reasons.AUDIT_UNAVAILABLE, reasons.INTERNAL, reasons.NO_POLICY}
)


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


_DECISION_FIELDS = tuple(f.name for f in dataclasses.fields(Decision))


def _hit(cached: Decision, decision_id: str) -> Decision:
    """A copy of a cached decision for this request (half the cost of dataclasses.replace)."""
    decision = Decision(*[getattr(cached, name) for name in _DECISION_FIELDS])
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
    engine: Engine | None, req: RequestView, resolver: IdentityResolver | None = None
) -> Decision:
    """Decide one request. No I/O of its own; token expiry reads the clock.

    ``resolver`` is the identity step for ``engine``'s policy generation (built from its
    RequestAuthentication / PeerAuthentication and the trust bundles); without one, a resolver
    with no bundles and no trusted proxies is used (cached per policy set). ``headers`` of the
    decision are the token outputs; the configured identity headers are added by CheckCore.
    """
    decision_id = req.request_id or new_decision_id()
    if engine is None:
        return Decision(False, 403, reasons.NO_POLICY, decision_id)
    if req.problem is not None:
        return Decision(False, 400, reasons.INVALID_PATH, decision_id, error=req.problem)
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
    if who.token_missing and verdict.reason == reasons.NO_MATCH:
        # No ALLOW matched, no DENY either, and the request brought no token where a
        # RequestAuthentication applies: ask for credentials (401) rather than refuse (403).
        return Decision(
            False,
            401,
            reasons.AUTHN_REQUIRED,
            decision_id,
            identity=identity,
            audit_policies=verdict.audit,
            dry_run=verdict.dry_run,
            challenge=MISSING_TOKEN_CHALLENGE,
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
    )


def metadata(decision: Decision) -> response.Metadata:
    """``dynamic_metadata`` for Envoy's access logs: who was decided about, and how."""
    ident = decision.identity
    token = ident.token
    return {  # the decision id is added per request (response.Prepared.finish)
        "allowed": decision.allowed,
        "reason": decision.reason,
        "policy": decision.policy,
        "peer": str(ident.peer) if ident.peer is not None else None,
        "peer_verified": ident.peer_verified if ident.peer is not None else None,
        "request_principal": ident.request_principal or None,
        "token_issuer": token.issuer if token is not None else None,
        "token_subject": token.subject if token is not None else None,
    }


def prepare(decision: Decision, managed: tuple[str, ...]) -> response.Prepared:
    """The response a decision determines, encoded but for the decision id (cached with it)."""
    if decision.allowed:
        return response.prepare_allow(
            decision.headers, decision.remove_headers, managed=managed, metadata=metadata(decision)
        )
    extra = (("www-authenticate", decision.challenge),) if decision.challenge else ()
    return response.prepare_deny(
        decision.status, decision.reason, extra, metadata=metadata(decision)
    )


def render(
    decision: Decision,
    managed: tuple[str, ...] = response.IDENTITY_HEADERS,
    prepared: response.Prepared | None = None,
) -> bytes:
    """CheckResponse bytes for ``decision`` (from ``prepared`` when the cache had it)."""
    return (prepared or prepare(decision, managed)).finish(decision.decision_id)


def audit_record(decision: Decision, req: RequestView | None, latency_us: int) -> dict[str, Any]:
    """The audit record of one decision (see the interface spec for the field list)."""
    r = req or RequestView()
    ident = decision.identity
    token = ident.token
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
        "peer_verified": ident.peer_verified,
        "destination": {"principal": r.destination.principal or None},
        "request": {"method": r.method, "host": r.host, "path": r.path},
        "token": {
            "iss": token.issuer if token is not None else None,
            "sub": token.subject if token is not None else None,
        },
        "cache": decision.cache,
        "latency_us": latency_us,
        "audit_policies": list(decision.audit_policies),
        "dry_run": [{"policy": p, "result": res} for p, res in decision.dry_run],
    }


def quarantine_record(event: QuarantineEvent) -> dict[str, Any]:
    kind, who = event.caller
    return {
        "time": rfc3339_now(),
        "event": "quarantine_start" if event.started else "quarantine_end",
        "source": {kind: who},
        "until": rfc3339(event.until),
        "denials": event.denies or None,
    }


class CheckCore:
    """Answers Check calls against whatever policy set ``current_engine`` returns right now.

    Everything but the policy set is optional: ``identity`` (trust bundles, trusted proxies,
    remote key sets), ``cache`` (decision cache), ``quarantine`` (anomaly response), ``audit``
    and ``metrics`` (used by ``answer``), ``identity_headers``.
    """

    def __init__(
        self,
        current_engine: Callable[[], Engine | None],
        identity: IdentityContext | None = None,
        *,
        cache: DecisionCache | None = None,
        identity_headers: IdentityHeaders | None = None,
        quarantine: Quarantine | None = None,
        audit: AuditLog | None = None,
        metrics: Metrics | None = None,
        worker: int | None = None,
    ) -> None:
        self._current_engine = current_engine
        self.identity = identity or IdentityContext()
        self.cache = cache
        self.identity_headers = identity_headers or IdentityHeaders()
        # x-spiffe-id stays managed whatever the setting names: a client's copy never passes.
        self._managed = tuple(
            dict.fromkeys((*self.identity_headers.names, *response.IDENTITY_HEADERS))
        )
        self.quarantine = quarantine
        self.audit = audit
        self.metrics = metrics
        self.worker = worker  # under `serve --workers N`: recorded in every audit record

    def check_message(self, msg: ext.CheckRequest) -> tuple[bytes, dict[str, Any], Decision]:
        body, record, decision, _ = self._check(lambda: msg)
        return body, record, decision

    def check(self, data: bytes) -> tuple[bytes, dict[str, Any], Decision]:
        """Answer one serialized CheckRequest: (CheckResponse bytes, audit record, decision)."""
        body, record, decision, _ = self._check(lambda: ext.CheckRequest.FromString(data))
        return body, record, decision

    def answer(self, data: bytes) -> bytes:
        """What the server calls: check, audit (failing closed if so set), metrics."""
        start = time.perf_counter()
        body, record, decision, req = self._check(lambda: ext.CheckRequest.FromString(data))
        return self._audit_and_count(body, record, decision, req, start)

    def answer_malformed(self, error: str, reason: str = reasons.MALFORMED) -> bytes:
        """A call whose gRPC framing was bad or whose body tripped a resource bound (transports
        that parse frames themselves): denied, audited and counted like an undecodable
        CheckRequest."""
        start = time.perf_counter()
        decision = Decision(False, 403, reason, new_decision_id(), error=error)
        body = self._render_safely(decision)
        return self._audit_and_count(body, audit_record(decision, None, 0), decision, None, start)

    def _audit_and_count(
        self,
        body: bytes,
        record: dict[str, Any],
        decision: Decision,
        req: RequestView | None,
        start: float,
    ) -> bytes:
        """Audit (failing closed if so set) and metrics: the end of every answered call."""
        if self.worker is not None:
            record["worker"] = self.worker
        audit = self.audit
        # emit() first: the record is offered whatever the decision; refused, an allow is undone.
        if (
            audit is not None
            and not audit.emit(record)
            and decision.allowed
            and audit.overflow == OVERFLOW_DENY
        ):
            decision = Decision(
                False,
                403,
                reasons.AUDIT_UNAVAILABLE,
                decision.decision_id,
                identity=decision.identity,
                error="the audit log cannot take the record",
                cache=decision.cache,
            )
            body = self._render_safely(decision)
            audit.emit(audit_record(decision, req, record.get("latency_us", 0)))
        m = self.metrics
        if m is not None:
            m.observe(decision.allowed, decision.reason, time.perf_counter() - start)
            if decision.status == 400:
                m.bad_requests.labels("non_canonical").inc()
            elif decision.reason == reasons.MALFORMED:
                m.bad_requests.labels("malformed").inc()
            elif decision.reason == reasons.RESOURCE_LIMIT:
                m.bad_requests.labels("resource_limit").inc()
        return body

    def _decide(
        self, engine: Engine | None, req: RequestView
    ) -> tuple[Decision, response.Prepared | None]:
        """Quarantine, then the cache, then ``decide``: the decision and, when it came from or
        went to the cache, its prepared response."""
        q = self.quarantine
        if q is not None:
            quarantined, event = q.check(caller_of(req, self.identity.trusted))
            if event is not None:
                self._event(quarantine_record(event))
            if quarantined:
                rid = req.request_id or new_decision_id()
                return Decision(False, 403, reasons.QUARANTINED, rid), None
        cache = self.cache
        if cache is None or engine is None or req.problem is not None:
            resolver = self.identity.resolver(engine.policies) if engine is not None else None
            return self._with_headers(decide(engine, req, resolver)), None
        # The key (it holds the bundle generation) before the resolver (it holds the bundles):
        # a swap in between then files this decision under the old generation, never the new.
        key = cache.key(engine, req)
        resolver = self.identity.resolver(engine.policies)
        cached: tuple[Decision, response.Prepared] | None = cache.get(key)
        if cached is not None:
            rid = req.request_id or new_decision_id()
            return _hit(cached[0], rid), cached[1]
        resolver = self.identity.resolver(engine.policies)
        decision = self._with_headers(decide(engine, req, resolver))
        if decision.reason not in reasons.CACHEABLE or decision.error is not None:
            return decision, None
        prepared = prepare(decision, self._managed)
        ident = decision.identity
        token_exp = ident.token.expires_at if ident.token is not None else None
        cache.put(key, (decision, prepared), token_exp, ident.peer_not_after)
        return decision, prepared

    def _with_headers(self, decision: Decision) -> Decision:
        """Add the configured identity headers to an allow (before the token outputs)."""
        if decision.allowed:
            managed = self._managed
            decision.headers = (
                *self.identity_headers.values(decision.identity),
                # A token output never sets an identity header (Envoy applies the last value).
                *(h for h in decision.headers if h[0] not in managed),
            )
        return decision

    def _event(self, record: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.emit(record)

    def _render_safely(self, decision: Decision) -> bytes:
        try:
            return render(decision, self._managed)
        except Exception:
            log.exception("cannot render a deny response; using the static one")
            return response.STATIC_DENY

    def _check(
        self, parse: Callable[[], ext.CheckRequest]
    ) -> tuple[bytes, dict[str, Any], Decision, RequestView | None]:
        start = time.perf_counter_ns()
        req: RequestView | None = None
        prepared: response.Prepared | None = None  # the cached response, but its decision id
        engine = self._current_engine()  # read once: the whole check sees one policy set
        try:
            try:
                req = from_check_request(parse())
            except (DecodeError, ValueError, UnicodeError) as exc:
                decision = Decision(
                    False, 403, reasons.MALFORMED, new_decision_id(), error=f"undecodable: {exc}"
                )
            else:
                decision, prepared = self._decide(engine, req)
            body = render(decision, self._managed, prepared)
        except Exception:  # fail closed, whatever happened
            log.exception("internal error while checking a request")
            decision = Decision(
                False,
                403,
                reasons.INTERNAL,
                (req.request_id if req else "") or new_decision_id(),
                error="internal error",
            )
            body = self._render_safely(decision)
        latency_us = (time.perf_counter_ns() - start) // 1000
        try:
            record = audit_record(decision, req, latency_us)
        except Exception:
            log.exception("cannot build the audit record")
            record = {"time": rfc3339_now(), "decision_id": decision.decision_id,
                      "allowed": decision.allowed, "status": decision.status,
                      "reason": decision.reason, "error": "audit record incomplete"}
        if (
            self.quarantine is not None
            and req is not None
            and not decision.allowed
            and decision.reason not in _NOT_THE_CALLERS_FAULT
        ):
            try:
                event = self.quarantine.record_deny(caller_of(req, self.identity.trusted))
                if event is not None:
                    log.warning("quarantined %s=%s until %s", *event.caller, rfc3339(event.until))
                    self._event(quarantine_record(event))
            except Exception:
                log.exception("deny-rate accounting failed")
        return body, record, decision, req
