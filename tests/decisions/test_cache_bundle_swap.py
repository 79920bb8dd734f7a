"""A trust-bundle swap during a check never leaves a decision made with the old bundles in the
cache under the new bundle generation (review finding: a removed CA kept answering for a TTL)."""

from __future__ import annotations

from identity.helpers import cert_field

from extauthz import cache as cache_module
from extauthz.authn import IdentityContext
from extauthz.bundles import BundleStore
from extauthz.cache import DecisionCache
from extauthz.check import CheckCore
from extauthz.devpki import issue_svid, make_ca
from extauthz.policy import compile_policies, load_text
from extauthz.samples import check_request

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
    swapped = []

    def generation() -> int:
        # The CA is withdrawn exactly while this check reads the bundle generation.
        if not swapped:
            swapped.append(True)
            store.update_from_api({}, None)
        return cache_module.bundles()

    dc = DecisionCache(100, 60.0, bundle_generation=generation)
    core = CheckCore(lambda: engine, IdentityContext(store), cache=dc)
    req = check_request(principal=FRONTEND, certificate=cert_field(LEAF)).SerializeToString()
    core.check(req)  # decided with whichever bundles; what matters is what the cache keeps
    assert swapped
    d = core.check(req)[2]
    assert not d.allowed, d  # the CA is gone: no verified peer
    assert d.cache == "miss"
