"""``hotpath``: CPU per CheckCore.answer in process, and where it goes (no network, no server).

    python bench/hotpath.py [--seconds 2] [--policies policies] [--tracing]

The core is wired as ``serve`` wires it: decision cache on, audit log to a file (writer thread
running), metrics on. ``cached``: the bench's allowed request over and over (every check after
the first is a cache hit); ``uncached``: the same requests with the cache off (decide() every
time). CPU per check is the process CPU (the audit writer thread included) divided by checks.
The breakdown times each step of a cached check on its own with perf_counter_ns (instrumentation
lives here only; the steps are the calls CheckCore makes).

``--tracing`` adds rows with OpenTelemetry tracing on (decision/spans.py), the request carrying
a sampled W3C traceparent (1,024 traces in turn): sampler ``always_on`` (every check a span)
and ``traceidratio`` 0.01 (1%); spans exported over OTLP/gRPC to ``bench/otlp_sink.py`` in a
process of its own (its CPU is not counted; the exporting thread's is).
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import check_request_bytes, free_port

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.decision.audit import AuditLog
from extauthz.decision.audit.record import encode_body
from extauthz.decision.cache import DecisionCache
from extauthz.decision.decision import cache_hit, decide, new_decision_id
from extauthz.decision.inputs import record_input
from extauthz.decision.record import HitRecord, audit_record, hit_template
from extauthz.decision.render import prepare, render
from extauthz.envoy.request import from_check_request
from extauthz.identity.resolver import IdentityContext
from extauthz.metrics import Metrics
from extauthz.pipeline import CheckCore
from extauthz.policy.store import PolicyStore


def build(
    policies: str, audit_path: str, cached: bool, tracer: Any = None
) -> tuple[CheckCore, AuditLog]:
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
        **({"tracer": tracer} if tracer is not None else {}),
    )
    return core, audit


def tracing_rows(policies: str, tmp: str, seconds: float) -> None:
    """checks/s with tracing on at 100% and 1% sampling, spans sent to bench/otlp_sink.py."""
    from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext_pb
    from extauthz.decision.spans import start_tracing
    from extauthz.decision.tracing import config_from_env

    # Requests of 1,024 traces (a ratio sampler decides on the trace id), taken in turn.
    msg = ext_pb.CheckRequest.FromString(check_request_bytes(allowed=True))
    requests = []
    for _ in range(1024):
        traceparent = f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"
        msg.attributes.request.http.headers["traceparent"] = traceparent
        requests.append(msg.SerializeToString())
    next_request = itertools.cycle(requests).__next__
    port = free_port()
    sink = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "otlp_sink.py"),
         "--port", str(port)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        for kind in ("cached", "uncached"):  # the same requests, tracing off: the baseline
            core, audit = build(policies, os.path.join(tmp, f"o{kind}.jsonl"), kind == "cached")
            wall, cpu = rate(lambda core=core: core.answer(next_request()), seconds)  # type: ignore[misc]
            audit.close()
            print(f"answer {kind:8s}, tracing off : {wall:6.1f} us wall, {cpu:6.1f} us CPU per check "
                  f"({1e6 / cpu:,.0f} checks/s per core)")
        for label, sampler, arg in (("100%", "always_on", ""), ("1%", "traceidratio", "0.01")):
            os.environ.update({
                "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_TRACES_SAMPLER": sampler, "OTEL_TRACES_SAMPLER_ARG": arg,
            })
            config = config_from_env(os.environ)
            assert config is not None
            for kind in ("cached", "uncached"):
                tracing = start_tracing(config)
                core, audit = build(policies, os.path.join(tmp, f"t{kind}.jsonl"), kind == "cached", tracing)
                wall, cpu = rate(lambda core=core: core.answer(next_request()), seconds)  # type: ignore[misc]
                tracing.shutdown()
                audit.close()
                print(f"answer {kind:8s}, tracing {label:4s}: {wall:6.1f} us wall, {cpu:6.1f} us CPU "
                      f"per check ({1e6 / cpu:,.0f} checks/s per core; spans exported "
                      f"{tracing.exported:,}, dropped {tracing.dropped:,})")
    finally:
        sink.terminate()
        out, _ = sink.communicate(timeout=10)
        print(f"otlp sink received: {out.strip().splitlines()[-1] if out.strip() else '?'}")


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
    decision, prepared, entry = core._decide(engine, req)
    assert entry is not None and entry.template is not None
    template = entry.template
    hit = HitRecord(template, decision.decision_id, req.path, req.request_id, 10)
    m = core.metrics
    assert m is not None
    hit.body()
    miss = decide(engine, req, core.identity.resolver(engine.policies), core._input_plan(engine))
    miss_record = audit_record(miss, req, 10)
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
        "audit_record (a miss's record)": per_call(lambda: audit_record(decision, req, 10)),
        "encode_body (a miss's record)": per_call(lambda: encode_body(miss_record)),
        "HitRecord + body() (a hit's record)": per_call(
            lambda: HitRecord(template, decision.decision_id, req.path, req.request_id, 10).body()
        ),
        "hit_template (what a miss adds to keep it)": per_call(lambda: hit_template(miss)),
        "metrics.observe": per_call(lambda: m.observe(True, "allowed", 0.0001)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=2)
    p.add_argument("--policies", default="policies")
    p.add_argument("--tracing", action="store_true", help="also run with tracing on (100%% and 1%%)")
    p.add_argument("--bodies", type=int, default=4096, help="distinct request bodies sent in turn")
    args = p.parse_args(argv)
    bodies = [check_request_bytes(allowed=True, i=i) for i in range(max(1, args.bodies))]
    data = bodies[0]
    next_body = itertools.cycle(bodies).__next__
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("cached", "uncached"):
            core, audit = build(args.policies, os.path.join(tmp, f"{kind}.jsonl"), kind == "cached")
            wall, cpu = rate(lambda core=core: core.answer(next_body()), args.seconds)  # type: ignore[misc]
            print(f"answer {kind:8s}: {wall:6.1f} us wall, {cpu:6.1f} us CPU per check "
                  f"({1e6 / cpu:,.0f} checks/s per core)")
            if kind == "cached":
                steps = breakdown(core, data)
            audit.close()
        if args.tracing:
            tracing_rows(args.policies, tmp, args.seconds)
    print("steps of a cached check (us per call, each timed alone):")
    for name, us in steps.items():
        print(f"  {us:6.2f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
