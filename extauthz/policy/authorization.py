"""AuthorizationPolicy: from a strictly read YAML document to the typed ``AuthorizationPolicy``."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from extauthz.policy.attributes import MAX_NAME_SEPARATORS
from extauthz.policy.matchers import PatternError, compile_matcher
from extauthz.policy.model import ACTIONS, AuthorizationPolicy, Condition, Operation, Rule, Source, Where
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
)

DRY_RUN_ANNOTATION = "istio.io/dry-run"


def _dry_run(ctx: Ctx, doc: Map) -> bool:
    meta = doc["metadata"]
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ctx.error(meta, "metadata.annotations: expected a mapping")
    value = annotations.get(DRY_RUN_ANNOTATION)
    if value is None:
        return False
    if value in ("true", True):
        return True
    if value in ("false", False):
        return False
    raise ctx.error(meta, f"annotation {DRY_RUN_ANNOTATION} must be \"true\" or \"false\"")


def authorization_policy(
    ctx: Ctx, doc: Map, name: str, namespace: str, where: Where
) -> AuthorizationPolicy:
    spec = as_map(ctx, doc, "spec", doc.get("spec", Map()))
    check_fields(
        ctx, spec, "spec", ("selector", "targetRef", "targetRefs", "action", "provider", "rules")
    )
    if "targetRef" in spec or "targetRefs" in spec:
        raise ctx.error(spec, "targetRef/targetRefs are not supported: use selector")
    action = spec.get("action", "ALLOW")
    if action == "CUSTOM":
        raise ctx.error(
            spec,
            "action CUSTOM is refused: extauthz is the custom provider itself; use ALLOW/DENY/AUDIT",
        )
    if action not in ACTIONS:
        raise ctx.error(spec, f"action {action!r} is not one of {', '.join(ACTIONS)}")
    if "provider" in spec:
        raise ctx.error(spec, "provider is only valid with action CUSTOM, which is refused")
    rules: list[Rule] = []
    if "rules" in spec and spec["rules"] is not None:
        for raw in as_list(ctx, spec, "rules", spec["rules"]):
            rules.append(_rule(ctx, raw, namespace))
    return AuthorizationPolicy(
        name=name,
        namespace=namespace,
        action=action,
        rules=tuple(rules),
        selector=read_selector(ctx, spec),
        dry_run=_dry_run(ctx, doc),
        where=where,
    )


_SOURCE_FIELDS = {
    "principals": "principals",
    "notPrincipals": "not_principals",
    "requestPrincipals": "request_principals",
    "notRequestPrincipals": "not_request_principals",
    "namespaces": "namespaces",
    "notNamespaces": "not_namespaces",
    "ipBlocks": "ip_blocks",
    "notIpBlocks": "not_ip_blocks",
    "remoteIpBlocks": "remote_ip_blocks",
    "notRemoteIpBlocks": "not_remote_ip_blocks",
    "serviceAccounts": "service_accounts",  # Istio 1.24
    "notServiceAccounts": "not_service_accounts",
    "trustDomains": "trust_domains",  # Istio 1.30 (istio/api#3665)
    "notTrustDomains": "not_trust_domains",
}
_OPERATION_FIELDS = {
    "hosts": "hosts",
    "notHosts": "not_hosts",
    "ports": "ports",
    "notPorts": "not_ports",
    "methods": "methods",
    "notMethods": "not_methods",
    "paths": "paths",
    "notPaths": "not_paths",
}

# The ``when`` keys Istio documents for HTTP. ``request.headers[..]`` and ``request.auth.claims[..]``
# are prefixes with a bracketed argument.
WHEN_KEYS = frozenset(
    {
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "destination.ip",
        "destination.port",
        "connection.sni",
    }
)


def _rule(ctx: Ctx, raw: Any, namespace: str) -> Rule:
    if raw is None:
        raw = Map()
    rule = as_map(ctx, raw, "rules[]", raw)
    check_fields(ctx, rule, "rule", ("from", "to", "when"))
    # As Istio validates: a present ``from``/``to`` must not be empty, and neither may the
    # ``source``/``operation`` inside (an empty one would silently match anything).
    sources: list[Source] = []
    for entry in _present_list(ctx, rule, "from"):
        entry = as_map(ctx, rule, "from[]", entry)
        check_fields(ctx, entry, "from[]", ("source",))
        if entry.get("source") is None:
            raise ctx.error(entry, "from[].source must be set")
        src = as_map(ctx, entry, "from[].source", entry["source"])
        fields = _fields(ctx, src, "source", _SOURCE_FIELDS, _check_source_value)
        if not fields:
            raise ctx.error(src, "from[].source must not be empty")
        for attr in ("service_accounts", "not_service_accounts"):
            if attr in fields:
                fields[attr] = _service_accounts(ctx, src, fields[attr], namespace)
        sources.append(Source(**fields))
    operations: list[Operation] = []
    for entry in _present_list(ctx, rule, "to"):
        entry = as_map(ctx, rule, "to[]", entry)
        check_fields(ctx, entry, "to[]", ("operation",))
        if entry.get("operation") is None:
            raise ctx.error(entry, "to[].operation must be set")
        op = as_map(ctx, entry, "to[].operation", entry["operation"])
        fields = _fields(ctx, op, "operation", _OPERATION_FIELDS, _check_operation_value)
        if not fields:
            raise ctx.error(op, "to[].operation must not be empty")
        operations.append(Operation(**fields))
    conditions = [_condition(ctx, c) for c in as_list(ctx, rule, "when", rule.get("when") or Seq())]
    return Rule(
        sources=tuple(sources),
        operations=tuple(operations),
        conditions=tuple(conditions),
        where=Where(ctx.file, rule.line),
    )


def _present_list(ctx: Ctx, rule: Map, field: str) -> Seq:
    if field not in rule or rule[field] is None:
        return Seq()
    seq = as_list(ctx, rule, field, rule[field])
    if not seq:
        raise ctx.error(rule, f"{field} must not be empty when present (leave it out to match anything)")
    return seq


def _fields(
    ctx: Ctx,
    node: Map,
    what: str,
    names: Mapping[str, str],
    check: Callable[[Ctx, Map, str, str], None],
) -> dict[str, tuple[str, ...]]:
    check_fields(ctx, node, what, names)
    out: dict[str, tuple[str, ...]] = {}
    for yaml_name, attr in names.items():
        if yaml_name not in node or node[yaml_name] is None:
            continue
        raw = node[yaml_name]
        if yaml_name in ("ports", "notPorts") and isinstance(raw, list):
            raw = Seq(str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in raw)
            raw.line = node.line
        values = as_strings(ctx, node, f"{what}.{yaml_name}", raw)
        for v in values:
            check(ctx, node, yaml_name, v)
        try:
            compile_matcher(values, paths=yaml_name in ("paths", "notPaths"))
        except PatternError as exc:
            raise ctx.error(node, f"{what}.{yaml_name}: {exc}") from exc
        if values:  # ``paths: []`` constrains nothing: as absent (Istio), never as "match all"
            out[attr] = values
    return out


def _service_accounts(
    ctx: Ctx, node: Map, values: tuple[str, ...], namespace: str
) -> tuple[str, ...]:
    """``sa`` is ``<policy namespace>/sa`` (Istio); stored resolved, so every reader agrees."""
    out = []
    for v in values:
        if "/" not in v:
            if not namespace:
                raise ctx.error(
                    node, f"source.serviceAccounts: {v!r} names no namespace and the policy has "
                    "none: write 'namespace/serviceaccount'",
                )
            v = f"{namespace}/{v}"
        out.append(v)
    return tuple(out)


def _check_source_value(ctx: Ctx, node: Map, field: str, value: str) -> None:
    # Principals written with 'spiffe://' load (Istio loads them; they never match: Istio prefixes
    # the scheme again); ``extauthz lint`` points them out.
    if field in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"):
        _check_cidr(ctx, node, field, value)


def _check_operation_value(ctx: Ctx, node: Map, field: str, value: str) -> None:
    # A path without a leading '/' loads (Istio loads it; it never matches a request path).
    if field in ("ports", "notPorts") and (not value.isdigit() or not 0 < int(value) < 65536):
        raise ctx.error(node, f"operation.{field}: {value!r} is not a port number")


def _check_cidr(ctx: Ctx, node: Any, field: str, value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ctx.error(node, f"{field}: {value!r} is not an IP address or CIDR block") from exc


def _condition(ctx: Ctx, raw: Any) -> Condition:
    cond = as_map(ctx, raw, "when[]", raw)
    check_fields(ctx, cond, "when[]", ("key", "values", "notValues"))
    key = as_str(ctx, cond, "when[].key", cond.get("key"))
    if not is_known_when_key(key):
        raise ctx.error(cond, f"when: unknown key {key!r}")
    values = as_strings(ctx, cond, f"when[{key}].values", cond.get("values") or Seq())
    not_values = as_strings(ctx, cond, f"when[{key}].notValues", cond.get("notValues") or Seq())
    if not values and not not_values:
        raise ctx.error(cond, f"when[{key}]: needs values or notValues")
    if key.startswith("request.headers[") and sum(
        ch in "-_" for ch in key
    ) > MAX_NAME_SEPARATORS:
        raise ctx.error(
            cond, f"when: {key!r}: more than {MAX_NAME_SEPARATORS} '-' or '_' in a header name"
        )
    if key in ("source.ip", "remote.ip", "destination.ip"):
        for v in (*values, *not_values):
            _check_cidr(ctx, cond, f"when[{key}]", v)
    elif key == "destination.port":
        for v in (*values, *not_values):
            if not v.isdigit() or not 0 < int(v) < 65536:
                raise ctx.error(cond, f"when[{key}]: {v!r} is not a port number")
    else:
        try:
            compile_matcher((*values, *not_values))
        except PatternError as exc:
            raise ctx.error(cond, f"when[{key}]: {exc}") from exc
    return Condition(key=key, values=values, not_values=not_values)


def is_known_when_key(key: str) -> bool:
    if key in WHEN_KEYS:
        return True
    for prefix in ("request.headers[", "request.auth.claims["):
        if key.startswith(prefix) and key.endswith("]"):
            inner = key[len(prefix) : -1]
            if prefix == "request.headers[":
                return bool(inner) and "[" not in inner and "]" not in inner
            parts = inner.split("][")
            return all(parts)
    return False
