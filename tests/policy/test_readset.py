"""The decision cache's contract: a verdict depends only on what ``Engine.reads`` lists (plus the
fixed attributes: identity, method, path). Inputs outside it must never change a verdict."""

from __future__ import annotations

import random

from helpers.policy import HEADER, engine, evaluate

POLICIES = f"""{HEADER}metadata: {{name: tenant, namespace: istio-system}}
spec:
  rules:
  - to: [{{operation: {{paths: ['/api/*']}}}}]
    when:
    - {{key: 'request.headers[x-tenant]', values: [acme, 'beta*']}}
    - {{key: 'request.auth.claims[org][tier]', notValues: [free]}}
---
{HEADER}metadata: {{name: block, namespace: istio-system}}
spec:
  action: DENY
  rules:
  - when: [{{key: 'request.headers[x-debug]', values: ['*']}}]
"""


def test_unread_inputs_never_change_the_verdict() -> None:
    eng = engine(POLICIES)
    reads = eng.reads
    # every '_'/'-' spelling of a name a condition reads (a DENY reads them all)
    assert reads.headers == {"x-tenant", "x_tenant", "x-debug", "x_debug"}
    assert reads.claims == {("org", "tier")}
    rnd = random.Random(3)
    outcomes: set[tuple[bool, str | None]] = set()
    for _ in range(300):
        tenant = rnd.choice([None, "acme", "beta-2", "gamma"])
        debug = rnd.choice([None, None, "1"])
        debug_name = rnd.choice(["x-debug", "x_debug"])
        tier = rnd.choice([None, "free", "pro"])
        read_headers = {k: v for k, v in (("x-tenant", tenant), (debug_name, debug)) if v is not None}
        claims: dict[str, object] = {"iss": "i", "sub": "s"}
        if tier is not None:
            claims["org"] = {"tier": tier}
        base = evaluate(eng, path="/api/x", headers=read_headers, token=claims)
        outcomes.add((base.allowed, base.policy))
        # add noise outside the read set: other headers, other claims, other org keys
        noise_headers = {**read_headers, f"x-noise-{rnd.randint(0, 9)}": "v", "user-agent": "z"}
        noise_claims = {**claims, "groups": ["g"], "other": rnd.random()}
        if isinstance(claims.get("org"), dict):
            noise_claims["org"] = {**claims["org"], "unit": "u"}  # type: ignore[dict-item]
        again = evaluate(eng, path="/api/x", headers=noise_headers, token=noise_claims)
        assert (again.allowed, again.policy, again.rule) == (base.allowed, base.policy, base.rule)
    assert outcomes == {(True, "istio-system/tenant"), (False, "istio-system/block"), (False, None)}
