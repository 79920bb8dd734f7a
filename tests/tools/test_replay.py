"""``extauthz replay`` on logs the real CheckCore wrote (issue 15 item 2): what stays, what flips,
what cannot be decided, and how the logs are read. The end-to-end test through Envoy is
tests/e2e/test_replay_e2e.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import write_policies
from helpers.identity import claims, inline_rule, mint, peer_authn, request_authn

from extauthz.cli import main
from extauthz.decision.audit import AuditLog, FileSink
from extauthz.decision.decision import decide_input
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools import replay as rp
from extauthz.tools.samples import check_request

RA = request_authn(inline_rule())
ALLOW = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-read, namespace: shop}
spec:
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/api/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: admins, namespace: shop}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["https://issuer.example/admin"]}}]
    to: [{operation: {paths: ["/admin/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-all, namespace: web}
spec:
  rules: [{}]
"""
BASE = RA + "---\n" + ALLOW
FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"
STRANGER = "spiffe://example.org/ns/other/sa/x"


def _token(sub: str) -> dict[str, str]:
    return {"authorization": f"Bearer {mint(claims(sub=sub))}"}


# (name, check_request arguments): every outcome of BASE
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("items", {"path": "/api/items"}),
    ("orders", {"path": "/api/orders", "headers": {"x-customer": "acme"}}),
    ("post", {"method": "POST", "path": "/api/items"}),
    ("stranger", {"principal": STRANGER, "path": "/api/items"}),
    ("admin", {"principal": STRANGER, "path": "/admin/users", "headers": _token("admin")}),
    ("not-admin", {"principal": STRANGER, "path": "/admin/users", "headers": _token("user-1")}),
    ("bad-token", {"path": "/api/items", "headers": {"authorization": "Bearer not.a.token"}}),
    ("bad-path", {"path": "/api/../admin"}),
    ("web", {"path": "/x", "destination_principal": "spiffe://example.org/ns/web/sa/w",
             "headers": {"x-customer": "acme"}}),
]


@dataclass
class Log:
    files: list[Path]
    records: dict[str, dict[str, Any]]  # request name -> its record

    def ids(self, *names: str) -> set[str]:
        return {self.records[n]["decision_id"] for n in names}


def write_log(tmp_path: Path, text: str = BASE, *, max_bytes: int = 0) -> Log:
    path = tmp_path / "audit.log"
    audit = AuditLog(FileSink(path, max_bytes=max_bytes, backups=50))
    engine = compile_policies(load_text(text))
    core = CheckCore(lambda: engine, audit=audit)
    for _, kw in REQUESTS:
        core.answer(check_request(**kw).SerializeToString())
    audit.close()
    files = sorted(tmp_path.glob("audit.log*"))
    lines = [json.loads(x) for f in files for x in f.read_text().splitlines()]
    by_seq = sorted((r for r in lines if "decision_id" in r), key=lambda r: r["seq"])
    assert len(by_seq) == len(REQUESTS)
    return Log(files, {name: r for (name, _), r in zip(REQUESTS, by_seq, strict=True)})


def run(text: str, files: list[Path]) -> rp.Report:
    return rp.replay_files(compile_policies(load_text(text)), files)


def flipped(report: rp.Report) -> tuple[set[str], set[str]]:
    return ({e.decision_id for e in report.allow_to_deny}, {e.decision_id for e in report.deny_to_allow})


def test_the_log_covers_every_outcome(tmp_path: Path) -> None:
    log = write_log(tmp_path)
    got = {n: (r["allowed"], r["reason"]) for n, r in log.records.items()}
    assert got == {
        "items": (True, "allowed"), "orders": (True, "allowed"), "web": (True, "allowed"),
        # No token, but the only rule that reads one is on /admin/*: no token would help, 403.
        "post": (False, "no_matching_policy"), "stranger": (False, "no_matching_policy"),
        "admin": (True, "allowed"), "not-admin": (False, "no_matching_policy"),
        "bad-token": (False, "invalid_token"), "bad-path": (False, "invalid_request"),
    }


def test_the_same_policies_decide_the_same(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path)
    report = run(BASE, log.files)
    assert (report.decisions, report.stay, report.flipped) == (9, 7, 0)
    assert report.other_policy == 0
    assert {e.decision_id: e.why for e in report.undecidable} == {
        log.records["bad-token"]["decision_id"]: "never reached the policies (invalid_token)",
        log.records["bad-path"]["decision_id"]: "never reached the policies (invalid_request)",
    }
    policies = write_policies(tmp_path / "p", {"p.yaml": BASE})
    assert main(["replay", "--policies", str(policies), *map(str, log.files)]) == 0
    out = capsys.readouterr().out
    assert "allow -> deny:     0" in out and "stay:              7" in out


def test_an_edit_flips_exactly_the_decisions_it_changes(tmp_path: Path) -> None:
    log = write_log(tmp_path)
    edited = BASE.replace('paths: ["/api/*"]', 'paths: ["/api/items"]').replace(
        'methods: ["GET"]', 'methods: ["GET", "POST"]'
    ) + """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
"""
    report = run(edited, log.files)
    a2d, d2a = flipped(report)
    assert a2d == log.ids("orders", "admin")
    assert d2a == log.ids("post")
    assert report.stay == 4 and len(report.undecidable) == 2
    admin = next(e for e in report.allow_to_deny if e.decision_id in log.ids("admin"))
    assert (admin.before.policy, admin.before.rule) == ("shop/admins", 0)
    assert (admin.after and admin.after.policy, admin.after and admin.after.reason) == (
        "istio-system/no-admin", "denied_by_policy"
    )
    assert admin.request == "GET api.shop.svc /admin/users"


def test_a_policy_reading_an_unrecorded_header_cannot_be_decided_where_it_applies(tmp_path: Path) -> None:
    log = write_log(tmp_path)
    edited = BASE + """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-acme, namespace: shop}
spec:
  action: DENY
  rules: [{when: [{key: "request.headers[x-customer]", values: ["acme"]}]}]
"""
    report = run(edited, log.files)
    assert report.flipped == 0
    undecided = {e.decision_id: e.why for e in report.undecidable}
    shop = log.ids("items", "orders", "post", "stranger", "admin", "not-admin")
    unrecorded = "not recorded: request.headers[x-customer], request.headers[x_customer]"
    assert {i for i, why in undecided.items() if why == unrecorded} == shop
    # The web namespace's request is out of the new policy's scope: still decided (and stays).
    assert log.records["web"]["decision_id"] not in undecided and report.stay == 1


def test_a_request_authentication_edit_makes_recorded_tokens_undecidable(tmp_path: Path) -> None:
    log = write_log(tmp_path)
    report = run(BASE.replace('audiences: ["api.shop"]', 'audiences: ["other"]'), log.files)
    undecided = {e.decision_id: e.why for e in report.undecidable}
    assert {i for i, why in undecided.items() if why == rp.AUTHN_CHANGED} == log.ids("admin", "not-admin")
    assert report.stay == 5 and report.flipped == 0  # records without a token are still decided
    # Removing every RequestAuthentication changes the set too.
    assert {e.why for e in run(ALLOW, log.files).undecidable} >= {rp.AUTHN_CHANGED}


def test_peer_authentication_strict_applies_to_the_recorded_verification(tmp_path: Path) -> None:
    log = write_log(tmp_path)  # no bundle: no peer was verified
    report = run(BASE + "---\n" + peer_authn("STRICT", namespace="shop"), log.files)
    a2d, d2a = flipped(report)
    assert a2d == log.ids("items", "orders", "admin") and not d2a
    assert all(e.after and e.after.reason == "peer_authentication_required" for e in report.allow_to_deny)
    assert log.records["web"]["decision_id"] not in a2d  # another namespace: PERMISSIVE


def test_rotated_files_in_any_order_events_torn_lines_and_duplicates(tmp_path: Path) -> None:
    log = write_log(tmp_path, max_bytes=3000)
    assert len(log.files) > 2  # rotated
    newest = log.files[0]
    with newest.open("a") as f:
        f.write(json.dumps({"time": "2099-01-01T00:00:00.000000Z", "event": "audit_records_lost",
                            "allowed": 1, "denied": 0}) + "\n")
        f.write('{"time": "2099-01-01T00:00:00.000001Z", "decision_id": "torn", "allo')
    shuffled = [log.files[1], newest, *log.files[2:], log.files[1]]  # any order, one file twice
    edited = BASE.replace("/api/*", "/nothing").replace(
        "rules: [{}]", 'rules: [{to: [{operation: {paths: ["/nothing"]}}]}]'
    )
    report = rp.replay_files(compile_policies(load_text(edited)), shuffled)
    assert report.decisions == 9 and report.events == 1 and report.duplicates > 0
    assert len(report.errors) == 1 and report.errors[0].startswith(f"{newest}:")
    assert "torn" in report.errors[0] and "1 unreadable line(s)" in report.text()
    # The flips are listed oldest first, whatever the order of the files.
    listed = [e.decision_id for e in report.flips()]
    assert listed == [log.records[n]["decision_id"] for n in ("items", "orders", "web")]
    doc = report.as_dict()
    assert [f["decision_id"] for f in doc["flipped"]] == listed
    assert [u["decision_id"] for u in doc["undecided"]] == [
        log.records[n]["decision_id"] for n in ("bad-token", "bad-path")
    ]


def test_service_denials_and_records_without_input_cannot_be_decided(tmp_path: Path) -> None:
    log = write_log(tmp_path)
    late = dict(log.records["items"], decision_id="late", allowed=False, status=403,
                reason="deadline_exceeded")
    no_input = dict(log.records["items"], decision_id="old", input=None)
    path = tmp_path / "crafted.log"
    path.write_text("".join(json.dumps(r) + "\n" for r in (late, no_input)))
    report = run(BASE, [path])
    assert {e.decision_id: e.why for e in report.undecidable} == {
        "late": "denied by the service, not the policies (deadline_exceeded)",
        "old": rp.NO_INPUT,
    }


def test_exit_status_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path)
    edited = write_policies(tmp_path / "edited", {"p.yaml": BASE.replace("/api/*", "/api/items")})
    argv = ["replay", "--policies", str(edited), "--format", "json", *map(str, log.files)]
    assert main(argv) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["allow_to_deny"], doc["deny_to_allow"], doc["cannot_decide"]) == (1, 0, 2)
    [flip] = doc["flipped"]
    assert flip["decision_id"] == log.records["orders"]["decision_id"]
    assert flip["before"]["policy"] == "shop/api-read"
    assert flip["after"]["reason"] == "no_matching_policy"  # no token would help on /api/orders
    assert flip["time"] == log.records["orders"]["time"]
    # Errors: exit 2.
    empty = tmp_path / "empty.log"
    empty.write_text("")
    assert main(["replay", "--policies", str(edited), str(empty)]) == 2
    assert main(["replay", "--policies", str(edited), str(tmp_path / "missing.log")]) == 2
    bad = write_policies(tmp_path / "bad", {"p.yaml": "kind: Nonsense\n"})
    assert main(["replay", "--policies", str(bad), *map(str, log.files)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_trust_bundles_are_accepted_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pki: Any
) -> None:
    log = write_log(tmp_path)
    policies = write_policies(tmp_path / "p", {"p.yaml": BASE})
    argv = ["replay", "--policies", str(policies), "--trust-bundle", f"example.org={pki.ca_file}",
            *map(str, log.files)]
    assert main(argv) == 0
    assert "not verified again" in capsys.readouterr().err
    argv[4] = f"example.org={tmp_path / 'nope.pem'}"
    assert main(argv) == 2


def test_replay_answers_401_only_where_a_token_would_allow(tmp_path: Path) -> None:
    # Recorded without a token. Replayed against Istio's "require a JWT" DENY on /api/items:
    # a token would lift it (and api-read allows), so "items" becomes a 401, not a plain 403;
    # "post" stays a 403 (no policy would allow it, token or not).
    log = write_log(tmp_path)
    require_jwt = BASE + """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {notRequestPrincipals: ["*"]}}]
    to: [{operation: {paths: ["/api/items"]}}]
"""
    engine = compile_policies(load_text(require_jwt))
    items = decide_input(engine, log.records["items"]["input"])
    assert items is not None and (items.status, items.reason) == (401, "authentication_required")
    assert items.policy == "shop/require-jwt"
    post = decide_input(engine, log.records["post"]["input"])
    assert post is not None and (post.status, post.reason) == (403, "denied_by_policy")
