"""RequestAuthentication and PeerAuthentication: from strictly read YAML documents to typed specs."""

from __future__ import annotations

from extauthz.policy.model import Resource, Where
from extauthz.policy.strict import (
    Ctx,
    Map,
    Seq,
    as_list,
    as_map,
    as_str,
    as_strings,
    check_fields,
    read_selector,
    type_name,
)

_JWT_RULE_FIELDS = (
    "issuer",
    "audiences",
    "jwksUri",
    "jwks",
    "fromHeaders",
    "fromParams",
    "fromCookies",
    "outputPayloadToHeader",
    "forwardOriginalToken",
    "outputClaimToHeaders",
    "timeout",
)


def request_authentication(
    ctx: Ctx, doc: Map, name: str, namespace: str, where: Where
) -> Resource:
    spec = as_map(ctx, doc, "spec", doc.get("spec", Map()))
    check_fields(ctx, spec, "spec", ("selector", "jwtRules"))
    for rule in as_list(ctx, spec, "jwtRules", spec.get("jwtRules") or Seq()):
        rule = as_map(ctx, spec, "jwtRules[]", rule)
        check_fields(ctx, rule, "jwtRules[]", _JWT_RULE_FIELDS)
        _jwt_rule(ctx, rule)
    return Resource(
        kind="RequestAuthentication",
        name=name,
        namespace=namespace,
        spec=spec,
        selector=read_selector(ctx, spec),
        where=where,
    )


def _jwt_rule(ctx: Ctx, rule: Map) -> None:
    """Type-check one ``jwtRules[]`` entry (its semantics live with the token code)."""
    if not as_str(ctx, rule, "jwtRules[].issuer", rule.get("issuer")):
        raise ctx.error(rule, "jwtRules[].issuer must not be empty")
    for name in ("jwksUri", "outputPayloadToHeader", "timeout"):
        if name in rule:
            as_str(ctx, rule, f"jwtRules[].{name}", rule[name])
    if "jwks" in rule and not isinstance(rule["jwks"], str | dict):
        # Istio writes the JWKS as a JSON string; a YAML mapping is the same document.
        got = type_name(rule["jwks"])
        raise ctx.error(rule, f"jwtRules[].jwks: expected a JSON string or a mapping, got {got}")
    if "jwksUri" in rule and "jwks" in rule:
        raise ctx.error(rule, "jwtRules[]: set jwksUri or jwks, not both")
    for name in ("audiences", "fromParams", "fromCookies"):
        if name in rule:
            as_strings(ctx, rule, f"jwtRules[].{name}", rule[name])
    if "forwardOriginalToken" in rule and not isinstance(rule["forwardOriginalToken"], bool):
        raise ctx.error(rule, "jwtRules[].forwardOriginalToken: expected true or false")
    for h in as_list(ctx, rule, "jwtRules[].fromHeaders", rule.get("fromHeaders") or Seq()):
        h = as_map(ctx, rule, "jwtRules[].fromHeaders[]", h)
        check_fields(ctx, h, "jwtRules[].fromHeaders[]", ("name", "prefix"))
        if not as_str(ctx, h, "jwtRules[].fromHeaders[].name", h.get("name")):
            raise ctx.error(h, "jwtRules[].fromHeaders[].name must not be empty")
        if "prefix" in h:
            as_str(ctx, h, "jwtRules[].fromHeaders[].prefix", h["prefix"])
    for o in as_list(ctx, rule, "jwtRules[].outputClaimToHeaders", rule.get("outputClaimToHeaders") or Seq()):
        o = as_map(ctx, rule, "jwtRules[].outputClaimToHeaders[]", o)
        check_fields(ctx, o, "jwtRules[].outputClaimToHeaders[]", ("header", "claim"))
        for name in ("header", "claim"):
            if not as_str(ctx, o, f"jwtRules[].outputClaimToHeaders[].{name}", o.get(name)):
                raise ctx.error(o, f"jwtRules[].outputClaimToHeaders[].{name} must not be empty")


_MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


def peer_authentication(
    ctx: Ctx, doc: Map, name: str, namespace: str, where: Where
) -> Resource:
    spec = as_map(ctx, doc, "spec", doc.get("spec", Map()))
    check_fields(ctx, spec, "spec", ("selector", "mtls", "portLevelMtls"))
    for what, value in (("mtls", spec.get("mtls")), *(
        (f"portLevelMtls.{p}", v)
        for p, v in as_map(ctx, spec, "portLevelMtls", spec.get("portLevelMtls") or Map()).items()
    )):
        port = what.rpartition(".")[2]
        if what != "mtls" and (not port.isdigit() or not 0 < int(port) < 65536):
            raise ctx.error(spec, f"portLevelMtls: {port!r} is not a port number")
        if value is None:
            continue
        m = as_map(ctx, spec, what, value)
        check_fields(ctx, m, what, ("mode",))
        if m.get("mode", "UNSET") not in _MTLS_MODES:
            raise ctx.error(m, f"{what}.mode must be one of {', '.join(_MTLS_MODES)}")
    selector = read_selector(ctx, spec)
    if "portLevelMtls" in spec and spec["portLevelMtls"] is not None:
        if not spec["portLevelMtls"]:
            raise ctx.error(spec, "portLevelMtls, when present, needs at least one port")
        if not selector:
            raise ctx.error(
                spec, "portLevelMtls needs a selector with matchLabels (as Istio requires: a "
                "mesh- or namespace-wide PeerAuthentication cannot have port-level mTLS)"
            )
    return Resource(
        kind="PeerAuthentication",
        name=name,
        namespace=namespace,
        spec=spec,
        selector=selector,
        where=where,
    )
