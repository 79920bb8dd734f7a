"""Per-check cost of the identity step, measured in one run (in-process, no gRPC).

    python bench/identity.py [--seconds 1.0]

Each row times ``CheckCore.check`` on serialized CheckRequests for one scenario:
- base: a peer principal only (no certificate, no token)
- RS256 token, uncached: a fresh token per check (the validator has never seen it)
- RS256 token, cached: the same token every check
- peer certificate, uncached: a fresh SVID per check (verified against the bundle)
- peer certificate, cached: the same SVID every check
Results: a table on stdout and JSON in bench/results/identity.json. Keep it short on a shared
machine: each scenario runs for about ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jwt  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from extauthz.authn import IdentityContext  # noqa: E402
from extauthz.bundles import BundleStore, TrustBundle  # noqa: E402
from extauthz.check import CheckCore  # noqa: E402
from extauthz.devpki import issue_svid, make_ca  # noqa: E402
from extauthz.policy import compile_policies, load_text  # noqa: E402
from extauthz.samples import check_request  # noqa: E402

ISSUER = "https://issuer.example"
FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"


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


def _time(run: Callable[[int], None], count: int, seconds: float) -> tuple[float, int]:
    """Median microseconds per call over a few rounds of ``count`` calls (bounded by seconds)."""
    rounds: list[float] = []
    deadline = time.perf_counter() + seconds
    total = 0
    offset = 0
    while not rounds or (time.perf_counter() < deadline and len(rounds) < 7):
        start = time.perf_counter()
        for i in range(count):
            run(offset + i)
        rounds.append((time.perf_counter() - start) / count * 1e6)
        offset += count
        total += count
    return statistics.median(rounds), total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--fresh", type=int, default=200, help="distinct tokens/certificates per round")
    args = ap.parse_args()

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
    rounds = 7
    n_fresh = args.fresh * rounds
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
        urllib.parse.quote(issue_svid(ca, FRONTEND).cert_pem.decode(), safe="")
        for _ in range(min(n_fresh, args.fresh * 3))
    ]

    def req(**kw: object) -> bytes:
        return check_request(**kw).SerializeToString()  # type: ignore[arg-type]

    base = req()
    token_reqs = [req(headers={"authorization": f"Bearer {t}"}) for t in tokens]
    cert_reqs = [req(certificate=c) for c in certs]
    same_token = token_reqs[0]
    same_cert = cert_reqs[0]

    def check(data: bytes, expect_allowed: bool = True) -> None:
        _, _, decision = core.check(data)
        if decision.allowed is not expect_allowed:
            raise SystemExit(f"unexpected decision: {decision}")

    verifier_cache = core.identity.resolver(engine.policies).verifier._cache

    def cert_uncached(i: int) -> None:
        verifier_cache.clear()  # every check verifies the certificate from scratch
        check(cert_reqs[i % len(cert_reqs)])

    scenarios: list[tuple[str, Callable[[int], None], int]] = [
        ("base (principal only)", lambda i: check(base), 2000),
        ("RS256 token, uncached", lambda i: check(token_reqs[i % n_fresh]), args.fresh),
        ("RS256 token, cached", lambda i: check(same_token), 2000),
        ("peer certificate, uncached", cert_uncached, args.fresh),
        ("peer certificate, cached", lambda i: check(same_cert), 2000),
    ]
    results = []
    for name, run, count in scenarios:
        us, total = _time(run, count, args.seconds)
        results.append({"scenario": name, "us_per_check": round(us, 1), "checks": total})
    base_us = results[0]["us_per_check"]
    print(f"{'scenario':<30} {'us/check':>10} {'x base':>8} {'checks':>8}")
    for r in results:
        r["ratio_to_base"] = round(float(r["us_per_check"]) / float(base_us), 2)
        print(f"{r['scenario']:<30} {r['us_per_check']:>10} {r['ratio_to_base']:>8} {r['checks']:>8}")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "identity.json").write_text(json.dumps({"results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
