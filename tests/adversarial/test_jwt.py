"""JWT attacks through the Check core: forged, confused and malformed tokens.

Attacked policy: a RequestAuthentication for ``https://issuer.example`` (inline JWKS: one RSA key
``k1``, one P-256 key ``e1``) and ``ALLOW requestPrincipals: [https://issuer.example/user-1]``.
Each case is a token the attacker controls, sent through ``CheckCore.check`` on serialized
CheckRequest bytes; the secure outcome is a deny — 401 with ``WWW-Authenticate`` and reason
``invalid_token`` in the audit record, which never carries the token. A control case shows the
same request with an honest token is allowed, so every deny below is the attack's doing.

Unit-level checks of the same classes (the validator alone, with the error messages) are in
tests/identity/test_tokens.py; the key and token helpers come from tests/helpers/identity.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers.identity import (
    EC_KEY,
    RSA_KEY,
    b64,
    claims,
    forge,
    inline_rule,
    jwk,
    mint,
    request_authn,
    resign,
)

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.identity.resolver import IdentityContext
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ATTACKER = rsa.generate_private_key(public_exponent=65537, key_size=2048)

POLICY = request_authn(inline_rule(jwk(RSA_KEY, "k1"), jwk(EC_KEY, "e1"))) + """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: user-1-only, namespace: shop}
spec:
  action: ALLOW
  rules: [{from: [{source: {requestPrincipals: ["https://issuer.example/user-1"]}}]}]
"""

_ENGINE = compile_policies(load_text(POLICY))
CORE = CheckCore(lambda: _ENGINE, IdentityContext())


def _check(
    headers: dict[str, str], path: str = "/api/items"
) -> tuple[int, dict[str, Any], ext.CheckResponse]:
    body, record, _ = CORE.check(check_request(path=path, headers=headers).SerializeToString())
    resp = ext.CheckResponse.FromString(body)
    status = 200 if resp.status.code == 0 else resp.denied_response.status.code
    return status, record, resp


def assert_invalid_token(
    token: str, *, headers: dict[str, str] | None = None, path: str = "/api/items"
) -> None:
    """The secure outcome: 401 invalid_token, a challenge, an audit record without the token."""
    status, record, resp = _check(headers or {"authorization": f"Bearer {token}"}, path)
    assert status == 401, (status, record)
    assert record["allowed"] is False and record["status"] == 401
    assert record["reason"] == "invalid_token", record
    challenge = {h.header.key: h.header.value for h in resp.denied_response.headers}
    assert challenge["www-authenticate"].startswith('Bearer realm="extauthz", error="invalid_token"')
    assert token not in json.dumps(record)


def _hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def _public_pem(key: Any) -> bytes:
    return bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ))


def test_control_an_honest_token_is_allowed() -> None:
    """Control: the policy, the request and an honest token give 200 (RS256 and ES256)."""
    assert _check({"authorization": f"Bearer {mint()}"})[0] == 200
    assert _check({"authorization": f"Bearer {mint(key=EC_KEY, alg='ES256', kid='e1')}"})[0] == 200
    # Another subject, honestly signed: authenticated but not allowed (403, not 401).
    assert _check({"authorization": f"Bearer {mint(claims(sub='user-2'))}"})[0] == 403


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", [b"", b"x"])
def test_alg_none(alg: str, signature: bytes) -> None:
    """``alg: none`` (unsigned token) in any spelling, with an empty or junk signature.

    Source: the 2015 disclosure of JWT library flaws (Tim McLean, Auth0 blog "Critical
    vulnerabilities in JSON Web Token libraries"); CVE-2022-23540 (node-jsonwebtoken <= 8.5.1
    defaulted to ``none`` when no algorithm was given); RFC 8725 s2.1 and s3.1.
    """
    header = json.dumps({"alg": alg, "typ": "JWT", "kid": "k1"})
    token = f"{b64(header.encode())}.{b64(json.dumps(claims()).encode())}.{b64(signature)}"
    assert_invalid_token(token)


@pytest.mark.parametrize("kid", ["k1", None])
def test_hs256_signed_with_the_rsa_public_key(kid: str | None) -> None:
    """Algorithm confusion: HS256 with the issuer's RSA public key (PEM and JWK text) as secret.

    Source: CVE-2015-9235 (node-jsonwebtoken < 4.2.2: an HS* token verified with the RS/ES
    public key), CVE-2016-10555 (jwt-simple), CVE-2022-29217 (PyJWT < 2.4 key confusion);
    RFC 8725 s3.1 ("each key MUST be used with exactly one algorithm").
    """
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    for secret in (_public_pem(RSA_KEY), json.dumps(jwk(RSA_KEY, "k1")).encode()):
        assert_invalid_token(_hs256(header, claims(), secret))


@pytest.mark.parametrize("param", ["jwk", "jku", "x5u", "x5c"])
def test_key_injection_headers(param: str) -> None:
    """A token that names its own key: an embedded ``jwk``, a ``jku``/``x5u`` URL, an ``x5c``
    chain — signed by the attacker's key, which the header points to.

    Source: CVE-2018-0114 (node-jose trusted the ``jwk`` embedded in the header); RFC 8725 s3.10
    (blindly following ``jku``/``x5u`` leads to SSRF); RFC 7515 s4.1.2-4.1.6.
    """
    value: Any = {
        "jwk": jwk(ATTACKER, "k1"),
        "jku": "http://127.0.0.1:9/attacker-jwks.json",
        "x5u": "http://127.0.0.1:9/attacker.pem",
        "x5c": [base64.b64encode(_public_pem(ATTACKER)).decode()],
    }[param]
    header = json.dumps({"alg": "RS256", "kid": "k1", param: value})
    assert_invalid_token(resign(header, json.dumps(claims()), ATTACKER))
    # Even when the honest key signs it, a key-naming header is refused (never honoured).
    assert_invalid_token(resign(header, json.dumps(claims()), RSA_KEY))


@pytest.mark.parametrize(
    "kid",
    [
        "../../../../../../dev/null",
        "/dev/null",
        "k1/../k1",
        "' OR '1'='1",
        "k1' UNION SELECT 'secret' --",
        "k1\u0000",
        "K1",
        "k1 ",
        "$(id)",
        "",
    ],
)
def test_kid_injection(kid: str) -> None:
    """``kid`` as a path, SQL or shell fragment, a near-miss or empty: it only selects among the
    configured keys, by exact match; anything else finds no key.

    Source: RFC 8725 s3.10 ("Applications should ensure that this does not create SQL or LDAP
    injection vulnerabilities"); the ``kid`` path-traversal class (``/dev/null`` as an empty HMAC
    key) of the same section.
    """
    assert_invalid_token(mint(key=ATTACKER, kid=kid))
    # HS256 with an empty secret: what a file lookup of /dev/null would have given.
    assert_invalid_token(_hs256({"alg": "HS256", "kid": kid}, claims(), b""))


@pytest.mark.parametrize(
    "exp",
    [None, "9999999999", "never", [9999999999], {"$gt": 0}, True, -1],
    ids=["missing", "numeric-string", "word", "list", "object", "bool", "negative"],
)
def test_exp_missing_or_not_a_number(exp: object) -> None:
    """``exp`` absent or not a NumericDate, in an otherwise valid, honestly signed token.

    Source: RFC 7519 s4.1.4 (``exp`` is a NumericDate) and s2; RFC 8725 s3.8 (validate the
    claims); a missing ``exp`` must not mean "never expires" (Istio/Envoy jwt_authn require it
    only when present — we require it: zero-trust default).
    """
    payload = claims(exp=None)
    if exp is not None:
        payload["exp"] = exp
    token = resign('{"alg":"RS256","kid":"k1"}', json.dumps(payload))
    assert_invalid_token(token)


@pytest.mark.parametrize(
    "crit",
    [["exp"], ["b64"], ["x-custom"], [], "exp"],
    ids=["registered-name", "b64", "unknown-extension", "empty-list", "not-a-list"],
)
def test_crit_header(crit: object) -> None:
    """A ``crit`` header: we understand no extension, so any ``crit`` makes the token invalid.

    Source: RFC 7515 s4.1.11 (an extension listed in ``crit`` that is not understood makes the
    JWS invalid); CVE-2025-59420 (Authlib accepted unknown ``crit`` parameters).
    """
    header = json.dumps({"alg": "RS256", "kid": "k1", "crit": crit, "x-custom": 1, "b64": True})
    assert_invalid_token(resign(header, json.dumps(claims())))


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        ('{"alg":"RS256","kid":"k1"}', json.dumps(claims())[:-1] + ', "sub": "user-1"}'),
        ('{"alg":"RS256","kid":"k1"}', json.dumps(claims(sub="user-2"))[:-1] + ', "sub": "user-1"}'),
        ('{"alg":"RS256","kid":"k1"}', json.dumps(claims())[:-1] + ', "iss": "https://evil.example"}'),
        ('{"alg":"RS256","kid":"k1"}', json.dumps(claims())[:-1] + ', "exp": 0}'),
        ('{"alg":"RS256","kid":"k1","alg":"none"}', json.dumps(claims())),
        ('{"alg":"RS256","kid":"k1","kid":"e1"}', json.dumps(claims())),
    ],
    ids=["same-sub-twice", "sub-user-2-then-user-1", "iss-twice", "exp-twice", "alg-twice", "kid-twice"],
)
def test_duplicate_json_members(header: str, payload: str) -> None:
    """Duplicate names in the (honestly signed) header or payload: parsers disagree on which one
    wins (first vs last), so a token read one way by a gateway and another by a backend.

    Source: RFC 7519 s4 (claim names MUST be unique; reject or use the last) and RFC 7515 s5.2;
    RFC 8259 s4 (duplicate names: behaviour unpredictable). We reject.
    """
    assert_invalid_token(resign(header, payload))


@pytest.mark.parametrize("part", ["payload", "header", "signature"])
def test_giant_token(part: str) -> None:
    """A token of 100 KiB (a padded claim, header member or signature) is refused before any
    decoding or signature work (limit 8 KiB).

    Source: CVE-2025-61920 (Authlib decoded unbounded JWS header/signature segments: CPU and
    memory exhaustion); CVE-2024-33664 (python-jose JWE decompression bomb).
    """
    big = "A" * (100 * 1024)
    if part == "payload":
        token = mint(claims(pad=big))
    elif part == "header":
        token = mint(headers={"pad": big})
    else:
        token = mint().rsplit(".", 1)[0] + "." + big
    assert_invalid_token(token)


@pytest.mark.parametrize(
    "signature",
    [bytes(64), bytes(32) + b"\x01" + bytes(31), b"\x30\x06\x02\x01\x00\x02\x01\x00", b""],
    ids=["r=s=0", "r=0,s=1", "der-zeros", "empty"],
)
def test_zero_ecdsa_signature(signature: bytes) -> None:
    """ES256 with r = s = 0 (and near variants): the "psychic signature".

    Source: CVE-2022-21449 (Java 15-18 ECDSA accepted r = s = 0 for any message and key).
    """
    header = json.dumps({"alg": "ES256", "kid": "e1", "typ": "JWT"})
    token = f"{b64(header.encode())}.{b64(json.dumps(claims()).encode())}.{b64(signature)}"
    assert_invalid_token(token)
    # The curve order n as r and s (reduced mod n, also zero).
    order = P256_ORDER.to_bytes(32, "big")
    assert_invalid_token(f"{b64(header.encode())}.{b64(json.dumps(claims()).encode())}.{b64(order + order)}")


def test_token_in_two_places() -> None:
    """Two tokens in one request — an honest ``user-2`` token next to a ``user-1`` one, or a
    forged one next to an honest one — in two Authorization headers (Envoy joins them with ``,``)
    or in the header and the ``access_token`` query parameter: ambiguous, refused.

    Source: RFC 6750 s2 (clients MUST NOT use more than one method to transmit the token);
    the header-duplication class of Envoy CVE-2021-32777 (tests/adversarial/test_headers.py).
    """
    good, other = mint(), mint(claims(sub="user-2"))
    forged = forge('{"alg":"none"}', json.dumps(claims()), b"")
    for a, b in ((other, good), (forged, good), (good, good)):
        assert_invalid_token(a, headers={"authorization": f"Bearer {a},Bearer {b}"})
        assert_invalid_token(a, headers={"authorization": f"Bearer {a}"}, path=f"/api/items?access_token={b}")
    # And a token forged in the query parameter alone is refused like in the header.
    assert_invalid_token(forged, headers={}, path=f"/api/items?access_token={forged}")


def test_signature_stripped_or_swapped() -> None:
    """A valid token's payload changed (``sub`` -> ``user-1``) under the original signature, and
    a token signed by another key under the configured ``kid``.

    Source: RFC 7515 s5.2 (the signature covers header and payload); RFC 8725 s2.1.
    """
    honest = mint(claims(sub="user-2"))
    h, _, s = honest.split(".")
    assert_invalid_token(f"{h}.{b64(json.dumps(claims()).encode())}.{s}")
    assert_invalid_token(jwt.encode(claims(), ATTACKER, algorithm="RS256", headers={"kid": "k1"}))


@pytest.mark.parametrize("part", ["payload", "header", "claim"])
def test_deeply_nested_json(part: str, caplog: pytest.LogCaptureFixture) -> None:
    """JSON nested 2,000 deep (4 KB, under the 8 KiB token limit) made json.loads recurse past
    Python's limit: RecursionError, a 403 internal_error with a traceback logged per request.
    It is a bad token: 401 invalid_token, refused by a linear depth scan, no traceback.

    Source: issue 13; CVE-2024-6221-style parser-depth DoS (RFC 8259 s9: implementations may
    limit nesting depth).
    """
    deep = "[" * 2000 + "]" * 2000
    if part == "payload":
        token = resign('{"alg":"RS256","kid":"k1"}', deep)
    elif part == "header":
        token = resign('{"alg":"RS256","kid":"k1","x":' + deep + "}", json.dumps(claims()))
    else:
        token = resign('{"alg":"RS256","kid":"k1"}', json.dumps(claims())[:-1] + ',"x":' + deep + "}")
    with caplog.at_level("DEBUG"):
        assert_invalid_token(token)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_nesting_within_the_bound_is_an_honest_token() -> None:
    nested: Any = "v"
    for _ in range(15):  # 30 levels, inside the payload object: 31 <= MAX_JSON_DEPTH (32)
        nested = {"k": [nested]}
    assert _check({"authorization": f"Bearer {mint(claims(extra=nested))}"})[0] == 200
