"""401 or 403 for a denied request without a token: 401 (with ``WWW-Authenticate``) only when
some token valid for an in-scope RequestAuthentication would turn the decision into an allow,
DENY policies included (Istio's "require a JWT": a DENY with ``notRequestPrincipals: ["*"]``);
otherwise 403, as Istio answers."""

from __future__ import annotations

import pytest
from helpers.identity import (
    ISSUER,
    bearer,
    bundles_of,
    cert_field,
    claims,
    inline_rule,
    mint,
    request_authn,
    resolver,
    view,
)

from extauthz.decision.cache import DecisionCache
from extauthz.devenv.ca import issue_svid, make_ca
from extauthz.identity.bundles import BundleSet
from extauthz.identity.resolver import IdentityContext
from extauthz.identity.witness import MAX_CANDIDATES, TokenWants
from extauthz.pipeline import CheckCore, Decision, decide
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request

RA = request_authn(inline_rule())  # root namespace: applies everywhere
FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"


def _policy(action: str, rules: str, name: str = "p", namespace: str = "shop") -> str:
    return f"""
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  action: {action}
  rules: {rules}
"""


def _decide(text: str, path: str = "/x", *, bind: bool = False, **kw: object) -> Decision:
    r = resolver(text, bundles_of(CA) if "certificate" in kw else BundleSet(), bind=bind)
    return decide(compile_policies(load_text(text)), view(path=path, **kw), r)


def _status(text: str, path: str = "/x", **kw: object) -> tuple[int, str]:
    d = _decide(text, path, **kw)
    if d.status == 401:
        assert d.challenge == 'Bearer realm="extauthz"'  # RFC 6750: no error code
    else:
        assert d.challenge is None
    return d.status, d.reason


def _rule(field: str, values: str, path: str = "") -> str:
    """One rule: ``from`` with one source field and, if given, ``to`` one path."""
    to = f', to: [{{operation: {{paths: ["{path}"]}}}}]' if path else ""
    return f"{{from: [{{source: {{{field}: [{values}]}}}}]{to}}}"


def _rp(*values: str) -> str:
    """``[rule]`` with ``requestPrincipals: values``."""
    return "[" + _rule("requestPrincipals", ", ".join(f'"{v}"' for v in values)) + "]"


def _when(*conditions: tuple[str, str]) -> str:
    return "[{when: [" + ", ".join(f'{{key: "{k}", values: ["{v}"]}}' for k, v in conditions) + "]}]"


CA = make_ca("example.org")

ANY_TOKEN_ON_JWT = _policy("ALLOW", "[" + _rule("requestPrincipals", '"*"', "/jwt/*") + "]")
FRONTEND_ANYWHERE = _policy("ALLOW", "[" + _rule("principals", f'"{FRONTEND[9:]}"') + "]", "fe")
REQUIRE_JWT_ON_SECURE = _policy(
    "DENY", "[" + _rule("notRequestPrincipals", '"*"', "/secure/*") + "]", "require-jwt"
)
GROUPS_ADMIN = _when(("request.auth.claims[groups]", "admin"))
DRY_RUN = 'metadata: {name: p, namespace: shop, annotations: {"istio.io/dry-run": "true"}}'


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        # The only rule that reads a token is on another path: no token helps.
        (RA + ANY_TOKEN_ON_JWT, "/other", (403, "no_matching_policy")),
        (RA + ANY_TOKEN_ON_JWT, "/jwt/x", (401, "authentication_required")),
        # Istio's "require a JWT" DENY: a token lifts it, and an ALLOW that reads none matches.
        (RA + FRONTEND_ANYWHERE + REQUIRE_JWT_ON_SECURE, "/secure/x", (401, "authentication_required")),
        (RA + FRONTEND_ANYWHERE + REQUIRE_JWT_ON_SECURE, "/open", (200, "allowed")),
        # ... but not when nothing would allow the request anyway.
        (RA + REQUIRE_JWT_ON_SECURE, "/secure/x", (403, "denied_by_policy")),
        # A DENY on every token holder: a token never helps.
        (
            RA + ANY_TOKEN_ON_JWT
            + _policy("DENY", '[{from: [{source: {requestPrincipals: ["*"]}}]}]', "no-tokens"),
            "/jwt/x",
            (403, "no_matching_policy"),
        ),
        # A request principal no in-scope issuer can produce.
        (RA + _policy("ALLOW", _rp("https://elsewhere/*")), "/x", (403, "no_matching_policy")),
        (RA + _policy("ALLOW", _rp(f"{ISSUER}/alice")), "/x", (401, "authentication_required")),
        (RA + _policy("ALLOW", _rp(f"{ISSUER}/adm*")), "/x", (401, "authentication_required")),
        (RA + _policy("ALLOW", _rp("*/alice")), "/x", (401, "authentication_required")),
        # Claims, audiences, presenter.
        (RA + _policy("ALLOW", GROUPS_ADMIN), "/x", (401, "authentication_required")),
        (
            RA + _policy("ALLOW", _when(
                ("request.auth.claims[org][team]", "blue*"),
                ("request.auth.audiences", "billing"),
                ("request.auth.presenter", "web-app"),
            )),
            "/x",
            (401, "authentication_required"),
        ),
        # The claim that an ALLOW needs is exactly what a DENY refuses: no token helps.
        (
            RA + _policy("ALLOW", GROUPS_ADMIN) + _policy("DENY", GROUPS_ADMIN, "d"),
            "/x",
            (403, "no_matching_policy"),
        ),
        # A DENY that spares one principal, in front of an ALLOW that reads no token.
        (
            RA + FRONTEND_ANYWHERE
            + _policy("DENY", "[" + _rule("notRequestPrincipals", f'"{ISSUER}/ops"') + "]", "only-ops"),
            "/x",
            (401, "authentication_required"),
        ),
        # No RequestAuthentication in scope: a token could not even be validated.
        (
            request_authn(inline_rule(), namespace="other") + ANY_TOKEN_ON_JWT,
            "/jwt/x",
            (403, "no_matching_policy"),
        ),
        (ANY_TOKEN_ON_JWT, "/jwt/x", (403, "no_matching_policy")),
        # A dry-run ALLOW does not count.
        (
            RA + ANY_TOKEN_ON_JWT.replace("metadata: {name: p, namespace: shop}", DRY_RUN),
            "/jwt/x",
            (403, "no_matching_policy"),
        ),
    ],
)
def test_401_only_when_a_token_could_allow(text: str, path: str, expected: tuple[int, str]) -> None:
    assert _status(text, path) == expected


def test_the_401_of_a_deny_names_the_policy() -> None:
    d = _decide(RA + FRONTEND_ANYWHERE + REQUIRE_JWT_ON_SECURE, "/secure/x")
    assert d.status == 401 and d.policy == "shop/require-jwt" and d.rule == 0


def test_a_token_found_by_the_search_is_really_allowed() -> None:
    # The 401 is a promise: the token the search would present, minted for real, is allowed.
    text = RA + _policy("ALLOW", _rp(f"{ISSUER}/alice"))
    assert _status(text) == (401, "authentication_required")
    d = _decide(text, headers=bearer(mint(claims(sub="alice"))))
    assert d.allowed, d


def test_tokens_bound_to_the_peer() -> None:
    # bind_token_to_peer: a token's sub must be the verified peer; a rule that wants another
    # subject can never be satisfied, one that wants any token can.
    cert = cert_field(issue_svid(CA, FRONTEND))
    alice = RA + _policy("ALLOW", _rp(f"{ISSUER}/alice"))
    assert _status(alice, bind=True, certificate=cert) == (403, "no_matching_policy")
    any_token = RA + _policy("ALLOW", _rp("*"))
    assert _status(any_token, bind=True, certificate=cert) == (401, "authentication_required")
    peer = RA + _policy("ALLOW", _rp(f"{ISSUER}/{FRONTEND}"))
    assert _status(peer, bind=True, certificate=cert) == (401, "authentication_required")
    # Without a verified peer no token can be bound: 403.
    assert _status(peer, bind=True) == (403, "no_matching_policy")


def test_jwt_svid_rule_needs_a_spiffe_subject() -> None:
    svid_ra = request_authn('{issuer: "spiffe://example.org", audiences: ["api.shop"]}')
    assert _status(svid_ra + _policy("ALLOW", _rp("*"))) == (401, "authentication_required")
    want_user = _policy("ALLOW", _rp("spiffe://example.org/alice"))
    assert _status(svid_ra + want_user) == (403, "no_matching_policy")  # sub must be a SPIFFE ID


def test_search_is_bounded() -> None:
    # Many token-reading ALLOW rules, none of which this request's path reaches.
    rules = ", ".join(_rule("requestPrincipals", f'"{ISSUER}/u{i}"', f"/p{i}") for i in range(200))
    wants = TokenWants(load_text(RA + _policy("ALLOW", f"[{rules}]")))
    tokens = list(wants.candidates(view(path="/elsewhere")))
    assert len(tokens) > MAX_CANDIDATES  # more candidates than the search tries...
    assert _status(RA + _policy("ALLOW", f"[{rules}]"), "/elsewhere") == (403, "no_matching_policy")
    assert _status(RA + _policy("ALLOW", f"[{rules}]"), "/p3") == (401, "authentication_required")


def test_check_core_caches_the_401_and_answers_it_again() -> None:
    engine = compile_policies(load_text(RA + ANY_TOKEN_ON_JWT))
    core = CheckCore(lambda: engine, IdentityContext(), cache=DecisionCache())
    for expected_cache in ("miss", "hit"):
        _, record, decision = core.check(view_bytes("/jwt/x"))
        assert decision.status == 401 and record["reason"] == "authentication_required"
        assert decision.challenge == 'Bearer realm="extauthz"' and record["cache"] == expected_cache
    # The same request with a token is another key: allowed.
    _, record, decision = core.check(view_bytes("/jwt/x", {"authorization": f"Bearer {mint()}"}))
    assert decision.allowed and record["cache"] == "miss"


def view_bytes(path: str, headers: dict[str, str] | None = None) -> bytes:
    return check_request(path=path, headers=headers).SerializeToString()
