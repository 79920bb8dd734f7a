"""RequestAuthentication: JWT validation, adversarial tokens, extraction, output headers."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from helpers.identity import (
    AUDIENCE,
    EC_KEY,
    ISSUER,
    RSA_KEY,
    RSA_KEY_2,
    bearer,
    claims,
    forge,
    inline_rule,
    jwk,
    mint,
    request_authn,
    resign,
    resolve,
    resolver,
)

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.identity.resolver import IdentityContext
from extauthz.pipeline import CheckCore
from extauthz.policy import PolicyError, compile_policies, load_text
from extauthz.tools.samples import check_request

RA = request_authn(inline_rule())


def _invalid(token: str, **kwargs: object) -> str:
    kwargs.setdefault("headers", bearer(token))
    res = resolve(resolver(RA), **kwargs)
    assert res.status == 401, res
    assert res.reason == "invalid_token"
    assert res.challenge is not None and 'error="invalid_token"' in res.challenge
    assert res.identity.token is None
    return res.error or ""


def test_valid_token_gives_request_principal() -> None:
    res = resolve(resolver(RA), headers=bearer(mint()))
    assert not res.denied
    assert res.identity.request_principal == f"{ISSUER}/user-1"
    tok = res.identity.token
    assert tok is not None and tok.audiences == (AUDIENCE,) and tok.expires_at > time.time()
    assert len(tok.fingerprint) == 64
    assert "authorization" in res.remove  # forwardOriginalToken defaults to false


def test_missing_token_is_no_principal_not_a_deny() -> None:
    res = resolve(resolver(RA))
    assert not res.denied and res.identity.token is None and res.identity.request_principal == ""


def test_other_authorization_scheme_is_not_a_token() -> None:
    res = resolve(resolver(RA), headers={"authorization": "Basic dXNlcjpwdw=="})
    assert not res.denied and res.identity.token is None


def test_without_request_authentication_tokens_are_ignored() -> None:
    res = resolve(resolver(""), headers=bearer("garbage"))
    assert not res.denied and res.identity.token is None


def test_alg_none_rejected() -> None:
    payload = json.dumps(claims())
    assert "algorithm" in _invalid(forge('{"alg":"none","kid":"k1"}', payload, b""))
    assert "algorithm" in _invalid(forge('{"alg":"none","kid":"k1"}', payload, b"sig"))
    assert "algorithm" in _invalid(forge('{"alg":"None","kid":"k1"}', payload, b"sig"))


def test_hmac_with_the_public_key_rejected() -> None:
    """Algorithm confusion: HS256 signed with the RSA public key's PEM as the secret."""
    import base64
    import hashlib
    import hmac

    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    h = base64.urlsafe_b64encode(b'{"alg":"HS256","kid":"k1","typ":"JWT"}').rstrip(b"=")
    p = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    sig = base64.urlsafe_b64encode(hmac.new(pem, h + b"." + p, hashlib.sha256).digest()).rstrip(b"=")
    assert "algorithm" in _invalid(b".".join((h, p, sig)).decode())


def test_key_is_used_only_with_its_own_algorithm() -> None:
    # An RSA key advertising RS256 refuses PS256, even with a valid PS256 signature.
    ra = request_authn(inline_rule(jwk(RSA_KEY, "k1", alg="RS256")))
    res = resolve(resolver(ra), headers=bearer(mint(alg="PS256")))
    assert res.status == 401 and "no key" in (res.error or "")
    # An EC P-256 key verifies ES256 only; an RS256 token naming its kid finds no key.
    ra = request_authn(inline_rule(jwk(EC_KEY, "e1")))
    assert resolve(resolver(ra), headers=bearer(mint(key=EC_KEY, alg="ES256", kid="e1"))).status == 200
    assert resolve(resolver(ra), headers=bearer(mint(kid="e1"))).status == 401


def test_symmetric_keys_are_never_loaded() -> None:
    oct_key = {"kty": "oct", "k": "c3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3M", "kid": "k1", "alg": "HS256"}
    ra = request_authn(inline_rule(oct_key))
    token = jwt.encode(claims(), "s" * 32, algorithm="HS256", headers={"kid": "k1"})
    res = resolve(resolver(ra), headers=bearer(token))
    assert res.status == 401


def test_signature_by_another_key_rejected() -> None:
    assert "signature" in _invalid(mint(key=RSA_KEY_2))


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"aud": "someone-else"}, "audience"),
        ({"aud": None}, "aud"),
        ({"iss": "https://evil.example"}, "issuer not configured"),
        ({"exp": None}, "exp"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not yet valid"),
        ({"iat": int(time.time()) + 3600}, "not yet valid"),
        ({"exp": "tomorrow"}, ""),
    ],
)
def test_claims_checked(over: dict[str, object], needle: str) -> None:
    assert needle in _invalid(mint(claims(**over)))


def test_small_clock_skew_tolerated_but_bounded() -> None:
    now = int(time.time())
    assert resolve(resolver(RA), headers=bearer(mint(claims(exp=now - 30)))).status == 200
    assert resolve(resolver(RA), headers=bearer(mint(claims(exp=now - 120)))).status == 401


def test_oversized_token_rejected() -> None:
    assert "8 KiB" in _invalid(mint(claims(pad="x" * 9000)))


@pytest.mark.parametrize("param", ["crit", "jku", "x5u", "jwk", "x5c", "b64", "zip"])
def test_forbidden_header_parameters(param: str) -> None:
    value: object = ["exp"] if param == "crit" else "https://evil.example/keys"
    if param != "b64":  # pyjwt drops a truthy b64 when encoding
        assert param in _invalid(mint(headers={param: value}))
    header = json.dumps({"alg": "RS256", "kid": "k1", param: False if param == "b64" else value})
    assert param in _invalid(resign(header, json.dumps(claims())))


def test_duplicate_json_members_rejected() -> None:
    payload = json.dumps(claims())[:-1] + ', "sub": "admin"}'
    assert "duplicate" in _invalid(resign('{"alg":"RS256","kid":"k1"}', payload))
    assert "duplicate" in _invalid(resign('{"alg":"RS256","kid":"k1","alg":"RS256"}', json.dumps(claims())))


def test_malformed_tokens() -> None:
    for bad in ("a.b", "a.b.c.d.e", "!!!.e30.c2ln", mint() + "=", "e30.e30.", "W10.e30.c2ln"):
        _invalid(bad)
    _invalid(forge('{"alg":"RS256"}', "[1,2]"))
    _invalid(forge('{"alg":"RS256"}', '{"exp": NaN}'))


def test_two_tokens_rejected() -> None:
    t = mint()
    # Two Authorization headers: Envoy joins them with ",".
    assert "more than one" in _invalid(t, headers={"authorization": f"Bearer {t},Bearer {t}"})
    # A header and a query parameter (the default locations).
    assert "more than one" in _invalid(t, headers=bearer(t), path=f"/api/items?access_token={t}")
    # The same parameter twice.
    res = resolve(resolver(RA), path=f"/api/items?access_token={t}&access_token={t}")
    assert res.status == 401


def test_token_from_query_parameter_and_custom_header() -> None:
    assert resolve(resolver(RA), path=f"/api/items?access_token={mint()}").identity.token is not None
    ra = request_authn(inline_rule(extra=', fromHeaders: [{name: x-jwt, prefix: "Token "}]'))
    r = resolver(ra)
    ok = resolve(r, headers={"x-jwt": f"Token {mint()}"})
    assert ok.identity.token is not None and "x-jwt" in ok.remove
    # With explicit fromHeaders the default Authorization location is not read.
    assert resolve(r, headers=bearer("not-a-token")).identity.token is None


def test_jwt_rule_scope_follows_namespace_and_selector() -> None:
    ra = request_authn(inline_rule(), namespace="other")
    # The destination namespace is "shop": a RequestAuthentication of "other" does not apply.
    assert resolve(resolver(ra), headers=bearer("garbage")).status == 200
    ra_sel = RA.replace("spec:\n", "spec:\n  selector: {matchLabels: {app: api}}\n")
    assert resolve(resolver(ra_sel), headers=bearer("garbage")).status == 200
    assert (
        resolve(resolver(ra_sel), headers=bearer("garbage"), context_extensions={"app": "api"}).status == 401
    )


def test_output_headers_and_injection() -> None:
    extra = (
        ", outputPayloadToHeader: x-jwt-payload, forwardOriginalToken: true,"
        " outputClaimToHeaders: [{header: x-user, claim: sub}, {header: x-evil, claim: name},"
        " {header: x-team, claim: org.team}, {header: x-groups, claim: groups}]"
    )
    r = resolver(request_authn(inline_rule(extra=extra)))
    token = mint(claims(name="a\r\nx-admin: true", org={"team": "blue"}, groups=["a", "b"]))
    res = resolve(r, headers={**bearer(token), "x-user": "spoofed", "x-evil": "spoofed"})
    headers = dict(res.headers)
    assert headers["x-user"] == "user-1"
    assert headers["x-team"] == "blue"
    assert "x-evil" not in headers and "x-groups" not in headers  # unsafe / not a scalar
    assert headers["x-jwt-payload"] == token.split(".")[1]
    # Client copies of every output header are stripped; the token is forwarded.
    assert {"x-user", "x-evil", "x-jwt-payload", "x-groups", "x-team"} <= set(res.remove)
    assert "authorization" not in res.remove
    # Without a token, client copies are still stripped.
    assert "x-user" in resolve(r, headers={"x-user": "spoofed"}).remove


def test_cached_token_still_expires_and_follows_key_rotation() -> None:
    r = resolver(RA)
    now = time.time()
    token = mint(claims(exp=int(now) + 5))
    assert r.resolve(_v(token), now=now).identity.token is not None
    assert r.resolve(_v(token), now=now).identity.token is not None  # cached
    assert r.resolve(_v(token), now=now + 3600).status == 401  # cache honours exp


def _v(token: str):  # type: ignore[no-untyped-def]
    from helpers.identity import view

    return view(headers=bearer(token))


def test_check_core_401_carries_www_authenticate_and_audit_names_no_token() -> None:
    policies = load_text(RA + _ALLOW_AUTHENTICATED)
    engine = compile_policies(policies)
    core = CheckCore(lambda: engine, IdentityContext())
    body, record, decision = core.check(check_request(headers=bearer("x.y.z")).SerializeToString())
    resp = ext.CheckResponse.FromString(body)
    assert resp.status.code == 16 and resp.denied_response.status.code == 401
    hdrs = {h.header.key: h.header.value for h in resp.denied_response.headers}
    assert hdrs["www-authenticate"].startswith('Bearer realm="extauthz", error="invalid_token"')
    assert record["reason"] == "invalid_token" and record["status"] == 401
    # Allowed with a good token; the audit record names iss/sub, never the token.
    token = mint()
    body, record, decision = core.check(check_request(headers=bearer(token)).SerializeToString())
    resp = ext.CheckResponse.FromString(body)
    assert decision.allowed, decision
    assert record["token"] == {"iss": ISSUER, "sub": "user-1"}
    assert token not in json.dumps(record)
    assert "authorization" in resp.ok_response.headers_to_remove
    # Missing token: no request principal, the ALLOW rule does not match: 401 asking for
    # credentials (a challenge without an error code, RFC 6750).
    body, record, decision = core.check(check_request().SerializeToString())
    resp = ext.CheckResponse.FromString(body)
    assert decision.status == 401 and record["reason"] == "authentication_required"
    hdrs = {h.header.key: h.header.value for h in resp.denied_response.headers}
    assert hdrs["www-authenticate"] == 'Bearer realm="extauthz"'
    # An explicit DENY stays a 403 with or without a token.
    engine2 = compile_policies(load_text(RA + _ALLOW_AUTHENTICATED + _DENY_ADMIN))
    core2 = CheckCore(lambda: engine2, IdentityContext())
    _, record, decision = core2.check(check_request(path="/admin").SerializeToString())
    assert decision.status == 403 and record["reason"] == "denied_by_policy"
    # When no applicable ALLOW policy reads the token, a token would not help: 403.
    engine4 = compile_policies(load_text(RA))
    _, record, decision = CheckCore(lambda: engine4).check(check_request().SerializeToString())
    assert decision.status == 403 and record["reason"] == "no_matching_policy"
    # Without any RequestAuthentication, a miss is a plain 403.
    engine3 = compile_policies(load_text(_ALLOW_AUTHENTICATED))
    _, record, decision = CheckCore(lambda: engine3).check(check_request().SerializeToString())
    assert decision.status == 403 and record["reason"] == "no_matching_policy"


_DENY_ADMIN = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
"""

_ALLOW_AUTHENTICATED = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: need-jwt, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
"""


def test_mistyped_rule_fields_fail_closed() -> None:
    # audiences as a bare string must not become a list of its characters: the loader refuses it.
    ra = request_authn(inline_rule().replace('audiences: ["api.shop"]', "audiences: a"))
    with pytest.raises(PolicyError, match="audiences: expected a list"):
        load_text(ra)
    # jwks written as a YAML mapping instead of a JSON string is accepted as the same document.
    ra = request_authn(
        f'{{issuer: "{ISSUER}", jwks: {{keys: [{json.dumps(jwk(RSA_KEY, "k1"))}]}}}}'
    )
    assert resolve(resolver(ra), headers=bearer(mint())).identity.token is not None


@pytest.mark.parametrize(
    ("extra", "query", "removed"),
    [
        ("", "access_token={t}&x=1", ["access_token"]),  # Istio's default parameter
        (", fromParams: [token]", "x=1&token={t}", ["token"]),
        (", fromParams: [token], forwardOriginalToken: true", "token={t}", []),
    ],
)
def test_query_token_removed_upstream_unless_forwarded(extra: str, query: str, removed: list[str]) -> None:
    engine = compile_policies(load_text(request_authn(inline_rule(extra=extra)) + _ALLOW_AUTHENTICATED))
    core = CheckCore(lambda: engine, IdentityContext())
    path = "/api/items?" + query.format(t=mint())
    body, _, decision = core.check(check_request(path=path).SerializeToString())
    assert decision.allowed, decision
    ok = ext.CheckResponse.FromString(body).ok_response
    assert list(ok.query_parameters_to_remove) == removed
    assert "authorization" not in ok.headers_to_remove  # the token was not in a header


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("bearer {t}", id="lower-case scheme"),
        pytest.param("BEARER {t}", id="upper-case scheme"),
        pytest.param("{t}", id="no scheme"),
    ],
)
def test_a_token_spelled_so_envoys_jwt_authn_would_not_read_it_is_refused(header: str) -> None:
    """Envoy's jwt_authn (Istio) reads only ``Bearer <jwt>``: it sees no token in these, while an
    upstream may take one. Read, the token would let an ALLOW match more than Istio's; ignored, it
    would pass a DENY on requestPrincipals. Refused: 401 invalid_token (tests/differential)."""
    error = _invalid("", headers={"authorization": header.format(t=mint(claims()))})
    assert "Bearer" in error


def test_another_authorization_scheme_is_no_token() -> None:
    res = resolve(resolver(RA), headers={"authorization": "Basic dXNlcjpwYXNz"})
    assert res.status == 200 and res.identity.token is None
