"""Truncation evidence that survives restarts: the chain's head anchored in ``PATH.head``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import pytest
from helpers import ExtauthzProcess, write_policies

from extauthz.cli import main
from extauthz.decision.audit import AuditLog, FileSink, Hasher, verify
from extauthz.decision.audit.head import Head, head_path, read_head
from extauthz.tools.samples import check_request

KEY = b"0123456789abcdef-secret"


def write(p: Path, n: int, start: int = 0, hasher: Hasher | None = None) -> None:
    log = AuditLog(FileSink(p), hasher=hasher)
    for i in range(start, start + n):
        log.emit({"allowed": True, "decision_id": f"d{i}"})
    log.close()


def cut(p: Path, keep: int) -> None:
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(b"".join(lines[:keep]))


def events(p: Path) -> list[dict[str, object]]:
    return [r for r in map(json.loads, p.read_text().splitlines()) if "event" in r]


def test_head_path_is_beside_the_log_for_every_rotated_file(tmp_path: Path) -> None:
    assert head_path(tmp_path / "audit.log") == tmp_path / "audit.log.head"
    assert head_path(tmp_path / "audit.log.3") == tmp_path / "audit.log.head"


def test_removing_the_newest_records_is_caught(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "audit.log"
    write(p, 5)
    assert main(["audit", "verify", str(p)]) == 0
    cut(p, 2)
    assert verify([p]).ok  # the chain alone cannot see it ...
    assert main(["audit", "verify", str(p)]) == 1  # ... the head can
    out = capsys.readouterr().out
    assert "records seq 3..5 are missing" in out and f"{p}:3" in out


@pytest.mark.parametrize("keyed", [False, True])
def test_removing_the_newest_records_is_caught_across_a_restart(tmp_path: Path, keyed: bool) -> None:
    p = tmp_path / "audit.log"
    hasher = Hasher(KEY) if keyed else Hasher()
    key_args = []
    if keyed:
        (tmp_path / "key").write_bytes(KEY)
        key_args = ["--hmac-key-file", str(tmp_path / "key")]
    write(p, 5, hasher=hasher)
    cut(p, 2)
    write(p, 2, start=5, hasher=hasher)  # the service restarts and writes on
    (missing,) = events(p)
    assert missing["event"] == "audit_records_missing"
    assert (missing["after_seq"], missing["head_seq"], missing["missing"]) == (2, 5, 3)
    assert main(["audit", "verify", *key_args, str(p)]) == 1  # the gap stays in the chain
    result = verify([p], hasher)
    assert f"{p}:3" in (result.broken or "") and "seq 2" in (result.broken or "")


def test_a_missing_head_fails_verification_and_a_restart_records_it(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    write(p, 3)
    head_path(p).unlink()
    assert main(["audit", "verify", str(p)]) == 1
    assert main(["audit", "verify", "--no-head", str(p)]) == 0
    write(p, 1, start=3)
    assert [e["event"] for e in events(p)] == ["audit_head_missing"]
    assert main(["audit", "verify", str(p)]) == 0  # anchored again from here on


def test_a_rolled_back_head_fails_verification_and_a_restart_records_it(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    write(p, 3)
    old = tmp_path / "old.head"
    shutil.copy(head_path(p), old)
    write(p, 2, start=3)
    shutil.copy(old, head_path(p))  # an older copy of the head
    assert main(["audit", "verify", str(p)]) == 1
    write(p, 1, start=5)
    assert [e["event"] for e in events(p)] == ["audit_head_behind"]


def test_without_the_key_a_consistent_truncation_can_be_forged_with_it_not(tmp_path: Path) -> None:
    """What docs/security.md says: without a key, whoever can write the directory can cut the
    log and write a matching head; with the key they cannot seal one."""
    for hasher in (Hasher(), Hasher(KEY)):
        p = tmp_path / f"audit-{hasher.key is not None}.log"
        write(p, 5, hasher=hasher)
        cut(p, 2)
        last = json.loads(p.read_text().splitlines()[-1])
        forged = Head(last["seq"], last["hash"]).render(Hasher())  # sealed without the key
        head_path(p).write_bytes(forged)
        assert verify([p], hasher, head_path(p)).ok is (hasher.key is None)


def test_a_restarted_service_keeps_the_truncation_evidence(tmp_path: Path) -> None:
    """The issue's case through the real process: records 1..5, the service stopped, the log cut
    back to 2 lines, restarted, two more checks: ``audit verify --hmac-key-file`` exits 1."""
    policies = write_policies(
        tmp_path / "policies",
        {"p.yaml": "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
         "metadata: {name: all, namespace: shop}\nspec: {action: ALLOW, rules: [{}]}\n"},
    )
    key = tmp_path / "key"
    key.write_bytes(KEY)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"audit_hmac_key_file: {key}\n")
    log = tmp_path / "audit.log"

    def run(n: int) -> None:
        proc = ExtauthzProcess(policies, tmp_path / "run", audit_log=log, extra_args=["--config", str(cfg)])
        with proc.start():
            with grpc.insecure_channel(proc.grpc_target) as ch:
                call = ch.unary_unary("/envoy.service.auth.v3.Authorization/Check")
                for i in range(n):
                    call(check_request(headers={"x-request-id": f"r{i}"}).SerializeToString(), timeout=10)
            proc.wait_audit(n)

    run(5)
    assert main(["audit", "verify", "--hmac-key-file", str(key), str(log)]) == 0
    cut(log, 2)
    run(2)
    assert main(["audit", "verify", "--hmac-key-file", str(key), str(log)]) == 1
    assert any(e.get("event") == "audit_records_missing" for e in events(log))


def test_a_character_device_gets_no_head(tmp_path: Path) -> None:
    """``--audit-log /dev/null`` (the bench's ceiling run) must not create /dev/null.head."""
    sink = FileSink("/dev/null", max_bytes=100)
    log = AuditLog(sink)
    log.emit({"allowed": True})
    log.close()
    assert not sink.anchored and sink.max_bytes == 0
    assert not Path("/dev/null.head").exists()


def test_the_head_exists_before_the_first_record(tmp_path: Path) -> None:
    """A process killed after writing its first records but before anchoring them must leave a
    head behind the log (the restart counts the records after it and reconciles the offered
    counters), not no head at all (which says nothing: the loss went uncounted; a supervisor
    stopped and killed right after its first writes showed it, tests/faults/test_audit_kill.py)."""
    log = tmp_path / "audit.log"
    audit = AuditLog.open(str(log))
    try:
        head = read_head(head_path(log), Hasher())
        assert isinstance(head, Head), head
        assert (head.seq, head.acc) == (0, (0, 0))
        assert not list(tmp_path.glob(".*.tmp"))  # the first head was renamed into place
    finally:
        audit.close()
