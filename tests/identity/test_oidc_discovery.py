"""OpenID discovery: a RequestAuthentication rule with an ``issuer`` and neither ``jwks`` nor
``jwksUri`` finds its keys as Istio does (``{issuer}/.well-known/openid-configuration`` ->
``jwks_uri``), with jwksUri's timeouts, caching, rate limits and fail-closed rules. The provider
is served on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from helpers.identity import (
    RSA_KEY,
    RSA_KEY_2,
    OidcServer,
    bearer,
    claims,
    jwk,
    jwks_json,
    mint,
    request_authn,
    resolve,
    resolver,
)

from extauthz.identity.keys import JwksRegistry, RemoteJwks, discovery_uri


@pytest.fixture(params=["", "/realms/shop"], ids=["issuer-root", "issuer-with-path"])
def idp(request: pytest.FixtureRequest) -> Iterator[OidcServer]:
    server = OidcServer(request.param).start()
    yield server
    server.stop()


def _rule(issuer: str, extra: str = "") -> str:
    return request_authn(f'{{issuer: "{issuer}", audiences: ["api.shop"]{extra}}}')


def _token(idp: OidcServer, **kw: object) -> dict[str, str]:
    return bearer(mint(claims(iss=idp.issuer), **kw))  # type: ignore[arg-type]


def test_discovery_uri() -> None:
    assert discovery_uri("https://idp.example") == "https://idp.example/.well-known/openid-configuration"
    assert discovery_uri("https://idp.example/") == "https://idp.example/.well-known/openid-configuration"
    assert discovery_uri("https://idp.example/realms/a") == (
        "https://idp.example/realms/a/.well-known/openid-configuration"
    )


def test_keys_discovered_from_the_issuer_and_cached(idp: OidcServer) -> None:
    r = resolver(_rule(idp.issuer), jwks=JwksRegistry(wait=5.0, min_refresh_interval=60))
    for _ in range(20):
        res = resolve(r, headers=_token(idp))
        assert not res.denied and res.identity.token is not None, res
        assert res.identity.request_principal == f"{idp.issuer}/user-1"
    assert (idp.discovery_hits, idp.jwks_hits) == (1, 1)
    # A token of another issuer, or signed with another key, is still rejected.
    assert resolve(r, headers=bearer(mint(claims(iss="https://other.example")))).status == 401
    assert resolve(r, headers=_token(idp, key=RSA_KEY_2)).status == 401


def test_issuer_with_a_trailing_slash(idp: OidcServer) -> None:
    issuer = idp.issuer + "/"
    r = resolver(_rule(issuer), jwks=JwksRegistry(wait=5.0))
    assert resolve(r, headers=bearer(mint(claims(iss=issuer)))).identity.token is not None
    assert idp.discovery_hits == 1


def test_rotated_key_found_through_the_document_again(idp: OidcServer) -> None:
    clock = [1000.0]
    remote = RemoteJwks(idp.issuer, discover=True, wait=5.0, min_refresh_interval=30, clock=lambda: clock[0])
    remote.start()
    ks = remote.keys("k1")
    assert ks is not None and ks.has_kid("k1") and remote.jwks_uri == idp.issuer + "/keys"
    # The provider moves its keys and adds one: found on the next (rate-limited) refresh.
    idp.jwks = jwks_json(jwk(RSA_KEY, "k1"), jwk(RSA_KEY_2, "k2"))
    assert remote.keys("k2") is not None and not remote.keys("k2").has_kid("k2")  # type: ignore[union-attr]
    assert idp.discovery_hits == 1  # within the interval: no fetch
    clock[0] += 31
    ks = remote.keys("k2")
    assert ks is not None and ks.has_kid("k2")
    assert (idp.discovery_hits, idp.jwks_hits) == (2, 2)


@pytest.mark.parametrize(
    "document",
    [
        None,  # 404
        "not json",
        "[]",
        json.dumps({"issuer": "x"}),  # no jwks_uri
        json.dumps({"jwks_uri": 42}),
        json.dumps({"jwks_uri": "file:///etc/passwd"}),
        json.dumps({"jwks_uri": "http://127.0.0.1:9/keys"}),  # nothing listens there
        json.dumps({"jwks_uri": "x" * 70000}),  # larger than a discovery document may be
    ],
    ids=["missing", "not-json", "not-an-object", "no-jwks_uri", "jwks_uri-not-a-string",
         "jwks_uri-not-http", "jwks_uri-unreachable", "too-large"],
)
def test_unusable_discovery_document_rejects_every_token(idp: OidcServer, document: str | None) -> None:
    idp.discovery = document
    reg = JwksRegistry(wait=5.0, timeout=1.0)
    r = resolver(_rule(idp.issuer), jwks=reg)
    res = resolve(r, headers=_token(idp))
    assert res.status == 401 and res.reason == "invalid_token", res
    assert res.identity.token is None
    assert idp.discovery_hits == 1


def test_broken_document_keeps_the_last_good_keys(idp: OidcServer) -> None:
    clock = [1000.0]
    remote = RemoteJwks(
        idp.issuer, discover=True, wait=5.0, ttl=60, min_refresh_interval=30, clock=lambda: clock[0]
    )
    remote.start()
    assert remote.keys("k1") is not None
    idp.discovery = "not json"
    clock[0] += 61  # stale: refreshed in the background, the old set still answers
    assert remote.keys("k1") is not None
    deadline = time.monotonic() + 10
    while idp.discovery_hits < 2:
        assert time.monotonic() < deadline, "no refresh"
        time.sleep(0.02)
    remote.keys("k1")
    ks = remote.keys("k1")
    assert ks is not None and ks.has_kid("k1")


def test_hanging_discovery_fails_closed_in_time(idp: OidcServer) -> None:
    idp.discovery_delay = 30.0  # released when the server stops
    r = resolver(_rule(idp.issuer), jwks=JwksRegistry(wait=0.2, timeout=1.0))
    start = time.monotonic()
    res = resolve(r, headers=_token(idp))
    assert time.monotonic() - start < 1.5  # the check waits `wait`, never the fetch
    assert res.status == 401 and res.identity.token is None  # no keys yet: rejected


def test_issuer_that_is_not_an_http_url_is_rejected() -> None:
    r = resolver(_rule("testing@secure.istio.io"))
    res = resolve(r, headers=bearer(mint(claims(iss="testing@secure.istio.io"))))
    assert res.status == 401
