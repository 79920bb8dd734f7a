"""Policy-size benchmark: checks/s for 10, 1,000 and 10,000 rules, as ratios to 10 rules.

    python bench/run.py rules [--seconds 1.0] [--sizes 10,1000,10000] [--scenarios mesh,principals]

In-process (CheckCore.check on serialized CheckRequests: parse, view, identity, policy,
response), no network, one invocation, bounded: each point runs for ``--seconds``: three windows
measured round-robin across the sizes, best kept (the machine is shared). Prints a table and
saves JSON under bench/results/

Scenario ``mesh``: 10 rules per policy, a fifth of the policies in the root namespace (they apply
everywhere, told apart by path), the rest spread over namespaces, plus a root DENY. The matching
request is allowed by a rule of the last policy of its namespace; the non-matching one reaches
the same buckets and is denied (no rule matches).

Scenario ``principals``: every rule in the root namespace on the same path, told apart only by
its caller (``principals``); the matching request is the last rule's caller, the non-matching one
an unknown caller.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request

RULES_PER_POLICY = 10


def policy_text(rules: int) -> str:
    policies = max(1, rules // RULES_PER_POLICY)
    namespaces = max(1, policies // 5)
    docs = [
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: deny-admin, namespace: istio-system}\n"
        "spec: {action: DENY, rules: [{to: [{operation: {paths: ['/admin/*']}}]}]}\n"
    ]
    for p in range(policies):
        root = p % 5 == 4
        ns = "istio-system" if root else f"ns{p % namespaces}"
        body = []
        for r in range(RULES_PER_POLICY):
            method = "GET" if r % 2 == 0 else "POST"
            body.append(
                f"  - from: [{{source: {{principals: [example.org/ns/client{r}/sa/app{p}]}}}}]\n"
                f"    to: [{{operation: {{methods: [{method}], paths: ['/svc{p}/r{r}/*', /svc{p}/r{r}]}}}}]\n"
            )
        docs.append(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: p{p}, namespace: {ns}}}\nspec:\n  action: ALLOW\n  rules:\n" + "".join(body)
        )
    return "---\n".join(docs)


def requests(rules: int) -> dict[str, bytes]:
    policies = max(1, rules // RULES_PER_POLICY)
    namespaces = max(1, policies // 5)
    # the last namespaced policy of ns0
    last = max(p for p in range(policies) if p % 5 != 4 and p % namespaces == 0)
    common = {"context_extensions": {"namespace": "ns0"}, "request_id": "bench"}
    match = check_request(
        principal=f"spiffe://example.org/ns/client8/sa/app{last}", method="GET",
        path=f"/svc{last}/r8/items/42", **common,
    )
    miss = check_request(
        principal=f"spiffe://example.org/ns/client8/sa/app{last}", method="GET",
        path=f"/svc{last}/r9/items/42", **common,  # r9 is POST only
    )
    return {"match": match.SerializeToString(), "no_match": miss.SerializeToString()}


def principals_text(rules: int) -> str:
    policies = max(1, rules // RULES_PER_POLICY)
    docs = []
    for p in range(policies):
        body = "".join(
            f"  - from: [{{source: {{principals: [example.org/ns/team{p}/sa/svc{r}]}}}}]\n"
            f"    to: [{{operation: {{methods: [GET], paths: ['/api/*']}}}}]\n"
            for r in range(RULES_PER_POLICY)
        )
        docs.append(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: p{p}, namespace: istio-system}}\nspec:\n  rules:\n" + body
        )
    return "---\n".join(docs)


def principals_requests(rules: int) -> dict[str, bytes]:
    last = max(1, rules // RULES_PER_POLICY) - 1
    match = check_request(principal=f"spiffe://example.org/ns/team{last}/sa/svc9", path="/api/items")
    miss = check_request(principal="spiffe://example.org/ns/other/sa/svc9", path="/api/items")
    return {"match": match.SerializeToString(), "no_match": miss.SerializeToString()}


SCENARIOS = {"mesh": (policy_text, requests), "principals": (principals_text, principals_requests)}


def window(core: CheckCore, data: bytes, seconds: float) -> float:
    """Checks/s over one window of ``seconds``."""
    check = core.check
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            check(data)
        n += 100
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def run(scenario: str, sizes: list[int], seconds: float, rounds: int = 3) -> list[dict[str, Any]]:
    """Build every size's engine, then measure round-robin (each point once per round, keeping the
    best): load from other processes on the machine then hits every size alike."""
    make_text, make_requests = SCENARIOS[scenario]
    points: list[tuple[dict[str, Any], CheckCore, dict[str, bytes]]] = []
    for size in sizes:
        t0 = time.perf_counter()
        policies = load_text(make_text(size))
        t1 = time.perf_counter()
        engine = compile_policies(policies)
        t2 = time.perf_counter()
        core = CheckCore(lambda engine=engine: engine)  # type: ignore[misc]
        reqs = make_requests(size)
        for name, data in reqs.items():
            _, _, decision = core.check(data)
            assert decision.allowed is (name == "match"), (scenario, size, name, decision)
            for _ in range(200):  # warm up
                core.check(data)
        row: dict[str, Any] = {
            "scenario": scenario,
            "rules": sum(len(p.rules) for p in policies.authorization),
            "policies": len(policies.authorization),
            "load_s": round(t1 - t0, 3),
            "compile_s": round(t2 - t1, 3),
            "match": 0.0,
            "no_match": 0.0,
        }
        points.append((row, core, reqs))
    for _ in range(rounds):
        for row, core, reqs in points:
            for name, data in reqs.items():
                row[name] = max(row[name], window(core, data, seconds / rounds))
    rows = [row for row, _, _ in points]
    base = rows[0]
    for row in rows:
        for name in ("match", "no_match"):
            row[f"{name}_ratio"] = round(base[name] / row[name], 3)  # slowdown vs the first size
    for row in rows:
        row["match"], row["no_match"] = round(row["match"]), round(row["no_match"])
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="per point (default 1.0)")
    ap.add_argument("--sizes", default="10,1000,10000")
    ap.add_argument("--scenarios", default="mesh,principals")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict[str, Any]] = []
    for scenario in args.scenarios.split(","):
        rows.extend(run(scenario, sizes, args.seconds))
    print(f"{'scenario':<10} {'rules':>7} {'policies':>8} {'load s':>7} {'compile s':>9} "
          f"{'match/s':>9} {'x':>6} {'no-match/s':>10} {'x':>6}")
    for r in rows:
        print(f"{r['scenario']:<10} {r['rules']:>7} {r['policies']:>8} {r['load_s']:>7} {r['compile_s']:>9} "
              f"{r['match']:>9} {r['match_ratio']:>6} {r['no_match']:>10} {r['no_match_ratio']:>6}")
    print(f"x = time per check relative to the smallest set of its scenario (target: <= 1.3); "
          f"{args.seconds:g}s per point, CheckCore.check in-process")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"rules-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps({
        "benchmark": "rules", "seconds_per_point": args.seconds, "python": platform.python_version(),
        "rows": rows,
    }, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
