"""Load Istio security resources from a directory of YAML files, strictly.

Anything unknown (a kind, a field, a ``when`` key) is a ``PolicyError`` naming file, line, the
resource and the field: a policy that is silently half-read is a policy that silently allows.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from extauthz.policy.matchers import PatternError, compile_matcher
from extauthz.policy.model import (
    ACTIONS,
    AuthorizationPolicy,
    Condition,
    Operation,
    PolicySet,
    Resource,
    Rule,
    Source,
    Where,
)

API_GROUP = "security.istio.io"
API_VERSIONS = ("v1", "v1beta1")
DRY_RUN_ANNOTATION = "istio.io/dry-run"


class PolicyError(Exception):
    """A policy file that cannot be loaded. ``str()`` reads ``file:line: [resource] reason``."""

    def __init__(self, where: Where, reason: str, resource: str = "") -> None:
        self.where = where
        self.reason = reason
        self.resource = resource
        label = f" {resource}:" if resource else ""
        super().__init__(f"{where}:{label} {reason}")


class _Map(dict[str, Any]):
    """A YAML mapping that remembers the line it started on."""

    line: int = 0


class _Seq(list[Any]):
    line: int = 0


# libyaml's parser when PyYAML has it (ten times faster on large policy sets); the constructors
# below, which record lines and refuse duplicate keys, run either way.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):  # type: ignore[misc]
    """A safe loader that records line numbers and refuses duplicate keys."""


def _construct_map(loader: _StrictLoader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)  # port numbers as keys (portLevelMtls: {8080: ...})
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"mapping key {key!r} is not a string", key_node.start_mark
            )
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
    return out


def _construct_seq(loader: _StrictLoader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


def policy_files(directory: Path) -> list[Path]:
    """The ``*.yaml`` / ``*.yml`` files of ``directory`` (not recursive, hidden files skipped)."""
    if not directory.is_dir():
        raise PolicyError(Where(str(directory), 0), "policy directory does not exist")
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
    )


def load_directory(directory: str | Path, *, root_namespace: str = "istio-system") -> PolicySet:
    """Load every policy file of ``directory``; raise ``PolicyError`` on the first problem."""
    directory = Path(directory)
    files = policy_files(directory)
    docs: list[tuple[str, Any]] = []
    for path in files:
        docs.extend((str(path), doc) for doc in _read_documents(path))
    return build_policy_set(docs, root_namespace=root_namespace, files=[str(f) for f in files])


def load_text(text: str, name: str = "<text>", *, root_namespace: str = "istio-system") -> PolicySet:
    """Load policies from a YAML string (used by tests and ``extauthz test``)."""
    docs = [(name, doc) for doc in _parse_yaml(text, name)]
    return build_policy_set(docs, root_namespace=root_namespace, files=[name])


def _read_documents(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(Where(str(path), 0), f"cannot read file: {exc}") from exc
    return _parse_yaml(text, str(path))


def _parse_yaml(text: str, name: str) -> list[Any]:
    try:
        return [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise PolicyError(Where(name, line), f"YAML error: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(Where(name, 0), f"YAML error: {exc}") from exc
    except RecursionError as exc:  # "[[[[..." a few thousand deep: refuse, don't crash the reload
        raise PolicyError(Where(name, 0), "YAML error: nested too deeply") from exc


def build_policy_set(
    docs: Iterable[tuple[str, Any]], *, root_namespace: str, files: list[str]
) -> PolicySet:
    authz: list[AuthorizationPolicy] = []
    request_authn: list[Resource] = []
    peer_authn: list[Resource] = []
    seen: dict[tuple[str, str, str], Where] = {}
    for file, doc in docs:
        ctx = _Ctx(file, "")
        items: list[Any] = [doc]
        if isinstance(doc, _Map) and doc.get("kind") == "List" and "items" in doc:
            items = _list(ctx, doc, "items", doc["items"])
        for item in items:
            kind, name, namespace, where = _header(_Ctx(file, ""), item)
            key = (kind, namespace, name)
            if key in seen:
                raise PolicyError(
                    where, f"{kind} {namespace}/{name} is also defined at {seen[key]}"
                )
            seen[key] = where
            rctx = _Ctx(file, f"{kind} {namespace}/{name}")
            if kind == "AuthorizationPolicy":
                authz.append(_authorization_policy(rctx, item, name, namespace, where))
            elif kind == "RequestAuthentication":
                request_authn.append(_request_authentication(rctx, item, name, namespace, where))
            else:
                peer_authn.append(_peer_authentication(rctx, item, name, namespace, where))
    return PolicySet(
        authorization=tuple(authz),
        request_authentication=tuple(request_authn),
        peer_authentication=tuple(peer_authn),
        root_namespace=root_namespace,
        files=tuple(files),
    )


class _Ctx:
    """Error context: which file and resource we are reading."""

    def __init__(self, file: str, resource: str) -> None:
        self.file = file
        self.resource = resource

    def error(self, node: Any, reason: str) -> PolicyError:
        return PolicyError(Where(self.file, getattr(node, "line", 0)), reason, self.resource)


def _map(ctx: _Ctx, parent: Any, field: str, value: Any) -> _Map:
    if not isinstance(value, _Map):
        raise ctx.error(parent, f"{field}: expected a mapping, got {_type(value)}")
    return value


def _list(ctx: _Ctx, parent: Any, field: str, value: Any) -> _Seq:
    if not isinstance(value, _Seq):
        raise ctx.error(parent, f"{field}: expected a list, got {_type(value)}")
    return value


def _str(ctx: _Ctx, parent: Any, field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ctx.error(parent, f"{field}: expected a string, got {_type(value)}")
    return value


def _strings(ctx: _Ctx, parent: Any, field: str, value: Any) -> tuple[str, ...]:
    seq = _list(ctx, parent, field, value)
    out = []
    for item in seq:
        if not isinstance(item, str) or not item:
            raise ctx.error(seq, f"{field}: every value must be a non-empty string, got {item!r}")
        out.append(item)
    return tuple(out)


def _type(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _check_fields(ctx: _Ctx, node: _Map, what: str, allowed: Iterable[str]) -> None:
    allowed_set = set(allowed)
    for key in node:
        if key not in allowed_set:
            raise ctx.error(
                node, f"{what}: unknown field {key!r} (known: {', '.join(sorted(allowed_set))})"
            )


def _header(ctx: _Ctx, doc: Any) -> tuple[str, str, str, Where]:
    if not isinstance(doc, _Map):
        raise ctx.error(doc, f"a document must be a mapping, got {_type(doc)}")
    where = Where(ctx.file, doc.line)
    _check_fields(ctx, doc, "resource", ("apiVersion", "kind", "metadata", "spec", "status"))
    api = doc.get("apiVersion")
    group, _, version = str(api).partition("/")
    if group != API_GROUP or version not in API_VERSIONS:
        raise ctx.error(
            doc, f"apiVersion {api!r} is not supported (use {API_GROUP}/v1 or /v1beta1)"
        )
    kind = doc.get("kind")
    if kind not in ("AuthorizationPolicy", "RequestAuthentication", "PeerAuthentication"):
        raise ctx.error(doc, f"kind {kind!r} is not a supported security resource")
    meta = _map(ctx, doc, "metadata", doc.get("metadata"))
    _check_fields(
        ctx,
        meta,
        "metadata",
        (
            "name", "namespace", "annotations", "labels", "uid", "resourceVersion",
            "generation", "creationTimestamp", "managedFields",
        ),
    )
    name = _str(ctx, meta, "metadata.name", meta.get("name"))
    namespace = meta.get("namespace", "")
    if namespace is not None:
        namespace = _str(ctx, meta, "metadata.namespace", namespace)
    if not name:
        raise ctx.error(meta, "metadata.name must not be empty")
    return str(kind), name, namespace or "", where


def _selector(ctx: _Ctx, spec: _Map) -> Mapping[str, str] | None:
    if "selector" not in spec:
        return None
    sel = _map(ctx, spec, "selector", spec["selector"])
    _check_fields(ctx, sel, "selector", ("matchLabels",))
    labels = _map(ctx, sel, "selector.matchLabels", sel.get("matchLabels", _Map()))
    out: dict[str, str] = {}
    for k, v in labels.items():
        out[k] = _str(ctx, labels, f"selector.matchLabels.{k}", v)
    return MappingProxyType(out)


def _dry_run(ctx: _Ctx, doc: _Map) -> bool:
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


def _authorization_policy(
    ctx: _Ctx, doc: _Map, name: str, namespace: str, where: Where
) -> AuthorizationPolicy:
    spec = _map(ctx, doc, "spec", doc.get("spec", _Map()))
    _check_fields(
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
        for raw in _list(ctx, spec, "rules", spec["rules"]):
            rules.append(_rule(ctx, raw))
    return AuthorizationPolicy(
        name=name,
        namespace=namespace,
        action=action,
        rules=tuple(rules),
        selector=_selector(ctx, spec),
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


def _rule(ctx: _Ctx, raw: Any) -> Rule:
    if raw is None:
        raw = _Map()
    rule = _map(ctx, raw, "rules[]", raw)
    _check_fields(ctx, rule, "rule", ("from", "to", "when"))
    # As Istio validates: a present ``from``/``to`` must not be empty, and neither may the
    # ``source``/``operation`` inside (an empty one would silently match anything).
    sources: list[Source] = []
    for entry in _present_list(ctx, rule, "from"):
        entry = _map(ctx, rule, "from[]", entry)
        _check_fields(ctx, entry, "from[]", ("source",))
        if entry.get("source") is None:
            raise ctx.error(entry, "from[].source must be set")
        src = _map(ctx, entry, "from[].source", entry["source"])
        fields = _fields(ctx, src, "source", _SOURCE_FIELDS, _check_source_value)
        if not fields:
            raise ctx.error(src, "from[].source must not be empty")
        sources.append(Source(**fields))
    operations: list[Operation] = []
    for entry in _present_list(ctx, rule, "to"):
        entry = _map(ctx, rule, "to[]", entry)
        _check_fields(ctx, entry, "to[]", ("operation",))
        if entry.get("operation") is None:
            raise ctx.error(entry, "to[].operation must be set")
        op = _map(ctx, entry, "to[].operation", entry["operation"])
        fields = _fields(ctx, op, "operation", _OPERATION_FIELDS, _check_operation_value)
        if not fields:
            raise ctx.error(op, "to[].operation must not be empty")
        operations.append(Operation(**fields))
    conditions = [_condition(ctx, c) for c in _list(ctx, rule, "when", rule.get("when") or _Seq())]
    return Rule(
        sources=tuple(sources),
        operations=tuple(operations),
        conditions=tuple(conditions),
        where=Where(ctx.file, rule.line),
    )


def _present_list(ctx: _Ctx, rule: _Map, field: str) -> _Seq:
    if field not in rule or rule[field] is None:
        return _Seq()
    seq = _list(ctx, rule, field, rule[field])
    if not seq:
        raise ctx.error(rule, f"{field} must not be empty when present (leave it out to match anything)")
    return seq


def _fields(
    ctx: _Ctx,
    node: _Map,
    what: str,
    names: Mapping[str, str],
    check: Callable[[_Ctx, _Map, str, str], None],
) -> dict[str, tuple[str, ...]]:
    _check_fields(ctx, node, what, names)
    out: dict[str, tuple[str, ...]] = {}
    for yaml_name, attr in names.items():
        if yaml_name not in node or node[yaml_name] is None:
            continue
        raw = node[yaml_name]
        if yaml_name in ("ports", "notPorts") and isinstance(raw, list):
            raw = _Seq(str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in raw)
            raw.line = node.line
        values = _strings(ctx, node, f"{what}.{yaml_name}", raw)
        for v in values:
            check(ctx, node, yaml_name, v)
        try:
            compile_matcher(values, paths=yaml_name in ("paths", "notPaths"))
        except PatternError as exc:
            raise ctx.error(node, f"{what}.{yaml_name}: {exc}") from exc
        if values:  # ``paths: []`` constrains nothing: as absent (Istio), never as "match all"
            out[attr] = values
    return out


def _check_source_value(ctx: _Ctx, node: _Map, field: str, value: str) -> None:
    if field in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"):
        _check_cidr(ctx, node, field, value)
    elif field in ("principals", "notPrincipals") and value.startswith("spiffe://"):
        raise ctx.error(
            node, f"source.{field}: write principals without 'spiffe://' ({value[9:]!r})"
        )


def _check_operation_value(ctx: _Ctx, node: _Map, field: str, value: str) -> None:
    if field in ("ports", "notPorts"):
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise ctx.error(node, f"operation.{field}: {value!r} is not a port number")
    elif field in ("paths", "notPaths") and value != "*" and not value.startswith(("/", "*")):
        raise ctx.error(node, f"operation.{field}: {value!r} must start with '/' (or be '*')")


def _check_cidr(ctx: _Ctx, node: Any, field: str, value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ctx.error(node, f"{field}: {value!r} is not an IP address or CIDR block") from exc


def _condition(ctx: _Ctx, raw: Any) -> Condition:
    cond = _map(ctx, raw, "when[]", raw)
    _check_fields(ctx, cond, "when[]", ("key", "values", "notValues"))
    key = _str(ctx, cond, "when[].key", cond.get("key"))
    if not is_known_when_key(key):
        raise ctx.error(cond, f"when: unknown key {key!r}")
    values = _strings(ctx, cond, f"when[{key}].values", cond.get("values") or _Seq())
    not_values = _strings(ctx, cond, f"when[{key}].notValues", cond.get("notValues") or _Seq())
    if not values and not not_values:
        raise ctx.error(cond, f"when[{key}]: needs values or notValues")
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


def _request_authentication(
    ctx: _Ctx, doc: _Map, name: str, namespace: str, where: Where
) -> Resource:
    spec = _map(ctx, doc, "spec", doc.get("spec", _Map()))
    _check_fields(ctx, spec, "spec", ("selector", "jwtRules"))
    for rule in _list(ctx, spec, "jwtRules", spec.get("jwtRules") or _Seq()):
        rule = _map(ctx, spec, "jwtRules[]", rule)
        _check_fields(ctx, rule, "jwtRules[]", _JWT_RULE_FIELDS)
        _jwt_rule(ctx, rule)
    return Resource(
        kind="RequestAuthentication",
        name=name,
        namespace=namespace,
        spec=spec,
        selector=_selector(ctx, spec),
        where=where,
    )


def _jwt_rule(ctx: _Ctx, rule: _Map) -> None:
    """Type-check one ``jwtRules[]`` entry (its semantics live with the token code)."""
    if not _str(ctx, rule, "jwtRules[].issuer", rule.get("issuer")):
        raise ctx.error(rule, "jwtRules[].issuer must not be empty")
    for name in ("jwksUri", "outputPayloadToHeader", "timeout"):
        if name in rule:
            _str(ctx, rule, f"jwtRules[].{name}", rule[name])
    if "jwks" in rule and not isinstance(rule["jwks"], str | dict):
        # Istio writes the JWKS as a JSON string; a YAML mapping is the same document.
        got = _type(rule["jwks"])
        raise ctx.error(rule, f"jwtRules[].jwks: expected a JSON string or a mapping, got {got}")
    if "jwksUri" in rule and "jwks" in rule:
        raise ctx.error(rule, "jwtRules[]: set jwksUri or jwks, not both")
    for name in ("audiences", "fromParams", "fromCookies"):
        if name in rule:
            _strings(ctx, rule, f"jwtRules[].{name}", rule[name])
    if "forwardOriginalToken" in rule and not isinstance(rule["forwardOriginalToken"], bool):
        raise ctx.error(rule, "jwtRules[].forwardOriginalToken: expected true or false")
    for h in _list(ctx, rule, "jwtRules[].fromHeaders", rule.get("fromHeaders") or _Seq()):
        h = _map(ctx, rule, "jwtRules[].fromHeaders[]", h)
        _check_fields(ctx, h, "jwtRules[].fromHeaders[]", ("name", "prefix"))
        if not _str(ctx, h, "jwtRules[].fromHeaders[].name", h.get("name")):
            raise ctx.error(h, "jwtRules[].fromHeaders[].name must not be empty")
        if "prefix" in h:
            _str(ctx, h, "jwtRules[].fromHeaders[].prefix", h["prefix"])
    for o in _list(ctx, rule, "jwtRules[].outputClaimToHeaders", rule.get("outputClaimToHeaders") or _Seq()):
        o = _map(ctx, rule, "jwtRules[].outputClaimToHeaders[]", o)
        _check_fields(ctx, o, "jwtRules[].outputClaimToHeaders[]", ("header", "claim"))
        for name in ("header", "claim"):
            if not _str(ctx, o, f"jwtRules[].outputClaimToHeaders[].{name}", o.get(name)):
                raise ctx.error(o, f"jwtRules[].outputClaimToHeaders[].{name} must not be empty")


_MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


def _peer_authentication(
    ctx: _Ctx, doc: _Map, name: str, namespace: str, where: Where
) -> Resource:
    spec = _map(ctx, doc, "spec", doc.get("spec", _Map()))
    _check_fields(ctx, spec, "spec", ("selector", "mtls", "portLevelMtls"))
    for what, value in (("mtls", spec.get("mtls")), *(
        (f"portLevelMtls.{p}", v)
        for p, v in _map(ctx, spec, "portLevelMtls", spec.get("portLevelMtls") or _Map()).items()
    )):
        port = what.rpartition(".")[2]
        if what != "mtls" and (not port.isdigit() or not 0 < int(port) < 65536):
            raise ctx.error(spec, f"portLevelMtls: {port!r} is not a port number")
        if value is None:
            continue
        m = _map(ctx, spec, what, value)
        _check_fields(ctx, m, what, ("mode",))
        if m.get("mode", "UNSET") not in _MTLS_MODES:
            raise ctx.error(m, f"{what}.mode must be one of {', '.join(_MTLS_MODES)}")
    selector = _selector(ctx, spec)
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
