"""``hotpath``: CPU per CheckCore.answer in process, and where it goes (no network, no server).

    python bench/hotpath.py [--seconds 2] [--policies policies]

The core is wired as ``serve`` wires it: decision cache on, audit log to a file (writer thread
running), metrics on. ``cached``: the same serialized request over and over (every check after
the first is a cache hit); ``uncached``: the same request with the cache off (decide() every
time). CPU per check is the process CPU (the audit writer thread included) divided by checks.
The breakdown times each step of a cached check on its own with perf_counter_ns (instrumentation
lives here only; the steps are the calls CheckCore makes).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import check_request_bytes

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.decision.audit import AuditLog
from extauthz.decision.cache import DecisionCache
from extauthz.decision.decision import cache_hit, decide, new_decision_id
from extauthz.decision.inputs import record_input
from extauthz.decision.record import audit_record
from extauthz.decision.render import prepare, render
from extauthz.envoy.request import from_check_request
from extauthz.identity.resolver import IdentityContext
from extauthz.metrics import Metrics
from extauthz.pipeline import CheckCore
from extauthz.policy.store import PolicyStore


def build(policies: str, audit_path: str, cached: bool) -> tuple[CheckCore, AuditLog]:
    store = PolicyStore(policies)
    store.reload()
    audit = AuditLog.open(audit_path)
    metrics = Metrics()
    core = CheckCore(
        lambda: store.engine,
        IdentityContext(),
        cache=DecisionCache(10000, 10.0) if cached else None,
        audit=audit,
        metrics=metrics,
    )
    return core, audit


def rate(fn: Callable[[], Any], seconds: float) -> tuple[float, float]:
    """(wall us per call, process-CPU us per call) over ``seconds``."""
    for _ in range(200):
        fn()
    n = 0
    w0, c0 = time.perf_counter(), time.process_time()
    end = w0 + seconds
    while time.perf_counter() < end:
        for _ in range(200):
            fn()
        n += 200
    return (time.perf_counter() - w0) * 1e6 / n, (time.process_time() - c0) * 1e6 / n


def per_call(fn: Callable[[], Any], n: int = 20000) -> float:
    for _ in range(500):
        fn()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t0) / n / 1000


def breakdown(core: CheckCore, data: bytes) -> dict[str, float]:
    msg = ext.CheckRequest.FromString(data)
    req = from_check_request(msg)
    engine = core._current_engine()
    assert engine is not None and core.cache is not None
    core.answer(data)  # fill the cache
    key = core.cache.key(engine, req)
    decision, prepared = core._decide(engine, req)
    m = core.metrics
    assert m is not None
    return {
        "parse (FromString)": per_call(lambda: ext.CheckRequest.FromString(data)),
        "from_check_request": per_call(lambda: from_check_request(msg)),
        "cache.key": per_call(lambda: core.cache.key(engine, req)),  # type: ignore[union-attr]
        "cache.get": per_call(lambda: core.cache.get(key)),  # type: ignore[union-attr]
        "_decide (hit, all of it)": per_call(lambda: core._decide(engine, req)),
        "new_decision_id": per_call(new_decision_id),
        "cache_hit (copy of the cached decision)": per_call(lambda: cache_hit(decision, "x")),
        "render (finish prepared)": per_call(lambda: render(decision, core._managed, prepared)),
        "decide (what a miss adds)": per_call(
            lambda: decide(engine, req, core.identity.resolver(engine.policies))
        ),
        "record_input (the input a miss records)": per_call(
            lambda: record_input(core._input_plan(engine), req, decision.identity)
        ),
        "prepare (response of a miss)": per_call(lambda: prepare(decision, core._managed)),
        "audit_record": per_call(lambda: audit_record(decision, req, 10)),
        "metrics.observe": per_call(lambda: m.observe(True, "allowed", 0.0001)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=2)
    p.add_argument("--policies", default="policies")
    args = p.parse_args(argv)
    data = check_request_bytes(allowed=True)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("cached", "uncached"):
            core, audit = build(args.policies, os.path.join(tmp, f"{kind}.jsonl"), kind == "cached")
            wall, cpu = rate(lambda core=core: core.answer(data), args.seconds)  # type: ignore[misc]
            print(f"answer {kind:8s}: {wall:6.1f} us wall, {cpu:6.1f} us CPU per check "
                  f"({1e6 / cpu:,.0f} checks/s per core)")
            if kind == "cached":
                steps = breakdown(core, data)
            audit.close()
    print("steps of a cached check (us per call, each timed alone):")
    for name, us in steps.items():
        print(f"  {us:6.2f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
