"""The differential test's policies and requests: for every AuthorizationPolicy field Istio
translates, value sets in every form (exact, prefix, suffix, presence, templates, and the odd
forms Istio loads), each as ALLOW and DENY, positive and ``not``; and requests that match, that
do not, and spelling variants of them (method case, host case/port/trailing dot, header
whitespace / ``_`` names / control characters, path spellings). Request principals and
``request.auth.*`` with requests carrying JWTs (``tokens.py``; no token, valid ones that match or
not, list-valued and nested claims, tokens that fail verification).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .tokens import ISS, NAMES, OTHER_ISS, token

HOST = "svc.example"
FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"
API = "spiffe://example.org/ns/shop/sa/api"
TELLER = "spiffe://example.org/ns/bank/sa/teller"
OTHER_TD = "spiffe://other.org/ns/shop/sa/frontend"
CROSSING = "spiffe://example.org/ns/x/sa/shop/y"  # Istio's namespace regex reaches into the path
EXTRA_SEGMENT = "spiffe://example.org/x/ns/shop/sa/frontend"


@dataclass(frozen=True)
class Req:
    who: str | None = FRONTEND  # the client SVID's SPIFFE ID; None: no client certificate
    method: str = "GET"
    path: str = "/api/items"
    host: str = HOST
    headers: tuple[tuple[str, str], ...] = ()
    sni: str = HOST
    token: str | None = None  # a token's name (tokens.NAMES), sent as ``Authorization: Bearer``
    token_in: str = "bearer"  # or a spelling: one of TOKEN_SPELLINGS

    def sent_path(self) -> str:
        if self.token is None or self.token_in != "param":
            return self.path
        return f"{self.path}{'&' if '?' in self.path else '?'}access_token={token(self.token)}"

    def sent_headers(self) -> tuple[tuple[str, str], ...]:
        if self.token is None or self.token_in == "param":
            return self.headers
        return (*self.headers, ("authorization", TOKEN_SPELLINGS[self.token_in](token(self.token))))


TOKEN_SPELLINGS: dict[str, Callable[[str], str]] = {
    "bearer": lambda t: f"Bearer {t}",
    "lower": lambda t: f"bearer {t}",
    "spaces": lambda t: f"Bearer  {t}",
    "bare": lambda t: t,
    "param": lambda t: "",  # ?access_token=
}
# spellings read differently by extauthz and Envoy's jwt_authn (test_differential's doc)
TOKEN_REFUSED = frozenset({"lower", "bare"})


@dataclass(frozen=True)
class Group:
    """A canonical request and spelling variants of it."""

    canonical: Req
    variants: tuple[Req, ...] = ()


@dataclass
class Case:
    id: str
    fields: frozenset[str]  # FIELD_MATCHERS keys the policy exercises
    policy: dict[str, Any]
    groups: list[Group] = field(default_factory=list)
    # values that are themselves an odd spelling (a lower-case method): extauthz's DENY reads
    # every spelling of them, so even canonical requests only need "extauthz allows => Envoy
    # allows"
    loose: bool = False

    @property
    def action(self) -> str:
        return str(self.policy["spec"]["action"])

    @property
    def negated(self) -> bool:
        """Whether a ``not`` field or ``notValues`` appears in the policy."""
        return "'not" in repr(self.policy["spec"]["rules"])


def _g(canonical: Req, *variants: Req) -> Group:
    return Group(canonical, variants)


def _who(*ids: str | None) -> list[Group]:
    return [_g(Req(who=w)) for w in ids]


PRINCIPAL_GROUPS = _who(FRONTEND, API, TELLER, OTHER_TD, CROSSING, EXTRA_SEGMENT, None)
# serviceAccounts: a DENY also reads a principal with more segments before /ns/NS/sa/SA
SA_GROUPS = [_g(Req(who=FRONTEND), Req(who=EXTRA_SEGMENT)), *_who(API, TELLER, OTHER_TD, None)]


def _headers(*pairs: tuple[str, str]) -> Req:
    return Req(headers=tuple(pairs))


HEADER_GROUPS = [
    _g(_headers(("x-role", "admin")),
       _headers(("x-role", " admin")), _headers(("x-role", "admin ")),
       _headers(("x-role", "user, admin")), _headers(("x-role", "user,\tadmin")),
       _headers(("x_role", "admin")), _headers(("x-role", "adm\x01in")),
       _headers(("x-role", "admin\x00"))),
    _g(_headers(("x-role", "user"), ("x-role", "admin")),  # Envoy joins: "user,admin"
       _headers(("x-role", "user"), ("x_role", "admin"))),
    _g(_headers(("x-role", "administrator")), _headers(("x_role", "administrator"))),
    _g(_headers(("x-role", "user"))),
    _g(_headers(("x-role", ""))),
    _g(_headers(("x-role", "a*n"))),
    _g(_headers()),
]


def _hosts(h: str, *variants: str) -> Group:
    return _g(Req(host=h), *(Req(host=v) for v in variants))


HOST_GROUPS = [
    _hosts(HOST, "SVC.Example", "svc.example:8443", "svc.example.", "Svc.Example.:443"),
    _hosts("api.example", "API.EXAMPLE", "api.example:80"),
    _hosts("svc.other", "svc.other."),
]


def _methods(m: str, *variants: str) -> Group:
    return _g(Req(method=m), *(Req(method=v) for v in variants))


METHOD_GROUPS = [
    _methods("GET", "get", "Get"), _methods("POST", "post"), _methods("DELETE", "delete", "DeLeTe"),
    _methods("PUT"),
]


def _paths(p: str, *variants: str) -> Group:
    return _g(Req(path=p), *(Req(path=v) for v in variants))


PATH_GROUPS = [
    _paths("/api/items", "/api//items", "/api/./items", "/api/%69tems"),
    _paths("/api/items/1"), _paths("/api"), _paths("/api/items?x=1"),
    _paths("/admin/", "/admin//"), _paths("/admin"), _paths("/admin/x/y", "/admin/x%2Fy"),
    _paths("/"), _paths("/a/b/c"), _paths("/a/*/c"), _paths("/a/b/x/c"), _paths("/a/b"),
    _paths("/x/path/template"), _paths("/x/y/path/template"), _paths("/path/template"),
    _paths("/rule-path"), _paths("/a*b"), _paths("/axb"),
]

TOKEN_GROUPS = [_g(Req(token=t), *(Req(token=t, token_in=w) for w in TOKEN_SPELLINGS
                                     if w != "bearer" and t in ("alice", "bob")))
                for t in (*NAMES, None)]
SNI_GROUPS = [_g(Req(sni=s)) for s in (HOST, "api.example", "svc.other")]
ONE = [_g(Req()), _g(Req(who=None))]

# field (as the policy writes it) -> (where it goes, value sets, requests)
SOURCE: dict[str, tuple[list[list[str]], list[Group]]] = {
    "principals": ([["example.org/ns/shop/sa/frontend"], ["example.org/ns/shop/*"],
                    ["*/sa/frontend"], ["*"], ["spiffe://example.org/ns/shop/sa/frontend"],
                    ["example.org/*/sa/frontend"], ["example.org/ns/shop/sa/api", "*/sa/teller"]],
                   PRINCIPAL_GROUPS),
    "namespaces": ([["shop"], ["sh*"], ["*nk"], ["*"], ["s*p"], ["*op"], ["bank", "x"]],
                   PRINCIPAL_GROUPS),
    "serviceAccounts": ([["frontend"], ["shop/frontend"], ["bank/teller", "api"], ["shop/*"]],
                        SA_GROUPS),
    "trustDomains": ([["example.org"], ["*.org"], ["example.*"], ["ex*.org"], ["*"],
                      ["other.org"]], PRINCIPAL_GROUPS),
    "ipBlocks": ([["127.0.0.1"], ["127.0.0.0/8"], ["10.0.0.0/8"], ["::1/128"]], ONE),
    "remoteIpBlocks": ([["127.0.0.1"], ["127.0.0.0/8"], ["10.0.0.0/8"]], ONE),
}
OPERATION: dict[str, tuple[list[list[str]], list[Group]]] = {
    "hosts": ([[HOST], ["*.example"], ["svc.*"], ["*"], ["SVC.Example"], ["s*c.example"],
               ["svc.example:*"], ["api.example", "svc.other"]], HOST_GROUPS),
    "methods": ([["GET"], ["GET", "POST"], ["G*"], ["*ET"], ["*"], ["get"], ["D*"]],
                METHOD_GROUPS),
    "paths": ([["/api/items"], ["/api/*"], ["*/items"], ["*"], ["/admin/{**}"], ["/{**}"],
               ["/a/{*}/c"], ["/a/{*}"], ["/{**}/path/template"], ["rule-path"], ["/a*b"],
               ["/admin", "/admin/*"]], PATH_GROUPS),
    "ports": ([["{port}"], ["1"]], ONE),
}
# request principals (iss/sub): exact, prefix and suffix within iss, within sub and across the
# '/', a sub with a '/' in it, a literal '*', a value without '/' (never matches)
REQUEST_PRINCIPALS = [[f"{ISS}/alice"], [f"{ISS}/*"], ["*/alice"], ["*"], ["https://auth.*"],
                      ["*.example/alice"], ["*ice"], [f"{ISS}/al*ce"], [f"{ISS}/svc/*"],
                      ["*/worker"], [f"{ISS}/alice", f"{ISS}/bob"], [f"{OTHER_ISS}/alice"],
                      ["alice"], ["*//auth.example/dave"]]
SOURCE["requestPrincipals"] = (REQUEST_PRINCIPALS, TOKEN_GROUPS)
WHEN: dict[str, tuple[list[list[str]], list[Group]]] = {
    "request.headers[x-role]": ([["admin"], ["adm*"], ["*min"], ["*"], ["a*n"],
                                 ["user", "admin"]], HEADER_GROUPS),
    "source.ip": ([["127.0.0.1"], ["10.0.0.0/8"]], ONE),
    "remote.ip": ([["127.0.0.0/8"], ["10.0.0.0/8"]], ONE),
    "source.namespace": ([["shop"], ["sh*"], ["*"]], PRINCIPAL_GROUPS),
    "source.principal": ([["example.org/ns/shop/sa/frontend"], ["*/sa/teller"], ["*"]],
                         PRINCIPAL_GROUPS),
    "destination.ip": ([["127.0.0.1"], ["10.0.0.0/8"]], ONE),
    "destination.port": ([["{port}"], ["1"]], ONE),
    "connection.sni": ([[HOST], ["*.example"], ["svc.*"], ["*"]], SNI_GROUPS),
    "request.auth.principal": ([[f"{ISS}/alice"], ["*/bob"], ["*"], [f"{ISS}/svc/*"]],
                               TOKEN_GROUPS),
    "request.auth.audiences": ([["api.shop"], ["api.*"], ["*.shop"], ["*"], ["web.shop", "x"]],
                               TOKEN_GROUPS),
    "request.auth.presenter": ([["frontend-app"], ["front*"], ["*"], ["*end"]], TOKEN_GROUPS),
    "request.auth.claims[groups]": ([["admin"], ["adm*"], ["*"], ["dev", "x"], ["*in"]],
                                    TOKEN_GROUPS),
    "request.auth.claims[org][team]": ([["payments"], ["pay*"], ["*"]], TOKEN_GROUPS),
    "request.auth.claims[role]": ([["admin"], ["user"]], TOKEN_GROUPS),
}
# the fields that read the request's token: their cases get a RequestAuthentication
JWT_FIELDS = frozenset({"requestPrincipals", "request.auth.principal", "request.auth.audiences",
                        "request.auth.presenter", "request.auth.claims"})


LOOSE = {("get",)}


def _not(name: str) -> str:
    return "not" + name[0].upper() + name[1:]


def _policy(name: str, action: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"action": action, "rules": rules},
    }


def _subst(values: Sequence[str], port: int) -> list[str]:
    return [v.replace("{port}", str(port)) for v in values]


def field_cases(port: int) -> Iterator[Case]:
    n = 0
    for where, table in (("source", SOURCE), ("operation", OPERATION), ("when", WHEN)):
        for name, (value_sets, groups) in table.items():
            family = name.partition("[")[0]
            for values in value_sets:
                vals = _subst(values, port)
                for action in ("ALLOW", "DENY"):
                    for negate in (False, True):
                        if where == "when":
                            cond = {"key": name, ("notValues" if negate else "values"): vals}
                            rule: dict[str, Any] = {"when": [cond]}
                        else:
                            key = _not(name) if negate else name
                            section = "from" if where == "source" else "to"
                            rule = {section: [{where: {key: vals}}]}
                        yield Case(str(n), frozenset({family}), _policy(f"c{n}", action, [rule]),
                                   list(groups), loose=tuple(values) in LOOSE)
                        n += 1


COMPOSITE_RULES: list[list[dict[str, Any]]] = [
    # from: any source; to: any operation; every when; two rules (any)
    [{"from": [{"source": {"principals": ["example.org/ns/shop/sa/frontend"]}},
               {"source": {"namespaces": ["bank"]}}],
      "to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"]}},
             {"operation": {"methods": ["POST"], "notPaths": ["/admin/{**}"]}}],
      "when": [{"key": "request.headers[x-role]", "notValues": ["guest"]}]}],
    [{"to": [{"operation": {"paths": ["/admin/{**}"]}}]},
     {"from": [{"source": {"notNamespaces": ["shop"]}}]}],
    [{"from": [{"source": {"namespaces": ["shop"], "notPrincipals": ["*/sa/api"]}}],
      "to": [{"operation": {"hosts": [HOST], "notMethods": ["DELETE"]}}]}],
    [{}],
]


def composite_groups() -> list[Group]:
    out: list[Group] = []
    for who in (FRONTEND, API, TELLER, None):
        for method, path in (("GET", "/api/items"), ("POST", "/api/orders"), ("POST", "/admin/x"),
                             ("DELETE", "/api/items"), ("GET", "/admin/")):
            base = Req(who=who, method=method, path=path)
            out.append(_g(base, replace(base, method=method.lower()),
                          replace(base, host="SVC.example:443")))
        out.append(_g(Req(who=who, headers=(("x-role", "guest"),)),
                      Req(who=who, headers=(("x_role", "guest"),)),
                      Req(who=who, headers=(("x-role", "admin, guest"),))))
    return out


JWT_COMPOSITE_RULES: list[list[dict[str, Any]]] = [
    # a request principal and a peer principal; two token conditions (all)
    [{"from": [{"source": {"requestPrincipals": [f"{ISS}/*"],
                           "principals": ["example.org/ns/shop/sa/frontend"]}}],
      "when": [{"key": "request.auth.claims[groups]", "values": ["admin"]},
               {"key": "request.auth.audiences", "notValues": ["web.shop"]}]}],
    # Istio's "require a JWT" on some paths
    [{"from": [{"source": {"notRequestPrincipals": ["*"]}}],
      "to": [{"operation": {"paths": ["/admin/{**}"]}}]}],
]


def jwt_composite_groups() -> list[Group]:
    return [_g(Req(who=who, path=path, token=t)) for who in (FRONTEND, API)
            for path in ("/api/items", "/admin/x") for t in (*NAMES, None)]


def all_cases(port: int) -> list[Case]:
    cases = list(field_cases(port))
    for table, groups in ((COMPOSITE_RULES, composite_groups()),
                          (JWT_COMPOSITE_RULES, jwt_composite_groups())):
        for rules in table:
            for action in ("ALLOW", "DENY"):
                n = len(cases)
                cases.append(Case(str(n), frozenset(_families(rules)),
                                  _policy(f"c{n}", action, rules), groups))
    return cases


def _families(rules: list[dict[str, Any]]) -> set[str]:
    out: set[str] = set()
    for r in rules:
        for part in (*(f["source"] for f in r.get("from", [])),
                     *(t["operation"] for t in r.get("to", []))):
            for k in part:
                out.add(k[3].lower() + k[4:] if k.startswith("not") else k)
        out.update(c["key"].partition("[")[0] for c in r.get("when", []))
    return out
