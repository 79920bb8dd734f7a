"""A trust-bundle swap during a check never leaves a decision made with the old bundles in the
cache under the new bundle generation (review finding: a removed CA kept answering for a TTL)."""

from __future__ import annotations

from helpers.identity import cert_field

from extauthz.decision.cache import DecisionCache
from extauthz.devenv.ca import issue_svid, make_ca
from extauthz.identity.bundles import BundleStore
from extauthz.identity.resolver import IdentityContext
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request

FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"
CA = make_ca("example.org")
LEAF = issue_svid(CA, FRONTEND)

POLICY = f"""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: strict, namespace: istio-system}}
spec:
  mtls: {{mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: frontend, namespace: shop}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["{FRONTEND[len("spiffe://"):]}"]}}}}]
"""


def test_bundle_removed_while_a_check_runs_is_not_cached_under_the_new_generation() -> None:
    store = BundleStore()
    store.update_from_api({"example.org": (CA.cert,)}, None)
    engine = compile_policies(load_text(POLICY), 1)
    identity = IdentityContext(store)
    swapped = []

    def generation() -> int:
        # The CA is withdrawn exactly while this check reads the bundle generation.
        if not swapped:
            swapped.append(True)
            store.update_from_api({}, None)
        return identity.trust_generation()

    dc = DecisionCache(100, 60.0, bundle_generation=generation)
    core = CheckCore(lambda: engine, identity, cache=dc)
    req = check_request(principal=FRONTEND, certificate=cert_field(LEAF)).SerializeToString()
    core.check(req)  # decided with whichever bundles; what matters is what the cache keeps
    assert swapped
    d = core.check(req)[2]
    assert not d.allowed, d  # the CA is gone: no verified peer
    assert d.cache == "miss"
