"""A DENY on a host written with its port catches the host's other spellings with that port
(review finding: ``admin.shop.svc.:8443``, trailing dot kept, dodged ``hosts: [admin.shop.svc:8443]``
because only the spelling as sent and the port-less, dot-less one were read)."""

from __future__ import annotations

import pytest
from helpers.policy import engine, evaluate

from .test_deny_spellings import policy

HOST_PORT_DENY = "{to: [{operation: {hosts: ['admin.shop.svc:8443']}}]}"
HOST_PORT_NOT_HOSTS = "{to: [{operation: {notHosts: ['admin.shop.svc:8443']}}]}"


@pytest.mark.parametrize(
    ("action", "rule", "authority", "allowed"),
    [
        ("DENY", HOST_PORT_DENY, "admin.shop.svc:8443", False),
        ("DENY", HOST_PORT_DENY, "admin.shop.svc.:8443", False),
        ("DENY", HOST_PORT_DENY, "ADMIN.shop.svc.:8443", False),
        ("DENY", HOST_PORT_DENY, "admin.shop.svc.:9443", True),
        ("ALLOW", HOST_PORT_NOT_HOSTS, "admin.shop.svc.:8443", False),
        ("ALLOW", HOST_PORT_NOT_HOSTS, "api.shop.svc.:8443", True),
        # ALLOW's positive hosts keep Istio's exact reading
        ("ALLOW", "{to: [{operation: {hosts: ['api.shop.svc:8443']}}]}", "api.shop.svc.:8443", False),
    ],
)
def test_host_with_port_spellings(action: str, rule: str, authority: str, allowed: bool) -> None:
    headers = {":authority": authority}
    verdict = evaluate(engine(policy(action, rule)), headers=headers, host=authority)
    assert verdict.allowed is allowed, verdict
