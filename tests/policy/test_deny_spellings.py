"""Where matching more can only deny more, every spelling of an attribute is read.

A DENY's positive fields and an ALLOW's ``not`` fields see a host with and without its port and
trailing dot; a header under every '_'/'-' spelling of its name, joined (``a,b``), element by
element trimmed, and with control characters dropped or cut at; a method in any case. ALLOW's
positive fields and DENY's ``not`` fields keep Istio's exact reading, so nothing is allowed that
Istio would not allow.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers.policy import HEADER, engine, evaluate


def policy(action: str, rule: str) -> str:
    return (
        f"{HEADER}metadata: {{name: p, namespace: istio-system}}\n"
        f"spec:\n  action: {action}\n  rules:\n  - {rule}\n"
        # an ALLOW-everything beside a DENY, so the DENY alone decides
        + (
            f"---\n{HEADER}metadata: {{name: all, namespace: istio-system}}\n"
            "spec:\n  action: ALLOW\n  rules:\n  - {}\n"
            if action == "DENY"
            else ""
        )
    )


HOST_DENY = "{to: [{operation: {hosts: [admin.shop.svc]}}]}"
HEADER_DENY = "{when: [{key: 'request.headers[x-role]', values: [admin]}]}"
CASES: list[tuple[str, str, str, dict[str, Any], bool]] = [
    # DENY hosts: every spelling of the host is caught
    ("deny host exact", "DENY", HOST_DENY, {"authority": "admin.shop.svc"}, False),
    ("deny host with port", "DENY", HOST_DENY, {"authority": "admin.shop.svc:8443"}, False),
    ("deny host trailing dot", "DENY", HOST_DENY, {"authority": "admin.shop.svc."}, False),
    ("deny host dot and port", "DENY", HOST_DENY, {"authority": "ADMIN.shop.svc.:443"}, False),
    ("deny host other", "DENY", HOST_DENY, {"authority": "api.shop.svc:8443"}, True),
    # ALLOW hosts: Istio's exact reading (a port needs its own pattern, or "h:*")
    ("allow host exact", "ALLOW", "{to: [{operation: {hosts: [api.shop.svc]}}]}",
     {"authority": "api.shop.svc"}, True),
    ("allow host with port is not exact", "ALLOW", "{to: [{operation: {hosts: [api.shop.svc]}}]}",
     {"authority": "api.shop.svc:8443"}, False),
    ("allow host:* pattern", "ALLOW", "{to: [{operation: {hosts: ['api.shop.svc:*']}}]}",
     {"authority": "api.shop.svc:8443"}, True),
    # ALLOW notHosts: every spelling is excluded
    ("allow notHosts with port", "ALLOW", "{to: [{operation: {notHosts: [admin.shop.svc]}}]}",
     {"authority": "admin.shop.svc:8443"}, False),
    # DENY when on a repeated header: joined and element by element
    ("deny header single", "DENY", HEADER_DENY, {"headers": {"x-role": "admin"}}, False),
    ("deny header joined first", "DENY", HEADER_DENY, {"headers": {"x-role": "admin,user"}}, False),
    ("deny header joined last", "DENY", HEADER_DENY, {"headers": {"x-role": "user, admin"}}, False),
    ("deny header other", "DENY", HEADER_DENY, {"headers": {"x-role": "user,guest"}}, True),
    # DENY when: a trimmed element, a '_' name, a control character (issue 12)
    ("deny header padded", "DENY", HEADER_DENY, {"headers": {"x-role": " admin "}}, False),
    ("deny header underscore name", "DENY", HEADER_DENY, {"headers": {"x_role": "admin"}}, False),
    ("deny header NUL", "DENY", HEADER_DENY, {"headers": {"x-role": "admin\x00"}}, False),
    ("deny header control inside", "DENY", HEADER_DENY, {"headers": {"x-role": "adm\x01in"}}, False),
    ("deny header prefix padded", "DENY",
     "{when: [{key: 'request.headers[x-role]', values: ['adm*']}]}",
     {"headers": {"x-role": "user,\tadmin"}}, False),
    # ALLOW when: as Istio's regex reads the joined value (an element matches, untrimmed)
    ("allow header joined element", "ALLOW",
     "{when: [{key: 'request.headers[x-role]', values: [admin]}]}",
     {"headers": {"x-role": "user,admin"}}, True),
    ("allow header element with space is not admin", "ALLOW",
     "{when: [{key: 'request.headers[x-role]', values: [admin]}]}",
     {"headers": {"x-role": "user, admin"}}, False),
    ("allow header padded is not admin", "ALLOW",
     "{when: [{key: 'request.headers[x-role]', values: [admin]}]}",
     {"headers": {"x-role": "admin "}}, False),
    ("allow header underscore name is not the header", "ALLOW",
     "{when: [{key: 'request.headers[x-role]', values: [admin]}]}",
     {"headers": {"x_role": "admin"}}, False),
    ("allow header with a control character reads as absent", "ALLOW",
     "{when: [{key: 'request.headers[x-role]', values: ['adm*']}]}",
     {"headers": {"x-role": "adm\x01in"}}, False),
    ("allow header presence with a NUL reads as absent", "ALLOW",
     "{when: [{key: 'request.headers[x-role]', values: ['*']}]}",
     {"headers": {"x-role": "a\x00"}}, False),
    ("deny notValues with a NUL: not the value", "DENY",
     "{when: [{key: 'request.headers[x-role]', notValues: [admin]}]}",
     {"headers": {"x-role": "admin\x00"}}, False),
    ("allow notValues sees a '_' name", "ALLOW",
     "{when: [{key: 'request.headers[x-role]', notValues: [admin]}]}",
     {"headers": {"x_role": "admin"}}, False),
    # methods: ALLOW exact (Envoy compares :method exactly), DENY every case
    ("allow method exact", "ALLOW", "{to: [{operation: {methods: [GET]}}]}", {"method": "GET"}, True),
    ("allow method lower is not GET", "ALLOW", "{to: [{operation: {methods: [GET]}}]}",
     {"method": "get"}, False),
    ("allow method mixed is not GET", "ALLOW", "{to: [{operation: {methods: [GET]}}]}",
     {"method": "Get"}, False),
    ("deny method lower", "DENY", "{to: [{operation: {methods: [DELETE]}}]}", {"method": "delete"}, False),
    ("deny method mixed", "DENY", "{to: [{operation: {methods: [DELETE]}}]}", {"method": "DeLeTe"}, False),
    ("deny written lower catches upper", "DENY", "{to: [{operation: {methods: [delete]}}]}",
     {"method": "DELETE"}, False),
    ("allow notMethods every case", "ALLOW", "{to: [{operation: {notMethods: [DELETE]}}]}",
     {"method": "delete"}, False),
    ("deny notMethods exact", "DENY", "{to: [{operation: {notMethods: [GET]}}]}", {"method": "get"}, False),
    ("allow notValues sees each element", "ALLOW",
     "{when: [{key: 'request.headers[x-role]', notValues: [admin]}]}",
     {"headers": {"x-role": "user,admin"}}, False),
]


@pytest.mark.parametrize(("name", "action", "rule", "req", "allowed"), CASES, ids=[c[0] for c in CASES])
def test_spellings(name: str, action: str, rule: str, req: dict[str, Any], allowed: bool) -> None:
    req = dict(req)
    headers = dict(req.pop("headers", {}))
    if "authority" in req:
        authority = req.pop("authority")
        headers[":authority"] = authority
        req["host"] = authority
    verdict = evaluate(engine(policy(action, rule)), headers=headers, **req)
    assert verdict.allowed is allowed, verdict
