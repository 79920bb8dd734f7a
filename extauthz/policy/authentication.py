"""RequestAuthentication and PeerAuthentication: from strictly read YAML documents to typed specs."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from extauthz.policy.model import (
    MTLS_MODES,
    UNSET,
    ClaimToHeader,
    FromHeader,
    JwtRuleSpec,
    PeerAuthentication,
    RequestAuthentication,
    Where,
)
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
) -> RequestAuthentication:
    spec = as_map(ctx, doc, "spec", doc.get("spec", Map()))
    check_fields(ctx, spec, "spec", ("selector", "jwtRules"))
    rules: list[JwtRuleSpec] = []
    for rule in as_list(ctx, spec, "jwtRules", spec.get("jwtRules") or Seq()):
        rule = as_map(ctx, spec, "jwtRules[]", rule)
        check_fields(ctx, rule, "jwtRules[]", _JWT_RULE_FIELDS)
        rules.append(_jwt_rule(ctx, rule))
    return RequestAuthentication(
        name=name,
        namespace=namespace,
        jwt_rules=tuple(rules),
        selector=read_selector(ctx, spec),
        where=where,
    )


def _jwt_rule(ctx: Ctx, rule: Map) -> JwtRuleSpec:
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
    # Every field is checked above: read the entry into its typed form.
    jwks: Any = rule.get("jwks")
    return JwtRuleSpec(
        issuer=rule["issuer"],
        audiences=tuple(rule.get("audiences") or ()),
        jwks=jwks,
        jwks_uri=rule.get("jwksUri", ""),
        timeout=rule.get("timeout"),
        from_headers=tuple(
            FromHeader(h["name"], h.get("prefix", "")) for h in rule.get("fromHeaders") or ()
        ),
        from_params=tuple(rule.get("fromParams") or ()),
        from_cookies=tuple(rule.get("fromCookies") or ()),
        output_payload_to_header=rule.get("outputPayloadToHeader", ""),
        output_claim_to_headers=tuple(
            ClaimToHeader(o["header"], o["claim"]) for o in rule.get("outputClaimToHeaders") or ()
        ),
        forward_original_token=rule.get("forwardOriginalToken", False),
    )


def peer_authentication(
    ctx: Ctx, doc: Map, name: str, namespace: str, where: Where
) -> PeerAuthentication:
    spec = as_map(ctx, doc, "spec", doc.get("spec", Map()))
    check_fields(ctx, spec, "spec", ("selector", "mtls", "portLevelMtls"))
    modes: dict[str, str] = {}  # "mtls" or the port -> mode (UNSET when not set)
    for what, value in (("mtls", spec.get("mtls")), *(
        (f"portLevelMtls.{p}", v)
        for p, v in as_map(ctx, spec, "portLevelMtls", spec.get("portLevelMtls") or Map()).items()
    )):
        port = what.rpartition(".")[2]
        if what != "mtls" and (not port.isdigit() or not 0 < int(port) < 65536):
            raise ctx.error(spec, f"portLevelMtls: {port!r} is not a port number")
        if value is None:
            modes[port] = UNSET
            continue
        m = as_map(ctx, spec, what, value)
        check_fields(ctx, m, what, ("mode",))
        if m.get("mode", UNSET) not in MTLS_MODES:
            raise ctx.error(m, f"{what}.mode must be one of {', '.join(MTLS_MODES)}")
        modes[port] = m.get("mode", UNSET)
    selector = read_selector(ctx, spec)
    if "portLevelMtls" in spec and spec["portLevelMtls"] is not None:
        if not spec["portLevelMtls"]:
            raise ctx.error(spec, "portLevelMtls, when present, needs at least one port")
        if not selector:
            raise ctx.error(
                spec, "portLevelMtls needs a selector with matchLabels (as Istio requires: a "
                "mesh- or namespace-wide PeerAuthentication cannot have port-level mTLS)"
            )
    mtls_mode = modes.pop("mtls")
    return PeerAuthentication(
        name=name,
        namespace=namespace,
        mtls_mode=mtls_mode,
        port_level_mtls=MappingProxyType(modes),
        selector=selector,
        where=where,
    )
