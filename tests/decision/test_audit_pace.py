"""The audit writer keeps pace: back-pressure before loss, re-sealing of workers' lines, counting.

Speed itself is measured in bench/ (``bench/run.py audit``, the loss column of ``grpc``); these
tests assert the mechanisms.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

from extauthz.decision.audit import AuditLog, ChainState, FileSink, Hasher, StreamSink, seal, verify
from extauthz.decision.audit.chain import seal_body, unsealed_body
from extauthz.decision.audit.files import read_records
from extauthz.decision.audit.record import encode_body
from extauthz.serving.workers import reseal_lines


class GatedSink(StreamSink):
    """Every write waits until the gate opens: a writer that fell behind."""

    def __init__(self) -> None:
        super().__init__(io.StringIO())
        self.gate = threading.Event()
        self.entered = threading.Event()

    def write(self, lines: list[str]) -> None:
        self.entered.set()
        self.gate.wait(30)
        super().write(lines)


def wait_for(cond: object, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_a_nearly_full_queue_makes_the_check_wait_instead_of_dropping_its_record() -> None:
    sink = GatedSink()
    log = AuditLog(sink, capacity=8)
    log.emit({"allowed": True, "i": 0})
    wait_for(sink.entered.is_set)  # the writer holds that record and waits on the gate
    for i in range(1, 8):
        assert log.emit({"allowed": True, "i": i})
    accepted: list[bool] = []
    t = threading.Thread(target=lambda: accepted.append(log.emit_body('{"allowed":true}', True, wait=30)))
    t.start()
    wait_for(lambda: log.pressure_waits > 0)  # the emitter waits for room ...
    assert not accepted and log.lost == 0
    sink.gate.set()  # ... the writer catches up ...
    t.join(30)
    assert accepted == [True] and log.lost == 0  # ... and the record is queued, not dropped
    log.close()
    assert log.written == 9 and log.lost == 0


def test_a_stalled_writer_still_drops_after_the_bounded_wait_and_counts_it() -> None:
    sink = GatedSink()
    log = AuditLog(sink, capacity=4, reserve=0)
    log.emit({"allowed": True})
    wait_for(sink.entered.is_set)
    results = [log.emit({"allowed": True, "i": i}) for i in range(8)]
    assert results.count(False) == log.lost_allowed > 0  # waited PRESSURE_WAIT, then refused
    sink.gate.set()
    log.close()
    recs = [json.loads(x) for x in sink.stream.getvalue().splitlines()]  # type: ignore[attr-defined]
    lost = [r for r in recs if r.get("event") == "audit_records_lost"]
    assert sum(r["allowed"] for r in lost) == log.lost_allowed


def test_records_emitted_while_closing_are_counted_not_silently_dropped() -> None:
    sink = StreamSink(io.StringIO())
    log = AuditLog(sink)

    def burst() -> None:
        for _ in range(2000):
            log.emit({"allowed": True})

    threads = [threading.Thread(target=burst) for _ in range(3)]
    for t in threads:
        t.start()
    log.close()
    for t in threads:
        t.join()
    lines = sink.stream.getvalue().splitlines()  # type: ignore[attr-defined]
    decisions = sum('"event"' not in x for x in lines)
    assert decisions + log.lost == 6000  # every record is on the stream or counted, once


def test_seal_body_is_seal_of_the_encoded_record_and_unsealed_body_inverts_it() -> None:
    for hasher in (Hasher(), Hasher(b"k" * 32)):
        a, b = ChainState(), ChainState()
        for rec in ({"allowed": True, "x": 'q"uote\n', "n": [1, 2]}, {}, {"seq": 9, "ok": 1}):
            line = seal(rec, a, hasher)
            assert line == seal_body(encode_body(rec), b, hasher)
            assert unsealed_body(line) == encode_body(rec)
    assert unsealed_body("not sealed") is None


def test_the_supervisor_reseals_worker_lines_byte_for_byte_into_one_chain(tmp_path: Path) -> None:
    w1, w2 = ChainState(), ChainState()
    lines = []
    for i in range(50):
        lines.append(seal({"allowed": i % 3 != 0, "worker": 0, "i": i, "s": "x,\"seq\":1"}, w1, Hasher()))
        lines.append(seal({"allowed": False, "worker": 1, "i": i}, w2, Hasher()))
    data = ("\n".join(lines) + "\n").encode() + b"\xff torn\n"
    log = AuditLog(FileSink(tmp_path / "a.log"), hasher=Hasher(b"s" * 32))
    reseal_lines(log, data)
    log.close()
    assert verify([tmp_path / "a.log"], Hasher(b"s" * 32)).ok
    recs, torn = read_records(tmp_path / "a.log")
    assert not torn
    decisions = [r for r in recs if "event" not in r]
    assert [(r["worker"], r["i"]) for r in decisions] == [(i % 2, i // 2) for i in range(100)]
    assert decisions[0]["s"] == 'x,"seq":1'
    assert recs[-1]["event"] == "audit_line_unreadable"
    assert log.lost == 0


class FailingGatedSink(GatedSink):
    def write(self, lines: list[str]) -> None:
        self.entered.set()
        self.gate.wait(30)
        raise OSError("disk full")


def test_a_record_in_a_failing_write_is_pending_until_it_is_counted() -> None:
    """The disk-full race (tests/faults/test_audit_disk_full.py): a reader that waited for
    ``depth == 0`` must find every record written or counted, also the batch being written."""
    sink = FailingGatedSink()
    log = AuditLog(sink)
    log.emit({"allowed": True})
    wait_for(sink.entered.is_set)  # the writer took the record off the queue, its write hangs
    assert log.depth == 1 and log.lost == 0 and log.written == 0  # pending: neither yet
    sink.gate.set()
    wait_for(lambda: log.depth == 0)
    assert log.lost == 1  # once depth is 0, the record is counted
    log.close()
