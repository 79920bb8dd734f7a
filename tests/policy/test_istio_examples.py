# ruff: noqa: E501
"""Examples from Istio's AuthorizationPolicy and Conditions reference pages, rewritten as fixtures,
with the outcomes the pages document (under extauthz's zero trust: no matching ALLOW is a deny).
"""

from __future__ import annotations

from typing import Any

from helpers.policy import HEADER, engine, evaluate

FOO = {"namespace": "foo"}
CURL = "spiffe://cluster.local/ns/default/sa/curl"
GOOGLE = {"iss": "https://accounts.google.com", "sub": "110169484474386276334"}


def ap(name: str, ns: str, spec: str, annotations: str = "") -> str:
    return f"---\n{HEADER}metadata:\n  name: {name}\n  namespace: {ns}\n{annotations}spec:\n{spec}"


# The reference page's first example: the curl service account or anything from namespace "test"
# may GET paths starting with /info or POST /data, when the request carries a JWT from Google.
HTTPBIN = ap("httpbin", "foo", """\
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/curl"]
    - source:
        namespaces: ["test"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
""")


def check(text: str, **kw: Any) -> Any:
    kw.setdefault("context_extensions", FOO)
    return evaluate(engine(text), **kw)


def test_reference_example_allows_documented_requests() -> None:
    assert check(HTTPBIN, principal=CURL, method="GET", path="/info/status", token=GOOGLE).allowed
    assert check(HTTPBIN, principal=CURL, method="GET", path="/info", token=GOOGLE).allowed
    assert check(HTTPBIN, principal="spiffe://cluster.local/ns/test/sa/any", method="POST", path="/data", token=GOOGLE).allowed


def test_reference_example_denies_everything_else() -> None:
    assert not check(HTTPBIN, principal=CURL, method="POST", path="/info", token=GOOGLE).allowed
    assert not check(HTTPBIN, principal=CURL, method="GET", path="/data", token=GOOGLE).allowed
    assert not check(HTTPBIN, principal=CURL, method="GET", path="/info").allowed  # no JWT
    assert not check(HTTPBIN, principal=CURL, method="GET", path="/info", token={"iss": "https://evil.example", "sub": "x"}).allowed
    assert not check(HTTPBIN, principal="spiffe://cluster.local/ns/prod/sa/curl", method="GET", path="/info", token=GOOGLE).allowed
    # the policy lives in foo: another namespace's workloads are not covered by it
    assert not check(HTTPBIN, principal=CURL, method="GET", path="/info", token=GOOGLE, context_extensions={"namespace": "bar"}).allowed


# The DENY example: POSTs from namespace "dev" to workloads in foo are denied (here next to an
# allow-everything policy so that the DENY is what decides).
DENY_DEV_POST = ap("deny-dev-post", "foo", """\
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["dev"]
    to:
    - operation:
        methods: ["POST"]
""") + ap("allow-all", "foo", "  rules:\n  - {}\n")


def test_deny_example() -> None:
    v = check(DENY_DEV_POST, principal="spiffe://cluster.local/ns/dev/sa/x", method="POST")
    assert not v.allowed and v.policy == "foo/deny-dev-post"
    assert check(DENY_DEV_POST, principal="spiffe://cluster.local/ns/dev/sa/x", method="GET").allowed
    assert check(DENY_DEV_POST, principal="spiffe://cluster.local/ns/prod/sa/x", method="POST").allowed


def test_allow_nothing_and_allow_all_examples() -> None:
    # spec: {} with the default ALLOW action matches nothing: every request to foo is denied.
    deny_all = ap("allow-nothing", "foo", "  {}\n")
    assert not check(deny_all).allowed
    assert not check(deny_all + ap("other", "bar", "  rules:\n  - {}\n")).allowed
    # rules: [{}] matches every request, also one without any identity.
    allow_all = ap("allow-all", "foo", "  action: ALLOW\n  rules:\n  - {}\n")
    assert check(allow_all).allowed
    assert check(allow_all, principal="", method="DELETE", path="/anything").allowed


def test_require_jwt_with_not_request_principals() -> None:
    # A DENY on notRequestPrincipals ["*"] rejects requests without a valid JWT.
    text = ap("require-jwt", "foo", """\
  action: DENY
  rules:
  - from:
    - source:
        notRequestPrincipals: ["*"]
""") + ap("allow-all", "foo", "  rules:\n  - {}\n")
    v = check(text)
    assert not v.allowed and v.policy == "foo/require-jwt"
    assert check(text, token=GOOGLE).allowed


def test_audit_example_marks_without_deciding() -> None:
    # AUDIT GETs under /user/profile/: the request is marked, the decision is the ALLOW's.
    text = ap("audit-profile", "foo", """\
  action: AUDIT
  rules:
  - to:
    - operation:
        methods: ["GET"]
        paths: ["/user/profile/*"]
""") + ap("allow-all", "foo", "  rules:\n  - {}\n")
    v = check(text, method="GET", path="/user/profile/42")
    assert v.allowed and v.audit == ("foo/audit-profile",)
    v = check(text, method="POST", path="/user/profile/42")
    assert v.allowed and v.audit == ()


def test_dry_run_example() -> None:
    # A DENY annotated istio.io/dry-run: "true" is evaluated and reported, not enforced.
    text = ap("dry-run-deny-path", "foo", """\
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/headers"]
""", annotations='  annotations:\n    "istio.io/dry-run": "true"\n') + ap("allow-all", "foo", "  rules:\n  - {}\n")
    v = check(text, path="/headers")
    assert v.allowed and v.dry_run == (("foo/dry-run-deny-path", "deny_match"),)
    assert check(text, path="/ip").dry_run == (("foo/dry-run-deny-path", "deny_no_match"),)


def test_selector_example() -> None:
    # The policy selects workloads labelled app=httpbin, version=v1 (routes set the labels).
    text = ap("httpbin-v1", "foo", """\
  selector:
    matchLabels:
      app: httpbin
      version: v1
  rules:
  - {}
""")
    assert check(text, context_extensions={**FOO, "app": "httpbin", "version": "v1"}).allowed
    assert not check(text, context_extensions={**FOO, "app": "httpbin", "version": "v2"}).allowed


def test_conditions_page_examples() -> None:
    def when(key: str, values: str) -> str:
        return ap("w", "foo", f"  rules:\n  - when:\n    - key: {key}\n      values: {values}\n")

    ua = when("request.headers[User-Agent]", '["Mozilla/*"]')
    assert check(ua, headers={"user-agent": "Mozilla/5.0"}).allowed
    assert not check(ua, headers={"user-agent": "curl/8"}).allowed
    ips = when("source.ip", '["10.1.2.3", "10.2.0.0/16"]')
    assert check(ips, source_address="10.2.200.1").allowed and not check(ips, source_address="10.1.2.4").allowed
    remote = when("remote.ip", '["10.1.2.3", "10.2.0.0/16"]')
    assert check(remote, source_address="10.1.2.3").allowed
    ns = when("source.namespace", '["default"]')
    assert check(ns, principal=CURL).allowed and not check(ns, principal="").allowed
    sp = when("source.principal", '["cluster.local/ns/default/sa/productpage"]')
    assert check(sp, principal="spiffe://cluster.local/ns/default/sa/productpage").allowed
    rp = when("request.auth.principal", '["issuer.example.com/subject-admin"]')
    assert check(rp, token={"iss": "issuer.example.com", "sub": "subject-admin"}).allowed
    assert not check(rp, token={"iss": "issuer.example.com", "sub": "subject-user"}).allowed
    aud = when("request.auth.audiences", '["example.com"]')
    assert check(aud, token={"iss": "i", "sub": "s", "aud": ["example.com", "x"]}).allowed
    pres = when("request.auth.presenter", '["123456789012.example.com"]')
    assert check(pres, token={"iss": "i", "sub": "s", "azp": "123456789012.example.com"}).allowed
    claim = when("request.auth.claims[iss]", '["*@foo.com"]')
    assert check(claim, token={"iss": "bob@foo.com", "sub": "s"}).allowed
    assert not check(claim, token={"iss": "bob@bar.com", "sub": "s"}).allowed
    nested = when("request.auth.claims[nested1][nested2]", '["some-value"]')
    assert check(nested, token={"iss": "i", "sub": "s", "nested1": {"nested2": "some-value"}}).allowed
    groups = when("request.auth.claims[groups]", '["group1"]')
    assert check(groups, token={"iss": "i", "sub": "s", "groups": ["group0", "group1"]}).allowed
    dip = when("destination.ip", '["10.1.2.3", "10.2.0.0/16"]')
    assert check(dip, destination_address="10.2.0.7").allowed
    port = when("destination.port", '["80", "443"]')
    assert check(port, destination_port=443).allowed and not check(port, destination_port=8443).allowed
    sni = when("connection.sni", '["www.example.com"]')
    assert check(sni, sni="www.example.com").allowed and not check(sni, sni="api.example.com").allowed


def test_not_values_condition() -> None:
    # notValues: the rule holds unless the attribute has one of the values (absent counts as "not").
    text = ap("not-internal", "foo", "  rules:\n  - when:\n    - key: request.headers[x-internal]\n      notValues: [\"true\"]\n")
    assert check(text).allowed
    assert check(text, headers={"x-internal": "false"}).allowed
    assert not check(text, headers={"x-internal": "true"}).allowed


def test_hosts_need_port_twin() -> None:
    # Istio's note: an exact host does not match an authority with a port; add "host:*".
    exact = ap("h", "foo", "  rules:\n  - to:\n    - operation:\n        hosts: [\"httpbin.com\"]\n")
    assert check(exact, host="httpbin.com").allowed
    assert not check(exact, host="httpbin.com:8000").allowed
    both = ap("h", "foo", "  rules:\n  - to:\n    - operation:\n        hosts: [\"httpbin.com\", \"httpbin.com:*\"]\n")
    assert check(both, host="httpbin.com:8000").allowed


def test_path_templates() -> None:
    text = ap("t", "foo", "  rules:\n  - to:\n    - operation:\n        paths: [\"/foo/{*}/bar\", \"/baz/{**}\"]\n")
    assert check(text, path="/foo/buzz/bar").allowed
    assert not check(text, path="/foo/buzz/qux/bar").allowed
    assert check(text, path="/baz/a/b/c.txt").allowed
    assert not check(text, path="/baz").allowed


def test_ingress_remote_ip_blocks_with_trusted_proxy() -> None:
    # Allow only clients from 1.2.3.4 and 5.6.7.0/24, as seen behind one trusted load balancer.
    text = ap("ingress", "foo", "  rules:\n  - from:\n    - source:\n        remoteIpBlocks: [\"1.2.3.4\", \"5.6.7.0/24\"]\n")
    eng = engine(text, xff_num_trusted_hops=1)
    assert evaluate(eng, context_extensions=FOO, source_address="172.16.0.2", headers={"x-forwarded-for": "5.6.7.8"}).allowed
    assert not evaluate(eng, context_extensions=FOO, source_address="172.16.0.2", headers={"x-forwarded-for": "1.2.3.4, 9.9.9.9"}).allowed
