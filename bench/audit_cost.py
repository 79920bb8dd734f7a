"""``audit``: records/s of the audit writer alone, in process (no network).

    python bench/run.py audit [--records 200000] [--hmac] [--workers-pipe]

Builds realistic decision records (what pipeline.audit_record makes for the bench's allowed
check), then measures:

- ``seal``: encode + hash-chain only (``seal`` in a loop), one thread;
- ``writer``: ``AuditLog.emit`` from the calling thread as fast as it goes, into a real file
  (temporary directory), until every record is on disk: records/s end to end, and how many were
  lost (they must be 0: the emitter waits when the queue is nearly full);
- ``writer-rotating``: the same with ``audit_max_bytes`` small enough to rotate many times; the
  rotated set is verified (``audit verify``) and counted;
- ``supervisor``: ``--workers`` re-sealing: worker JSON lines parsed and sealed again.

Compare ``writer`` with the service's maximum check rate (``bench/run.py grpc``): the writer must
be faster, or records queue up and are lost at full load. Results: bench/results/audit.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extauthz.decision.audit import AuditLog, ChainState, FileSink, Hasher, seal, verify
from extauthz.decision.audit.files import count_records, rotated_files
from extauthz.decision.audit.record import rfc3339_now

RESULTS = Path(__file__).resolve().parent / "results"


def sample_record(i: int) -> dict[str, Any]:
    """A decision record shaped like the one pipeline.audit_record builds for an allowed check."""
    return {
        "time": rfc3339_now(),
        "decision_id": f"{i:016x}-5b9c2e7d1a3f4e60",
        "allowed": True,
        "status": 0,
        "reason": "allowed",
        "policy": "default/frontend-to-api",
        "rule": 0,
        "error": None,
        "source": {"principal": "spiffe://example.org/ns/default/sa/frontend", "address": "10.0.0.7:51234"},
        "peer_verified": True,
        "destination": {"principal": "spiffe://example.org/ns/default/sa/api"},
        "request": {"method": "GET", "host": "api.example.org", "path": "/api/items"},
        "token": {"iss": "https://issuer.example.org", "sub": "user-1234567890"},
        "cache": "hit",
        "latency_us": 41,
        "audit_policies": [],
        "dry_run": [],
    }


def bench_seal(records: list[dict[str, Any]], hasher: Hasher) -> float:
    state = ChainState()
    t0 = time.perf_counter()
    for r in records:
        seal(r, state, hasher)
    return len(records) / (time.perf_counter() - t0)


def bench_writer(
    records: list[dict[str, Any]], hasher: Hasher, tmp: Path, max_bytes: int = 0
) -> dict[str, Any]:
    path = tmp / f"audit-{max_bytes}.jsonl"
    sink = FileSink(path, max_bytes=max_bytes, backups=100)
    audit = AuditLog(sink, hasher=hasher)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for r in records:
        audit.emit(r)
    audit.flush(120)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    audit.close()
    files = rotated_files(path)
    count = count_records(files)
    ok = verify(files, hasher).ok
    return {
        "records_per_s": round(count.decisions / wall),  # written, not offered
        "cpu_us_per_record": round(cpu / len(records) * 1e6, 2),
        "lost": audit.lost,
        "in_log": count.decisions,
        "files": len(files),
        "verify": "OK" if ok else "BROKEN",
        "torn": len(count.torn),
    }


def bench_supervisor(records: list[dict[str, Any]], hasher: Hasher, tmp: Path) -> dict[str, Any]:
    """What ``--workers N`` does with each worker line: parse it, seal it again, write it."""
    state = ChainState()
    lines = [seal(r, state, Hasher()).encode() + b"\n" for r in records]
    data = [b"".join(lines[i : i + 512]) for i in range(0, len(lines), 512)]
    path = tmp / "supervisor.jsonl"
    audit = AuditLog(FileSink(path), hasher=hasher)
    from extauthz.serving.workers import reseal_lines

    t0 = time.perf_counter()
    for chunk in data:
        reseal_lines(audit, chunk)
    audit.flush(120)
    wall = time.perf_counter() - t0
    audit.close()
    count = count_records(path)
    return {"records_per_s": round(len(records) / wall), "lost": audit.lost, "in_log": count.decisions}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--hmac", action="store_true", help="HMAC-SHA256 with a key instead of SHA-256")
    args = p.parse_args(argv)
    hasher = Hasher(b"k" * 32) if args.hmac else Hasher()
    records = [sample_record(i) for i in range(args.records)]
    out: dict[str, Any] = {"records": args.records, "hmac": args.hmac, "cpus": os.cpu_count()}
    out["seal_records_per_s"] = round(bench_seal(records[: min(len(records), 100_000)], hasher))
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        out["writer"] = bench_writer(records, hasher, Path(tmp))
        out["writer_rotating"] = bench_writer(records, hasher, Path(tmp), max_bytes=8 << 20)
        try:
            out["supervisor"] = bench_supervisor(records, hasher, Path(tmp))
        except ImportError:
            out["supervisor"] = "n/a (no reseal_lines in this checkout)"
    print(json.dumps(out, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "audit.json").write_text(json.dumps(out, indent=2))
    bad = out["writer"]["lost"] or out["writer_rotating"]["verify"] != "OK"
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
