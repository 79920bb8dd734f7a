"""Per-check cost of the identity step, measured in one run (in-process, no gRPC).

    python bench/run.py identity [--fresh 200]

Each row times ``CheckCore.check`` on serialized CheckRequests for one scenario:
- base: a peer principal only (no certificate, no token)
- RS256 token, uncached: a fresh token per check (the validator has never seen it)
- RS256 token, cached: the same token every check
- peer certificate, uncached: a fresh SVID per check (verified against the bundle)
- peer certificate, cached: the same SVID every check
- peer certificate, no bundle: an SVID of a trust domain without a bundle (SVID checks only,
  cached; denied by the policy, which does not name it)
Results: a table on stdout and JSON in bench/results/identity.json. Rounds of all scenarios are
interleaved (15 rounds after a warm-up) and each scenario's best round counts; a run takes seconds.
Two tables: the whole check, and the identity step alone (``IdentityResolver.resolve``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jwt  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext  # noqa: E402
from extauthz.devenv.ca import issue_svid, make_ca  # noqa: E402
from extauthz.envoy.request import from_check_request  # noqa: E402
from extauthz.identity.bundles import BundleStore, TrustBundle  # noqa: E402
from extauthz.identity.resolver import IdentityContext  # noqa: E402
from extauthz.pipeline import CheckCore  # noqa: E402
from extauthz.policy import compile_policies, load_text  # noqa: E402
from extauthz.tools.samples import check_request  # noqa: E402

ISSUER = "https://issuer.example"
FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"
ROUNDS = 15


def _policies(jwks: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow, namespace: shop}}
spec:
  action: ALLOW
  rules: [{{from: [{{source: {{principals: ["example.org/ns/shop/sa/frontend"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    audiences: [api.shop]
    jwks: {json.dumps(jwks)}
"""


def _interleaved(
    scenarios: list[tuple[str, Callable[[int], None], int]], rounds: int
) -> list[tuple[str, float, int]]:
    """Microseconds per call of each scenario's best round (the least disturbed by other
    processes on a shared machine); rounds interleaved; round 0 is a warm-up, not counted."""
    samples: dict[str, list[float]] = {name: [] for name, _, _ in scenarios}
    offsets = dict.fromkeys(samples, 0)
    for r in range(rounds + 1):
        for name, run, count in scenarios:
            start = time.perf_counter()
            for i in range(count):
                run(offsets[name] + i)
            if r:
                samples[name].append((time.perf_counter() - start) / count * 1e6)
            offsets[name] += count
    return [(name, min(samples[name]), offsets[name]) for name, _, _ in scenarios]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fresh", type=int, default=100, help="distinct tokens/certificates per round")
    args = ap.parse_args(argv)

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    pub["kid"] = "k1"
    jwks = json.dumps({"keys": [pub]})
    ca = make_ca("example.org")
    bundles = BundleStore()
    bundles.update_from_api({"example.org": (ca.cert,)}, None)
    assert isinstance(bundles.current.get("example.org"), TrustBundle)
    engine = compile_policies(load_text(_policies(jwks)))
    core = CheckCore(lambda: engine, IdentityContext(bundles))

    now = int(time.time())
    n_fresh = args.fresh * (ROUNDS + 1)
    tokens = [
        jwt.encode(
            {"iss": ISSUER, "sub": "user-1", "aud": "api.shop", "exp": now + 3600, "iat": now, "jti": str(i)},
            key,
            algorithm="RS256",
            headers={"kid": "k1"},
        )
        for i in range(n_fresh)
    ]
    certs = [
        urllib.parse.quote(issue_svid(ca, FRONTEND).cert_pem.decode(), safe="") for _ in range(args.fresh)
    ]

    def req(**kw: object) -> bytes:
        return check_request(**kw).SerializeToString()  # type: ignore[arg-type]

    base = req()
    token_reqs = [req(headers={"authorization": f"Bearer {t}"}) for t in tokens]
    cert_reqs = [req(certificate=c) for c in certs]
    same_token = token_reqs[0]
    same_cert = cert_reqs[0]
    # A certificate of a trust domain without a bundle: checked as an SVID, cached, not chained.
    other = make_ca("other.org")
    other_td_cert = req(
        principal="spiffe://other.org/ns/shop/sa/frontend",
        certificate=urllib.parse.quote(
            issue_svid(other, "spiffe://other.org/ns/shop/sa/frontend").cert_pem.decode(), safe=""
        ),
    )

    def check(data: bytes, expect_allowed: bool = True) -> None:
        _, _, decision = core.check(data)
        if decision.allowed is not expect_allowed:
            raise SystemExit(f"unexpected decision: {decision}")

    verifier_cache = core.identity.resolver(engine.policies).verifier._cache

    def cert_uncached(i: int) -> None:
        verifier_cache.clear()  # every check verifies the certificate from scratch
        check(cert_reqs[i % len(cert_reqs)])

    scenarios: list[tuple[str, Callable[[int], None], int]] = [
        ("base (principal only)", lambda i: check(base), 500),
        ("RS256 token, uncached", lambda i: check(token_reqs[i % n_fresh]), args.fresh),
        ("RS256 token, cached", lambda i: check(same_token), 500),
        ("peer certificate, uncached", cert_uncached, args.fresh),
        ("peer certificate, cached", lambda i: check(same_cert), 500),
        ("peer certificate, no bundle", lambda i: check(other_td_cert, False), 500),
    ]
    results = [
        {"scenario": name, "us_per_check": round(us, 1), "checks": total}
        for name, us, total in _interleaved(scenarios, ROUNDS)
    ]
    # The identity step alone, on the same inputs.
    resolver = core.identity.resolver(engine.policies)
    views = {
        id(d): from_check_request(ext.CheckRequest.FromString(d))
        for d in [base, same_token, same_cert, other_td_cert, *token_reqs, *cert_reqs]
    }

    def resolve(data: bytes, fresh_cert: bool = False, fresh_token: bool = False) -> None:
        if fresh_cert:
            verifier_cache.clear()
        if fresh_token:  # the check phase above already validated (and cached) every token
            resolver.validator._cache.clear()
        if resolver.resolve(views[id(data)]).denied:
            raise SystemExit("unexpected identity deny")

    step = [
        ("base (principal only)", lambda i: resolve(base), 500),
        ("RS256 token, uncached", lambda i: resolve(token_reqs[i % n_fresh], fresh_token=True), args.fresh),
        ("RS256 token, cached", lambda i: resolve(same_token), 500),
        ("peer certificate, uncached", lambda i: resolve(cert_reqs[i % len(cert_reqs)], True), args.fresh),
        ("peer certificate, cached", lambda i: resolve(same_cert), 500),
        ("peer certificate, no bundle", lambda i: resolve(other_td_cert), 500),
    ]
    for r, (_name, us, _total) in zip(results, _interleaved(step, ROUNDS), strict=True):
        r["identity_step_us"] = round(us, 1)
    base_us = float(results[0]["us_per_check"])
    print(f"{'scenario':<30} {'us/check':>9} {'x base':>7} {'identity step us':>17} {'checks':>7}")
    for r in results:
        r["ratio_to_base"] = round(float(r["us_per_check"]) / base_us, 2)
        print(
            f"{r['scenario']:<30} {r['us_per_check']:>9} {r['ratio_to_base']:>7} "
            f"{r['identity_step_us']:>17} {r['checks']:>7}"
        )
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "identity.json").write_text(json.dumps({"results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
