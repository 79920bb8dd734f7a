"""Checks/s of the Check core with the decision cache on and off, and with the audit log on and off.

    python bench/run.py cache [--seconds 0.5] [--rounds 3]

In-process, one thread: ``CheckCore.answer`` on serialized CheckRequests (what the gRPC handler
calls), so the ratios show the work the cache and the audit writer add or save, without grpcio.

The token case: a RequestAuthentication with an inline JWKS (one RS256 key, 2048 bits) and a
policy that allows ``requestPrincipals: [https://issuer.example/alice]``: the service's own token
validation (extauthz.identity.jwt) runs. It keeps verified tokens until their ``exp``, so "cache off"
below still skips the signature check for a token seen before; "nothing cached" cycles through
256 distinct tokens with the validator's token cache off and a decision cache too small to hit:
every check verifies a signature.

Traffic: 256 pre-serialized requests, each with its own x-request-id, cycling over 16 distinct
(path, token) combinations: after warm-up every check is a hit, like a busy service with a handful
of callers. The audit case writes to a temporary file; its writer thread competes for the GIL, as
in the service, and an audited case's clock runs until the writer has written every record.
Each case runs ``--seconds`` per round, cases interleaved, ``--rounds`` rounds;
the ratios are medians of per-round ratios, all from one run.

Also measured: what caching the pre-serialized response saves on a hit (CPU time to build the
response whole from a cached decision vs. finishing the cached prepared response with the
request's decision id), and the CPU time to build one cache key.

Results: a table on stdout and JSON in bench/results/cache.json.
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

import jwt  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from jwt.algorithms import RSAAlgorithm  # noqa: E402

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext  # noqa: E402
from extauthz.decision import render as check_mod  # noqa: E402
from extauthz.decision.audit import AuditLog, FileSink  # noqa: E402
from extauthz.decision.cache import DecisionCache  # noqa: E402
from extauthz.envoy import response  # noqa: E402
from extauthz.identity import jwt as tokens_mod  # noqa: E402
from extauthz.pipeline import CheckCore  # noqa: E402
from extauthz.policy import compile_policies, load_text  # noqa: E402
from extauthz.tools.samples import check_request  # noqa: E402

ISSUER = "https://issuer.example"
AUDIENCE = "api.shop.svc"

POLICY = f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    jwks: '{{JWKS}}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: tokens, namespace: shop}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/alice", "{ISSUER}/bob"]}}}}]
    to: [{{operation: {{methods: ["GET"], paths: ["/api/*"]}}}}]
  - from: [{{source: {{principals: ["example.org/ns/shop/sa/frontend"]}}}}]
    to: [{{operation: {{paths: ["/mtls/*"]}}}}]
    when: [{{key: "request.headers[x-tenant]", values: ["acme"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: istio-system}}
spec:
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/api/admin*"]}}}}]
"""


def traffic(tokens: list[str], *, with_token: bool, distinct: int = 16) -> list[bytes]:
    distinct = min(distinct, 256)
    out = []
    for i in range(256):
        combo = i % distinct
        headers = {"user-agent": "bench/1.0", "x-b3-traceid": f"{i:032x}", "x-tenant": "acme"}
        if with_token:
            headers["authorization"] = "Bearer " + tokens[combo % len(tokens)]
            path = f"/api/items/{combo // len(tokens)}"
        else:
            path = f"/mtls/items/{combo}"
        msg = check_request(path=path, headers=headers, request_id=f"req-{i:06d}")
        out.append(msg.SerializeToString())
    return out


def rate(core: CheckCore, reqs: list[bytes], seconds: float) -> float:
    """Checks/s; with an audit log, the clock stops when the writer has written every record."""
    n = 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while True:
        for data in reqs:
            core.answer(data)
        n += len(reqs)
        if time.perf_counter() >= end:
            break
    if core.audit is not None:
        assert core.audit.flush(30)
    return n / (time.perf_counter() - start)


def render_costs(core: CheckCore, data: bytes, iterations: int = 20000) -> dict[str, float]:
    """CPU µs per response on a hit: built whole from the cached decision (the alternative to
    caching bytes) vs the cached prepared response finished with the request's decision id."""
    _, _, decision = core.check(data)
    managed = core.identity_headers.names
    prepared = check_mod.prepare(decision, managed)

    def whole() -> bytes:
        md = {**check_mod.metadata(decision), "decision_id": decision.decision_id}
        return response.allow(
            decision.headers, decision.remove_headers, managed=managed, metadata=md
        )

    assert ext.CheckResponse.FromString(whole()) == ext.CheckResponse.FromString(
        prepared.finish(decision.decision_id)
    )
    out = {}
    for name, fn in (("render_us", whole), ("finish_us", lambda: prepared.finish("req-1"))):
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            for _ in range(iterations):
                fn()
            best = min(best, (time.process_time() - t0) / iterations * 1e6)
        out[name] = round(best, 2)
    return out


def key_cost(engine: Any, data: bytes, iterations: int = 20000) -> float:
    """CPU µs to build one cache key (the source address is in it, always: one tuple element)."""
    from extauthz.envoy.request import from_check_request

    cache = DecisionCache()
    req = from_check_request(ext.CheckRequest.FromString(data))
    cache.key(engine, req)
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(iterations):
            cache.key(engine, req)
        best = min(best, (time.process_time() - t0) / iterations * 1e6)
    return round(best, 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=0.5, help="per case per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())

    def token(i: int, sub: str) -> str:
        claims = {"iss": ISSUER, "sub": sub, "aud": AUDIENCE, "iat": now, "exp": now + 3600,
                  "jti": f"t{i}"}
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})

    tokens = [token(i, sub) for i, sub in enumerate(("alice", "bob", "alice", "bob"))]
    fresh = [token(100 + i, "alice") for i in range(256)]  # never repeated within a cycle
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwks = json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]})
    engine = compile_policies(load_text(POLICY.replace("{JWKS}", jwks)))

    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    audit = AuditLog(FileSink(tmp / "audit.log"), capacity=1 << 20)
    token_reqs = traffic(tokens, with_token=True)
    mtls_reqs = traffic(tokens, with_token=False)
    # 256 distinct requests through a 128-entry cache, in order: every lookup misses.
    miss_reqs = traffic(tokens, with_token=False, distinct=256)
    fresh_reqs = traffic(fresh, with_token=True, distinct=256)
    cores: dict[str, tuple[CheckCore, list[bytes]]] = {
        "token, nothing cached": (CheckCore(lambda: engine, cache=DecisionCache(128)), fresh_reqs),
        "token, cache off": (CheckCore(lambda: engine), token_reqs),
        "token, cache on": (CheckCore(lambda: engine, cache=DecisionCache()), token_reqs),
        "mTLS, cache off": (CheckCore(lambda: engine), mtls_reqs),
        "mTLS, cache on": (CheckCore(lambda: engine, cache=DecisionCache()), mtls_reqs),
        "mTLS, cache on, all misses": (
            CheckCore(lambda: engine, cache=DecisionCache(128)),
            miss_reqs,
        ),
        "mTLS, cache off, audit on": (CheckCore(lambda: engine, audit=audit), mtls_reqs),
        "mTLS, cache on, audit on": (
            CheckCore(lambda: engine, cache=DecisionCache(), audit=audit),
            mtls_reqs,
        ),
    }
    # "nothing cached": its token validator (built on the core's first check) keeps no tokens,
    # and its decision cache is smaller than the 256 requests it cycles through.
    defaults = tokens_mod.TokenValidator.__init__.__kwdefaults__
    assert defaults is not None
    defaults["cache_size"] = 0
    cores["token, nothing cached"][0].answer(fresh_reqs[0])
    defaults["cache_size"] = 10_000
    # Every request is decided as intended (allowed), with and without the cache.
    for name, (core, reqs) in cores.items():
        for data in reqs[:32]:
            assert ext.CheckResponse.FromString(core.answer(data)).status.code == 0, name

    rates: dict[str, list[float]] = {name: [] for name in cores}
    for _ in range(args.rounds):
        for name, (core, reqs) in cores.items():
            rates[name].append(rate(core, reqs, args.seconds))
    audit.close()

    def ratio(a: str, b: str) -> float:
        return round(statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True)), 2)

    results: dict[str, Any] = {
        "checks_per_second": {k: round(statistics.median(v)) for k, v in rates.items()},
        "ratios": {
            "token: cache on / off": ratio("token, cache on", "token, cache off"),
            "token: cache on / nothing cached": ratio("token, cache on", "token, nothing cached"),
            "mTLS: cache on / off": ratio("mTLS, cache on", "mTLS, cache off"),
            "mTLS: all misses / cache off": ratio("mTLS, cache on, all misses", "mTLS, cache off"),
            "audit on / off (cache off)": ratio("mTLS, cache off, audit on", "mTLS, cache off"),
            "audit on / off (cache on)": ratio("mTLS, cache on, audit on", "mTLS, cache on"),
        },
        "response_bytes_on_hit": render_costs(cores["token, cache on"][0], token_reqs[0]),
        "audit_records_written": audit.written,
        "audit_records_lost": audit.lost,
        "seconds_per_case_per_round": args.seconds,
        "rounds": args.rounds,
        "token_validation": "extauthz.identity.jwt, RS256 2048-bit, inline JWKS",
    }
    miss_core = cores["mTLS, cache on, all misses"][0]
    # (only the warm-up requests can hit: the loop revisits a request only after 255 others)
    assert miss_core.cache is not None and miss_core.cache.hits <= 32, "the miss case must miss"
    results["key_us"] = key_cost(engine, miss_reqs[0])
    hit_us = 1e6 / results["checks_per_second"]["token, cache on"]
    results["response_bytes_on_hit"]["hit_check_us"] = round(hit_us, 2)

    print(f"{'case':32} {'checks/s':>10}")
    for k, v in results["checks_per_second"].items():
        print(f"{k:32} {v:>10}")
    print()
    for k, v in results["ratios"].items():
        print(f"{k:32} {v:>10}x")
    rb = results["response_bytes_on_hit"]
    print(f"\nbuilding one cache key: {results['key_us']} us CPU")
    print(
        f"on a hit ({rb['hit_check_us']} us/check): building the response whole takes "
        f"{rb['render_us']} us CPU; finishing the cached prepared one takes {rb['finish_us']} us"
    )
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cache.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON: {out / 'cache.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
