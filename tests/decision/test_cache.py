"""The decision cache: a cached decision is reused only for a request equal in every input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from helpers.decisions import NOW, POLICY, Clock, ExplodingResolver, resolver_patch

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.decision.cache import DecisionCache
from extauthz.decision.decision import Decision
from extauthz.identity.generation import Generation
from extauthz.identity.resolver import IdentityContext
from extauthz.pipeline import CheckCore
from extauthz.policy import Engine, compile_policies, load_text
from extauthz.tools.samples import check_request

GOOD = {"headers": {"x-tenant": "acme"}}



class Rig:
    """A CheckCore with a cache over a swappable engine."""

    def __init__(self, clock: Clock, text: str = POLICY) -> None:
        self.engine: Engine = compile_policies(load_text(text), 1)
        self.bundles = Generation()
        self.cache = DecisionCache(100, 60.0, clock=clock, bundle_generation=self.bundles)
        self.core = CheckCore(lambda: self.engine, cache=self.cache)

    def run(self, **kw: Any) -> Decision:
        return self.core.check(check_request(**kw).SerializeToString())[2]


@pytest.fixture
def rig(clock: Clock) -> Rig:
    return Rig(clock)


def test_second_identical_request_is_a_hit_with_its_own_decision_id(rig: Rig) -> None:
    first = rig.run(request_id="one", **GOOD)
    second = rig.run(request_id="two", **GOOD)
    assert first.allowed and second.allowed
    assert (first.cache, second.cache) == ("miss", "hit")
    assert first.decision_id != second.decision_id and "two" not in (first.decision_id, second.decision_id)
    assert second.headers == first.headers
    assert (rig.cache.hits, rig.cache.misses) == (1, 1)


def test_hit_response_names_this_request_not_the_cached_one(rig: Rig) -> None:
    first = rig.run(request_id="one", path="/api/admin", **GOOD)
    body, record, decision = rig.core.check(
        check_request(request_id="two", path="/api/admin", **GOOD).SerializeToString()
    )
    assert decision.cache == "hit" and not decision.allowed
    resp = ext.CheckResponse.FromString(body)
    assert f'"decision_id":"{decision.decision_id}"' in resp.denied_response.body
    assert first.decision_id not in resp.denied_response.body
    assert resp.dynamic_metadata.fields["decision_id"].string_value == decision.decision_id
    assert record["decision_id"] == decision.decision_id and record["cache"] == "hit"
    assert record["request_id"] == "two"


@pytest.mark.parametrize(
    ("change", "expect_allowed"),
    [
        ({"principal": "spiffe://example.org/ns/shop/sa/intruder"}, False),
        ({"method": "POST"}, False),
        ({"host": "other.shop.svc"}, False),
        ({"path": "/api/admin"}, False),
        ({"path": "/other"}, False),
        ({"headers": {"x-tenant": "evil"}}, False),
        ({"headers": {"x-tenant": ""}}, False),
        ({"headers": {}}, False),
    ],
)
def test_cached_allow_is_not_reused_for_a_different_input(
    rig: Rig, change: dict[str, Any], expect_allowed: bool
) -> None:
    assert rig.run(**GOOD).allowed
    assert rig.run(**GOOD).cache == "hit"
    d = rig.run(**{**GOOD, **change})
    assert d.cache == "miss"
    assert d.allowed is expect_allowed


def test_header_a_rule_does_not_read_does_not_split_the_cache(rig: Rig) -> None:
    rig.run(headers={"x-tenant": "acme", "user-agent": "a"}, source_port=1)
    d = rig.run(headers={"x-tenant": "acme", "user-agent": "b"}, source_port=2)
    assert d.cache == "hit" and d.allowed


def test_scope_labels_are_part_of_the_key(rig: Rig) -> None:
    rig.run(**GOOD)
    assert rig.run(context_extensions={"app": "x"}, **GOOD).cache == "miss"


def test_policy_edit_invalidates(rig: Rig) -> None:
    assert rig.run(**GOOD).allowed
    rig.engine = compile_policies(load_text(POLICY.replace('values: ["acme"]', 'values: ["x"]')), 2)
    d = rig.run(**GOOD)
    assert d.cache == "miss" and not d.allowed


def test_new_engine_with_same_generation_number_still_invalidates(rig: Rig) -> None:
    assert rig.run(**GOOD).allowed
    rig.engine = compile_policies(load_text(POLICY.replace('values: ["acme"]', 'values: ["x"]')), 1)
    d = rig.run(**GOOD)
    assert d.cache == "miss" and not d.allowed


def test_bundle_change_invalidates(rig: Rig) -> None:
    rig.run(**GOOD)
    assert rig.run(**GOOD).cache == "hit"
    rig.bundles.bump()
    assert rig.run(**GOOD).cache == "miss"


def test_ttl_bounds_an_entry(rig: Rig, clock: Clock) -> None:
    rig.run(**GOOD)
    clock.now += 59
    assert rig.run(**GOOD).cache == "hit"
    clock.now += 2
    assert rig.run(**GOOD).cache == "miss"


def bearer(sub: str, exp: float) -> dict[str, Any]:
    return {"path": "/tokens/x", "headers": {"authorization": f"Bearer https://issuer.example|{sub}|{exp}"}}


def test_cached_allow_is_not_reused_for_another_token(
    rig: Rig, token_identity: Callable[..., Any]
) -> None:
    assert rig.run(**bearer("alice", NOW + 3600)).allowed
    assert rig.run(**bearer("alice", NOW + 3600)).cache == "hit"
    d = rig.run(**bearer("mallory", NOW + 3600))
    assert d.cache == "miss" and not d.allowed
    no_token = rig.run(path="/tokens/x")
    assert no_token.cache == "miss" and not no_token.allowed


def test_entry_never_outlives_the_token(
    rig: Rig, clock: Clock, token_identity: Callable[..., Any]
) -> None:
    req = bearer("alice", NOW + 10)
    assert rig.run(**req).allowed
    clock.now += 9
    assert rig.run(**req).cache == "hit"
    clock.now += 1  # exp reached: the decision is taken again (a validator then refuses it)
    assert rig.run(**req).cache == "miss"


def test_already_expired_token_decision_is_not_stored(
    rig: Rig, token_identity: Callable[..., Any]
) -> None:
    req = bearer("alice", NOW - 1)
    rig.run(**req)
    assert rig.run(**req).cache == "miss"
    assert len(rig.cache) == 0


def test_entry_never_outlives_the_peer_certificate(
    rig: Rig, clock: Clock, token_identity: Callable[..., Any]
) -> None:
    req = {"certificate": f"notafter={NOW + 5}", **GOOD}
    assert rig.run(**req).allowed
    clock.now += 4.9
    assert rig.run(**req).cache == "hit"
    clock.now += 0.2
    assert rig.run(**req).cache == "miss"


def test_different_certificate_is_a_different_key(
    rig: Rig, token_identity: Callable[..., Any]
) -> None:
    rig.run(certificate=f"notafter={NOW + 500}", **GOOD)
    assert rig.run(certificate=f"notafter={NOW + 501}", **GOOD).cache == "miss"


@pytest.mark.parametrize(
    "kw",
    [
        {"path": "/api//items"},  # not canonical: 400
        {"path": "/api/%2e%2e/admin"},
        {"principal": "not-a-spiffe-id"},  # invalid peer identity
    ],
)
def test_errors_and_bad_requests_are_never_cached(rig: Rig, kw: dict[str, Any]) -> None:
    first = rig.run(**{**GOOD, **kw})
    assert not first.allowed
    assert rig.run(**{**GOOD, **kw}).cache == "miss"
    assert len(rig.cache) == 0


def test_internal_errors_are_never_cached(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    exploding = ExplodingResolver(RuntimeError("boom"))
    monkeypatch.setattr(IdentityContext, "resolver", resolver_patch(exploding))
    assert rig.run(**GOOD).reason == "internal_error"
    assert rig.run(**GOOD).reason == "internal_error"
    assert exploding.calls == 2 and len(rig.cache) == 0


def test_policy_denies_are_cached(rig: Rig) -> None:
    rig.run(path="/api/admin", **GOOD)
    d = rig.run(path="/api/admin", **GOOD)
    assert d.cache == "hit" and d.reason == "denied_by_policy" and d.status == 403


def test_no_engine_is_not_cached(clock: Clock) -> None:
    cache = DecisionCache(10, 60, clock=clock)
    core = CheckCore(lambda: None, cache=cache)
    for _ in range(2):
        d = core.check(check_request().SerializeToString())[2]
        assert d.reason == "no_policy_loaded" and d.cache == "miss"
    assert len(cache) == 0


def test_size_is_bounded(clock: Clock) -> None:
    r = Rig(clock)
    r.cache = DecisionCache(3, 60, clock=clock)
    r.core = CheckCore(lambda: r.engine, cache=r.cache)
    for i in range(10):
        r.run(path=f"/api/{i}", **GOOD)
    assert len(r.cache) == 3


def test_request_authentication_token_headers_and_query_are_keyed(clock: Clock) -> None:
    ra = POLICY + """
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  jwtRules:
  - issuer: https://issuer.example
    jwksUri: https://issuer.example/jwks
    fromHeaders: [{name: X-Jwt, prefix: "Bearer "}]
"""
    r = Rig(clock, ra)
    r.run(**GOOD)
    assert r.run(**GOOD).cache == "hit"
    assert r.run(headers={"x-tenant": "acme", "x-jwt": "Bearer a"}).cache == "miss"
    assert r.run(path="/api/items?access_token=abc", **GOOD).cache == "miss"
