"""A cache hit answered from the message (no request view): the same key, record and answer."""

from __future__ import annotations

from typing import Any

from helpers.decisions import POLICY, Clock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.decision.audit import AuditLog
from extauthz.decision.cache import DecisionCache, KeyPlan, make_key, message_key
from extauthz.envoy.request import from_check_request
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request

PLAN = KeyPlan(3, ("authorization", "x-forwarded-client-cert", "x-tenant"), query=True)

_short = st.text(st.sampled_from([*"ab|:/,=;\x00 %.", "é"]), max_size=4)
messages = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "get", "POST", "G ET", "", "GET\n"]),
        "host": st.sampled_from(
            ["api", "API", "api.", "api:80", " api", "api:1:2", "a@b", "[::1]:8", "", "x.svc."]
        ),
        "path": st.one_of(
            st.sampled_from(["/api/items", "/api//x", "/a/../b", "/a%2Fb", "/%C3%A9", "api", "/a;b"]),
            _short.map(lambda s: "/" + s),
        ),
        "query": st.one_of(st.none(), _short),
        "headers": st.dictionaries(
            st.sampled_from(["x-tenant", "X-Tenant", "authorization", "x-forwarded-client-cert",
                             "user-agent", ":path", "host"]),
            st.one_of(_short, _short.map(lambda s: "t" * 130 + s)),
            max_size=4,
        ),
        "ext": st.dictionaries(st.sampled_from(["app", "namespace"]), _short, max_size=2),
        "sni": _short,
        "certificate": st.one_of(st.just(""), _short.map(lambda s: "c" * 200 + s)),
        "header_map": st.booleans(),
        "blank_line": st.booleans(),  # http.path/method/host empty: the pseudo-headers are read
    }
)


def message(a: dict[str, Any]) -> ext.CheckRequest:
    path = a["path"] + ("" if a["query"] is None else "?" + a["query"])
    msg = check_request(
        method=a["method"], host=a["host"], path=path, headers=a["headers"], sni=a["sni"],
        certificate=a["certificate"], context_extensions=a["ext"],
    )
    http = msg.attributes.request.http
    if a["blank_line"]:
        http.path = http.method = http.host = ""
    if a["header_map"]:  # the same headers, in header_map only
        for k, v in http.headers.items():
            http.header_map.headers.add(key=k, value=v)
        http.headers.clear()
    return msg


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.integers(0, 2))
def test_message_key_is_the_views_key_or_none(a: dict[str, Any], generation: int) -> None:
    msg = message(a)
    view = from_check_request(msg)
    got = message_key(PLAN, generation, msg)
    if got is not None:
        assert view.problem is None  # never a key for a request the view refuses
        assert got == make_key(PLAN, generation, view)
    else:  # None only where the view is built differently or refuses the request
        names = "".join(msg.attributes.request.http.headers)
        assert a["header_map"] or not names or names != names.lower() or view.problem is not None


ALLOWED = {"headers": {"x-tenant": "acme", "x-request-id": "r-1"}}


def _core(tmp_path: Any, clock: Clock) -> tuple[CheckCore, DecisionCache, AuditLog]:
    engine = compile_policies(load_text(POLICY), 1)
    cache = DecisionCache(100, 60.0, clock=clock)
    audit = AuditLog.open(str(tmp_path / "audit.jsonl"))
    return CheckCore(lambda: engine, cache=cache, audit=audit), cache, audit


def test_a_hit_answered_from_the_message_is_recorded_as_the_view_would_record_it(
    tmp_path: Any, clock: Clock
) -> None:
    core, cache, audit = _core(tmp_path, clock)
    data = check_request(**ALLOWED).SerializeToString()
    _, first, d1 = core.check(data)
    _, second, d2 = core.check(data)
    audit.close()
    assert (d1.cache, d2.cache) == ("miss", "hit") and d2.allowed
    assert (cache.hits, cache.misses) == (1, 1)
    differs = {"time", "decision_id", "latency_us", "cache"}
    assert {k: v for k, v in first.items() if k not in differs} == {
        k: v for k, v in second.items() if k not in differs
    }
    assert second["request_id"] == "r-1" and second["request"]["path"] == "/api/items"


def test_a_request_the_view_refuses_is_never_answered_from_a_cached_equivalent(
    tmp_path: Any, clock: Clock
) -> None:
    # " api.shop.svc" normalises to the cached request's host, but is not a valid authority:
    # it must be decided (400), not served the cached allow.
    core, _cache, audit = _core(tmp_path, clock)
    assert core.check(check_request(**ALLOWED).SerializeToString())[2].allowed
    for host, method in ((" api.shop.svc", "GET"), ("api.shop.svc", "get ")):
        msg = check_request(**ALLOWED)  # the pseudo-headers (which the policy reads) unchanged
        msg.attributes.request.http.host = host
        msg.attributes.request.http.method = method
        decision = core.check(msg.SerializeToString())[2]
        assert (decision.allowed, decision.status) == (False, 400)
    upper = check_request(**ALLOWED)
    upper.attributes.request.http.headers["X-Tenant"] = "acme"  # two spellings of one header
    decision = core.check(upper.SerializeToString())[2]
    assert (decision.allowed, decision.status) == (False, 400)
    audit.close()
