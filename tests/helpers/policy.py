"""Helpers for policy tests: build a request and an identity, evaluate a policy text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from extauthz.envoy.request import RequestView, from_check_request
from extauthz.identity.model import Identity, Token, try_parse_spiffe_id
from extauthz.policy import Engine, Verdict, compile_policies, load_text
from extauthz.tools.samples import check_request

HEADER = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"


def request(**kw: Any) -> RequestView:
    return from_check_request(check_request(**kw))


def identity(
    principal: str = "spiffe://example.org/ns/shop/sa/frontend",
    token: Mapping[str, Any] | None = None,
) -> Identity:
    tok = None
    if token is not None:
        claims = dict(token)
        aud = claims.get("aud", ())
        tok = Token(
            issuer=str(claims.get("iss", "")),
            subject=str(claims.get("sub", "")),
            audiences=(aud,) if isinstance(aud, str) else tuple(aud),
            presenter=str(claims.get("azp", "")),
            claims=claims,
        )
    return Identity(peer=try_parse_spiffe_id(principal) if principal else None, token=tok)


def engine(text: str, **kw: Any) -> Engine:
    return compile_policies(load_text(text), **kw)


def evaluate(
    eng: Engine, *, token: Mapping[str, Any] | None = None, **req: Any
) -> Verdict:
    r = request(**req)
    return eng.evaluate(r, identity(r.source.principal, token))


def allow_rule(rule_yaml: str, name: str = "p", namespace: str = "istio-system") -> str:
    """An ALLOW policy (everywhere) holding one rule given as YAML indented under ``rules:``."""
    return (
        f"{HEADER}metadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec:\n  action: ALLOW\n  rules:\n{rule_yaml}"
    )


@pytest.fixture
def ev() -> Any:
    return evaluate
