"""``extauthz replay``: decide recorded requests again against a candidate policy set.

Each decision record of an audit log carries ``input`` (decision/inputs.py): what the policies
read. Replay rebuilds the request and the identity from it and asks the candidate set's engine,
then compares with what was decided. What it never does is guess:

* a record whose decision never reached the policies (an invalid token or peer, a non-canonical
  path, quarantine, no policy loaded) or that was the service's own deny (a deadline, the audit
  log unavailable, an internal error) has nothing to compare: "cannot be decided";
* a candidate set that reads an input the record does not hold (a header not read then, a
  secret, an excluded value): "cannot be decided", naming the inputs;
* tokens and peer certificates are not verified again: the record holds their validated result
  (the principal, ``peer_verified``, the token's ``iss``/``sub``/claims). That result still holds
  when the candidate's RequestAuthentication set is the one in force (the record's ``authn``
  fingerprint equals the candidate's): a record with a token is replayed with it. When the
  RequestAuthentication set differs, which tokens are accepted may differ: a record with a token
  "cannot be decided". A record without a token is replayed without one.
* PeerAuthentication needs no certificate: the candidate's mTLS mode for the request is applied
  to the recorded ``peer_verified`` (STRICT without a verified peer denies, as the service would).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extauthz import reasons
from extauthz.decision.audit.head import SUFFIX as HEAD_SUFFIX
from extauthz.decision.audit.shared import SUFFIX as OFFERED_SUFFIX
from extauthz.decision.decision import decide_input
from extauthz.decision.inputs import authn_digest, input_of, missing_inputs
from extauthz.identity.bundles import BundleError, BundleStore
from extauthz.identity.peer import PeerModes
from extauthz.policy import PolicyError, compile_policies, load_directory
from extauthz.policy.attributes import read_set
from extauthz.policy.engine import Engine, ReadSet

# Decisions the policy set made (what replay can compare); anything else was decided before the
# policies (identity, request) or by the service itself (deadline, audit, internal).
POLICY_REASONS = frozenset(
    {reasons.ALLOWED, reasons.DENIED_BY_POLICY, reasons.NO_MATCH, reasons.AUTHN_REQUIRED}
)
AUTHN_CHANGED = (
    "a token was validated, and the candidate RequestAuthentication set differs from the one "
    "in force: it would need validating again"
)
NO_AUTHN = "a token was validated; the record does not name the RequestAuthentication in force"
NO_INPUT = "no input recorded"
NOT_DECISION = "neither a decision record nor an event"


class ReplayError(Exception):
    """The replay cannot run (an unreadable log, no decision records): exit status 2."""


@dataclass(frozen=True, slots=True)
class Outcome:
    allowed: bool
    status: int
    reason: str
    policy: str | None
    rule: int | None

    @classmethod
    def of_record(cls, rec: Mapping[str, Any]) -> Outcome:
        status, rule = rec.get("status"), rec.get("rule")
        return cls(
            rec.get("allowed") is True,
            status if isinstance(status, int) else 0,
            str(rec.get("reason")),
            rec.get("policy") if isinstance(rec.get("policy"), str) else None,
            rule if isinstance(rule, int) else None,
        )

    def as_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "status": self.status, "reason": self.reason,
                "policy": self.policy, "rule": self.rule}

    def __str__(self) -> str:
        by = f"{self.policy} rule {self.rule}" if self.policy is not None else "no policy"
        return f"{'allow' if self.allowed else 'deny'} {self.status} {self.reason} ({by})"


@dataclass(frozen=True, slots=True)
class Entry:
    """One replayed decision that flipped, or could not be decided (``why``)."""

    decision_id: str
    time: str
    request: str  # "GET api.shop.svc /api/items"
    before: Outcome
    after: Outcome | None = None
    why: str | None = None
    seq: int = 0  # with ``time``, the order of the listing

    @property
    def order(self) -> tuple[str, int]:
        return (self.time, self.seq)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"decision_id": self.decision_id, "time": self.time,
                               "request": self.request, "before": self.before.as_dict()}
        if self.after is not None:
            out["after"] = self.after.as_dict()
        if self.why is not None:
            out["why"] = self.why
        return out


@dataclass(slots=True)
class Report:
    files: list[str]
    decisions: int = 0
    events: int = 0  # audit_records_lost, quarantine_start, ...: not decisions
    duplicates: int = 0  # a decision_id seen before (the same file given twice)
    errors: list[str] = field(default_factory=list)  # "FILE:LINE: why" of unreadable lines
    stay: int = 0
    other_policy: int = 0  # of ``stay``: the same outcome, decided by another policy or rule
    allow_to_deny: list[Entry] = field(default_factory=list)
    deny_to_allow: list[Entry] = field(default_factory=list)
    undecidable: list[Entry] = field(default_factory=list)

    @property
    def flipped(self) -> int:
        return len(self.allow_to_deny) + len(self.deny_to_allow)

    def flips(self) -> list[Entry]:
        """Every flipped decision, oldest first."""
        return sorted(self.allow_to_deny + self.deny_to_allow, key=lambda e: e.order)

    def why_counts(self) -> list[tuple[str, int]]:
        return Counter(e.why or "" for e in self.undecidable).most_common()

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "decisions": self.decisions,
            "events": self.events,
            "duplicates": self.duplicates,
            "unreadable": len(self.errors),
            "errors": self.errors,
            "stay": self.stay,
            "stay_other_policy": self.other_policy,
            "allow_to_deny": len(self.allow_to_deny),
            "deny_to_allow": len(self.deny_to_allow),
            "cannot_decide": len(self.undecidable),
            "cannot_decide_why": dict(self.why_counts()),
            "flipped": [e.as_dict() for e in self.flips()],
            "undecided": [e.as_dict() for e in sorted(self.undecidable, key=lambda e: e.order)],
        }

    def text(self) -> str:
        lines = [
            f"{self.decisions} decisions in {len(self.files)} file(s); {self.events} event "
            f"record(s) skipped; {len(self.errors)} unreadable line(s)"
            + (f"; {self.duplicates} duplicate(s) ignored" if self.duplicates else ""),
            f"  stay:              {self.stay}"
            + (f" ({self.other_policy} decided by another policy or rule)" if self.other_policy else ""),
            f"  allow -> deny:     {len(self.allow_to_deny)}",
            f"  deny -> allow:     {len(self.deny_to_allow)}",
            f"  cannot be decided: {len(self.undecidable)}",
        ]
        lines += [f"    {n:6d}  {why}" for why, n in self.why_counts()]
        lines += [f"  unreadable: {e}" for e in self.errors[:20]]
        flips = self.flips()
        if flips:
            lines.append("flipped:")
        for e in flips:
            lines.append(f"  {e.time}  {e.decision_id}  {e.request}")
            lines.append(f"      before: {e.before}")
            lines.append(f"      after:  {e.after}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- reading logs


def read_records(paths: Sequence[str | Path], report: Report) -> Iterator[dict[str, Any]]:
    """Every decision record of ``paths``, file by file (one pass: a day's log is never held in
    memory; the report orders what it lists by ``time`` and ``seq``). Events, unreadable lines
    and decision ids seen before (a file given twice) are counted in ``report``."""
    seen: set[str] = set()
    for path in paths:
        if str(path).endswith((HEAD_SUFFIX, OFFERED_SUFFIX)):
            continue  # the chain's anchor or counters beside a log (a shell glob picks them up)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ReplayError(f"cannot read {path}: {exc.strerror or exc}") from exc
        with f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except ValueError:
                    torn = "a torn line (no newline)" if not raw.endswith(b"\n") else "not JSON"
                    report.errors.append(f"{path}:{lineno}: {torn}")
                    continue
                if not isinstance(rec, dict):
                    report.errors.append(f"{path}:{lineno}: not a JSON object")
                    continue
                decision_id = rec.get("decision_id")
                if not isinstance(decision_id, str) or not decision_id:
                    if isinstance(rec.get("event"), str):
                        report.events += 1
                    else:
                        report.errors.append(f"{path}:{lineno}: {NOT_DECISION}")
                    continue
                if decision_id in seen:
                    report.duplicates += 1
                    continue
                seen.add(decision_id)
                yield rec


# ----------------------------------------------------------------------------- deciding again


class Replayer:
    """The candidate set, compiled once: decides records again (``decide``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.authn = authn_digest(engine.policies)
        policies = engine.policies
        self.peer_modes = (
            PeerModes(policies.peer_authentication, policies.root_namespace)
            if policies.peer_authentication
            else None
        )
        self._scoped: dict[tuple[str, tuple[tuple[str, str], ...]], ReadSet] = {}

    def _reads_in_scope(self, inp: Mapping[str, Any]) -> ReadSet:
        """What the candidate policies whose scope covers the recorded request read (the
        others are never evaluated for it): by destination namespace and route labels."""
        req, _, _ = input_of(inp)
        key = (req.namespace, tuple(sorted(req.context_extensions.items())))
        reads = self._scoped.get(key)
        if reads is None:
            policies = [cp.policy for cp in self.engine.applicable(req)]
            reads = self._scoped[key] = read_set(policies, self.engine.xff_num_trusted_hops)
        return reads

    def decide(self, rec: Mapping[str, Any]) -> Outcome | str:
        """The candidate set's outcome for a decision record, or why it cannot be decided."""
        inp = rec.get("input")
        if not isinstance(inp, Mapping):
            return NO_INPUT
        reason = rec.get("reason")
        ident = inp.get("identity")
        if not isinstance(ident, Mapping):
            return f"never reached the policies ({reason})"
        if reason not in POLICY_REASONS:
            return f"denied by the service, not the policies ({reason})"
        reads = self.engine.reads
        if missing_inputs(inp, reads):  # perhaps read only by policies out of this one's scope
            reads = self._reads_in_scope(inp)
            missing = missing_inputs(inp, reads)
            if missing:
                return "not recorded: " + ", ".join(missing)
        if isinstance(ident.get("token"), Mapping):
            recorded = inp.get("authn")
            if not isinstance(recorded, str):
                return NO_AUTHN
            if recorded != self.authn:
                return AUTHN_CHANGED
        if self.peer_modes is not None and not ident.get("peer_verified"):
            req, _, _ = input_of(inp)
            if self.peer_modes.mode(req) == "STRICT":
                return Outcome(False, 403, reasons.MTLS_REQUIRED, None, None)
        d = decide_input(self.engine, inp, reads)
        if d is None:  # not reached: the checks above are decide_input's
            return NO_INPUT
        return Outcome(d.allowed, d.status, d.reason, d.policy, d.rule)


def _request_line(rec: Mapping[str, Any]) -> str:
    r = rec.get("request")
    r = r if isinstance(r, Mapping) else {}
    return " ".join(str(r.get(k) or "-") for k in ("method", "host", "path"))


def replay(engine: Engine, records: Iterable[Mapping[str, Any]], report: Report) -> Report:
    """Decide every record again with ``engine``; the counts and entries go into ``report``."""
    replayer = Replayer(engine)
    for rec in records:
        report.decisions += 1
        before = Outcome.of_record(rec)
        after = replayer.decide(rec)
        if isinstance(after, Outcome) and after.allowed == before.allowed:
            report.stay += 1
            if (after.policy, after.rule) != (before.policy, before.rule):
                report.other_policy += 1
            continue
        seq = rec.get("seq")
        entry = Entry(
            str(rec.get("decision_id")),
            str(rec.get("time") or ""),
            _request_line(rec),
            before,
            after if isinstance(after, Outcome) else None,
            after if isinstance(after, str) else None,
            seq if isinstance(seq, int) else 0,
        )
        if entry.after is None:
            report.undecidable.append(entry)
        elif before.allowed:
            report.allow_to_deny.append(entry)
        else:
            report.deny_to_allow.append(entry)
    return report


def replay_files(engine: Engine, paths: Sequence[str | Path]) -> Report:
    """Read ``paths`` (a log's ``.head`` file among them is skipped) and replay them;
    ``ReplayError`` when a file cannot be read or no decision record was found."""
    report = Report([str(p) for p in paths])
    replay(engine, read_records(paths, report), report)
    if not report.decisions:
        raise ReplayError(
            "no decision records in " + ", ".join(report.files)
            + (f" ({len(report.errors)} unreadable line(s))" if report.errors else "")
        )
    return report


def run_replay(
    policies: str,
    logs: Sequence[str],
    *,
    trust_bundles: Sequence[str] = (),
    root_namespace: str = "istio-system",
    fmt: str = "text",
) -> int:
    """``extauthz replay``: print the report; 0 nothing flips, 1 something does, 2 errors."""
    err = sys.stderr
    try:
        engine = compile_policies(load_directory(policies, root_namespace=root_namespace))
    except PolicyError as exc:
        print(f"extauthz replay: cannot load policies: {exc}", file=err)
        return 2
    if trust_bundles:
        try:  # a wrong flag is still an error, though replay does not use the bundles
            BundleStore.from_flags(list(trust_bundles)).load()
        except (BundleError, OSError) as exc:
            print(f"extauthz replay: cannot load trust bundles: {exc}", file=err)
            return 2
        print("extauthz replay: note: tokens and peer certificates are not verified again; "
              "replay uses the verification result recorded with each decision "
              "(--trust-bundle is not used)", file=err)
    try:
        report = replay_files(engine, logs)
    except ReplayError as exc:
        print(f"extauthz replay: {exc}", file=err)
        return 2
    if report.errors:
        print(f"extauthz replay: {len(report.errors)} unreadable line(s), the first: "
              f"{report.errors[0]}", file=err)
    print(json.dumps(report.as_dict(), indent=2) if fmt == "json" else report.text())
    return 1 if report.flipped else 0
