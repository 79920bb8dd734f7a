# ruff: noqa: E501  (table-driven: one case per line reads best)
"""Actions, order, scope, selectors, dry-run, and the index agreeing with a linear scan."""

from __future__ import annotations

import random
from typing import Any

from helpers.policy import HEADER, engine, evaluate, identity, request

from extauthz.policy import load_text
from extauthz.policy.engine import Context, compile_policies


def pol(name: str, ns: str, spec: str, annotations: str = "") -> str:
    meta = f"metadata: {{name: {name}, namespace: {ns}{annotations}}}\n"
    return f"---\n{HEADER}{meta}spec: {spec}\n"


def test_zero_trust_no_policy_denies() -> None:
    v = evaluate(engine(""))
    assert not v.allowed and v.reason == "no_matching_policy" and v.policy is None


def test_allow_spec_empty_matches_nothing() -> None:
    eng = engine(pol("nothing", "shop", "{}"))
    assert not evaluate(eng, context_extensions={"namespace": "shop"}).allowed


def test_rules_empty_object_allows_everything_in_scope() -> None:
    eng = engine(pol("all", "shop", "{rules: [{}]}"))
    v = evaluate(eng, context_extensions={"namespace": "shop"})
    assert v.allowed and v.policy == "shop/all" and v.rule == 0
    assert not evaluate(eng, context_extensions={"namespace": "bank"}).allowed


def test_deny_wins_over_allow_regardless_of_order() -> None:
    text = pol("allow-all", "istio-system", "{rules: [{}]}") + pol(
        "deny-admin", "istio-system", "{action: DENY, rules: [{to: [{operation: {paths: ['/admin/*']}}]}]}"
    )
    eng = engine(text)
    v = evaluate(eng, path="/admin/users")
    assert not v.allowed and v.reason == "denied_by_policy" and v.policy == "istio-system/deny-admin"
    assert evaluate(eng, path="/api/items").allowed


def test_deny_with_no_rules_matches_nothing() -> None:
    eng = engine(pol("d", "istio-system", "{action: DENY}") + pol("a", "istio-system", "{rules: [{}]}"))
    assert evaluate(eng).allowed


def test_first_policy_in_load_order_is_reported() -> None:
    # Two DENY policies match; the later one has a path-indexed rule, the first a root rule.
    text = (
        pol("d1", "istio-system", "{action: DENY, rules: [{to: [{operation: {methods: [GET]}}]}]}")
        + pol("d2", "istio-system", "{action: DENY, rules: [{to: [{operation: {paths: [/api/items]}}]}]}")
    )
    assert evaluate(engine(text)).policy == "istio-system/d1"
    swapped = (
        pol("d2", "istio-system", "{action: DENY, rules: [{to: [{operation: {paths: [/api/items]}}]}]}")
        + pol("d1", "istio-system", "{action: DENY, rules: [{to: [{operation: {methods: [GET]}}]}]}")
    )
    assert evaluate(engine(swapped)).policy == "istio-system/d2"


def test_rule_index_reported() -> None:
    text = pol("a", "istio-system", "{rules: [{to: [{operation: {methods: [POST]}}]}, {to: [{operation: {methods: [GET]}}]}]}")
    v = evaluate(engine(text))
    assert v.allowed and v.rule == 1


def test_audit_is_recorded_never_decides() -> None:
    text = pol("aud", "istio-system", "{action: AUDIT, rules: [{to: [{operation: {paths: ['/api/*']}}]}]}")
    v = evaluate(engine(text))
    assert not v.allowed and v.audit == ("istio-system/aud",)
    v = evaluate(engine(text + pol("a", "istio-system", "{rules: [{}]}")))
    assert v.allowed and v.audit == ("istio-system/aud",) and v.policy == "istio-system/a"
    v = evaluate(engine(text), path="/other")
    assert v.audit == ()


def test_dry_run_evaluated_not_enforced() -> None:
    dry = ", annotations: {istio.io/dry-run: 'true'}"
    text = pol("deny-dry", "istio-system", "{action: DENY, rules: [{}]}", dry) + pol(
        "allow-dry", "istio-system", "{rules: [{to: [{operation: {methods: [POST]}}]}]}", dry
    ) + pol("a", "istio-system", "{rules: [{}]}")
    v = evaluate(engine(text))
    assert v.allowed and v.policy == "istio-system/a"
    assert v.dry_run == (("istio-system/deny-dry", "deny_match"), ("istio-system/allow-dry", "allow_no_match"))
    # a dry-run ALLOW alone never allows
    v = evaluate(engine(pol("x", "istio-system", "{rules: [{}]}", dry)))
    assert not v.allowed and v.dry_run == (("istio-system/x", "allow_match"),)


def test_dry_run_false_is_enforced() -> None:
    text = pol("d", "istio-system", "{action: DENY, rules: [{}]}", ", annotations: {istio.io/dry-run: 'false'}")
    text += pol("a", "istio-system", "{rules: [{}]}")
    assert not evaluate(engine(text)).allowed


def test_namespace_scope() -> None:
    eng = engine(pol("a", "shop", "{rules: [{}]}"))
    assert evaluate(eng, context_extensions={"namespace": "shop"}).allowed
    # from the destination principal when context_extensions has no namespace
    assert evaluate(eng, destination_principal="spiffe://example.org/ns/shop/sa/api").allowed
    assert not evaluate(eng, destination_principal="spiffe://example.org/ns/bank/sa/api").allowed
    # context_extensions win over the principal
    assert not evaluate(
        eng, context_extensions={"namespace": "bank"}, destination_principal="spiffe://example.org/ns/shop/sa/api"
    ).allowed


def test_root_and_namespaceless_policies_apply_everywhere() -> None:
    no_ns = f"---\n{HEADER}metadata: {{name: global}}\nspec: {{rules: [{{}}]}}\n"
    for text in (pol("a", "istio-system", "{rules: [{}]}"), no_ns):
        eng = engine(text)
        assert evaluate(eng, destination_principal="spiffe://example.org/ns/any/sa/x").allowed
        assert evaluate(eng, destination_principal="").allowed


def test_custom_root_namespace() -> None:
    eng = compile_policies(load_text(pol("a", "mesh-root", "{rules: [{}]}"), root_namespace="mesh-root"))
    assert evaluate(eng, destination_principal="spiffe://example.org/ns/any/sa/x").allowed
    eng = compile_policies(load_text(pol("a", "istio-system", "{rules: [{}]}"), root_namespace="mesh-root"))
    assert not evaluate(eng, destination_principal="spiffe://example.org/ns/any/sa/x").allowed


def test_selector_all_labels_must_equal_context_extensions() -> None:
    eng = engine(pol("a", "istio-system", "{selector: {matchLabels: {app: api, version: v1}}, rules: [{}]}"))
    assert evaluate(eng, context_extensions={"app": "api", "version": "v1"}).allowed
    assert evaluate(eng, context_extensions={"app": "api", "version": "v1", "x": "y"}).allowed
    assert not evaluate(eng, context_extensions={"app": "api"}).allowed
    assert not evaluate(eng, context_extensions={"app": "api", "version": "v2"}).allowed
    assert not evaluate(eng).allowed


def test_empty_selector_applies_everywhere() -> None:
    eng = engine(pol("a", "istio-system", "{selector: {matchLabels: {}}, rules: [{}]}"))
    assert evaluate(eng).allowed


def test_selector_with_deny_in_scope_only() -> None:
    text = pol("d", "istio-system", "{action: DENY, selector: {matchLabels: {app: admin}}, rules: [{}]}")
    text += pol("a", "istio-system", "{rules: [{}]}")
    eng = engine(text)
    assert not evaluate(eng, context_extensions={"app": "admin"}).allowed
    assert evaluate(eng, context_extensions={"app": "api"}).allowed


def test_read_set_lists_every_input() -> None:
    text = pol("a", "shop", """{selector: {matchLabels: {app: api}}, rules: [{
      from: [{source: {requestPrincipals: ['*'], remoteIpBlocks: [1.2.3.4]}}],
      to: [{operation: {hosts: [a.example], ports: ['80']}}],
      when: [{key: 'request.headers[X-Tenant]', values: [a]},
             {key: 'request.auth.claims[org][team]', values: [a]},
             {key: request.auth.audiences, values: [a]},
             {key: connection.sni, values: [a]}]}]}""")
    reads = engine(text, xff_num_trusted_hops=1).reads
    assert {"x-tenant", "x-forwarded-for", ":authority"} <= reads.headers
    assert {("org", "team"), ("aud",), ("iss",), ("sub",)} <= reads.claims
    assert {"context_extensions", "remote.ip", "source.ip", "request.authority", "destination.port",
            "connection.sni"} <= reads.attributes
    assert "x-forwarded-for" not in engine(text).reads.headers


# ---------------------------------------------------------------------------- index == linear scan

def _linear(eng: Any, req: Any, ident: Any) -> tuple[bool, str | None, int | None]:
    """The reference: scan policies in load order, no index."""
    ctx = Context(req, ident)
    for group, allowed in ((eng.deny, False), (eng.allow, True)):
        for cp in group:
            if cp.applies_to(req):
                i = cp.first_match(ctx)
                if i is not None:
                    return allowed, cp.ref, i
    return False, None, None


PATHS = ["/", "/api", "/api/", "/api/items", "/api/items/7", "/admin", "/admin/x", "/apix", "/v1/a/b"]
PATTERNS = ["/api", "/api/*", "/ap*", "*/items", "*", "/api/{*}", "/{*}/items", "/api/{**}", "/admin/*",
            "/admin", "/", "/v1/{**}", "*x"]


def test_index_agrees_with_linear_scan() -> None:
    rnd = random.Random(7)
    docs = []
    for n in range(120):
        action = rnd.choice(["ALLOW", "ALLOW", "DENY"])
        ns = rnd.choice(["istio-system", "shop", "bank"])
        sel = rnd.choice(["", "selector: {matchLabels: {app: api}}, ", "selector: {matchLabels: {app: web, v: '1'}}, "])
        rules = []
        for _ in range(rnd.randint(0, 3)):
            ops = []
            for _ in range(rnd.randint(0, 2)):
                op = []
                if rnd.random() < 0.8:
                    op.append(f"paths: {rnd.sample(PATTERNS, rnd.randint(1, 2))}")
                if rnd.random() < 0.4:
                    op.append(f"methods: [{rnd.choice(['GET', 'POST'])}]")
                if rnd.random() < 0.2:
                    op.append(f"notPaths: ['{rnd.choice(PATTERNS)}']")
                if op:
                    ops.append("{operation: {" + ", ".join(op) + "}}")
            rule = f"{{to: [{', '.join(ops)}]}}" if ops else "{}"
            if rnd.random() < 0.5:
                src = rnd.choice([
                    "{source: {namespaces: [shop]}}",
                    "{source: {principals: [example.org/ns/shop/sa/a]}}",
                    "{source: {principals: [example.org/ns/shop/sa/a, example.org/ns/x/sa/b]}}",
                    "{source: {principals: [example.org/ns/x/sa/b]}}, {source: {principals: ['*/sa/a']}}",
                    "{source: {principals: ['example.org/*']}}",
                ])
                rule = rule[:-1] + (", " if ops else "") + f"from: [{src}]}}"
            rules.append(rule)
        docs.append(pol(f"p{n}", ns, f"{{action: {action}, {sel}rules: [{', '.join(rules)}]}}"))
    eng = engine("".join(docs))
    checked = 0
    for path in PATHS:
        for method in ("GET", "POST"):
            for ext in ({}, {"app": "api"}, {"app": "web", "v": "1"}, {"namespace": "shop"},
                        {"namespace": "bank", "app": "api"}):
                for principal in ("spiffe://example.org/ns/shop/sa/a", "spiffe://example.org/ns/x/sa/b"):
                    req = request(path=path, method=method, context_extensions=ext, principal=principal)
                    ident = identity(principal)
                    v = eng.evaluate(req, ident)
                    assert (v.allowed, v.policy, v.rule) == _linear(eng, req, ident), (path, method, ext)
                    checked += 1
    assert checked == len(PATHS) * 2 * 5 * 2
