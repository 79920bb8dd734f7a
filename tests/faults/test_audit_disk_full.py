"""The audit disk fills: ``extauthz serve`` runs with a file-size limit (RLIMIT_FSIZE, SIGXFSZ
ignored, so a write past the limit fails with OSError(EFBIG) instead of killing the process).

- default ``audit_overflow`` (drop-allowed): every check is still answered correctly; every
  record is written or counted as lost exactly once (``extauthz_audit_records_lost`` on
  /metrics, read once ``extauthz_audit_queue_depth`` is 0), and the log verifies (a write cut
  short is truncated back to its last complete line);
- ``audit_overflow: deny`` (config file): once records cannot be written, requests the policy
  allows are denied with reason ``audit_unavailable``. The writer is asynchronous: the records
  queued when the first write fails were answered already (docs/decisions.md, Losses), so an
  allow without its record happens only in that one batch (a few records here: the client sends
  one check at a time, the writer lingers 2 ms), just before the first ``audit_unavailable``;
  never after it.
"""

from __future__ import annotations

import errno
import re
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import pytest
from helpers import ExtauthzProcess, free_port, write_policies
from helpers.faults import PUBLIC_POLICY

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.decision.audit import verify
from extauthz.tools.samples import check_request

pytestmark = pytest.mark.faults

LIMIT = 24 * 1024  # bytes any one file of the service may reach (audit log, its own stderr)
CHECKS = 300



def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_file_size_limit_gives_efbig(tmp_path: Path) -> None:
    """The premise: under the limit with SIGXFSZ ignored, Python raises OSError(EFBIG)."""
    code = (
        "import sys\nf = open(sys.argv[1], 'w')\ntry:\n"
        f"    f.write('x' * {2 * LIMIT}); f.flush()\n"
        "except OSError as e:\n    print(e.errno)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "f")],
        preexec_fn=_limit_file_size, capture_output=True, text=True, timeout=20, check=True,
    )
    assert out.stdout.strip() == str(errno.EFBIG)
    assert (tmp_path / "f").stat().st_size == LIMIT


def _serve(tmp_path: Path, config: str | None) -> tuple[ExtauthzProcess, int]:
    policies = write_policies(tmp_path / "policies", {"p.yaml": PUBLIC_POLICY})
    metrics_port = free_port()
    args = ["--metrics", f"127.0.0.1:{metrics_port}"]
    if config is not None:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(config)
        args += ["--config", str(cfg)]
    proc = ExtauthzProcess(
        policies, tmp_path / "run", extra_args=args, preexec_fn=_limit_file_size
    ).start()
    return proc, metrics_port


def _run_checks(target: str) -> list[tuple[bool, int, str, str]]:
    """CHECKS checks, alternating allowed and denied paths: (should allow, status, reason, id)."""
    out = []
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")
        for i in range(CHECKS):
            should = i % 2 == 0
            path = f"/public/{i}" if should else f"/private/{i}"
            msg = check_request(path=path, headers={"x-request-id": f"req-{i}"})
            resp = ext.CheckResponse.FromString(call(msg.SerializeToString(), timeout=5))
            if resp.status.code == 0:
                status, reason = 200, ""
            else:
                status = resp.denied_response.status.code
                reason = resp.denied_response.body
            out.append((should, status, reason, f"req-{i}"))
    return out


def _lost(metrics_port: int) -> dict[str, float]:
    """The loss counters once the writer has settled every record (written or counted).

    The race that once gave 263 losses for 264 missing records: the counters were read while the
    last record's (failing) write was still under way. ``extauthz_audit_queue_depth`` counts
    that batch too, so 0 means every record is in ``written`` or ``lost``."""
    deadline = time.monotonic() + 30
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        depth = re.search(r"^extauthz_audit_queue_depth (\S+)$", text, re.M)
        if depth is not None and float(depth.group(1)) == 0:
            break
        assert time.monotonic() < deadline, "the audit writer did not settle"
        time.sleep(0.05)
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^extauthz_audit_records_lost_total\{decision="(\w+)"\} (\S+)$', text, re.M)
    }


def test_audit_disk_full_default_keeps_answering_and_counts_losses(tmp_path: Path) -> None:
    proc, metrics_port = _serve(tmp_path, None)
    try:
        results = _run_checks(proc.grpc_target)
        lost = _lost(metrics_port)
    finally:
        proc.stop()
    for should, status, _, rid in results:
        assert status == (200 if should else 403), (rid, status)
    assert proc.audit_log.stat().st_size <= LIMIT
    records = proc.audit_records()
    decisions = [r for r in records if "decision_id" in r]
    assert len(decisions) < CHECKS  # the disk did fill
    # A write cut short by the limit is truncated back to its last complete line: no torn
    # record, the chain verifies, and what made it is counted as written, never also as lost.
    assert verify([proc.audit_log]).ok
    assert lost.get("allow", 0) + lost.get("deny", 0) == CHECKS - len(decisions), lost  # exactly once
    print(f"audit disk full (drop-allowed): {len(decisions)} records written, lost {lost}")


def test_audit_disk_full_deny_mode_never_allows_without_a_record(tmp_path: Path) -> None:
    proc, metrics_port = _serve(tmp_path, "audit_overflow: deny\n")
    try:
        results = _run_checks(proc.grpc_target)
        lost = _lost(metrics_port)
    finally:
        proc.stop()
    records = proc.audit_records()
    recorded_allows = {r.get("request_id") for r in records if r.get("allowed") is True}
    outcome: Counter[str] = Counter()
    unrecorded: list[int] = []
    first_unavailable = None
    for i, (should, status, reason, rid) in enumerate(results):
        if not should:
            assert status == 403, (rid, status)
            outcome["denied"] += 1
        elif status == 200:
            assert first_unavailable is None, f"{rid} allowed after the log became unavailable"
            if rid in recorded_allows:
                outcome["allowed_recorded"] += 1
            else:
                unrecorded.append(i)
        else:
            assert status == 403 and "audit_unavailable" in reason, (rid, status, reason)
            outcome["audit_unavailable"] += 1
            if first_unavailable is None:
                first_unavailable = i
    assert first_unavailable is not None, outcome  # the disk did fill
    # Only the batch in flight when the disk filled: the last few checks before the first refusal.
    assert all(first_unavailable - i <= 10 for i in unrecorded), (unrecorded, first_unavailable)
    outcome["allowed_in_the_failed_batch"] = len(unrecorded)
    print(f"audit disk full (deny): {dict(outcome)}, lost {lost}")
