"""Audit records: exactly one per decision, tamper-evident chain, rotation, losses counted."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers.decisions import POLICY

from extauthz.cli import main
from extauthz.decision.audit import (
    GENESIS,
    OVERFLOW_DENY,
    AuditLog,
    FileSink,
    Hasher,
    StreamSink,
    verify,
)
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request

ENGINE = compile_policies(load_text(POLICY))

MIXED: list[dict[str, Any]] = [
    {"headers": {"x-tenant": "acme"}},  # allow
    {"headers": {"x-tenant": "acme"}},  # allow, from the cache
    {"path": "/api/admin", "headers": {"x-tenant": "acme"}},  # deny by policy
    {"path": "/nothing"},  # no matching policy
    {"path": "/a//b"},  # 400
    {"principal": "bogus"},  # invalid peer
    {"method": "GE T"},  # not a token
]


def run_checks(path: Path, n: int, **log_kw: Any) -> AuditLog:
    from extauthz.decision.cache import DecisionCache

    log = AuditLog(FileSink(path, **log_kw))
    core = CheckCore(lambda: ENGINE, cache=DecisionCache(), audit=log)
    for i in range(n):
        kw = MIXED[i % len(MIXED)]
        core.answer(check_request(request_id=f"r{i}", **kw).SerializeToString())
    core.answer(b"\xff\xff not a protobuf")  # malformed: still one record
    log.close()
    return log


def lines(path: Path) -> list[str]:
    return path.read_text("ascii").splitlines()


def test_n_mixed_checks_make_exactly_n_records_and_verify(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    log = run_checks(p, 70)
    recs = [json.loads(x) for x in lines(p)]
    assert len(recs) == 71 == log.written and log.lost == 0
    assert [r["seq"] for r in recs] == list(range(1, 72))
    assert recs[0]["prev_hash"] == GENESIS
    assert [r["request_id"] for r in recs[:70]] == [f"r{i}" for i in range(70)]
    assert len({r["decision_id"] for r in recs}) == 71
    assert {r["reason"] for r in recs} >= {
        "allowed", "denied_by_policy", "no_matching_policy", "invalid_request",
        "invalid_peer_identity", "malformed_check_request",
    }
    assert recs[1]["cache"] == "hit"
    assert verify([p]).ok and verify([p]).records == 71
    assert main(["audit", "verify", str(p)]) == 0


def test_interface_fields_are_present(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    run_checks(p, 1)
    r = json.loads(lines(p)[0])
    for key in ("time", "decision_id", "allowed", "status", "reason", "policy", "rule", "cache",
                "latency_us", "audit_policies", "dry_run", "seq", "prev_hash", "hash"):
        assert key in r
    assert r["source"]["principal"] and r["source"]["address"] == "10.0.0.5"
    assert r["token"] == {"iss": None, "sub": None}
    assert r["request"] == {"method": "GET", "host": "api.shop.svc", "path": "/api/items"}
    assert r["policy"] == "shop/frontend-to-api" and r["rule"] == 0


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    p = tmp_path / "audit.log"
    run_checks(p, 20)
    assert verify([p]).ok
    return p


def test_verify_fails_after_one_byte_changed(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray(chain.read_bytes())
    i = data.index(b'"status":403')
    data[i + len('"status":40')] = ord("0")  # 403 -> 400: one byte
    chain.write_bytes(bytes(data))
    result = verify([chain])
    assert not result.ok and "hash mismatch" in (result.broken or "")
    assert main(["audit", "verify", str(chain)]) == 1
    assert "BROKEN" in capsys.readouterr().out


@pytest.mark.parametrize("offset", [0, 1, 5, 100, -3, -70])
def test_any_single_byte_flip_is_caught(chain: Path, offset: int) -> None:
    data = bytearray(chain.read_bytes())
    line_start = len(b"".join(chain.read_bytes().splitlines(keepends=True)[:7]))
    pos = line_start + offset if offset >= 0 else line_start + offset - 1
    data[pos] ^= 0x01
    chain.write_bytes(bytes(data))
    result = verify([chain])
    assert not result.ok


def test_verify_fails_after_a_record_is_removed(chain: Path) -> None:
    ls = chain.read_bytes().splitlines(keepends=True)
    chain.write_bytes(b"".join(ls[:5] + ls[6:]))
    result = verify([chain])
    assert not result.ok and ":6:" in (result.broken or "")
    assert main(["audit", "verify", str(chain)]) == 1


def test_verify_fails_after_two_records_are_swapped(chain: Path) -> None:
    ls = chain.read_bytes().splitlines(keepends=True)
    ls[3], ls[4] = ls[4], ls[3]
    chain.write_bytes(b"".join(ls))
    result = verify([chain])
    assert not result.ok and ":4:" in (result.broken or "")


def test_verify_says_when_the_chain_does_not_start_at_the_first_record(
    chain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ls = chain.read_bytes().splitlines(keepends=True)
    chain.write_bytes(b"".join(ls[1:]))
    # Alone, this file reads like the newest file after a rotation: say where the chain starts.
    assert verify([chain]).first_seq == 2
    assert main(["audit", "verify", str(chain)]) == 0
    assert "starts at seq 2" in capsys.readouterr().out


def test_forged_record_with_recomputed_sha256_is_caught_with_hmac(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"0123456789abcdef-secret")
    p = tmp_path / "audit.log"
    log = AuditLog(FileSink(p), hasher=Hasher.from_key_file(str(key)))
    log.emit({"allowed": False, "reason": "denied_by_policy"})
    log.emit({"allowed": False, "reason": "denied_by_policy"})
    log.close()
    assert verify([p], Hasher(key.read_bytes().strip())).ok
    assert main(["audit", "verify", "--hmac-key-file", str(key), str(p)]) == 0
    assert main(["audit", "verify", str(p)]) == 1  # keyed records need the key
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"another-16-byte-key!")
    assert main(["audit", "verify", "--hmac-key-file", str(wrong), str(p)]) == 1
    # Rewrite record 2 as an allow and re-seal it the way someone without the key could.
    from extauthz.decision.audit import ChainState, seal

    first, second = lines(p)
    r2 = json.loads(second)
    forged = seal({**r2, "allowed": True}, ChainState(1, json.loads(first)["hash"]), Hasher())
    p.write_text(first + "\n" + forged + "\n", "ascii")
    assert main(["audit", "verify", "--hmac-key-file", str(key), str(p)]) == 1


@pytest.mark.parametrize(
    "evil",
    [
        '/x\r\n{"allowed":true}',
        '/x"}\n{"allowed":true,"seq":2',
        "/x\u2028\u2029\x00\x1b",
        "/" + "a" * 5000,
    ],
)
def test_input_cannot_split_or_forge_a_record(tmp_path: Path, evil: str) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(FileSink(p))
    core = CheckCore(lambda: ENGINE, audit=log)
    core.answer(
        check_request(
            path=evil, host=evil[1:20] or "h", headers={"x-tenant": evil}, request_id=evil
        ).SerializeToString()
    )
    log.close()
    raw = p.read_bytes()
    assert raw.count(b"\n") == 1 and raw.isascii()
    rec = json.loads(raw)
    assert rec["allowed"] is False
    assert rec["request"]["path"].startswith(evil[:100])
    assert len(rec["request"]["path"]) <= 1025
    assert verify([p]).ok


def test_no_token_or_certificate_in_records(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    log = AuditLog(FileSink(p))
    core = CheckCore(lambda: ENGINE, audit=log)
    core.answer(
        check_request(
            headers={"authorization": "Bearer SECRET-TOKEN", "x-tenant": "acme"},
            certificate="-----BEGIN%20CERTIFICATE-----SECRETCERT",
            path="/api/items?access_token=SECRET-Q",
        ).SerializeToString()
    )
    log.close()
    assert b"SECRET" not in p.read_bytes()


def test_rotation_keeps_one_chain_across_files(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    run_checks(p, 60, max_bytes=4000, backups=50)
    files = [*sorted(tmp_path.glob("audit.log.[0-9]*"), key=lambda f: -int(f.suffix[1:])), p]
    assert len(files) >= 3
    total = sum(len(lines(f)) for f in files)
    assert total == 61
    result = verify(files)
    assert result.ok and result.records == 61 and result.first_seq == 1
    # The newest file alone verifies as a continuation, not as a whole chain.
    alone = verify([p])
    assert alone.ok and alone.first_seq and alone.first_seq > 1
    # A file left out in the middle breaks it.
    assert not verify([files[0], *files[2:]]).ok
    # The command takes the set as a shell glob lists it (head file included) and orders it.
    globbed = [str(f) for f in sorted(tmp_path.glob("audit.log*"))]
    assert globbed[0] == str(p) and main(["audit", "verify", *globbed]) == 0


def test_restart_continues_the_chain(tmp_path: Path) -> None:
    p = tmp_path / "audit.log"
    run_checks(p, 5)
    run_checks(p, 5)
    result = verify([p])
    assert result.ok and result.records == 12


class SlowSink(StreamSink):
    def __init__(self) -> None:
        super().__init__(io.StringIO())
        self.gate = threading.Event()

    def write(self, data: str) -> None:
        self.gate.wait(10)
        super().write(data)


def test_full_queue_drops_allowed_records_with_a_count_and_keeps_denied_ones() -> None:
    sink = SlowSink()
    log = AuditLog(sink, capacity=4, reserve=3)
    results = [log.emit({"allowed": True, "i": i}) for i in range(12)]
    # The writer took at most one batch off the queue; after that it waits on the gate.
    accepted_allowed = sum(results)
    denied = [log.emit({"allowed": False, "i": i}) for i in range(10)]
    assert log.lost_allowed == 12 - accepted_allowed > 0
    assert 3 <= sum(denied) < 10 and log.lost_denied == 10 - sum(denied)
    sink.gate.set()
    log.close()
    written = [json.loads(x) for x in sink.stream.getvalue().splitlines()]  # type: ignore[attr-defined]
    assert len([r for r in written if r.get("allowed") is False]) == sum(denied)
    assert log.written == len(written)


def test_overflow_deny_fails_closed_with_a_distinct_reason() -> None:
    from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext

    sink = SlowSink()
    log = AuditLog(sink, capacity=2, reserve=10, overflow=OVERFLOW_DENY)
    core = CheckCore(lambda: ENGINE, audit=log)
    allow = check_request(headers={"x-tenant": "acme"}).SerializeToString()
    answers = [ext.CheckResponse.FromString(core.answer(allow)) for _ in range(8)]
    codes = [a.status.code for a in answers]
    assert codes[0] == 0  # room in the queue: allowed
    assert 7 in codes  # later: denied
    denied = [a for a in answers if a.status.code != 0]
    assert all(a.status.message == "audit_unavailable" for a in denied)
    assert all(a.denied_response.status.code == 403 for a in denied)
    sink.gate.set()
    log.close()
    recs = [json.loads(x) for x in sink.stream.getvalue().splitlines()]  # type: ignore[attr-defined]
    decisions = [r for r in recs if "event" not in r]
    assert [r["reason"] for r in decisions].count("audit_unavailable") == len(denied)
    assert len(decisions) == 8  # every answer has its record; the refused allows were never answered
    assert next(r for r in recs if r.get("event") == "audit_records_lost")["allowed"] == len(denied)


class FlakySink(StreamSink):
    def __init__(self) -> None:
        super().__init__(io.StringIO())
        self.broken = True
        self.wrote = threading.Event()

    def write(self, data: str) -> None:
        if self.broken:
            self.wrote.set()
            raise OSError("disk full")
        super().write(data)
        self.wrote.set()


def test_disk_failure_is_counted_fails_closed_and_is_reported_in_the_log() -> None:
    sink = FlakySink()
    log = AuditLog(sink, overflow=OVERFLOW_DENY)
    core = CheckCore(lambda: ENGINE, audit=log)
    allow = check_request(headers={"x-tenant": "acme"}).SerializeToString()
    core.answer(allow)
    assert sink.wrote.wait(5)
    for _ in range(100):  # the writer sets failing just after the error
        if log.failing:
            break
        threading.Event().wait(0.01)
    assert log.failing and log.lost_allowed == 1 and log.write_errors == 1
    from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext

    resp = ext.CheckResponse.FromString(core.answer(allow))
    assert resp.status.code != 0 and resp.status.message == "audit_unavailable"
    sink.broken = False
    log.close()
    recs = [json.loads(x) for x in sink.stream.getvalue().splitlines()]  # type: ignore[attr-defined]
    lost = [r for r in recs if r.get("event") == "audit_records_lost"]
    assert lost and lost[0]["allowed"] >= 1
    assert any(r.get("reason") == "audit_unavailable" for r in recs)


def test_concurrent_checks_keep_one_intact_chain(tmp_path: Path) -> None:
    from extauthz.decision.cache import DecisionCache

    p = tmp_path / "audit.log"
    log = AuditLog(FileSink(p, max_bytes=20000, backups=100))
    core = CheckCore(lambda: ENGINE, cache=DecisionCache(), audit=log)

    def work(t: int) -> None:
        for i in range(150):
            kw = MIXED[(i + t) % len(MIXED)]
            core.answer(check_request(request_id=f"t{t}-{i}", **kw).SerializeToString())

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    log.close()
    files = [*sorted(tmp_path.glob("audit.log.[0-9]*"), key=lambda f: -int(f.suffix[1:])), p]
    result = verify(files)
    assert result.ok and result.records == 600 and log.lost == 0
    ids = {json.loads(x)["decision_id"] for f in files for x in lines(f)}
    assert len(ids) == 600


def test_short_or_missing_hmac_key_is_a_settings_error(tmp_path: Path) -> None:
    from extauthz.settings import SettingsError, build_settings

    short = tmp_path / "k"
    short.write_bytes(b"short")
    for path in (short, tmp_path / "missing"):
        with pytest.raises(SettingsError):
            build_settings(None, {"audit_hmac_key_file": str(path)})


def test_records_after_close_are_counted_not_silently_dropped() -> None:
    log = AuditLog(StreamSink(io.StringIO()))
    log.close()
    assert log.emit({"allowed": False}) is False
    assert log.lost_denied == 1


@pytest.mark.parametrize(
    "tamper",
    [
        lambda ls: [*ls[:3], b"\n", *ls[3:]],  # a blank line inserted
        lambda ls: [*ls[:4], ls[3], *ls[4:]],  # a record replayed
        lambda ls: [*ls[:-1], ls[-1][:-1]],  # the last line cut short
        lambda ls: [*ls, b'{"allowed":true}\n'],  # an unsealed record appended
        lambda ls: [*ls[:2], ls[2].replace(b"\n", b"\r\n"), *ls[3:]],  # CRLF
        lambda ls: [x.replace(b'"cache":"miss"', b'"cache":"hit"') for x in ls],  # edit everywhere
    ],
    ids=["blank-line", "replay", "truncated", "appended", "crlf", "mass-edit"],
)
def test_more_tampering_is_caught(chain: Path, tamper: Any) -> None:
    ls = chain.read_bytes().splitlines(keepends=True)
    chain.write_bytes(b"".join(tamper(ls)))
    assert not verify([chain]).ok


def test_rfc3339_now_matches_datetime(monkeypatch: pytest.MonkeyPatch) -> None:
    import time as time_mod
    from datetime import UTC, datetime

    from extauthz.decision import audit as audit_mod

    for ns in (1_800_000_000_123_456_789, 1_800_000_000_000_000_000, 1_800_000_001_999_999_000):
        monkeypatch.setattr(time_mod, "time_ns", lambda ns=ns: ns)
        want = datetime.fromtimestamp(ns // 1000 / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert audit_mod.rfc3339_now() == want
