"""AuthorizationPolicy -> Envoy RBAC, as Istio translates it (independent of extauthz's code).

The reference is Istio's builder test data, ``pilot/pkg/security/authz/builder/testdata/http/``
in istio/istio (each ``*-in.yaml`` policy beside the ``*-out.yaml`` RBAC Istio generates; Istio
1.2x), e.g. ``allow-full-rule-in.yaml`` / ``-out.yaml``: one RBAC policy per rule; ``from``,
``to`` and ``when`` become permissions (``and_rules`` of ``or_rules``) and principals
(``and_ids`` of ``or_ids``); a ``notX`` field becomes ``not_rule``/``not_id`` around an ``or`` of
its values. Value forms follow Istio's ``matcher.StringMatcherWithPrefix``: ``*`` -> safe_regex
``.+`` (present_match for headers), ``*x`` -> suffix, ``x*`` -> prefix, anything else exact.

Request principals and ``request.auth.*`` are an approximation: Istio matches them against the
metadata of its own ``istio_authn`` filter (``request.auth.principal`` = ``iss/sub`` as one
string, every claim as a list of strings); plain Envoy has only ``envoy.filters.http.jwt_authn``,
whose ``payload_in_metadata`` puts the verified payload, as the token wrote it, under
``envoy.filters.http.jwt_authn`` / ``payload``. So (``jwt_authn`` RBAC metadata matchers):

- ``requestPrincipals``/``request.auth.principal`` ``ISS/SUB``: ``iss/sub`` is no single string
  there. A value is matched as Istio's string match on ``iss + "/" + sub`` would match it, split
  at each ``/`` it could straddle: exact ``A/B`` -> OR over the ``/`` in the value of
  (``iss`` exact A AND ``sub`` exact B); prefix ``P*`` -> ``iss`` prefix P, or OR over the ``/``
  in P of (``iss`` exact left AND ``sub`` prefix right, no ``sub`` test when right is empty);
  suffix ``*S`` -> ``sub`` suffix S, or OR over the ``/`` in S of (``iss`` suffix left, none when
  empty, AND ``sub`` exact right); ``*`` -> ``iss`` present (every verified token has one); a
  value without ``/`` never matches. Every form is expressible this way.
- ``request.auth.claims[a][b]`` -> path ``payload/a/b``; Istio's builder data has ``list_match``
  ``one_of`` (istio_authn stores each claim as a list), jwt_authn keeps a string claim a string:
  OR of ``list_match`` one_of and ``string_match``. ``request.auth.audiences`` -> ``aud`` (a string
  or a list, likewise), ``request.auth.presenter`` -> ``azp``.
- Istio puts them on the principal side (``metadata`` principals); so does this translation.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import Any

Json = dict[str, Any]
JWT_FILTER = "envoy.filters.http.jwt_authn"
PAYLOAD = "payload"  # jwt_authn's payload_in_metadata


def string_match(v: str, prefix: str = "") -> Json:
    """Istio's StringMatcherWithPrefix."""
    if v == "*":
        return {"safe_regex": {"regex": ".+"}}
    if v.startswith("*"):
        if prefix:
            return {"safe_regex": {"regex": prefix + ".*" + re.escape(v[1:])}}
        return {"suffix": v[1:]}
    if v.endswith("*"):
        return {"prefix": prefix + v[:-1]}
    return {"exact": prefix + v}


def header(name: str, v: str, *, ignore_case: bool = False) -> Json:
    """Istio's HeaderMatcher / HostMatcher (``:authority`` with ignore_case)."""
    if v == "*":
        return {"header": {"name": name, "present_match": True}}
    m = string_match(v)
    if ignore_case:
        m["ignore_case"] = True
    return {"header": {"name": name, "string_match": m}}


def header_values(name: str, v: str) -> Json:
    """``request.headers[name]``: any comma-separated element of the joined value."""
    if v == "*":
        return {"header": {"name": name, "present_match": True}}
    q = re.escape
    if v.startswith("*"):
        regex = f".*{q(v[1:])}$|.*{q(v[1:])},.*"
    elif v.endswith("*"):
        regex = f"^{q(v[:-1])}.*|.*,{q(v[:-1])}.*"
    else:
        regex = f"^{q(v)}$|^{q(v)},.*|.*,{q(v)},.*|.*,{q(v)}$"
    return {"header": {"name": name, "string_match": {"safe_regex": {"regex": regex}}}}


def path(v: str) -> Json:
    if "{*}" in v or "{**}" in v:  # Envoy's uri_template: {*} -> *, {**} -> **
        return {"uri_template": {
            "name": "uri-template",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3"
                         ".UriTemplateMatchConfig",
                "path_template": v.replace("{**}", "**").replace("{*}", "*"),
            },
        }}
    return {"url_path": {"path": string_match(v)}}


def cidr(v: str) -> Json:
    net = ipaddress.ip_network(v, strict=False)
    return {"address_prefix": str(net.network_address), "prefix_len": net.prefixlen}


def principal(v: str) -> Json:
    return {"authenticated": {"principal_name": string_match(v, "spiffe://")}}


def regex_principal(regex: str) -> Json:
    return {"authenticated": {"principal_name": {"safe_regex": {"regex": regex}}}}


def namespace(v: str) -> Json:
    return regex_principal(f".*/ns/{v.replace('*', '.*')}/.*")


def service_account(v: str, policy_ns: str) -> Json:
    ns, _, sa = v.rpartition("/")
    return regex_principal(f"spiffe://[^/]+/ns/{re.escape(ns or policy_ns)}/sa/{re.escape(sa)}")


def trust_domain(v: str) -> Json:
    td = "[^/]+" if v == "*" else "[^/]*".join(re.escape(p) for p in v.split("*"))
    return regex_principal(f"spiffe://{td}/.*")


def _payload(path: Sequence[str], value: Json) -> Json:
    return {"metadata": {"filter": JWT_FILTER, "path": [{"key": k} for k in (PAYLOAD, *path)],
                         "value": value}}


def _claim_is(name: str, m: Json) -> Json:
    return _payload([name], {"string_match": m})


def request_principal(v: str) -> Json:
    """Istio's string match on ``iss/sub``, as matchers on ``iss`` and ``sub`` (module doc)."""
    if v == "*":
        return _claim_is("iss", {"safe_regex": {"regex": ".+"}})
    cuts = [i for i, c in enumerate(v) if c == "/"]
    alts: list[Json] = []
    if v.startswith("*"):
        s = v[1:]
        alts.append(_claim_is("sub", {"suffix": s}))
        for k in (i - 1 for i in cuts):
            left, right = s[:k], s[k + 1:]
            sub = _claim_is("sub", {"exact": right})
            alts.append(_and("i", [_claim_is("iss", {"suffix": left}), sub] if left else [sub]))
    elif v.endswith("*"):
        p = v[:-1]
        alts.append(_claim_is("iss", {"prefix": p}))
        for k in cuts:
            left, right = p[:k], p[k + 1:]
            iss = _claim_is("iss", {"exact": left})
            alts.append(_and("i", [iss, _claim_is("sub", {"prefix": right})] if right else [iss]))
    else:
        for k in cuts:
            alts.append(_and("i", [_claim_is("iss", {"exact": v[:k]}),
                                   _claim_is("sub", {"exact": v[k + 1:]})]))
    return _or("i", alts) if alts else {"not_id": {"any": True}}


def claim(path: Sequence[str], v: str) -> Json:
    """A claim (a string or a list of strings) as Istio's list matcher reads it."""
    m = string_match(v)
    return _or("i", [_payload(path, {"list_match": {"one_of": {"string_match": m}}}),
                     _payload(path, {"string_match": m})])


# field -> (side, value -> matcher); side "p": permission, "i": principal (identity)
def _fields(ns: str) -> dict[str, tuple[str, Callable[[str], Json]]]:
    return {
        "hosts": ("p", lambda v: header(":authority", v, ignore_case=True)),
        "methods": ("p", lambda v: header(":method", v)),
        "paths": ("p", path),
        "ports": ("p", lambda v: {"destination_port": int(v)}),
        "principals": ("i", principal),
        "namespaces": ("i", namespace),
        "serviceAccounts": ("i", lambda v: service_account(v, ns)),
        "trustDomains": ("i", trust_domain),
        "ipBlocks": ("i", lambda v: {"direct_remote_ip": cidr(v)}),
        "remoteIpBlocks": ("i", lambda v: {"remote_ip": cidr(v)}),
        "source.ip": ("i", lambda v: {"direct_remote_ip": cidr(v)}),
        "remote.ip": ("i", lambda v: {"remote_ip": cidr(v)}),
        "source.namespace": ("i", namespace),
        "source.principal": ("i", principal),
        "destination.ip": ("p", lambda v: {"destination_ip": cidr(v)}),
        "destination.port": ("p", lambda v: {"destination_port": int(v)}),
        "connection.sni": ("p", lambda v: {"requested_server_name": string_match(v)}),
        "requestPrincipals": ("i", request_principal),
        "request.auth.principal": ("i", request_principal),
        "request.auth.audiences": ("i", lambda v: claim(["aud"], v)),
        "request.auth.presenter": ("i", lambda v: _claim_is("azp", string_match(v))),
    }


def _or(side: str, items: Sequence[Json]) -> Json:
    if len(items) == 1:
        return items[0]
    return {"or_rules": {"rules": list(items)}} if side == "p" else {"or_ids": {"ids": list(items)}}


def _and(side: str, items: Sequence[Json]) -> Json:
    if not items:
        return {"any": True}
    if len(items) == 1:
        return items[0]
    return {"and_rules": {"rules": list(items)}} if side == "p" else {"and_ids": {"ids": list(items)}}


def _not(side: str, item: Json) -> Json:
    return {"not_rule": item} if side == "p" else {"not_id": item}


def _field_matchers(fields: dict[str, Any], ns: str) -> tuple[list[Json], list[Json], str]:
    """The matchers of one source/operation: (permissions, principals, side)."""
    table = _fields(ns)
    perms: list[Json] = []
    ids: list[Json] = []
    side = "p"
    for name, values in fields.items():
        positive = name[3].lower() + name[4:] if name.startswith("not") else name
        side, make = table[positive]
        m = _or(side, [make(v) for v in values])
        (perms if side == "p" else ids).append(_not(side, m) if positive != name else m)
    return perms, ids, side


def _condition(cond: dict[str, Any], ns: str) -> tuple[str, Json]:
    key = cond["key"]
    make: Callable[[str], Json]
    if key.startswith("request.headers["):
        side, make = "p", functools.partial(header_values, key[16:-1])
    elif key.startswith("request.auth.claims["):
        side, make = "i", functools.partial(claim, key[len("request.auth.claims["):-1].split("]["))
    else:
        side, make = _fields(ns)[key]
    parts = []
    if cond.get("values"):
        parts.append(_or(side, [make(v) for v in cond["values"]]))
    if cond.get("notValues"):
        parts.append(_not(side, _or(side, [make(v) for v in cond["notValues"]])))
    return side, _and(side, parts)


def rbac(policy: dict[str, Any]) -> Json:
    """The RBAC filter ``rules`` for one AuthorizationPolicy (action ALLOW or DENY)."""
    spec = policy["spec"]
    ns = policy["metadata"].get("namespace", "")
    out: dict[str, Json] = {}
    for i, rule in enumerate(spec.get("rules") or []):
        rule = rule or {}
        perms: list[Json] = []
        ids: list[Json] = []
        if rule.get("to"):
            perms.append(_or("p", [_and("p", _field_matchers(t["operation"], ns)[0])
                                   for t in rule["to"]]))
        if rule.get("from"):
            ids.append(_or("i", [_and("i", _field_matchers(f["source"], ns)[1])
                                 for f in rule["from"]]))
        for cond in rule.get("when") or []:
            side, m = _condition(cond, ns)
            (perms if side == "p" else ids).append(m)
        out[f"ns[{ns}]-policy[{policy['metadata']['name']}]-rule[{i}]"] = {
            "permissions": [_and("p", perms)],
            "principals": [_and("i", ids)],
        }
    return {"action": spec.get("action", "ALLOW"), "policies": out}
