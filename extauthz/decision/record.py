"""What the audit log says about a decision (the field list is the interface spec's)."""

from __future__ import annotations

from typing import Any

from extauthz.decision.audit import rfc3339, rfc3339_now
from extauthz.decision.decision import Decision
from extauthz.decision.quarantine import QuarantineEvent
from extauthz.envoy.request import RequestView


def audit_record(decision: Decision, req: RequestView | None, latency_us: int) -> dict[str, Any]:
    """The audit record of one decision (see the interface spec for the field list)."""
    r = req or RequestView()
    ident = decision.identity
    token = ident.token
    record = {
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
        "input": decision.input,  # decision/inputs.py; None: nothing was read (undecodable)
    }
    if r.request_id:  # the client's x-request-id (or Envoy's): chosen by the client, not unique
        record["request_id"] = r.request_id
    return record


def hit_record(decision: Decision, request_id: str, latency_us: int) -> dict[str, Any] | None:
    """``audit_record`` of a decision whose request view was never built (a decision-cache hit
    answered from the message): the request's fields come from the decision's ``input``, which
    records the same values (decision/inputs.py). None when the decision has no input."""
    inp = decision.input
    if inp is None:
        return None
    ident = decision.identity
    token = ident.token
    src = inp["source"]
    record = {
        "time": rfc3339_now(),
        "decision_id": decision.decision_id,
        "allowed": decision.allowed,
        "status": decision.status,
        "reason": decision.reason,
        "policy": decision.policy,
        "rule": decision.rule,
        "error": decision.error,
        "source": {"principal": src["principal"], "address": src["address"]},
        "peer_verified": ident.peer_verified,
        "destination": {"principal": inp["destination"]["principal"]},
        "request": {"method": inp["method"], "host": inp["host"], "path": inp["path"]},
        "token": {
            "iss": token.issuer if token is not None else None,
            "sub": token.subject if token is not None else None,
        },
        "cache": decision.cache,
        "latency_us": latency_us,
        "audit_policies": list(decision.audit_policies),
        "dry_run": [{"policy": p, "result": res} for p, res in decision.dry_run],
        "input": inp,
    }
    if request_id:
        record["request_id"] = request_id
    return record


def quarantine_record(event: QuarantineEvent) -> dict[str, Any]:
    kind, who = event.caller
    return {
        "time": rfc3339_now(),
        "event": "quarantine_start" if event.started else "quarantine_end",
        "source": {kind: who},
        "until": rfc3339(event.until),
        "denials": event.denies or None,
    }
