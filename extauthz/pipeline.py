"""The Check core: request bytes in, response bytes and an audit record out.

Transport-independent (grpcio today, any HTTP/2 server tomorrow) and fail-closed: every failure
in here ends as a deny CheckResponse, never as an exception.

One check, top to bottom (``CheckCore.answer``): parse -> quarantine? -> cache hit, or
``decide`` (identity, policy) and maybe store -> identity headers -> response bytes -> audit
(fail closed when the audit log cannot take the record and ``audit_overflow`` is ``deny``) ->
metrics -> deny-rate accounting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.message import DecodeError

from extauthz import reasons
from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.decision.audit import OVERFLOW_DENY, AuditLog, rfc3339, rfc3339_now
from extauthz.decision.cache import KEY_PATH, DecisionCache, Key
from extauthz.decision.decision import Decision, cache_hit, decide, new_decision_id
from extauthz.decision.hits import Cached, cached
from extauthz.decision.inputs import Exclusions, InputPlan, plan_for, record_input
from extauthz.decision.quarantine import Quarantine, caller_of
from extauthz.decision.record import HitRecord, audit_record, encoded, hit_record, quarantine_record
from extauthz.decision.render import prepare, render
from extauthz.decision.tracing import Tracer
from extauthz.envoy import response
from extauthz.envoy.request import RequestView, from_check_request
from extauthz.identity.headers import IdentityHeaders
from extauthz.identity.resolver import IdentityContext
from extauthz.metrics import Metrics
from extauthz.policy.engine import Engine

log = logging.getLogger("extauthz.pipeline")

# Denials that say nothing about the caller: they never count towards a quarantine.
_NOT_THE_CALLERS_FAULT = frozenset(
    {
        reasons.QUARANTINED,
        reasons.AUDIT_UNAVAILABLE,
        reasons.INTERNAL,
        reasons.NO_POLICY,
        reasons.DEADLINE_EXCEEDED,
    }
)


# An audit record: a dict, or a cache hit's record encoded but for its per-request members.
Record = dict[str, Any] | HitRecord


def _as_dict(record: Record) -> dict[str, Any]:
    return record.as_dict() if isinstance(record, HitRecord) else record


def _record_again(decision: Decision, req: RequestView | None, record: Record) -> dict[str, Any]:
    """The record of ``decision`` that replaces ``record`` (a late or unauditable allow turned
    deny), from the view or, for a hit answered without one, from the hit's input."""
    if isinstance(record, HitRecord):
        return record.again(decision)
    latency = record.get("latency_us", 0)
    if req is None and record.get("request") is not None:
        again = hit_record(decision, record.get("request_id", ""), latency)
        if again is not None:
            return again
    return audit_record(decision, req, latency)


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
        tracer: Tracer | None = None,
        input_exclude: Iterable[str] = (),
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
        self.tracer = tracer  # None when tracing is off: one attribute check per call
        self._exclude = Exclusions.parse(input_exclude)  # audit_input_exclude
        self._inputs: tuple[Engine | None, InputPlan] = (None, plan_for(None))

    def _input_plan(self, engine: Engine | None) -> InputPlan:
        """What a record's ``input`` holds under ``engine`` (computed once per policy set)."""
        current = self._inputs
        if current[0] is not engine:
            current = self._inputs = (engine, plan_for(engine, self._exclude))
        return current[1]

    def check_message(self, msg: ext.CheckRequest) -> tuple[bytes, dict[str, Any], Decision]:
        body, record, decision, _ = self._check(lambda: msg)
        return body, _as_dict(record), decision

    def check(self, data: bytes) -> tuple[bytes, dict[str, Any], Decision]:
        """Answer one serialized CheckRequest: (CheckResponse bytes, audit record, decision)."""
        body, record, decision, _ = self._check(lambda: ext.CheckRequest.FromString(data))
        return body, _as_dict(record), decision

    def answer(self, data: bytes, deadline: float | None = None) -> bytes:
        """What the server calls: check, audit (failing closed if so set), metrics.

        ``deadline`` (``time.monotonic()`` seconds; from the call's ``grpc-timeout``): a decision
        completed after it is not what Envoy gets (Envoy has given up and applies its error
        status): it becomes a deny, ``deadline_exceeded``, and is recorded and counted as one.
        """
        start = time.perf_counter()
        body, record, decision, req = self._check(lambda: ext.CheckRequest.FromString(data))
        if deadline is not None and time.monotonic() >= deadline:
            decision = Decision(
                False,
                403,  # Envoy's status_on_error as `extauthz envoy-config` sets it
                reasons.DEADLINE_EXCEEDED,
                decision.decision_id,
                identity=decision.identity,
                error=f"decided ({decision.reason}) after the caller's deadline",
                cache=decision.cache,
                input=decision.input,
            )
            body = self._render_safely(decision)
            record = _record_again(decision, req, record)
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
        record: Record,
        decision: Decision,
        req: RequestView | None,
        start: float,
    ) -> bytes:
        """Audit (failing closed if so set) and metrics: the end of every answered call."""
        if self.worker is not None:
            if isinstance(record, HitRecord):
                record.worker = self.worker
            else:
                record["worker"] = self.worker
        audit = self.audit
        # emit first: the record is offered whatever the decision; refused, an allow is undone.
        if (
            audit is not None
            and not audit.emit_body(
                encoded(record),
                record.allowed if isinstance(record, HitRecord) else record.get("allowed") is True,
            )
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
                input=decision.input,
            )
            body = self._render_safely(decision)
            audit.emit(_record_again(decision, req, record))
        m = self.metrics
        if m is not None:
            m.observe(decision.allowed, decision.reason, time.perf_counter() - start)
            if decision.status == 400:
                m.bad_requests.labels("non_canonical").inc()
            elif decision.reason == reasons.MALFORMED:
                m.bad_requests.labels("malformed").inc()
            elif decision.reason == reasons.RESOURCE_LIMIT:
                m.bad_requests.labels("resource_limit").inc()
        if self.tracer is not None:  # the span, made after the fact with the check's times
            end = time.time_ns()
            begin = end - int((time.perf_counter() - start) * 1e9)
            self.tracer.record(decision, req.headers if req is not None else {}, begin, end)
        return body

    def _decide(
        self, engine: Engine | None, req: RequestView, key: Key | None = None
    ) -> tuple[Decision, response.Prepared | None, Cached | None]:
        """Quarantine, then the cache, then ``decide``: the decision, when it came from or went
        to the cache its prepared response, and on a hit the cache entry. ``key``: the request's
        cache key, already looked up and missed (``_check``'s hit path)."""
        q = self.quarantine
        if q is not None:
            quarantined, event = q.check(caller_of(req, self.identity.trusted))
            if event is not None:
                self._event(quarantine_record(event))
            if quarantined:
                recorded = record_input(self._input_plan(engine), req, None)
                decision = Decision(
                    False, 403, reasons.QUARANTINED, new_decision_id(), input=recorded
                )
                return decision, None, None
        cache = self.cache
        if cache is None or engine is None or req.problem is not None:
            resolver = self.identity.resolver(engine.policies) if engine is not None else None
            plan = self._input_plan(engine)
            return self._with_headers(decide(engine, req, resolver, plan)), None, None
        # The key (it holds the bundle generation) before the resolver (it holds the bundles):
        # a swap in between then files this decision under the old generation, never the new.
        if key is None:
            key = cache.key(engine, req)
            entry: Cached | None = cache.get(key)
            if entry is not None:
                return cache_hit(entry.decision, new_decision_id()), entry.prepared, entry
        resolver = self.identity.resolver(engine.policies)
        decision = self._with_headers(decide(engine, req, resolver, self._input_plan(engine)))
        if decision.reason not in reasons.CACHEABLE or decision.error is not None:
            return decision, None, None
        prepared = prepare(decision, self._managed)
        ident = decision.identity
        token_exp = ident.token.expires_at if ident.token is not None else None
        cache.put(key, cached(decision, prepared, cache.share), token_exp, ident.peer_not_after)
        return decision, prepared, None

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

    def _hit(
        self, entry: Cached | None, msg: ext.CheckRequest, key: Key, start: int
    ) -> tuple[bytes, Record, Decision, RequestView | None] | None:
        """The answer to a cache hit found by ``message_key`` (None: decide as usual)."""
        if entry is None or entry.template is None:  # (a cached decision always has its input)
            return None
        decision = cache_hit(entry.decision, new_decision_id())
        http = msg.attributes.request.http
        request_id = http.headers.get("x-request-id", "") or http.id
        body = render(decision, self._managed, entry.prepared)
        latency_us = (time.perf_counter_ns() - start) // 1000
        path: str = key[KEY_PATH]  # type: ignore[assignment]
        record = HitRecord(entry.template, decision.decision_id, path, request_id, latency_us)
        return body, record, decision, None

    def _check(
        self, parse: Callable[[], ext.CheckRequest]
    ) -> tuple[bytes, Record, Decision, RequestView | None]:
        start = time.perf_counter_ns()
        req: RequestView | None = None
        prepared: response.Prepared | None = None  # the cached response, but its decision id
        entry: Cached | None = None  # the cache entry of a hit
        engine = self._current_engine()  # read once: the whole check sees one policy set
        key: Key | None = None
        try:
            try:
                msg = parse()
                cache = self.cache
                # A cache hit answered from the message's fields: no request view built. Not
                # with a quarantine (it reads the view first) or a tracer (it reads the headers).
                if (
                    cache is not None
                    and engine is not None
                    and self.quarantine is None
                    and self.tracer is None
                ):
                    key = cache.message_key(engine, msg)
                    if key is not None:
                        hit = self._hit(cache.get(key), msg, key, start)
                        if hit is not None:
                            return hit
                req = from_check_request(msg)
            except (DecodeError, ValueError, UnicodeError) as exc:
                decision = Decision(
                    False, 403, reasons.MALFORMED, new_decision_id(), error=f"undecodable: {exc}"
                )
            else:
                decision, prepared, entry = self._decide(engine, req, key)
            body = render(decision, self._managed, prepared)
        except Exception:  # fail closed, whatever happened
            log.exception("internal error while checking a request")
            entry = None
            decision = Decision(
                False,
                403,
                reasons.INTERNAL,
                new_decision_id(),
                error="internal error",
            )
            body = self._render_safely(decision)
        latency_us = (time.perf_counter_ns() - start) // 1000
        record: Record
        try:
            if entry is not None and entry.template is not None and req is not None:
                record = HitRecord(
                    entry.template, decision.decision_id, req.path, req.request_id, latency_us
                )
            else:
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
