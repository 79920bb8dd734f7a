"""What the audit log says about a decision (the field list is the interface spec's).

A decision-cache hit's record is not built as a dict: ``HitTemplate`` keeps, on the cache entry,
the record encoded and capped as ``encode_body`` would, but for the members that differ per
request (``time``, ``decision_id``, ``latency_us``, ``request_id``, ``worker``) and the request
path (in the cache key: entries that differ only in the path share one template), and
``HitRecord`` splices those in (issue 14: a few string joins instead of a dict and its encoding).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from extauthz.decision.audit import rfc3339, rfc3339_now
from extauthz.decision.audit.record import encode_body, json_string
from extauthz.decision.decision import Decision
from extauthz.decision.quarantine import QuarantineEvent
from extauthz.envoy.request import RequestView


def audit_record(decision: Decision, req: RequestView | None, latency_us: int) -> dict[str, Any]:
    """The audit record of one decision (see the interface spec for the field list)."""
    r = req or RequestView()
    return _record(
        decision,
        latency_us,
        {"principal": r.source.principal or None, "address": r.source.address or None},
        r.destination.principal or None,
        {"method": r.method, "host": r.host, "path": r.path},
        decision.input,  # decision/inputs.py; None: nothing was read (undecodable)
        r.request_id,
    )


def hit_record(
    decision: Decision, request_id: str, latency_us: int, inp: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """``audit_record`` of a decision whose request view was never built (a decision-cache hit
    answered from the message): the request's fields come from the decision's ``input`` (or
    ``inp``), which records the same values (decision/inputs.py). None without an input."""
    if inp is None:
        inp = decision.input
    if inp is None:
        return None
    src = inp["source"]
    return _record(
        decision,
        latency_us,
        {"principal": src["principal"], "address": src["address"]},
        inp["destination"]["principal"],
        {"method": inp["method"], "host": inp["host"], "path": inp["path"]},
        inp,
        request_id,
    )


def _record(
    decision: Decision,
    latency_us: int,
    source: dict[str, Any],
    destination_principal: str | None,
    request: dict[str, Any],
    inp: dict[str, Any] | None,
    request_id: str,
) -> dict[str, Any]:
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
        "source": source,
        "peer_verified": ident.peer_verified,
        "destination": {"principal": destination_principal},
        "request": request,
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
    if request_id:  # the client's x-request-id (or Envoy's): chosen by the client, not unique
        record["request_id"] = request_id
    return record


# Stands for the path and the latency while a template is encoded: random, so that no request
# can hold it (a template whose encoding holds it anywhere else is not made).
_MARK = "\x00" + os.urandom(12).hex()
_MARK_JSON = json_string(_MARK)
_PREFIX = '{"time":"","decision_id":""'


@dataclass(frozen=True, slots=True)
class HitTemplate:
    """The audit record of a hit on one cache entry, encoded but for its per-request members.

    The record is ``{"time":T,"decision_id":D`` + ``head`` + path + ``middle`` + latency +
    ``after`` + path + ``tail`` [+ ``,"request_id":R``] [+ ``,"worker":W``] + ``}``: the members
    in ``audit_record``'s order, byte for byte what ``encode_body`` makes of ``hit_record``'s dict
    (tests/decision/test_hit_record.py) — but for a float's spelling when the request's own
    members are not plain ASCII (``audit.record.encode_json``)."""

    head: str  # ',"allowed":...,"request":{"method":...,"host":...,"path":'
    middle: str  # '},"token":{...},"cache":"hit","latency_us":'
    after: str  # ',"audit_policies":[...],"dry_run":[...],"input":{"v":1,...,"path":'
    tail: str  # ',"context_extensions":...}' (the rest of the input)
    allowed: bool

    def input(self, path: str) -> dict[str, Any]:
        """The record's ``input`` (capped) for a request to ``path``."""
        at = self.after.rindex(',"input":') + len(',"input":')
        loaded: dict[str, Any] = json.loads(self.after[at:] + json_string(path) + self.tail)
        return loaded


def hit_template(decision: Decision) -> HitTemplate | None:
    """The template of ``decision``'s hits (a cached decision, with its ``input``); None when
    it has no input to take the request's members from."""
    inp = decision.input
    if inp is None or "path" not in inp:
        return None
    probe = hit_record(decision, "", 0, {**inp, "path": _MARK})
    if probe is None:
        return None
    probe["time"] = probe["decision_id"] = ""
    probe["latency_us"] = _MARK
    probe["cache"] = "hit"
    parts = encode_body(probe).split(_MARK_JSON)
    if len(parts) != 4 or not parts[0].startswith(_PREFIX) or not parts[3].endswith("}"):
        return None
    return HitTemplate(
        head=parts[0][len(_PREFIX) :],
        middle=parts[1],
        after=parts[2],
        tail=parts[3][:-1],
        allowed=decision.allowed is True,
    )


class HitRecord:
    """The audit record of one cache hit: its template and the request's own members."""

    __slots__ = ("decision_id", "latency_us", "path", "request_id", "template", "time", "worker")

    def __init__(
        self, template: HitTemplate, decision_id: str, path: str, request_id: str, latency_us: int
    ) -> None:
        self.template = template
        self.time = rfc3339_now()
        self.decision_id = decision_id
        self.path = path
        self.request_id = request_id
        self.latency_us = latency_us
        self.worker: int | None = None

    @property
    def allowed(self) -> bool:
        return self.template.allowed

    def body(self) -> str:
        """The record as ``encode_body`` would encode it (compact ASCII JSON, capped)."""
        t = self.template
        path = json_string(self.path)
        extra = f',"request_id":{json_string(self.request_id)}' if self.request_id else ""
        if self.worker is not None:
            extra += f',"worker":{int(self.worker)}'
        return (
            f'{{"time":"{self.time}","decision_id":"{self.decision_id}"{t.head}{path}{t.middle}'
            f"{int(self.latency_us)}{t.after}{path}{t.tail}{extra}}}"
        )

    def as_dict(self) -> dict[str, Any]:
        """The record as a dict (what ``CheckCore.check`` returns; capped values)."""
        loaded: dict[str, Any] = json.loads(self.body())
        return loaded

    def again(self, decision: Decision) -> dict[str, Any]:
        """The record of ``decision`` (this hit turned into a deny) for the same request."""
        inp = self.template.input(self.path)
        record = hit_record(decision, self.request_id, self.latency_us, inp)
        assert record is not None  # an input was given
        return record


def encoded(record: dict[str, Any] | HitRecord) -> str:
    """The body of a record, whichever its form."""
    return record.body() if isinstance(record, HitRecord) else encode_body(record)


def quarantine_record(event: QuarantineEvent) -> dict[str, Any]:
    kind, who = event.caller
    return {
        "time": rfc3339_now(),
        "event": "quarantine_start" if event.started else "quarantine_end",
        "source": {kind: who},
        "until": rfc3339(event.until),
        "denials": event.denies or None,
    }
