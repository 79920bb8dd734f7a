# ruff: noqa: E501  (table-driven: one case per line reads best)
"""Every AuthorizationPolicy field and matching form, positive and negative.

Each case is one ALLOW rule (flow YAML), a request, and whether the rule matches (zero trust: no
match is a deny). The default request: GET /api/items on api.shop.svc:8443 from
spiffe://example.org/ns/shop/sa/frontend at 10.0.0.5, to 10.0.0.9.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers.policy import allow_rule, engine, evaluate

FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"
TOKEN = {
    "iss": "https://issuer.example",
    "sub": "alice",
    "aud": ["api", "web"],
    "azp": "web-app",
    "groups": ["admins", "dev"],
    "org": {"team": "payments", "tags": ["a", "b"]},
    "level": 3,
}

CASES: list[tuple[str, str, dict[str, Any], bool]] = [
    # ---- principals: exact, prefix, suffix, presence, not
    ("principal exact", "{from: [{source: {principals: [example.org/ns/shop/sa/frontend]}}]}", {}, True),
    ("principal exact other", "{from: [{source: {principals: [example.org/ns/shop/sa/x]}}]}", {}, False),
    ("principal prefix", "{from: [{source: {principals: ['example.org/ns/shop/*']}}]}", {}, True),
    ("principal prefix miss", "{from: [{source: {principals: ['example.org/ns/bank/*']}}]}", {}, False),
    ("principal suffix", "{from: [{source: {principals: ['*/sa/frontend']}}]}", {}, True),
    ("principal suffix miss", "{from: [{source: {principals: ['*/sa/backend']}}]}", {}, False),
    ("principal presence", "{from: [{source: {principals: ['*']}}]}", {}, True),
    ("principal presence, no peer", "{from: [{source: {principals: ['*']}}]}", {"principal": ""}, False),
    ("principal OR", "{from: [{source: {principals: [a/b, example.org/ns/shop/sa/frontend]}}]}", {}, True),
    ("notPrincipals hit", "{from: [{source: {notPrincipals: [example.org/ns/shop/sa/frontend]}}]}", {}, False),
    ("notPrincipals miss", "{from: [{source: {notPrincipals: [example.org/ns/x/sa/y]}}]}", {}, True),
    ("notPrincipals, no peer", "{from: [{source: {notPrincipals: ['*']}}]}", {"principal": ""}, True),
    ("principal case-sensitive", "{from: [{source: {principals: [example.org/ns/shop/sa/Frontend]}}]}", {}, False),
    # ---- requestPrincipals (iss/sub of the validated token)
    ("requestPrincipal exact", "{from: [{source: {requestPrincipals: [https://issuer.example/alice]}}]}",
     {"token": TOKEN}, True),
    ("requestPrincipal other sub", "{from: [{source: {requestPrincipals: [https://issuer.example/bob]}}]}",
     {"token": TOKEN}, False),
    ("requestPrincipal presence, no token", "{from: [{source: {requestPrincipals: ['*']}}]}", {}, False),
    ("requestPrincipal presence", "{from: [{source: {requestPrincipals: ['*']}}]}", {"token": TOKEN}, True),
    ("requestPrincipal issuer prefix", "{from: [{source: {requestPrincipals: ['https://issuer.example/*']}}]}",
     {"token": TOKEN}, True),
    ("notRequestPrincipals, no token", "{from: [{source: {notRequestPrincipals: ['*']}}]}", {}, True),
    ("notRequestPrincipals, token", "{from: [{source: {notRequestPrincipals: ['*']}}]}", {"token": TOKEN}, False),
    # ---- namespaces (from the peer principal's /ns/<ns>/)
    ("namespace exact", "{from: [{source: {namespaces: [shop]}}]}", {}, True),
    ("namespace other", "{from: [{source: {namespaces: [bank]}}]}", {}, False),
    ("namespace prefix", "{from: [{source: {namespaces: ['sh*']}}]}", {}, True),
    ("namespace no peer", "{from: [{source: {namespaces: ['*']}}]}", {"principal": ""}, False),
    ("namespace, principal without /ns/", "{from: [{source: {namespaces: ['*']}}]}",
     {"principal": "spiffe://example.org/workload/7"}, False),
    ("notNamespaces hit", "{from: [{source: {notNamespaces: [shop]}}]}", {}, False),
    ("notNamespaces miss", "{from: [{source: {notNamespaces: [bank]}}]}", {}, True),
    # ---- ipBlocks (direct peer), remoteIpBlocks (client; = peer without trusted hops)
    ("ipBlocks single", "{from: [{source: {ipBlocks: [10.0.0.5]}}]}", {}, True),
    ("ipBlocks cidr", "{from: [{source: {ipBlocks: [10.0.0.0/24]}}]}", {}, True),
    ("ipBlocks miss", "{from: [{source: {ipBlocks: [192.168.0.0/16]}}]}", {}, False),
    ("ipBlocks v6 vs v4", "{from: [{source: {ipBlocks: ['::/0']}}]}", {}, False),
    ("ipBlocks v6", "{from: [{source: {ipBlocks: ['fd00::/8']}}]}", {"source_address": "fd00::1"}, True),
    ("notIpBlocks hit", "{from: [{source: {notIpBlocks: [10.0.0.0/8]}}]}", {}, False),
    ("notIpBlocks miss", "{from: [{source: {notIpBlocks: [172.16.0.0/12]}}]}", {}, True),
    ("remoteIpBlocks = peer", "{from: [{source: {remoteIpBlocks: [10.0.0.5/32]}}]}", {}, True),
    ("remoteIpBlocks ignores XFF by default", "{from: [{source: {remoteIpBlocks: [1.2.3.4]}}]}",
     {"headers": {"x-forwarded-for": "1.2.3.4"}}, False),
    ("notRemoteIpBlocks", "{from: [{source: {notRemoteIpBlocks: [10.0.0.5]}}]}", {}, False),
    # ---- source fields AND, sources OR
    ("source AND both", "{from: [{source: {namespaces: [shop], ipBlocks: [10.0.0.0/8]}}]}", {}, True),
    ("source AND one fails", "{from: [{source: {namespaces: [shop], ipBlocks: [11.0.0.0/8]}}]}", {}, False),
    ("sources OR", "{from: [{source: {namespaces: [bank]}}, {source: {ipBlocks: [10.0.0.5]}}]}", {}, True),
    # ---- hosts (case-insensitive; the authority as sent, port included)
    ("host exact", "{to: [{operation: {hosts: [api.shop.svc]}}]}", {}, True),
    ("host case", "{to: [{operation: {hosts: [API.Shop.SVC]}}]}", {}, True),
    ("host other", "{to: [{operation: {hosts: [web.shop.svc]}}]}", {}, False),
    ("host suffix", "{to: [{operation: {hosts: ['*.shop.svc']}}]}", {}, True),
    ("host exact does not match with port", "{to: [{operation: {hosts: [api.shop.svc]}}]}",
     {"host": "api.shop.svc:8443"}, False),
    ("host port prefix", "{to: [{operation: {hosts: ['api.shop.svc:*']}}]}", {"host": "api.shop.svc:8443"}, True),
    ("notHosts hit", "{to: [{operation: {notHosts: ['*.shop.svc']}}]}", {}, False),
    ("notHosts miss", "{to: [{operation: {notHosts: [x.example]}}]}", {}, True),
    # ---- ports (destination port)
    ("port", "{to: [{operation: {ports: ['8443']}}]}", {}, True),
    ("port int", "{to: [{operation: {ports: [8443]}}]}", {}, True),
    ("port miss", "{to: [{operation: {ports: ['80']}}]}", {}, False),
    ("notPorts hit", "{to: [{operation: {notPorts: ['8443']}}]}", {}, False),
    ("notPorts miss", "{to: [{operation: {notPorts: ['80']}}]}", {}, True),
    # ---- methods
    ("method", "{to: [{operation: {methods: [GET]}}]}", {}, True),
    ("method miss", "{to: [{operation: {methods: [POST]}}]}", {}, False),
    ("notMethods hit", "{to: [{operation: {notMethods: [GET, HEAD]}}]}", {}, False),
    ("notMethods miss", "{to: [{operation: {notMethods: [DELETE]}}]}", {}, True),
    # ---- paths: exact, prefix, suffix, presence, templates, not
    ("path exact", "{to: [{operation: {paths: [/api/items]}}]}", {}, True),
    ("path exact trailing slash", "{to: [{operation: {paths: [/api/items/]}}]}", {}, False),
    ("path exact ignores query", "{to: [{operation: {paths: [/api/items]}}]}", {"path": "/api/items?x=1"}, True),
    ("path prefix", "{to: [{operation: {paths: ['/api/*']}}]}", {}, True),
    ("path prefix no segment", "{to: [{operation: {paths: ['/ap*']}}]}", {}, True),
    ("path prefix miss", "{to: [{operation: {paths: ['/admin/*']}}]}", {}, False),
    ("path prefix needs slash", "{to: [{operation: {paths: ['/api/items/*']}}]}", {}, False),
    ("path suffix", "{to: [{operation: {paths: ['*/items']}}]}", {}, True),
    ("path suffix miss", "{to: [{operation: {paths: ['*.json']}}]}", {}, False),
    ("path presence", "{to: [{operation: {paths: ['*']}}]}", {}, True),
    ("path template {*}", "{to: [{operation: {paths: ['/api/{*}']}}]}", {}, True),
    ("path template {*} one segment only", "{to: [{operation: {paths: ['/api/{*}']}}]}",
     {"path": "/api/items/7"}, False),
    ("path template {*} middle", "{to: [{operation: {paths: ['/api/{*}/7']}}]}", {"path": "/api/items/7"}, True),
    ("path template {*} needs a segment", "{to: [{operation: {paths: ['/api/{*}']}}]}", {"path": "/api/"}, False),
    ("path template {**}", "{to: [{operation: {paths: ['/api/{**}']}}]}", {"path": "/api/a/b/c"}, True),
    ("path template {**} one or more", "{to: [{operation: {paths: ['/api/{**}']}}]}", {"path": "/api"}, False),
    ("path template {**} after {*}", "{to: [{operation: {paths: ['/{*}/items/{**}']}}]}",
     {"path": "/api/items/1/2"}, True),
    ("path template literal dots", "{to: [{operation: {paths: ['/v1.0/{*}']}}]}", {"path": "/v1x0/a"}, False),
    ("notPaths hit", "{to: [{operation: {notPaths: ['/api/*']}}]}", {}, False),
    ("notPaths miss", "{to: [{operation: {notPaths: ['/admin/*']}}]}", {}, True),
    ("notPaths template", "{to: [{operation: {notPaths: ['/api/{*}']}}]}", {}, False),
    # ---- operation AND, operations OR
    ("operation AND", "{to: [{operation: {methods: [GET], paths: [/api/items]}}]}", {}, True),
    ("operation AND fails", "{to: [{operation: {methods: [POST], paths: [/api/items]}}]}", {}, False),
    ("operations OR", "{to: [{operation: {methods: [POST]}}, {operation: {paths: [/api/items]}}]}", {}, True),
    # ---- from AND to
    ("from and to", "{from: [{source: {namespaces: [shop]}}], to: [{operation: {methods: [GET]}}]}", {}, True),
    ("from ok, to fails", "{from: [{source: {namespaces: [shop]}}], to: [{operation: {methods: [PUT]}}]}",
     {}, False),
    # ---- when: every key, values and notValues
    ("when header", "{when: [{key: 'request.headers[x-env]', values: [prod]}]}", {"headers": {"x-env": "prod"}}, True),
    ("when header name case", "{when: [{key: 'request.headers[X-Env]', values: [prod]}]}",
     {"headers": {"x-env": "prod"}}, True),
    ("when header value", "{when: [{key: 'request.headers[x-env]', values: [prod]}]}",
     {"headers": {"x-env": "dev"}}, False),
    ("when header absent", "{when: [{key: 'request.headers[x-env]', values: ['*']}]}", {}, False),
    ("when header prefix", "{when: [{key: 'request.headers[x-env]', values: ['pr*']}]}",
     {"headers": {"x-env": "prod"}}, True),
    ("when header notValues absent", "{when: [{key: 'request.headers[x-env]', notValues: [dev]}]}", {}, True),
    ("when header notValues hit", "{when: [{key: 'request.headers[x-env]', notValues: [dev]}]}",
     {"headers": {"x-env": "dev"}}, False),
    ("when header values and notValues", "{when: [{key: 'request.headers[x-env]', values: ['*'], notValues: [dev]}]}",
     {"headers": {"x-env": "prod"}}, True),
    ("when source.ip", "{when: [{key: source.ip, values: [10.0.0.0/8]}]}", {}, True),
    ("when source.ip notValues", "{when: [{key: source.ip, notValues: [10.0.0.0/8]}]}", {}, False),
    ("when remote.ip", "{when: [{key: remote.ip, values: [10.0.0.5]}]}", {}, True),
    ("when source.namespace", "{when: [{key: source.namespace, values: [shop]}]}", {}, True),
    ("when source.namespace miss", "{when: [{key: source.namespace, values: [bank]}]}", {}, False),
    ("when source.principal", "{when: [{key: source.principal, values: ['*/sa/frontend']}]}", {}, True),
    ("when source.principal notValues", "{when: [{key: source.principal, notValues: ['*/sa/frontend']}]}",
     {}, False),
    ("when request.auth.principal", "{when: [{key: request.auth.principal, values: [https://issuer.example/alice]}]}",
     {"token": TOKEN}, True),
    ("when request.auth.principal no token", "{when: [{key: request.auth.principal, values: ['*']}]}", {}, False),
    ("when audiences", "{when: [{key: request.auth.audiences, values: [web]}]}", {"token": TOKEN}, True),
    ("when audiences miss", "{when: [{key: request.auth.audiences, values: [admin]}]}", {"token": TOKEN}, False),
    ("when presenter", "{when: [{key: request.auth.presenter, values: [web-app]}]}", {"token": TOKEN}, True),
    ("when presenter miss", "{when: [{key: request.auth.presenter, values: [cli]}]}", {"token": TOKEN}, False),
    ("when claim", "{when: [{key: 'request.auth.claims[iss]', values: [https://issuer.example]}]}",
     {"token": TOKEN}, True),
    ("when list claim element", "{when: [{key: 'request.auth.claims[groups]', values: [dev]}]}",
     {"token": TOKEN}, True),
    ("when list claim miss", "{when: [{key: 'request.auth.claims[groups]', values: [ops]}]}",
     {"token": TOKEN}, False),
    ("when list claim notValues", "{when: [{key: 'request.auth.claims[groups]', notValues: [admins]}]}",
     {"token": TOKEN}, False),
    ("when nested claim", "{when: [{key: 'request.auth.claims[org][team]', values: [payments]}]}",
     {"token": TOKEN}, True),
    ("when nested list claim", "{when: [{key: 'request.auth.claims[org][tags]', values: [b]}]}",
     {"token": TOKEN}, True),
    ("when nested claim miss", "{when: [{key: 'request.auth.claims[org][team]', values: [risk]}]}",
     {"token": TOKEN}, False),
    ("when nested claim too deep", "{when: [{key: 'request.auth.claims[org][team][x]', values: ['*']}]}",
     {"token": TOKEN}, False),
    ("when number claim never matches", "{when: [{key: 'request.auth.claims[level]', values: ['3']}]}",
     {"token": TOKEN}, False),
    ("when claim, no token", "{when: [{key: 'request.auth.claims[groups]', values: ['*']}]}", {}, False),
    ("when claim notValues, no token", "{when: [{key: 'request.auth.claims[groups]', notValues: [x]}]}", {}, True),
    ("when destination.ip", "{when: [{key: destination.ip, values: [10.0.0.9/32]}]}", {}, True),
    ("when destination.ip miss", "{when: [{key: destination.ip, values: [10.0.1.0/24]}]}", {}, False),
    ("when destination.port", "{when: [{key: destination.port, values: ['8443']}]}", {}, True),
    ("when destination.port notValues", "{when: [{key: destination.port, notValues: ['8443']}]}", {}, False),
    ("when connection.sni", "{when: [{key: connection.sni, values: ['*.shop.svc']}]}", {"sni": "api.shop.svc"}, True),
    ("when connection.sni absent", "{when: [{key: connection.sni, values: ['*']}]}", {}, False),
    ("when all must hold", "{when: [{key: source.namespace, values: [shop]}, {key: connection.sni, values: ['*']}]}",
     {}, False),
    # ---- an empty rule matches everything
    ("empty rule", "{}", {}, True),
    ("empty rule, anonymous", "{}", {"principal": ""}, True),
]


@pytest.mark.parametrize(("rule", "req", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_field(rule: str, req: dict[str, Any], expected: bool) -> None:
    eng = engine(allow_rule(f"  - {rule}\n"))
    verdict = evaluate(eng, **req)
    assert verdict.allowed is expected, verdict
    if expected:
        assert verdict.policy == "istio-system/p"
        assert verdict.rule == 0
    else:
        assert verdict.policy is None
        assert verdict.reason == "no_matching_policy"


XFF_RULE = "  - {from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]}\n"


@pytest.mark.parametrize(
    ("hops", "xff", "expected"),
    [
        (0, "203.0.113.7", False),  # XFF ignored: remote = direct peer 10.0.0.5
        (1, "203.0.113.7", True),  # one trusted proxy wrote the client
        (1, "203.0.113.7, 10.0.0.5", True),  # Envoy appended the direct peer: dropped
        (1, "203.0.113.7, 198.51.100.1", False),  # the proxy saw 198.51.100.1: a spoofed left entry
        (2, "203.0.113.7, 198.51.100.1", True),
        (2, "203.0.113.7", False),  # fewer entries than hops: the direct peer
        (1, "", False),
        (1, "not-an-ip", False),
    ],
)
def test_remote_ip_from_xff(hops: int, xff: str, expected: bool) -> None:
    eng = engine(allow_rule(XFF_RULE), xff_num_trusted_hops=hops)
    headers = {"x-forwarded-for": xff} if xff else {}
    assert evaluate(eng, headers=headers).allowed is expected
    if hops:
        assert "x-forwarded-for" in eng.reads.headers


def test_remote_ip_when_key_uses_xff() -> None:
    eng = engine(allow_rule("  - {when: [{key: remote.ip, values: [203.0.113.7]}]}\n"), xff_num_trusted_hops=1)
    assert evaluate(eng, headers={"x-forwarded-for": "203.0.113.7"}).allowed
    # ipBlocks and source.ip stay the direct peer
    eng = engine(allow_rule("  - {when: [{key: source.ip, values: [203.0.113.7]}]}\n"), xff_num_trusted_hops=1)
    assert not evaluate(eng, headers={"x-forwarded-for": "203.0.113.7"}).allowed
