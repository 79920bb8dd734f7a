"""Property tests: structured cache keys never collide, and the cache never changes an answer."""

from __future__ import annotations

from typing import Any

from helpers.decisions import POLICY, Clock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extauthz.decision.cache import DecisionCache, KeyPlan, make_key
from extauthz.envoy.request import RequestView, from_check_request
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request

PLAN = KeyPlan(7, ("authorization", "x-forwarded-client-cert", "x-tenant"), query=True)

# Small alphabets with the characters a joined key would trip on, and long values that get digested.
_chars = st.sampled_from([*"ab|:/,=;\x00 %", "é"])
_short = st.text(_chars, max_size=4)
# Long values (digested in the key) share a prefix: they differ only near the end.
_value = st.one_of(_short, _short.map(lambda s: "t" * 124 + s))
_maybe = st.one_of(st.none(), _value)

ATTRIBUTES: dict[str, st.SearchStrategy[Any]] = {
    "principal": st.one_of(st.just(""), _short.map(lambda s: "spiffe://example.org/" + s)),
    "certificate": st.one_of(st.just(""), _value),
    "source_address": st.sampled_from(["10.0.0.5", "10.0.0.6", "::1", ""]),
    "destination_principal": _short,
    "destination_address": st.sampled_from(["10.0.0.9", "10.0.0.10"]),
    "destination_port": st.sampled_from([8443, 8444]),
    "sni": _short,
    "method": st.sampled_from(["GET", "POST", "get"]),
    "host": st.sampled_from(["api", "API", "api.", "api:80", "other"]),
    "path": st.one_of(_short.map(lambda s: "/" + s), _short),
    "query": _maybe,
    "auth": _maybe,
    "xfcc": _maybe,
    "tenant": _maybe,
    "ignored": _maybe,  # a header no rule reads
    "source_port": st.integers(1, 3),
    "ext": st.dictionaries(
        st.sampled_from(["app", "namespace", "a|b"]), st.sampled_from(["", "a", "b|"]), max_size=2
    ),
}
requests = st.fixed_dictionaries(ATTRIBUTES)


def view(a: dict[str, Any]) -> RequestView:
    headers = {
        name: a[k]
        for name, k in (
            ("authorization", "auth"),
            ("x-forwarded-client-cert", "xfcc"),
            ("x-tenant", "tenant"),
            ("user-agent", "ignored"),
        )
        if a[k] is not None
    }
    path = a["path"] + ("" if a["query"] is None else "?" + a["query"])
    msg = check_request(
        principal=a["principal"],
        certificate=a["certificate"],
        source_address=a["source_address"],
        source_port=a["source_port"],
        destination_principal=a["destination_principal"],
        destination_address=a["destination_address"],
        destination_port=a["destination_port"],
        sni=a["sni"],
        method=a["method"],
        host=a["host"],
        path=path,
        headers=headers,
        context_extensions=a["ext"],
    )
    return from_check_request(msg)


def decision_inputs(v: RequestView) -> tuple[Any, ...]:
    """Everything a decision may depend on under PLAN, as the engine and identity see it."""
    return (
        v.source.principal,
        v.source.certificate,
        v.source.address,
        v.destination.principal,
        v.destination.address,
        v.port,
        v.sni,
        v.method,
        v.host,
        v.path,
        v.query,
        tuple((h, v.headers.get(h)) for h in PLAN.headers),
        dict(v.context_extensions),
    )


FIELDS = sorted(ATTRIBUTES)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests, requests, st.sets(st.sampled_from(FIELDS), min_size=1, max_size=2))
def test_requests_that_differ_where_a_decision_could_depend_never_share_a_key(
    a: dict[str, Any], other: dict[str, Any], changed: set[str]
) -> None:
    # b is a with one or two attributes redrawn: pairs that differ in little are the hard case.
    b = {**a, **{k: other[k] for k in changed}}
    va, vb = view(a), view(b)
    ka, kb = make_key(PLAN, 0, va), make_key(PLAN, 0, vb)
    if decision_inputs(va) != decision_inputs(vb):
        assert ka != kb
    else:
        assert ka == kb  # and requests equal in those inputs do share one: the cache gets hits


@settings(max_examples=200, deadline=None)
@given(requests, st.integers(0, 3), st.integers(0, 3))
def test_generations_are_part_of_the_key(a: dict[str, Any], g1: int, g2: int) -> None:
    v = view(a)
    same = make_key(PLAN, g1, v) == make_key(PLAN, g2, v)
    other_plan = KeyPlan(8, PLAN.headers, PLAN.query)
    assert same == (g1 == g2)
    assert make_key(PLAN, g1, v) != make_key(other_plan, g1, v)


# Few distinct values so that sequences revisit keys: the cache must answer as decide() does.
small = st.fixed_dictionaries(
    {
        "principal": st.sampled_from(
            ["spiffe://example.org/ns/shop/sa/frontend", "spiffe://example.org/ns/shop/sa/x", ""]
        ),
        "method": st.sampled_from(["GET", "POST"]),
        "path": st.sampled_from(["/api/items", "/api/admin", "/tokens/a", "/x", "/api//x"]),
        "host": st.sampled_from(["api.shop.svc", "x.svc"]),
        "headers": st.sampled_from([{}, {"x-tenant": "acme"}, {"x-tenant": ""}, {"x-tenant": "b"}]),
    }
)


@settings(max_examples=60, deadline=None)
@given(st.lists(small, min_size=1, max_size=30))
def test_cache_on_and_off_answer_the_same(seq: list[dict[str, Any]]) -> None:
    engine = compile_policies(load_text(POLICY))
    plain = CheckCore(lambda: engine)
    cached = CheckCore(lambda: engine, cache=DecisionCache(8, 60, clock=Clock()))
    for kw in seq:
        data = check_request(request_id="r", **kw).SerializeToString()
        b1, _, d1 = plain.check(data)
        b2, _, d2 = cached.check(data)
        assert (d1.allowed, d1.status, d1.reason, d1.policy, d1.rule, d1.headers) == (
            d2.allowed,
            d2.status,
            d2.reason,
            d2.policy,
            d2.rule,
            d2.headers,
        )
        # Byte-identical answers but for the decision ids (each answer has its own: same length).
        assert b1.replace(d1.decision_id.encode(), b"-" * 32) == b2.replace(
            d2.decision_id.encode(), b"-" * 32
        )
