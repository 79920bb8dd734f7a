"""Replay speed: audit records decided again per second (``extauthz replay``).

    python bench/run.py replay [--records 20000] [--rounds 3]

In-process, one thread. A log of ``--records`` decision records is written first by the real
Check core (CheckCore + AuditLog to a file, decision cache off so every record's input is built),
over a mix of requests: tokens (a RequestAuthentication with an inline RS256 key and a policy on
``requestPrincipals``), a header a policy reads, allows and denies in two namespaces. Then
``replay_files`` (what the command runs: read, parse, decide, compare) with the same policy set
and with an edited one (a DENY on one path: some records flip), ``--rounds`` times each; the
figure is the median records/s. Reading alone (JSON parsing, ordering) is reported too.

Results: a table on stdout and JSON in bench/results/replay.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from helpers.identity import claims, inline_rule, mint, request_authn  # noqa: E402

from extauthz.decision.audit import AuditLog, FileSink  # noqa: E402
from extauthz.pipeline import CheckCore  # noqa: E402
from extauthz.policy import compile_policies, load_text  # noqa: E402
from extauthz.tools.replay import Report, read_records, replay_files  # noqa: E402
from extauthz.tools.samples import check_request  # noqa: E402

POLICY = request_authn(inline_rule()) + """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/api/*"]}}]
  - from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]
    to: [{operation: {paths: ["/user/*"]}}]
    when: [{key: "request.headers[x-tenant]", values: ["acme", "blue"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: web}
spec:
  rules: [{to: [{operation: {methods: ["GET"]}}]}]
"""
EDIT = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-orders, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/api/orders"]}}]}]
"""


def write_log(path: Path, n: int) -> None:
    engine = compile_policies(load_text(POLICY))
    audit = AuditLog(FileSink(path), capacity=1 << 20)
    core = CheckCore(lambda: engine, audit=audit)
    tokens = [mint(claims(sub=f"user-{i}")) for i in range(8)]
    variants = []
    for i in range(64):
        headers = {"x-tenant": ("acme", "blue", "evil")[i % 3]}
        if i % 2:
            headers["authorization"] = f"Bearer {tokens[i % 8]}"
        variants.append(check_request(
            path=("/api/items", "/api/orders", "/user/me", "/other")[i % 4] + f"?i={i}",
            method=("GET", "POST")[i % 5 == 0],
            headers=headers,
            destination_principal=("spiffe://example.org/ns/shop/sa/api",
                                   "spiffe://example.org/ns/web/sa/web")[i % 7 == 0],
        ).SerializeToString())
    for i in range(n):
        core.answer(variants[i % len(variants)])
    audit.close()


def timed(fn: Any, rounds: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "audit.log"
        write_log(log, args.records)
        same = compile_policies(load_text(POLICY))
        edited = compile_policies(load_text(POLICY + EDIT))
        t_read, _ = timed(lambda: sum(1 for _ in read_records([log], Report([str(log)]))), args.rounds)
        t_same, r_same = timed(lambda: replay_files(same, [log]), args.rounds)
        t_edit, r_edit = timed(lambda: replay_files(edited, [log]), args.rounds)
        size = log.stat().st_size
    n = r_same.decisions
    results = {
        "records": n,
        "log_bytes": size,
        "records_per_second": {
            "read only": round(n / t_read),
            "replay, same policies": round(n / t_same),
            "replay, edited policies": round(n / t_edit),
        },
        "same": {"stay": r_same.stay, "cannot_decide": len(r_same.undecidable), "flipped": r_same.flipped},
        "edited": {"stay": r_edit.stay, "cannot_decide": len(r_edit.undecidable),
                   "allow_to_deny": len(r_edit.allow_to_deny)},
    }
    print(f"{n} records, {size / 1e6:.1f} MB, median of {args.rounds} rounds")
    for k, v in results["records_per_second"].items():
        print(f"  {k:26s} {v:>9,d} records/s")
    print(f"  same policies:   {results['same']}")
    print(f"  edited policies: {results['edited']}")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "replay.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
