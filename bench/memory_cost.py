"""``memory``: RSS of one serving process with 10,000 rules and 100,000 cached decisions.

    python bench/run.py memory [--rules 10000] [--entries 100000]

In a fresh process (``python bench/memory_cost.py --child``): the Check core wired as ``serve``
wires it (decision cache of ``--entries``, audit log to a real file, metrics), RSS read from
/proc after importing, after loading ``--rules`` rules (bench/rules_cost.py's ``mesh`` policy
set), and after ``--entries`` distinct allowed requests (each its own path: a cache entry each; with
``--vary caller`` each also from its own source address and SPIFFE principal, so that entries
share nothing but the policy set). Target (issue 14): <= 150 MB with 10,000 rules and 100,000
entries.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(rules: int, entries: int, vary: str = "path") -> dict[str, float]:
    from rules_cost import policy_text

    from extauthz.decision.audit import AuditLog
    from extauthz.decision.cache import DecisionCache
    from extauthz.metrics import Metrics
    from extauthz.pipeline import CheckCore
    from extauthz.policy import compile_policies, load_text
    from extauthz.tools.samples import check_request

    out = {"imported_mb": rss_mb()}
    engine = compile_policies(load_text(policy_text(rules)), 1)
    gc.collect()
    out["rules_mb"] = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        audit = AuditLog.open(os.path.join(tmp, "audit.jsonl"))
        cache = DecisionCache(entries, 3600.0)
        core = CheckCore(lambda: engine, cache=cache, audit=audit, metrics=Metrics())
        msg = check_request(
            principal="spiffe://example.org/ns/client0/sa/app0", method="GET",
            context_extensions={"namespace": "ns0"}, path="/svc0/r0/x",
            headers={"user-agent": "bench/1.0", "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7"},
        )
        http = msg.attributes.request.http
        src = msg.attributes.source
        allowed = 0
        for i in range(entries):
            if vary == "caller":
                src.address.socket_address.address = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
                src.principal = f"spiffe://example.org/ns/client0/sa/app0-{i}"
            http.path = f"/svc0/r0/items/{i}"
            http.headers["x-request-id"] = f"req-{i:08d}"
            allowed += core.check(msg.SerializeToString())[2].allowed
        audit.close()
        gc.collect()
        out["entries"] = len(cache)
        out["allowed"] = allowed
        out["cached_mb"] = rss_mb()
    out["per_entry_kb"] = round((out["cached_mb"] - out["rules_mb"]) * 1024 / max(1, entries), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rules", type=int, default=10000)
    p.add_argument("--entries", type=int, default=100000)
    p.add_argument("--vary", choices=("path", "caller"), default="path",
                   help="what differs between entries: the path, or also the caller")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.rules, args.entries, args.vary)))
        return 0
    run = subprocess.run(
        [sys.executable, __file__, "--child", "--rules", str(args.rules), "--entries", str(args.entries),
         "--vary", args.vary],
        capture_output=True, text=True, check=True,
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    for k, v in result.items():
        print(f"{k:>14}: {v}")
    target = 150.0
    verdict = "met" if result["cached_mb"] <= target else "missed"
    print(f"RSS with {args.rules} rules and {result['entries']} cache entries: "
          f"{result['cached_mb']:.0f} MB (target <= {target:.0f} MB: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
