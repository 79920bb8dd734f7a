"""Shared pieces of the decision-layer tests: a policy, a clock, a stand-in token identity."""

from __future__ import annotations

from collections.abc import Callable

from extauthz.envoy.request import RequestView
from extauthz.identity.model import Identity, Token, establish
from extauthz.identity.resolver import Resolution
from extauthz.policy import PolicySet

# Rules read: the peer, the token principal, method, path, host and the header x-tenant.
POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-to-api, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/api/*"], hosts: ["api.shop.svc"]}}]
    when: [{key: "request.headers[x-tenant]", values: ["acme"]}]
  - from: [{source: {requestPrincipals: ["https://issuer.example/alice"]}}]
    to: [{operation: {paths: ["/tokens/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/api/admin*"]}}]
"""


NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fake_token_identity(req: RequestView) -> Identity:
    """Stand-in for token validation: ``authorization: Bearer ISS|SUB|EXP`` is taken as valid.

    It reads exactly what a real validator reads (the authorization header), so the cache must
    tell tokens apart the same way.
    """
    base = establish(req)
    cert = req.source.certificate
    if cert.startswith("notafter="):  # stand-in for a verified peer certificate
        base = Identity(peer=base.peer, peer_verified=True, peer_not_after=float(cert[9:]))
    auth = req.headers.get("authorization", "")
    if not auth.startswith("Bearer "):
        return base
    iss, sub, exp = auth[len("Bearer ") :].split("|")
    token = Token(issuer=iss, subject=sub, expires_at=float(exp), fingerprint="fp-" + sub)
    return Identity(
        peer=base.peer,
        peer_verified=base.peer_verified,
        peer_not_after=base.peer_not_after,
        token=token,
    )


class FakeResolver:
    """The identity step with ``fake_token_identity`` in place of token and certificate checks."""

    def resolve(self, req: RequestView, now: float | None = None) -> Resolution:
        identity = fake_token_identity(req)
        if req.source.principal and identity.peer is None:
            return Resolution(identity, 403, "invalid_peer_identity", error="not a SPIFFE ID")
        return Resolution(identity)


def fake_resolver(self: object, policies: PolicySet) -> FakeResolver:
    """Patched over ``IdentityContext.resolver``."""
    return FakeResolver()


# Faults injected into a check go through ``IdentityContext.resolver``, never by replacing a
# function of pipeline.py or decision.py: in the compiled build (``make compiled``) those call each
# other directly and a monkeypatched module attribute is not seen. identity/resolver.py stays
# Python there (extauthz/compiled.py), so a patched ``IdentityContext.resolver`` always is.


class ExplodingResolver:
    """The identity step raising ``error``: an internal fault inside ``decide``."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def resolve(self, req: RequestView, now: float | None = None) -> Resolution:
        self.calls += 1
        raise self.error


class UnrenderableResolver:
    """An allowed identity with an upstream header whose value cannot be encoded (a lone
    surrogate, as a JSON-decoded token claim may hold): rendering the response raises."""

    def resolve(self, req: RequestView, now: float | None = None) -> Resolution:
        return Resolution(fake_token_identity(req), headers=(("x-claim", "\ud800"),))


def resolver_patch(resolver: object) -> Callable[[object, PolicySet], object]:
    """``monkeypatch.setattr(IdentityContext, "resolver", resolver_patch(r))``: every check
    resolves its identity with ``r``."""
    return lambda self, policies: resolver
